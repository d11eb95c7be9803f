"""The quality factor: less work per request before any request is refused (docs/ARCHITECTURE.md §4).

Shedding (``gateway.admission``) answers overload by refusing requests. Part of a request's CPU grows with the
funnel's candidate counts (recall's merge, the candidate features and pre-rank over ``recall_n`` rows, the
student over ``prerank_keep``, rerank over ``rank_n``), and the list loses little when they shrink (the export
measures how little). So when recent requests run slow the gateway first asks the stages for fewer candidates,
one level at a time, and sheds only what the levels cannot absorb (Twitter's product-mixer lowers a component's
candidate count the same way when its latency runs over target). Most of the CPU is per call, though (at the
chosen counts the MMoE over 25 rows is 0.5-1 of 11-13 CPU-ms), so the deepest level skips the rank call
(``Level.skip_rank``, docs/results/2026-12-07-overload-quality.md).

Levels come from the snapshot's manifest (``quality_levels``, ``export.evaluation.stage_counts``: each
level's counts and its validation NDCG@10), capped by this gateway's ``recall_n`` / ``rank_n``. A snapshot
without them gets the exported counts halved per level (:func:`default_levels`).

The controller (:class:`QualityFactor`) reads the estimate admission sheds on (how long requests take now:
Little's law on the queue and the smoothed time of recent requests, the smaller) as a fraction of the
request's deadline. Above ``step_down_fraction`` it moves one level down the list, below
``step_up_fraction`` one level back up, at most once per ``hold_s`` in either direction: the gap between the
two fractions and the hold keep it from flapping, and a step's effect shows in the estimate within the hold.
``step_down_fraction`` sits below admission's ``shed_fraction``, so the steps come before the refusals.
"""
from __future__ import annotations

from dataclasses import dataclass

COUNT_KEYS = ("recall_n", "prerank_keep", "rank_n")
FLAG_KEYS = ("prerank_order", "skip_rank")   # a level's manifest flags, Level's fields in order


@dataclass
class QualityConfig:
    """``GatewayConfig.quality``."""

    enabled: bool = True
    step_down_fraction: float = 0.35   # requests take over this share of their deadline: one level down
    step_up_fraction: float = 0.2      # under this share: one level back up
    hold_s: float = 0.25               # at most one step per this long
    max_level: int = 8                 # the deepest level used, of the snapshot's (0: always the full funnel)

    def validate(self) -> None:
        if not 0.0 < self.step_up_fraction < self.step_down_fraction <= 1.0:
            raise ValueError("need 0 < quality.step_up_fraction < quality.step_down_fraction <= 1")
        if self.hold_s < 0 or self.max_level < 0:
            raise ValueError("quality.hold_s and quality.max_level must be >= 0")


@dataclass(frozen=True)
class Level:
    """The candidate counts of one quality level; ``prerank_keep`` 0 leaves the rank server's own.
    ``prerank_order``: rank serves its pre-rank's order and skips the ranker. ``skip_rank``: the rank server is
    not called at all, and recall's first ``rank_n`` go to rerank in recall's order (the deepest level): a stage
    call is a fixed cost per request (its round trip, the request's decoding, the user's features) that fewer
    candidates do not remove. Rerank is never skipped: it keeps the business rules (``rerank_server``)."""

    recall_n: int
    prerank_keep: int
    rank_n: int
    prerank_order: bool = False
    skip_rank: bool = False


def default_levels(exported: dict, recall_n: int, rank_n: int, depth: int = 3) -> list[Level]:
    """Without measured levels: the exported counts (``stage_counts``, else this gateway's) halved per level."""
    r = min(int(exported.get("recall_n", recall_n)), recall_n)
    n = min(int(exported.get("rank_n", rank_n)), rank_n)
    p = int(exported.get("prerank_keep", 0))
    return [Level(max(1, r >> i), max(1, p >> i) if p else 0, max(1, n >> i)) for i in range(depth + 1)]


def levels_for(manifest: dict, recall_n: int, rank_n: int, max_level: int) -> list[Level]:
    """Level 0 .. ``max_level`` for a snapshot's ``manifest``: its ``quality_levels`` where present (else
    :func:`default_levels`), each count capped by the gateway's ``recall_n`` / ``rank_n``, and every level
    kept in order ``rank_n <= prerank_keep <= recall_n`` (a stage never gets more than the one before kept)."""
    measured = manifest.get("quality_levels") or []
    raw = ([Level(*(int(level[key]) for key in COUNT_KEYS), *(bool(level.get(key, False)) for key in FLAG_KEYS))
            for level in measured] if measured
           else default_levels(manifest.get("stage_counts") or {}, recall_n, rank_n))
    out = []
    for level in raw[: max_level + 1]:
        r = min(level.recall_n, recall_n)
        p = min(level.prerank_keep, r) if level.prerank_keep else 0
        n = min(level.rank_n, rank_n, p or r)
        out.append(Level(r, p, n, level.prerank_order, level.skip_rank))
    return out


class QualityFactor:
    """The level requests are served at now, from how long requests take (see the module docstring)."""

    def __init__(self, config: QualityConfig):
        self.config = config
        self.level = 0
        self._last_step = float("-inf")

    def update(self, now: float, expected_s: float | None, deadline_s: float, n_levels: int) -> int:
        """The level for a request arriving ``now`` whose deadline is ``deadline_s`` away, when requests take
        ``expected_s`` (None: no estimate yet) and the snapshot has ``n_levels`` levels."""
        cfg = self.config
        deepest = max(0, min(n_levels - 1, cfg.max_level)) if cfg.enabled else 0
        if expected_s is not None and deadline_s > 0 and now - self._last_step >= cfg.hold_s:
            share = expected_s / deadline_s
            if share > cfg.step_down_fraction and self.level < deepest:
                self.level += 1
                self._last_step = now
            elif share < cfg.step_up_fraction and self.level > 0:
                self.level -= 1
                self._last_step = now
        self.level = min(self.level, deepest)
        return self.level
