"""Benchmark of the feedback loop over a real cluster: ingest under serving load, click-to-visible latency.

    python -m benches.feedback_loop --snapshot snapshots [--rate 100] [--seconds 20] [--replicas 2] [--out F]

* **Ingest under load**: the load generator offers ``--rate`` Recommend/s (open loop, k=20, deadline 50 ms)
  while ``--writers`` client threads send Feedback batches of ``--batch`` events as fast as the gateway takes
  them; reports events/s stored and Recommend's latency, errors and degraded replies in that window.
* **Repeated exposures**: ``--exposure-users`` users x ``--exposure-rounds`` requests (k=10), each list's
  items fed back as impressions; counts items shown to a user again within the window (the target is 0).
  ``--ingest-rate`` paces the writers to a fixed total instead.
* **Click to visible**: a user's top item is clicked through Feedback, then Recommend is called until the
  item is gone from the list (clicked items count as seen); the time from sending the click to the first list
  without it, over ``--trials`` trials spread round-robin over the recall and rank replicas.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from common.snapshot import Snapshot
from feedback.events import Event, EventType
from gateway.client import RecommendClient
from cluster.launcher import Cluster, ClusterConfig
from benches.report import save_json
from benches.loadgen import percentiles, run_rate


def ingest_under_load(addr: str, items: list[str], users: list[str], rate: float, seconds: float, batch: int,
                      writers: int, ingest_rate: float = 0.0) -> dict:
    """Feedback batches from ``writers`` threads while ``rate`` Recommend/s are offered; ``ingest_rate``
    events/s in all (0: as fast as the gateway takes them)."""
    stop = threading.Event()
    stored = [0] * writers
    calls_ms: list[float] = []
    lock = threading.Lock()

    def write(w: int) -> None:
        rng = np.random.default_rng(w)
        period = batch * writers / ingest_rate if ingest_rate else 0.0  # seconds between one writer's batches
        next_at = time.perf_counter()
        with RecommendClient(addr, timeout_s=10.0) as client:
            n = 0
            while not stop.is_set():
                if period:
                    next_at += period
                    if stop.wait(max(next_at - time.perf_counter(), 0.0)):
                        break
                u, i = rng.integers(0, len(users), batch), rng.integers(0, len(items), batch)
                kinds = np.where(rng.random(batch) < 0.8, EventType.IMPRESSION, EventType.CLICK)
                events = [Event(f"bench-{users[a]}", items[b], int(c), event_id=f"w{w}-{n + j}")
                          for j, (a, b, c) in enumerate(zip(u, i, kinds))]
                t0 = time.perf_counter()
                stored[w] += client.feedback(events).accepted
                with lock:
                    calls_ms.append((time.perf_counter() - t0) * 1000.0)
                n += batch

    threads = [threading.Thread(target=write, args=(w,), daemon=True) for w in range(writers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    load = run_rate(addr, users, rate, seconds, k=20, deadline_ms=50).summary()
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return {"events_stored": sum(stored), "seconds": round(elapsed, 1), "ingest_rate_target": ingest_rate or "max",
            "events_per_s": round(sum(stored) / elapsed), "batch": batch, "writers": writers,
            "feedback_call_ms": {k: round(v, 2) for k, v in percentiles(calls_ms).items()},
            "recommend": {"offered_rate": rate, "ok": load["ok"], "errors": load["errors"],
                          "degraded": load["degraded"],
                          "latency_ms": {k: round(v, 2) for k, v in load["latency_ms"].items()}}}


def click_to_visible(addr: str, users: list[str], trials: int, timeout_s: float = 5.0) -> dict:
    """Click a user's top item, then ask again until it is gone: seconds from the click's send."""
    latencies, misses = [], 0
    with RecommendClient(addr, timeout_s=10.0) as client:
        for t in range(trials):
            user = f"visible-{users[t % len(users)]}-{t}"
            top = client.recommend(user, k=10, deadline_ms=1000).items[0].item_id
            start = time.perf_counter()
            client.feedback([Event(user, top, EventType.CLICK)])
            while True:
                items = [it.item_id for it in client.recommend(user, k=10, deadline_ms=1000).items]
                if top not in items:
                    latencies.append((time.perf_counter() - start) * 1000.0)
                    break
                if time.perf_counter() - start > timeout_s:
                    misses += 1
                    break
    return {"trials": trials, "not_visible_within_s": misses, "timeout_s": timeout_s,
            "latency_ms": {k: round(v, 2) for k, v in percentiles(latencies).items()}}


def repeated_exposures(addr: str, users: list[str], rounds: int, k: int = 10) -> dict:
    """Requests with impressions fed back; an item shown twice to one user is a repeat."""
    seen: dict[str, set[str]] = {}
    repeats = short = 0
    t0 = time.perf_counter()
    with RecommendClient(addr, timeout_s=10.0) as client:
        for _ in range(rounds):
            for user in users:
                rec = client.recommend(user, k=k, deadline_ms=1000)
                ids = [it.item_id for it in rec.items]
                shown = seen.setdefault(user, set())
                repeats += len(shown & set(ids))
                short += len(ids) < k
                shown |= set(ids)
                client.feedback([Event(user, x, EventType.IMPRESSION, request_id=rec.request_id) for x in ids])
    return {"requests": rounds * len(users), "users": len(users), "k": k, "repeated_items": repeats,
            "short_lists": short, "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", default="snapshots")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--ingest-rate", type=float, default=0.0, help="events/s offered (0: as fast as taken)")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--replicas", type=int, default=2, help="recall and rank replicas (readers of the store)")
    parser.add_argument("--exposure-users", type=int, default=500)
    parser.add_argument("--exposure-rounds", type=int, default=20, help="0 skips the repeated-exposure part")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    snapshot = Snapshot.open(args.snapshot, verify=False)
    items = snapshot.item_ids.astype(str).tolist()
    users = snapshot.features.array("user_ids").astype(str).tolist()
    snapshot.close()
    with tempfile.TemporaryDirectory(prefix="feedback-bench-") as tmp:
        config = ClusterConfig(snapshot=args.snapshot, gateway_port=0, run_dir=tmp,
                               feedback_path=str(Path(tmp) / "feedback"),
                               replicas={"recall": args.replicas, "rank": args.replicas})
        with Cluster(config) as cluster:
            addr = cluster.gateway_addr
            run_rate(addr, users, 50, 2.0, k=20, deadline_ms=1000)  # warm-up: JIT, connections
            visible = click_to_visible(addr, users, args.trials)
            exposures = (repeated_exposures(addr, users[:args.exposure_users],
                                            args.exposure_rounds) if args.exposure_rounds else None)
            ingest = ingest_under_load(addr, items, users, args.rate, args.seconds, args.batch, args.writers,
                                       args.ingest_rate)
            disk = (Path(tmp) / "feedback" / "data.mdb").stat().st_blocks * 512
    report = {"click_to_visible": visible, "repeated_exposures": exposures, "ingest_under_load": ingest,
              "store_disk_bytes": disk, "replicas": {"recall": args.replicas, "rank": args.replicas}}
    print(json.dumps(report, indent=1))
    save_json(report, args.out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
