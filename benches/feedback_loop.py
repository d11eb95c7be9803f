"""Benchmark of the feedback loop over a real cluster: ingest under serving load, click-to-visible latency.

    python -m benches.feedback_loop --snapshot snapshots [--rate 100] [--seconds 15] [--rounds 3]
        [--ingest-rate 5000] [--batch 500] [--writers 2] [--replicas 2] [--out F]

* **Ingest under load** (issue 27's target): ``--rounds`` times, the load generator offers ``--rate``
  Recommend/s (open loop, k=20, deadline 50 ms) for ``--seconds`` alone, then again while ``--writers``
  client threads send Feedback batches of ``--batch`` events paced to ``--ingest-rate`` events/s in all (0:
  each writer as fast as the gateway answers). Reports Recommend p50/p99 and shed (RESOURCE_EXHAUSTED) in
  both windows and their p99 ratio, the events/s stored, Feedback call latency, and the gateway's CPU-ms
  per 1,000 events from ``/proc`` (the gateway process and any child of it; CPU of the window with ingest
  less the window without, per event). The requests are serialized before each window, so the bench's own
  client costs little CPU on a shared machine.
* **Repeated exposures**: ``--exposure-users`` users x ``--exposure-rounds`` requests (k=10), each list's
  items fed back as impressions; counts items shown to a user again within the window (the target is 0).
* **Click to visible**: a user's top item is clicked through Feedback, then Recommend is called until the
  item is gone from the list (clicked items count as seen); the time from sending the click to the first list
  without it, over ``--trials`` trials spread round-robin over the recall and rank replicas; measured idle
  and again while Feedback ingests ``--ingest-rate`` events/s (the click then shares a write with them).
  Each is split into the click's Feedback call (``feedback_ack_ms``: until its write is durable) and the
  last Recommend call (``last_recommend_ms``: the list without the item), with how many trials needed more
  than one Recommend after the acknowledgement (``recommend_calls_over_1``: 0 when every replica reads the
  committed write at once). ``--rounds 0`` skips the ingest-under-load windows (click to visible only).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import grpc
import lmdb
import numpy as np

from common.snapshot import Snapshot
from feedback.events import Event, EventType
from gateway.client import RecommendClient
from cluster.launcher import Cluster, ClusterConfig
from recsys.v2 import recommend_service_pb2 as recommend_pb2
from benches.cpu import cpu_seconds
from benches.report import save_json
from benches.loadgen import percentiles, run_rate


def feedback_requests(items: list[str], users: list[str], n_events: int, batch: int, seed: int,
                      tag: str) -> list[bytes]:
    """Serialized Feedback requests of ``batch`` events (80% impressions, 20% clicks, unique event ids), built
    before the window: the bench's own client then costs one send per call, not a message per event."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(0, n_events, batch):
        u, i = rng.integers(0, len(users), batch), rng.integers(0, len(items), batch)
        kinds = np.where(rng.random(batch) < 0.8, EventType.IMPRESSION, EventType.CLICK)
        out.append(recommend_pb2.FeedbackRequest(events=[
            recommend_pb2.FeedbackEvent(user_id=f"bench-{users[a]}", item_id=items[c], type=int(k),
                                        event_id=f"{tag}-{b + j}")
            for j, (a, c, k) in enumerate(zip(u.tolist(), i.tolist(), kinds.tolist()))]).SerializeToString())
    return out


