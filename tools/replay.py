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
    from export.data.split import make_split

    test = make_split(ds, holdout_frac, valid_frac=valid_frac).test
    chosen = np.unique(test.user)
    if users and users < chosen.size:
        chosen = np.sort(np.random.default_rng(seed).choice(chosen, users, replace=False))
    keep = np.isin(test.user, chosen)
    order = np.lexsort((test.item[keep], test.user[keep], test.timestamp[keep]))
    u, i, t = test.user[keep][order], test.item[keep][order], test.timestamp[keep][order]
    return [ReplayEvent(str(ds.user_ids[a]), str(ds.item_ids[b]), int(c)) for a, b, c in zip(u, i, t)]


def run_replay(addr: str, events: list[ReplayEvent], k: int, deadline_ms: int, feedback_on: bool) -> ReplayResult:
    """The replay against a running gateway at ``addr`` (``feedback_on``: clicks sent through Feedback)."""
    from gateway.client import RecommendClient

    with RecommendClient(addr, timeout_s=max(deadline_ms / 1000.0 + 1.0, 2.0)) as client:
        def recommend(user: str, n: int) -> list[str]:
            return [it.item_id for it in client.recommend(user, n, deadline_ms=deadline_ms).items]

        return replay(events, recommend, client.feedback if feedback_on else None, k)


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.replay``: start a cluster with a fresh feedback store on the snapshot, replay the
    test part of ML-100K for a user sample with feedback off, then on; print both rows and their ratio."""
    import argparse
    import json
    import tempfile
    from pathlib import Path

    from common.snapshot import Snapshot
    from export.data.atomic import load_movielens_100k
    from cluster.launcher import Cluster, ClusterConfig

    parser = argparse.ArgumentParser(description="Streaming evaluation: Recommend then Feedback, in time order")
    parser.add_argument("--snapshot", default="snapshots", help="snapshot root (an ML-100K export)")
    parser.add_argument("--users", type=int, default=200, help="test-part users replayed (0: all)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--deadline-ms", type=int, default=1000, help="generous: this measures quality")
    parser.add_argument("--out", default="", help="also write the JSON report here")
    args = parser.parse_args(argv)
    snapshot = Snapshot.open(args.snapshot, verify=False)
    split = snapshot.manifest.get("dataset", {})
    if not str(split.get("name", "")).startswith("ml-100k"):
        parser.error(f"{args.snapshot} is not an ML-100K export (dataset {split.get('name')!r}); run python -m export")
    exported = snapshot.manifest.get("config", {})  # the split the snapshot was exported with
    holdout, valid = float(exported.get("holdout_frac", 0.2)), float(exported.get("valid_frac", 0.1))
    snapshot.close()
    events = held_out_events(load_movielens_100k(), holdout, valid, args.users)
    with tempfile.TemporaryDirectory(prefix="replay-") as tmp:
        config = ClusterConfig(snapshot=args.snapshot, gateway_port=0, run_dir=tmp,
                               feedback_path=str(Path(tmp) / "feedback"))
        with Cluster(config) as cluster:
            off = run_replay(cluster.gateway_addr, events, args.k, args.deadline_ms, feedback_on=False).row()
            on = run_replay(cluster.gateway_addr, events, args.k, args.deadline_ms, feedback_on=True).row()
    report = {"part": "test (the last 20% per user, time order)", "users": args.users, "k": args.k,
              "feedback_off": off, "feedback_on": on,
              "ratio_hit_rate": round(on["hit_rate"] / max(off["hit_rate"], 1e-9), 3),
              "ratio_ndcg": round(on["ndcg"] / max(off["ndcg"], 1e-9), 3)}
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
