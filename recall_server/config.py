"""Configuration of the recall server process."""
from __future__ import annotations

from dataclasses import dataclass, field

from common.client_text import clip
from common.item_filter import FilterLimits
from common.server_options import ServerOptions
from feedback.config import FeedbackConfig


@dataclass
class RecallConfig:
    """Everything the recall server reads at start-up; load with ``common.config.load_config``."""

    snapshot: str = "snapshots"          # snapshot root (follows CURRENT) or a version directory
    server: ServerOptions = field(default_factory=ServerOptions)
    default_n: int = 1000                # candidates returned when the request leaves n at 0
    max_n: int = 5000
    max_exclude: int = 10000             # longest exclude / history list a request may carry
    channels: list[str] = field(default_factory=lambda: ["ann", "itemcf", "swing", "popular", "segment_popular",
                                                         "content"])
    quotas: dict[str, int] = field(default_factory=lambda: {"ann": 600, "itemcf": 300, "swing": 200, "popular": 100,
                                                            "segment_popular": 100, "content": 50})
    # merge: weighted reciprocal-rank fusion (kernels.merge). The weights below are the starting point; export
    # refits them per snapshot on the validation part (export.recall.merge_fit) and the server uses those
    fusion: str = "rrf"                  # "rrf" (sum of w / (rrf_k + rank)) or "max" (best w * (1 - rank/quota))
    rrf_k: float = 30.0
    weights: dict[str, float] = field(default_factory=lambda: {"ann": 1.0, "itemcf": 0.25, "swing": 0.25,
                                                               "popular": 0.05, "segment_popular": 0.05,
                                                               "content": 0.05})
    max_quota: int = 5000                # largest per-channel quota a request (or an experiment arm) may set
    # weights left at the defaults above take the snapshot's fitted ones (manifest recall_merge, chosen by
    # export on the validation part); weights set in a config file or by --set win; false: never the fitted
    use_fitted: bool = True
    hnsw_ef: int = 200                   # query-time ef, fixed per index (hnswlib searches with max(ef, k))
    # the ANN channel fetches quota + this many more at most to make up for excluded (seen) items, so one
    # user with a long history cannot make every search expensive
    ann_max_overfetch: int = 500
    # request-time attribute filters (common.item_filter, recall_server.filtering): the ANN channel scores
    # the eligible items exactly when at most ann_exact_max are eligible, else it over-fetches from HNSW;
    # list channels are asked for quota / eligible fraction × filter_overfetch items
    filters: FilterLimits = field(default_factory=FilterLimits)
    ann_exact_max: int = 100000
    # unfiltered requests score the ANN index's items exactly (one matrix-vector product) when it holds at
    # most this many: measured faster than the HNSW search on a 2-core VM at 1,612 items (p50 0.20 against
    # 0.51 ms for k = 1,000) and at 12,112 items (0.22 against 0.30 ms for k = 125, 0.32 against 0.76 ms for
    # k = 1,000), and exact where HNSW found 0.97 of it (300 users, numpy top-k against knn_query); 0: always HNSW
    ann_exact_items: int = 20000
    filter_overfetch: float = 1.5
    filter_cache: int = 64               # distinct filters whose eligible set (and vectors) stay cached
    recency_decay: float = 0.9           # i2i weight of the item t steps before the latest: decay**t
    onnx_threads: int = 1
    reload_poll_s: float = 2.0           # check snapshot CURRENT this often (common.reload); 0: only on SIGHUP
    # the real-time state (feedback.realtime): recent clicks join the history, exposed items are dropped
    # before quotas; feedback.path "" is off. Must name the gateway's feedback.path
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)

    def validate(self) -> None:
        """Reject inconsistent settings with a message naming the key."""
        from recall_server.channels import known_channels

        self.server.validate()
        self.feedback.validate()
        known = known_channels()
        for name in self.channels:
            if name not in known:
                raise ValueError(f"channels: unknown channel '{name}'; known: {', '.join(known)}")
            if not 0.0 <= self.weights.get(name, 1.0) < float("inf"):
                raise ValueError(f"weights.{name} must be a finite number >= 0")
        if self.fusion not in ("rrf", "max"):
            raise ValueError(f"fusion must be 'rrf' or 'max', got {self.fusion!r}")
        if not self.rrf_k > 0:
            raise ValueError(f"rrf_k must be > 0, got {self.rrf_k}")
        if self.max_quota < 0 or self.ann_max_overfetch < 0 or self.hnsw_ef < 1:
            raise ValueError("max_quota and ann_max_overfetch must be >= 0, hnsw_ef >= 1")
        problem = check_quotas({c: q for c, q in self.quotas.items() if c in self.channels}, self.channels,
                               self.max_quota)
        if problem:
            raise ValueError(problem)
        if not 1 <= self.default_n <= self.max_n:
            raise ValueError(f"default_n must be in 1..max_n ({self.max_n}), got {self.default_n}")
        self.filters.validate()
        if self.ann_exact_max < 0 or self.filter_overfetch < 1.0 or self.filter_cache < 0:
            raise ValueError("ann_exact_max and filter_cache must be >= 0, filter_overfetch >= 1")
        if self.ann_exact_items < 0:
            raise ValueError(f"ann_exact_items must be >= 0 (0: always HNSW), got {self.ann_exact_items}")
        if not 0.0 < self.recency_decay <= 1.0:
            raise ValueError(f"recency_decay must be in (0, 1], got {self.recency_decay}")


def check_quotas(quotas: dict[str, int], channels, max_quota: int, echo_chars: int = 200) -> str | None:
    """The first problem with per-channel quotas (naming the channel), or None.

    The recall server checks each request's quotas with it, and the gateway every experiment arm at
    start-up (against every channel module and the default ``max_quota``).
    """
    for name, quota in quotas.items():
        if name not in channels:
            return f"quotas: unknown channel '{clip(name, echo_chars)}'; channels: {', '.join(channels)}"
        if not 0 <= quota <= max_quota:
            return f"quotas.{name} must be in 0..{max_quota} (max_quota), got {quota}"
    return None
