"""Streaming evaluation: replay held-out interactions in time order through Recommend and Feedback.

For each event of the replayed log (the test part of the split the snapshot was exported with, in time
order): ask Recommend for that user's top k, record whether the event's item is in it (hit-rate@k) and
where (NDCG@k with one relevant item: 1 / log2(rank + 2)); then, with feedback on, send the event as a CLICK
through Feedback, so the next request of that user sees it (real-time history, seen-item removal). With
feedback off the same replay runs against the static snapshot. The two runs differ only in the Feedback
calls, so the ratio is what the feedback loop is worth on this data.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from feedback.events import Event, EventType


@dataclass
class ReplayEvent:
    user_id: str
    item_id: str
    timestamp: int


@dataclass
class ReplayResult:
    events: int
    hits: int
    ndcg_sum: float
    seconds: float
    recommend_ms: list[float]

    def row(self) -> dict:
        """The report row: hit-rate@k, NDCG@k, events, and Recommend's latency percentiles."""
        ms = np.asarray(self.recommend_ms or [0.0])
        return {"events": self.events, "hit_rate": round(self.hits / max(self.events, 1), 4),
                "ndcg": round(self.ndcg_sum / max(self.events, 1), 4), "seconds": round(self.seconds, 1),
                "recommend_p50_ms": round(float(np.percentile(ms, 50)), 2),
                "recommend_p99_ms": round(float(np.percentile(ms, 99)), 2)}


def replay(events: list[ReplayEvent], recommend: Callable[[str, int], list[str]],
           feedback: Callable[[list[Event]], None] | None, k: int = 10) -> ReplayResult:
    """Run the replay; ``recommend(user, k)`` returns item ids best first, ``feedback(events)`` sends a batch
    (None: feedback off)."""
    hits, ndcg, latencies = 0, 0.0, []
    start = time.perf_counter()
    for n, event in enumerate(events):
        t0 = time.perf_counter()
        items = recommend(event.user_id, k)
        latencies.append((time.perf_counter() - t0) * 1000.0)
        if event.item_id in items:
            hits += 1
            ndcg += 1.0 / math.log2(items.index(event.item_id) + 2)
        if feedback is not None:
            feedback([Event(event.user_id, event.item_id, EventType.CLICK, timestamp=float(event.timestamp),
                            event_id=f"replay-{n}")])
    return ReplayResult(len(events), hits, ndcg, time.perf_counter() - start, latencies)


def held_out_events(ds, holdout_frac: float, valid_frac: float, users: int, seed: int = 0) -> list[ReplayEvent]:
    """The test part's events of a seeded sample of ``users`` users (0: all), in time order."""
    from export.split import make_split

    test = make_split(ds, holdout_frac, valid_frac=valid_frac).test
    chosen = np.unique(test.user)
    if users and users < chosen.size:
        chosen = np.sort(np.random.default_rng(seed).choice(chosen, users, replace=False))
    keep = np.isin(test.user, chosen)
    order = np.lexsort((test.item[keep], test.user[keep], test.timestamp[keep]))
    u, i, t = test.user[keep][order], test.item[keep][order], test.timestamp[keep][order]
    return [ReplayEvent(str(ds.user_ids[a]), str(ds.item_ids[b]), int(c)) for a, b, c in zip(u, i, t)]
