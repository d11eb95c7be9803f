"""``make demo``: export a snapshot if there is none, start the cluster, send real requests, stop.

Prints a few recommendation lists with titles (real users and one unknown user: cold start), the feedback
loop (the unknown user's list after it was shown and clicked three items), then per-stage and end-to-end
latency percentiles over a few hundred sequential requests.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common.snapshot import Snapshot, SnapshotError
from export.__main__ import ensure_snapshot
from feedback.events import Event, EventType
from gateway.client import RecommendClient, format_recommendation
from cluster.launcher import Cluster, ClusterConfig


def percentiles(values: list[float]) -> str:
    a = np.asarray(values)
    return f"p50 {np.percentile(a, 50):7.2f}  p90 {np.percentile(a, 90):7.2f}  p99 {np.percentile(a, 99):7.2f}  " \
           f"max {a.max():7.2f}"


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except (RuntimeError, TimeoutError) as exc:  # a server could not start: its log tail is in the message
        print(f"demo: cannot start the cluster: {exc}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", default="snapshots", help="snapshot root")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--deadline-ms", type=int, default=100)
    args = parser.parse_args(argv)

    root = Path(args.snapshot)
    if not ensure_snapshot(str(root)):
        return 2
    try:
        snapshot = Snapshot.open(root, verify=False)
    except SnapshotError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    metrics = snapshot.manifest["metrics"]
    print(f"\nsnapshot {snapshot.version}: recall@50 merged {metrics['recall']['merged']['recall@50']}, "
          f"DeepFM AUC {metrics['rank']['deepfm']['like']['auc']}")
    users = snapshot.features.array("user_ids").tolist()

    print("starting the cluster ...", flush=True)
    t0 = time.monotonic()
    store = tempfile.TemporaryDirectory(prefix="demo-feedback-")  # a fresh feedback store for the demo
    with store, Cluster(ClusterConfig(snapshot=str(root), gateway_port=0, feedback_path=store.name)) as cluster:
        print(f"cluster ready in {time.monotonic() - t0:.1f} s: gateway {cluster.gateway_addr}\n")
        with RecommendClient(cluster.gateway_addr, timeout_s=5.0) as client:
            for user_id in users[:3] + ["new-user-never-seen"]:
                rec = client.recommend(user_id, k=args.k, deadline_ms=args.deadline_ms, debug=True)
                print(format_recommendation(user_id, rec) + "\n")
            # the feedback loop: the new user was shown that list and clicked three items of it
            shown = [it.item_id for it in rec.items]
            client.feedback([Event(user_id, x, EventType.IMPRESSION, request_id=rec.request_id) for x in shown]
                            + [Event(user_id, x, EventType.CLICK) for x in shown[:3]])
            print(f"feedback: {user_id} was shown those {len(shown)} and clicked {', '.join(shown[:3])}; "
                  f"the next list (none of them again, personalised by the clicks):")
            rec = client.recommend(user_id, k=args.k, deadline_ms=args.deadline_ms, debug=True)
            print(format_recommendation(user_id, rec) + "\n")
            for user_id in users[:50]:  # warm-up: JIT caches, onnxruntime arenas
                client.recommend(user_id, k=args.k, deadline_ms=args.deadline_ms)
            rng = np.random.default_rng(0)
            stage: dict[str, list[float]] = {}
            total, degraded = [], 0
            for user_id in rng.choice(users, args.requests):
                t = time.perf_counter()
                rec = client.recommend(str(user_id), k=args.k, deadline_ms=args.deadline_ms)
                total.append((time.perf_counter() - t) * 1000.0)
                degraded += bool(rec.degraded)
                for name, ms in rec.stage_ms.items():
                    stage.setdefault(name, []).append(ms)
    print(f"latency over {args.requests} sequential requests (k={args.k}, ms):")
    for name, values in stage.items():
        print(f"  {name:<13} {percentiles(values)}")
    print(f"  {'client e2e':<13} {percentiles(total)}")
    print(f"  degraded replies: {degraded}/{args.requests}")
    print("cluster stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