def family_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its live children (a writer process of the gateway's counts as its own)."""
    total = cpu_seconds(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            total += cpu_seconds(int(stat.parent.name))
    return total


class FeedbackSenders:
    """``writers`` threads sending ``requests`` in turn, paced to ``ingest_rate`` events/s in all (0: each
    writer's next call as soon as its last returned), until ``stop``; counts what was stored and each call's
    latency."""

    def __init__(self, addr: str, requests: list[bytes], writers: int, ingest_rate: float, batch: int):
        self.stored, self.calls_ms, self.errors = 0, [], {}
        self._lock, self._stop = threading.Lock(), threading.Event()
        period = batch * writers / ingest_rate if ingest_rate else 0.0   # seconds between one writer's calls
        self._threads = [threading.Thread(target=self._write, args=(addr, requests[w::writers], period,
                                                                    w * period / writers), daemon=True)
                         for w in range(writers)]
        for t in self._threads:
            t.start()

    def _write(self, addr: str, requests: list[bytes], period: float, offset: float) -> None:
        with grpc.insecure_channel(addr) as channel:
            call = channel.unary_unary("/recsys.v2.RecommendService/Feedback",   # bytes in: sent as built
                                       response_deserializer=recommend_pb2.FeedbackResponse.FromString)
            next_at = time.perf_counter() + offset
            for request in requests:
                if self._stop.wait(max(next_at - time.perf_counter(), 0.0) if period else 0.0):
                    return
                next_at += period
                t0 = time.perf_counter()
                try:
                    accepted = call(request, timeout=10.0).accepted
                except grpc.RpcError as exc:
                    with self._lock:
                        self.errors[exc.code().name] = self.errors.get(exc.code().name, 0) + 1
                    continue
                with self._lock:
                    self.calls_ms.append((time.perf_counter() - t0) * 1000.0)
                    self.stored += accepted

    def stop(self) -> int:
        """Stop sending (a call in flight completes); the events stored."""
        self._stop.set()
        for t in self._threads:
            t.join()
        return self.stored


def recommend_summary(load: dict) -> dict:
    return {"ok": load["ok"], "shed": load["errors"].get("RESOURCE_EXHAUSTED", 0), "errors": load["errors"],
            "degraded": load["degraded_replies"],
            "latency_ms": {k: round(v, 2) for k, v in load["latency_ms"].items()}}


def write_transactions(store_path: str) -> int:
    """LMDB's last write transaction id of the store (read from its meta pages, no lock taken)."""
    env = lmdb.open(store_path, readonly=True, lock=False, max_dbs=8)
    try:
        return env.info()["last_txnid"]
    finally:
        env.close()


def ingest_under_load(addr: str, gateway_pid: int, store_path: str, items: list[str], users: list[str],
                      rate: float, seconds: float, batch: int, writers: int, ingest_rate: float, rounds: int) -> dict:
    """Recommend at ``rate``/s (open loop, k=20, deadline 50 ms) for ``seconds``, alone and then beside
    Feedback at ``ingest_rate`` events/s from ``writers`` clients in batches of ``batch`` (0: as fast as
    taken), ``rounds`` times alternating; the gateway's CPU (with any child process) in each window gives
    its CPU-ms per 1,000 events stored: (CPU with ingest - CPU without, per second) / events per second.
    The store's write transactions in the window give the Feedback calls per transaction (group commit)."""
    per_round, alone_ms, beside_ms = [], [], []
    budget = int((ingest_rate or 20_000) * seconds * 1.5)
    for r in range(rounds):
        base_cpu = family_cpu_s(gateway_pid)
        t0 = time.perf_counter()
        alone = run_rate(addr, users, rate, seconds, k=20, deadline_ms=50, seed=2 * r)
        base_s = time.perf_counter() - t0
        base_cpu = family_cpu_s(gateway_pid) - base_cpu
        requests = feedback_requests(items, users, budget, batch, seed=r, tag=f"r{r}")
        ingest_cpu, txn0 = family_cpu_s(gateway_pid), write_transactions(store_path)
        t0 = time.perf_counter()
        sent = FeedbackSenders(addr, requests, writers, ingest_rate, batch)
        beside = run_rate(addr, users, rate, seconds, k=20, deadline_ms=50, seed=2 * r + 1)
        events = sent.stop()
        ingest_s = time.perf_counter() - t0
        ingest_cpu = family_cpu_s(gateway_pid) - ingest_cpu
        txns = write_transactions(store_path) - txn0
        alone_ms += [s.ms for s in alone.samples if s.status == "OK"]
        beside_ms += [s.ms for s in beside.samples if s.status == "OK"]
        per_round.append({
            "without_ingest": {**recommend_summary(alone.summary()), "gateway_cpu_ms_per_s": round(base_cpu / base_s * 1000, 1)},
            "with_ingest": {**recommend_summary(beside.summary()),
                            "gateway_cpu_ms_per_s": round(ingest_cpu / ingest_s * 1000, 1)},
            "events_stored": events, "events_per_s": round(events / ingest_s),
            "feedback_errors": sent.errors, "write_transactions": txns,
            "calls_per_transaction": round(len(sent.calls_ms) / max(txns, 1), 2),
            "feedback_call_ms": {k: round(v, 2) for k, v in percentiles(sent.calls_ms).items()},
            # CPU seconds per second more than without ingest, per event stored: x 10^6 for ms per 1,000
            "gateway_cpu_ms_per_1000_events": round((ingest_cpu / ingest_s - base_cpu / base_s)
                                                    / max(events / ingest_s, 1e-9) * 1e6, 1)})
    p99_alone = percentiles(alone_ms).get("p99", float("nan"))
    p99_beside = percentiles(beside_ms).get("p99", float("nan"))
    return {"rounds": per_round, "batch": batch, "writers": writers, "ingest_rate_target": ingest_rate or "max",
            "recommend_rate": rate, "window_s": seconds,
            "pooled": {"recommend_p50_ms_without": round(percentiles(alone_ms).get("p50", float("nan")), 2),
                       "recommend_p99_ms_without": round(p99_alone, 2),
                       "recommend_p50_ms_with": round(percentiles(beside_ms).get("p50", float("nan")), 2),
                       "recommend_p99_ms_with": round(p99_beside, 2),
                       "p99_ratio": round(p99_beside / p99_alone, 2),
                       "shed_without": sum(r["without_ingest"]["shed"] for r in per_round),
                       "shed_with": sum(r["with_ingest"]["shed"] for r in per_round),
                       "events_per_s": round(float(np.mean([r["events_per_s"] for r in per_round]))),
                       "gateway_cpu_ms_per_1000_events": round(float(np.median(
                           [r["gateway_cpu_ms_per_1000_events"] for r in per_round])), 2)}}


def click_to_visible(addr: str, users: list[str], trials: int, timeout_s: float = 5.0, tag: str = "idle") -> dict:
    """Click a user's top item, then ask again until it is gone: seconds from the click's send."""
    latencies, acks, lists, asks, misses = [], [], [], [], 0
    with RecommendClient(addr, timeout_s=10.0) as client:
        for t in range(trials):
            user = f"visible-{tag}-{users[t % len(users)]}-{t}"
            top = client.recommend(user, k=10, deadline_ms=1000).items[0].item_id
            start = time.perf_counter()
            client.feedback([Event(user, top, EventType.CLICK)])
            acked = time.perf_counter()
            n = 0
            while True:
                asked = time.perf_counter()
                items = [it.item_id for it in client.recommend(user, k=10, deadline_ms=1000).items]
                n += 1
                if top not in items:
                    done = time.perf_counter()
                    latencies.append((done - start) * 1000.0)
                    acks.append((acked - start) * 1000.0)
                    lists.append((done - asked) * 1000.0)
                    asks.append(n)
                    break
                if time.perf_counter() - start > timeout_s:
                    misses += 1
                    break
    # where the time goes: the click's Feedback call (until its events are durable), then the Recommend
    # calls until the item is gone (1 when the first list after the acknowledgement already drops it)
    return {"trials": trials, "not_visible_within_s": misses, "timeout_s": timeout_s,
            "latency_ms": {k: round(v, 2) for k, v in percentiles(latencies).items()},
            "feedback_ack_ms": {k: round(v, 2) for k, v in percentiles(acks).items()},
            "last_recommend_ms": {k: round(v, 2) for k, v in percentiles(lists).items()},
            "recommend_calls_max": max(asks, default=0),
            "recommend_calls_over_1": sum(a > 1 for a in asks)}


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
    parser.add_argument("--seconds", type=float, default=15.0, help="each window, with and without ingest")
    parser.add_argument("--rounds", type=int, default=3, help="windows without / with ingest, alternating")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--ingest-rate", type=float, default=5000.0, help="events/s offered (0: as fast as taken)")
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
            senders = FeedbackSenders(addr, feedback_requests(items, users, int(args.ingest_rate * 60) or 10**6,
                                                              args.batch, seed=99, tag="visible"),
                                      args.writers, args.ingest_rate, args.batch)
            visible_beside = click_to_visible(addr, users, args.trials, tag="busy")
            senders.stop()
            exposures = (repeated_exposures(addr, users[:args.exposure_users],
                                            args.exposure_rounds) if args.exposure_rounds else None)
            ingest = None if args.rounds <= 0 else ingest_under_load(addr, cluster.procs["gateway"].pid, config.feedback_path, items, users,
                                       args.rate, args.seconds, args.batch, args.writers, args.ingest_rate,
                                       args.rounds)
            disk = (Path(tmp) / "feedback" / "data.mdb").stat().st_blocks * 512
    report = {"click_to_visible": visible, "click_to_visible_beside_ingest": visible_beside,
              "repeated_exposures": exposures, "ingest_under_load": ingest,
              "store_disk_bytes": disk, "replicas": {"recall": args.replicas, "rank": args.replicas}}
    print(json.dumps(report, indent=1))
    save_json(report, args.out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
