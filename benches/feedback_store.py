"""Benchmark of the feedback store alone: ingest rate, disk use per 10^6 events, exposure false positives.

    python -m benches.feedback_store --events 1000000 --batch 500 --users 10000 --items 100000 [--callers 8]
    python -m benches.feedback_store --loop-lag writer|executor [--rate 5000] [--seconds 15] [--batch 500]

Prints one JSON object. Ingest is measured through ``FeedbackStore.append`` (one fsynced transaction per
batch of ``Event`` objects); the false-positive rate is measured on users filled to the configured
capacity, probing items they were never shown. With ``--callers N`` the same events also go through the
gateway's write path (``feedback.writer``): serialized Feedback requests of ``--batch`` events from N
threads at once, group-committed; reported with the CPU-ms per 1,000 events of this process and the calls
per transaction.

``--loop-lag`` measures what ingest costs an asyncio event loop like the gateway's, without the rest of
the cluster (whose latency a shared machine's neighbours blur): a probe task sleeps 1 ms over and over and
records how late it wakes, for ``--seconds`` alone and then while Feedback requests of ``--batch`` events
arrive at ``--rate`` events/s (open loop, parsed on the loop as gRPC does). ``writer`` is the gateway's
handler (the request's bytes to ``feedback.writer``); ``executor`` is the handler it replaced (an ``Event``
per event built on the loop, ``feedback.ingest.ingest`` on a one-thread executor), kept for the A/B: run
on the commit before the writer, it is the former gateway exactly.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from benches.loadgen import percentiles
from common.log import Logger
from feedback.config import FeedbackConfig
from feedback.events import Event, EventType
from feedback.store import FeedbackStore
from kernels.string_hash import hash_strings
from recsys.v2 import recommend_service_pb2 as recommend_pb2


def serialized_requests(users, items, kinds, batch: int) -> list[bytes]:
    """The events as serialized Feedback requests of ``batch`` events (user ``u<n>``, item ``i<n>``)."""
    return [recommend_pb2.FeedbackRequest(events=[
        recommend_pb2.FeedbackEvent(user_id=f"u{users[i]}", item_id=f"i{items[i]}", type=int(kinds[i]),
                                    event_id=f"e{i}") for i in range(b, min(b + batch, len(users)))])
        .SerializeToString() for b in range(0, len(users), batch)]


def through_writer(path: Path, users, items, kinds, batch: int, callers: int) -> dict:
    """The events as serialized requests of ``batch`` through a ``FeedbackWriter`` from ``callers`` threads."""
    from feedback.writer import FeedbackWriter

    store = FeedbackStore.open(FeedbackConfig(path=str(path), max_log_events=max(len(users), 1)))
    requests = serialized_requests(users, items, kinds, batch)
    snapshot = SimpleNamespace(version="bench", item_ids=np.array([f"i{j}" for j in range(int(items.max()) + 1)]))
    writer = FeedbackWriter(store, Logger("bench", stream=io.StringIO()))
    txn0, cpu0, t0 = store.env.info()["last_txnid"], time.process_time(), time.perf_counter()

    def call(c: int) -> None:
        for r in range(c, len(requests), callers):
            writer.submit(requests[r], batch, snapshot, time.time()).result()

    threads = [threading.Thread(target=call, args=(c,)) for c in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    txns = store.env.info()["last_txnid"] - txn0
    writer.close()
    stored = store.last_seq()
    store.close()
    return {"callers": callers, "events_stored": stored, "seconds": round(seconds, 2),
            "events_per_s": round(stored / seconds), "cpu_ms_per_1000_events": round(cpu / stored * 1e6, 1),
            "transactions": txns, "calls_per_transaction": round(len(requests) / max(txns, 1), 2)}


def loop_lag(kind: str, path: Path, rate: float, seconds: float, batch: int, n_users: int, n_items: int) -> dict:
    """Event-loop lag without and with Feedback at ``rate`` events/s through ``kind`` (module docstring)."""
    rng = np.random.default_rng(1)
    n = int(rate * seconds * 1.2)
    users, items = rng.integers(0, n_users, n), rng.integers(0, n_items, n)
    kinds = np.where(rng.random(n) < 0.8, EventType.IMPRESSION, EventType.CLICK)
    requests = serialized_requests(users, items, kinds, batch)
    item_ids = np.array([f"i{j}" for j in range(n_items)])
    snapshot = SimpleNamespace(version="bench", item_ids=item_ids)
    index = {item: j for j, item in enumerate(item_ids.tolist())}
    store = FeedbackStore.open(FeedbackConfig(path=str(path)))
    if kind == "writer":
        from feedback.writer import FeedbackWriter

        writer = FeedbackWriter(store, Logger("bench", stream=io.StringIO()))
    else:
        from feedback.ingest import ingest

        pool = ThreadPoolExecutor(1, thread_name_prefix="feedback")

    async def feedback(data: bytes, calls_ms: list, stored: list) -> None:
        t0 = time.perf_counter()
        request = recommend_pb2.FeedbackRequest.FromString(data)   # as grpc.aio deserializes, on the loop
        if kind == "writer":
            result = await writer.write(request.SerializeToString(), len(request.events), snapshot, time.time())
        else:
            events = [Event(e.user_id, e.item_id, int(e.type), e.value, e.timestamp, e.request_id, e.event_id)
                      for e in request.events]
            result = await asyncio.get_running_loop().run_in_executor(pool, ingest, store, events,
                                                                      index.__contains__, time.time())
        calls_ms.append((time.perf_counter() - t0) * 1000.0)
        stored.append(result.accepted)

    async def window(with_ingest: bool) -> dict:
        lags, calls_ms, stored, tasks = [], [], [], []
        cpu0, start = time.process_time(), time.perf_counter()
        end = start + seconds

        async def probe() -> None:
            while time.perf_counter() < end:
                t = time.perf_counter()
                await asyncio.sleep(0.001)
                lags.append((time.perf_counter() - t) * 1000.0 - 1.0)

        async def send() -> None:
            for i, data in enumerate(requests):   # open loop: request i leaves at i * batch / rate
                at = start + i * batch / rate
                if at >= end:
                    break
                await asyncio.sleep(max(at - time.perf_counter(), 0.0))
                tasks.append(asyncio.ensure_future(feedback(data, calls_ms, stored)))

        await asyncio.gather(probe(), send() if with_ingest else asyncio.sleep(0))
        await asyncio.gather(*tasks)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
        return {"loop_lag_ms": {k: round(v, 3) for k, v in percentiles(lags).items()},
                "events_per_s": round(sum(stored) / elapsed), "cpu_ms_per_s": round(cpu / elapsed * 1000.0, 1),
                "feedback_call_ms": {k: round(v, 2) for k, v in percentiles(calls_ms).items()}, "events": sum(stored)}

    async def run() -> dict:
        alone = await window(False)
        beside = await window(True)
        return {"without_ingest": alone, "with_ingest": beside,
                "cpu_ms_per_1000_events": round((beside["cpu_ms_per_s"] - alone["cpu_ms_per_s"])
                                                / max(beside["events_per_s"], 1) * 1000.0, 1)}

    try:
        report = asyncio.run(run())
    finally:
        if kind == "writer":
            writer.close()
        else:
            pool.shutdown(wait=True)
        store.close()
    return {"path": kind, "rate": rate, "batch": batch, "seconds": seconds, "users": n_users, **report}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--callers", type=int, default=0, help="also through the gateway's writer, from N threads")
    parser.add_argument("--loop-lag", choices=("writer", "executor"), default="",
                        help="only the event-loop lag under ingest, through this path")
    parser.add_argument("--rate", type=float, default=5000.0, help="--loop-lag: events/s")
    parser.add_argument("--seconds", type=float, default=15.0, help="--loop-lag: each window")
    parser.add_argument("--dir", default="", help="where to write the store (default: a temporary directory)")
    args = parser.parse_args(argv)
    root = Path(args.dir or tempfile.mkdtemp(prefix="feedback-bench-"))
    try:
        if args.loop_lag:
            print(json.dumps(loop_lag(args.loop_lag, root / "feedback", args.rate, args.seconds, args.batch,
                                      args.users, args.items)))
            return 0
        config = FeedbackConfig(path=str(root / "feedback"), max_log_events=max(args.events, 1))
        store = FeedbackStore.open(config)
        rng = np.random.default_rng(0)
        users = rng.integers(0, args.users, args.events)
        items = rng.integers(0, args.items, args.events)
        kinds = np.where(rng.random(args.events) < 0.8, EventType.IMPRESSION, EventType.CLICK)
        cpu0, t0 = time.process_time(), time.perf_counter()
        for b in range(0, args.events, args.batch):
            store.append([Event(f"u{users[i]}", f"i{items[i]}", int(kinds[i]), event_id=f"e{i}")
                          for i in range(b, min(b + args.batch, args.events))])
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        # false positives at capacity: fill fresh users with exactly `capacity` impressions, probe unseen items
        cap = config.exposure_capacity
        for u in range(20):
            store.append([Event(f"fp{u}", f"shown{u}_{j}", EventType.IMPRESSION) for j in range(cap)])
        probes = hash_strings([f"never{j}" for j in range(50_000)])
        now = time.time()
        fp = float(np.mean([store.user_state(f"fp{u}").exposed(probes, now, config.exposure_window_s).mean()
                            for u in range(20)]))
        report = {"events": args.events, "batch": args.batch, "seconds": round(seconds, 2),
                  "events_per_s": round(args.events / seconds),
                  "cpu_ms_per_1000_events": round(cpu / args.events * 1e6, 1), "disk_bytes": store.disk_bytes(),
                  "disk_mb_per_1e6_events": round(store.disk_bytes() / args.events * 1e6 / 2**20, 1),
                  "users": args.users, "exposure_capacity": cap, "exposure_fp_rate_target": config.exposure_fp_rate,
                  "exposure_fp_rate_measured": round(fp, 5), "bytes_per_user_filter": 2 * store.m_bytes}
        store.close()
        if args.callers:
            report["writer"] = through_writer(root / "writer", users, items, kinds, args.batch, args.callers)
        print(json.dumps(report))
    finally:
        if not args.dir:
            shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
