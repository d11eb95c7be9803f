"""Overload and recovery: offer 2× and 3× the saturation rate, then drop back to 100 req/s.

Measured per overload factor: the overload phase's counts and goodput (``benches.loadgen``), how many
replies arrived after the deadline + 5 ms, ``grpc.health.v1.Health/Check`` latency on the gateway while
the overload runs (a separate channel, one check every ``health_every_s``), and how long after the
overload stops latency is back at the 100 req/s level: the start of the first ``bucket_s`` window of
the recovery phase from which every later window's p99 is within ``max(1.5 × p99, p99 + 5 ms)`` of the
sweep's 100 req/s p99.
"""
from __future__ import annotations

import threading
import time

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benches.cpu import CpuMeter
from benches.loadgen import percentiles, run_schedule
from gateway.stage_target import stage_target
from recsys.v2 import recommend_service_pb2 as recommend_pb2
from recsys.v2 import recommend_service_pb2_grpc as recommend_grpc


def _health_probe(addr: str, stop: threading.Event, every_s: float, out: list[float], errors: list[str]) -> None:
    request = health_pb2.HealthCheckRequest(service="")
    target, balancing = stage_target(addr)
    with grpc.insecure_channel(target, balancing) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                stub.Check(request, timeout=1.0)
                out.append((time.perf_counter() - t0) * 1000.0)
            except grpc.RpcError as exc:
                errors.append(exc.code().name)
            stop.wait(every_s)


def recovery_s(samples, base_p99_ms: float, bucket_s: float, length_s: float) -> float | None:
    """Seconds into the recovery phase after which every ``bucket_s`` window's p99 (OK replies) is within
    ``max(1.5 × base, base + 5 ms)``; None when it never is."""
    bound = max(1.5 * base_p99_ms, base_p99_ms + 5.0)
    edges = np.arange(0.0, length_s, bucket_s)
    ok_at = np.array([s.at_s for s in samples if s.status == "OK"])
    ok_ms = np.array([s.ms for s in samples if s.status == "OK"])
    t0 = min((s.at_s for s in samples), default=0.0)
    within = []
    for edge in edges:
        sel = (ok_at >= t0 + edge) & (ok_at < t0 + edge + bucket_s)
        bad = sum(1 for s in samples if s.status != "OK" and t0 + edge <= s.at_s < t0 + edge + bucket_s)
        within.append(bool(sel.any()) and bad == 0 and float(np.percentile(ok_ms[sel], 99)) <= bound)
    for i in range(len(within)):
        if all(within[i:]):
            return float(edges[i])
    return None


def overload_and_recovery(addr: str, users: list[str], saturation_rate: float, base_p99_ms: float, k: int,
                          deadline_ms: int, pids: dict[str, int], factors=(2.0, 3.0), overload_s: float = 5.0,
                          recovery_rate: float = 100.0, recovery_len_s: float = 4.0, bucket_s: float = 0.25,
                          health_every_s: float = 0.01) -> list[dict]:
    """One record per overload factor (see the module docstring)."""
    out = []
    for factor in factors:
        rate = factor * saturation_rate
        health_ms: list[float] = []
        health_errors: list[str] = []
        stop = threading.Event()
        probe = threading.Thread(target=_health_probe, args=(addr, stop, health_every_s, health_ms, health_errors),
                                 daemon=True)
        meter = CpuMeter(pids)
        meter.start()
        probe.start()
        timer = threading.Timer(overload_s, stop.set)  # the probe covers the overload phase only
        timer.start()
        over, back = run_schedule(addr, users, [(rate, overload_s), (recovery_rate, recovery_len_s)], k,
                                  deadline_ms, seed=int(factor * 10))
        stop.set()
        timer.cancel()
        probe.join(timeout=5)
        over.cpu_ms = meter.stop()["total"]
        summary = over.summary()
        summary.pop("cpu_ms_per_ok_request", None)  # the recovery phase's CPU is in the total too
        summary["cpu_ms_total"] = over.cpu_ms
        out.append({"factor": factor, "overload": summary,
                    "health_check_ms": percentiles(health_ms), "health_check_errors": len(health_errors),
                    "recovery_phase": back.summary(),
                    "recovered_after_s": recovery_s(back.samples, base_p99_ms, bucket_s, recovery_len_s),
                    "recovery_bound_ms": max(1.5 * base_p99_ms, base_p99_ms + 5.0)})
    return out


def burst(addr: str, users: list[str], n: int, k: int, deadline_ms: int) -> dict:
    """``n`` Recommend calls sent at once (no pacing), each with the deadline + 1 s as its gRPC timeout: how
    each ended, by status (with the degraded ones apart), and the latency of the OK ones. RESOURCE_EXHAUSTED:
    refused by admission control; CANCELLED: dropped by gRPC core before any Python saw it, because more calls
    were waiting for the busy gateway than its backlog limit (``server.max_pending_calls``, gRPC's random
    early detection); DEADLINE_EXCEEDED: waited in that backlog past the caller's timeout."""
    rng = np.random.default_rng(7)
    target, balancing = stage_target(addr)  # several gateways: round_robin over them
    with grpc.insecure_channel(target, balancing) as channel:
        stub = recommend_grpc.RecommendServiceStub(channel)
        t0 = time.perf_counter()
        futures = [stub.Recommend.future(recommend_pb2.RecommendRequest(user_id=str(u), k=k, deadline_ms=deadline_ms),
                                         timeout=deadline_ms / 1000.0 + 1.0) for u in rng.choice(users, n)]
        codes: dict[str, int] = {}
        ok_ms: list[float] = []
        for future in futures:
            try:
                reply = future.result()
                code = "OK_DEGRADED" if reply.degraded_stages else "OK"
                ok_ms.append((time.perf_counter() - t0) * 1000.0)
            except grpc.RpcError as exc:
                code = exc.code().name
            codes[code] = codes.get(code, 0) + 1
    return {"calls": n, "by_status": codes, "ok_completed_by_ms": percentiles(ok_ms)}
