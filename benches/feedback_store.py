"""Benchmark of the feedback store alone: ingest rate, disk use per 10^6 events, exposure false positives.

    python -m benches.feedback_store --events 1000000 --batch 500 --users 10000 --items 100000

Prints one JSON object. Ingest is measured through ``FeedbackStore.append`` (one fsynced transaction per
batch, as a Feedback call does); the false-positive rate is measured on users filled to the configured
capacity, probing items they were never shown.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from feedback.config import FeedbackConfig
from feedback.events import Event, EventType
from feedback.store import FeedbackStore
from kernels.string_hash import hash_strings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dir", default="", help="where to write the store (default: a temporary directory)")
    args = parser.parse_args(argv)
    root = Path(args.dir or tempfile.mkdtemp(prefix="feedback-bench-"))
    config = FeedbackConfig(path=str(root / "feedback"), max_log_events=max(args.events, 1))
    store = FeedbackStore.open(config)
    rng = np.random.default_rng(0)
    users = rng.integers(0, args.users, args.events)
    items = rng.integers(0, args.items, args.events)
    kinds = np.where(rng.random(args.events) < 0.8, EventType.IMPRESSION, EventType.CLICK)
    t0 = time.perf_counter()
    for b in range(0, args.events, args.batch):
        store.append([Event(f"u{users[i]}", f"i{items[i]}", int(kinds[i]), event_id=f"e{i}")
                      for i in range(b, min(b + args.batch, args.events))])
    seconds = time.perf_counter() - t0
    # false positives at capacity: fill fresh users with exactly `capacity` impressions, probe unseen items
    cap = config.exposure_capacity
    for u in range(20):
        store.append([Event(f"fp{u}", f"shown{u}_{j}", EventType.IMPRESSION) for j in range(cap)])
    probes = hash_strings([f"never{j}" for j in range(50_000)])
    now = time.time()
    fp = float(np.mean([store.user_state(f"fp{u}").exposed(probes, now, config.exposure_window_s).mean()
                        for u in range(20)]))
    report = {"events": args.events, "batch": args.batch, "seconds": round(seconds, 2),
              "events_per_s": round(args.events / seconds), "disk_bytes": store.disk_bytes(),
              "disk_mb_per_1e6_events": round(store.disk_bytes() / args.events * 1e6 / 2**20, 1),
              "users": args.users, "exposure_capacity": cap, "exposure_fp_rate_target": config.exposure_fp_rate,
              "exposure_fp_rate_measured": round(fp, 5), "bytes_per_user_filter": 2 * store.m_bytes}
    print(json.dumps(report))
    store.close()
    if not args.dir:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
