"""A flood of invented user ids against the feedback store's user cap: ``python -m benches.feedback_flood``.

    python -m benches.feedback_flood [--users 1000000] [--max-users 100000] [--batch 1000] [--dir DIR]

Writes ``--users`` new user ids as IMPRESSION events in Feedback-sized batches (``--known`` users click in every
batch), straight through ``feedback.store.FeedbackStore.append`` as the gateway's writer does, into a store
whose ``max_users`` is ``--max-users`` and whose map is just large enough for its validation. Reports
what issue 31 asks of it: every append succeeds, the users kept against the cap, evictions counted by the
metric, peak map use against the map, append latency, and whether the known users kept their state.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np

from common.metrics import REGISTRY
from feedback.config import FeedbackConfig
from feedback.events import Event, EventType
from feedback.store import FeedbackStore


def sized_config(path: str, max_users: int, max_log_events: int) -> FeedbackConfig:
    """A config for ``max_users``: the map starts at 64 MB and grows by a quarter until validation accepts it."""
    config = FeedbackConfig(path=path, max_users=max_users, max_log_events=max_log_events, map_size_mb=64)
    while True:
        try:
            config.validate()
            return config
        except ValueError:
            config.map_size_mb = int(config.map_size_mb * 1.25) + 1


def run(path: str, users: int, max_users: int, batch: int, known: int = 50) -> dict:
    config = sized_config(path, max_users, max_log_events=users)
    store = FeedbackStore.open(config)
    regulars = [f"known{j}" for j in range(known)]
    before = REGISTRY.get_sample_value("recsys_feedback_evicted_users_total", {"reason": "max_users"}) or 0.0
    latency, peak, b, t0, start = [], 0, 0, 1_700_000_000.0, time.perf_counter()
    for first in range(0, users, batch - known):
        events = [Event(u, f"k{b % 97}", EventType.CLICK, request_id=f"r{b}", event_id=f"e{b}-{u}") for u in regulars]
        events += [Event(f"flood-{first + j}", f"i{(first + j) % 50_000}", EventType.IMPRESSION,
                         request_id=f"r{b}", event_id=f"e{b}.{j}") for j in range(min(batch - known, users - first))]
        s = time.perf_counter()
        store.append(events, now=t0 + b * 0.01)   # raises on failure: every append must succeed
        latency.append((time.perf_counter() - s) * 1000.0)
        info, stat = store.env.info(), store.env.stat()
        peak = max(peak, (info["last_pgno"] + 1) * stat["psize"])
        b += 1
    evicted = (REGISTRY.get_sample_value("recsys_feedback_evicted_users_total", {"reason": "max_users"}) or 0.0) - before
    lat = np.asarray(latency)
    return {"batches": b, "invented_users": users, "seconds": round(time.perf_counter() - start, 1),
            "users_kept": store.user_count(), "max_users": store.max_users, "evicted": int(evicted),
            "peak_map_mb": round(peak / 2**20, 1), "map_size_mb": config.map_size_mb,
            "append_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                          "max": float(lat.max())},
            "known_users_kept": sum(store.user_state(u) is not None for u in regulars), "known_users": known,
            "first_flood_user_evicted": store.user_state("flood-0") is None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benches.feedback_flood", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--max-users", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--dir", help="store directory (default: a fresh temporary one)")
    args = parser.parse_args(argv)
    r = run(args.dir or tempfile.mkdtemp(prefix="feedback-flood-"), args.users, args.max_users, args.batch)
    print(f"{r['batches']} batches of {args.batch}, {r['invented_users']} invented users, {r['seconds']} s; "
          f"users kept {r['users_kept']} (cap {r['max_users']}), evicted {r['evicted']}; peak map use "
          f"{r['peak_map_mb']} of {r['map_size_mb']} MB; append ms p50 {r['append_ms']['p50']:.1f} "
          f"p99 {r['append_ms']['p99']:.1f} max {r['append_ms']['max']:.1f}; known users kept "
          f"{r['known_users_kept']} of {r['known_users']}; first flood user evicted: {r['first_flood_user_evicted']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
