"""Open-loop load against the gateway: requests leave on a fixed schedule, whether or not earlier ones
returned, and latency is measured from the *scheduled* send time. A slow server therefore shows up
as queueing in the tail instead of silently lowering the offered rate (no coordinated omission).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import grpc
import numpy as np

from gateway.client import parse_response
from recsys.v2 import recommend_service_pb2 as recommend_pb2
from recsys.v2 import recommend_service_pb2_grpc as recommend_grpc


def percentiles(values) -> dict:
    """p50 / p90 / p99 / p99.9 / max / mean of latencies (any unit, JSON-ready); {} for no values."""
    if len(values) == 0:
        return {}
    a = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "p99.9": float(np.percentile(a, 99.9)),
            "max": float(a.max()), "mean": float(a.mean())}


@dataclass
class RateResult:
    """Everything measured at one offered rate."""

    rate: float
    duration_s: float
    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    degraded: dict[str, int] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list)          # end to end, from scheduled start
    stage_ms: dict[str, list[float]] = field(default_factory=dict)  # as reported by the gateway
    late_sends: int = 0                                             # sends > 1 ms behind schedule
    items: list[int] = field(default_factory=list)                  # items per reply (fill rate under filters)

    def summary(self) -> dict:
        """Counts and percentiles, JSON-ready."""
        return {"offered_rate": self.rate, "duration_s": self.duration_s, "sent": self.sent, "ok": self.ok,
                "errors": self.errors, "error_count": sum(self.errors.values()), "degraded": self.degraded,
                "achieved_rate": self.ok / self.duration_s if self.duration_s else 0.0,
                "late_sends": self.late_sends, "latency_ms": percentiles(self.latency_ms),
                "mean_items": float(np.mean(self.items)) if self.items else 0.0,
                "stage_ms": {name: percentiles(v) for name, v in self.stage_ms.items()}}


def run_rate(addr: str, users: list[str], rate: float, duration_s: float, k: int, deadline_ms: int,
             seed: int = 0, progress=None, filters=()) -> RateResult:
    """Offer ``rate`` requests/s for ``duration_s`` seconds; wait for every reply (or its deadline).
    ``filters`` (``recsys.v2.AttributeFilter``) go on every request."""
    result = RateResult(rate, duration_s)
    lock = threading.Lock()
    rng = np.random.default_rng(seed)
    n = max(1, int(rate * duration_s))
    chosen = rng.choice(users, n)
    timeout = deadline_ms / 1000.0 + 1.0   # the client waits longer than the gateway's own deadline
    pending = threading.Semaphore(0)
    with grpc.insecure_channel(addr) as channel:
        stub = recommend_grpc.RecommendServiceStub(channel)

        def done(future, scheduled: float):
            elapsed = (time.perf_counter() - scheduled) * 1000.0
            with lock:
                try:
                    rec = parse_response(future.result())
                    result.ok += 1
                    result.latency_ms.append(elapsed)
                    result.items.append(len(rec.items))
                    for stage in rec.degraded:
                        result.degraded[stage] = result.degraded.get(stage, 0) + 1
                    for stage, ms in rec.stage_ms.items():
                        result.stage_ms.setdefault(stage, []).append(ms)
                except grpc.RpcError as exc:
                    name = exc.code().name
                    result.errors[name] = result.errors.get(name, 0) + 1
            pending.release()

        start = time.perf_counter() + 0.05
        for i in range(n):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.001:
                result.late_sends += 1
            request = recommend_pb2.RecommendRequest(user_id=str(chosen[i]), k=k, deadline_ms=deadline_ms,
                                                     filters=filters)
            future = stub.Recommend.future(request, timeout=timeout)
            future.add_done_callback(lambda f, s=scheduled: done(f, s))
            result.sent += 1
            if progress is not None:
                progress(i + 1, n)
        for _ in range(n):
            pending.acquire(timeout=timeout + 5)
    return result
