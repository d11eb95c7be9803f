"""Open-loop load against the gateway: requests leave on a fixed schedule, whether or not earlier ones
returned, and latency is measured from the *scheduled* send time. A slow server therefore shows up
as queueing in the tail instead of silently lowering the offered rate (no coordinated omission).

Every reply is classed once: **good** (not degraded, within the deadline), **degraded** (a stage fell
back), **late** (not degraded, after the deadline), or an **error** (by gRPC status; RESOURCE_EXHAUSTED is
the gateway shedding load). Goodput is good replies per second of offered load.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field

import grpc
import numpy as np

from common import heap
from gateway.stage_target import stage_target
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
class Sample:
    """One request: when it was scheduled (s from the schedule's start), its latency and outcome."""

    at_s: float
    ms: float
    status: str                      # "OK" or the gRPC status name
    degraded: tuple[str, ...] = ()
    items: int = 0                   # items in the reply (fill rate under filters)
    level: int = 0                   # the quality level the reply was served at (gateway.quality)
    shed: str = ""                   # RESOURCE_EXHAUSTED: which admission rule refused it (:func:`shed_reason`)


def shed_reason(details: str) -> str:
    """The admission rule named in a RESOURCE_EXHAUSTED message (``gateway.admission.Admission.admit``):
    "estimate" (requests take too long now), "throttle" (stages running out of time), "in_flight" (the cap),
    else "other"."""
    for key, words in (("estimate", "requests take"), ("throttle", "running out of time"),
                       ("in_flight", "requests in progress")):
        if words in details:
            return key
    return "other"


@dataclass
class RateResult:
    """Everything measured at one offered rate."""

    rate: float
    duration_s: float
    deadline_ms: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    stage_ms: dict[str, list[float]] = field(default_factory=dict)  # as reported by the gateway
    late_sends: int = 0                                             # sends > 1 ms behind schedule
    cpu_ms: float | None = None      # CPU time of the measured server processes over the run (bench_cpu)

    def summary(self) -> dict:
        """Counts, goodput and percentiles, JSON-ready."""
        ok = [s for s in self.samples if s.status == "OK"]
        errors: dict[str, int] = {}
        for s in self.samples:
            if s.status != "OK":
                errors[s.status] = errors.get(s.status, 0) + 1
        degraded: dict[str, int] = {}
        for s in ok:
            for stage in s.degraded:
                degraded[stage] = degraded.get(stage, 0) + 1
        n_degraded = sum(1 for s in ok if s.degraded)
        late = sum(1 for s in ok if not s.degraded and s.ms > self.deadline_ms)
        good = len(ok) - n_degraded - late
        out = {"offered_rate": self.rate, "duration_s": self.duration_s, "sent": len(self.samples),
               "ok": len(ok), "good": good, "degraded_replies": n_degraded, "late": late,
               "late_over_deadline_plus_5ms": sum(1 for s in ok if s.ms > self.deadline_ms + 5.0),
               "errors": errors, "error_count": sum(errors.values()), "degraded": degraded,
               "shed_reasons": dict(collections.Counter(s.shed for s in self.samples if s.shed)),
               "goodput": good / self.duration_s if self.duration_s else 0.0,
               "achieved_rate": len(ok) / self.duration_s if self.duration_s else 0.0,
               "late_sends": self.late_sends, "latency_ms": percentiles([s.ms for s in ok]),
               "mean_items": float(np.mean([s.items for s in ok])) if ok else 0.0,
               "quality_levels": {str(lv): n for lv, n in sorted(collections.Counter(s.level for s in ok).items())},
               "error_latency_ms": percentiles([s.ms for s in self.samples if s.status != "OK"]),
               "stage_ms": {name: percentiles(v) for name, v in self.stage_ms.items()}}
        if self.cpu_ms is not None:
            out["cpu_ms_total"] = self.cpu_ms
            out["cpu_ms_per_ok_request"] = self.cpu_ms / len(ok) if ok else None
        return out


def run_schedule(addr: str, users: list[str], phases: list[tuple[float, float]], k: int, deadline_ms: int,
                 seed: int = 0, progress=None, client_timeout_s: float | None = None,
                 filters=()) -> list[RateResult]:
    """Offer each ``(rate, seconds)`` phase in turn, back to back on one channel; one result per phase.
    ``addr``: one gateway, or several as an address list (``gateway.stage_target``).
    ``filters`` (``recsys.v2.AttributeFilter``) go on every request.

    Waits for every reply (or the client timeout: the deadline + 1 s unless given, so late replies are
    seen as late, not cut off).
    """
    results = [RateResult(rate, duration, deadline_ms) for rate, duration in phases]
    lock = threading.Lock()
    rng = np.random.default_rng(seed)
    timeout = client_timeout_s if client_timeout_s is not None else deadline_ms / 1000.0 + 1.0
    schedule = []
    offset = 0.0
    for p, (rate, duration) in enumerate(phases):
        n = max(1, int(rate * duration))
        schedule += [(p, offset + i / rate) for i in range(n)]
        offset += duration
    chosen = rng.choice(users, len(schedule))
    pending = threading.Semaphore(0)
    heap.freeze()  # the load generator's own full GC passes would read as server latency
    target, balancing = stage_target(addr)  # several gateways (a list): round_robin over them
    with grpc.insecure_channel(target, balancing) as channel:
        stub = recommend_grpc.RecommendServiceStub(channel)

        def done(future, phase: int, at: float, scheduled: float):
            elapsed = (time.perf_counter() - scheduled) * 1000.0
            result = results[phase]
            try:
                reply = future.result()
                sample = Sample(at, elapsed, "OK", tuple(reply.degraded_stages), len(reply.items),
                                reply.quality_level)
                timings = [(t.stage, t.ms) for t in reply.stage_timings]
            except grpc.RpcError as exc:
                code = exc.code()
                reason = shed_reason(exc.details() or "") if code == grpc.StatusCode.RESOURCE_EXHAUSTED else ""
                sample, timings = Sample(at, elapsed, code.name, shed=reason), []
            with lock:
                result.samples.append(sample)
                for stage, ms in timings:
                    result.stage_ms.setdefault(stage, []).append(ms)
            pending.release()

        start = time.perf_counter() + 0.05
        for i, (phase, at) in enumerate(schedule):
            scheduled = start + at
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.001:
                results[phase].late_sends += 1
            request = recommend_pb2.RecommendRequest(user_id=str(chosen[i]), k=k, deadline_ms=deadline_ms,
                                                     filters=filters)
            future = stub.Recommend.future(request, timeout=timeout)
            future.add_done_callback(lambda f, p=phase, a=at, s=scheduled: done(f, p, a, s))
            if progress is not None:
                progress(i + 1, len(schedule))
        for _ in schedule:
            pending.acquire(timeout=timeout + 5)
    return results


def run_rate(addr: str, users: list[str], rate: float, duration_s: float, k: int, deadline_ms: int,
             seed: int = 0, progress=None, filters=()) -> RateResult:
    """Offer ``rate`` requests/s for ``duration_s`` seconds; wait for every reply (or its deadline)."""
    return run_schedule(addr, users, [(rate, duration_s)], k, deadline_ms, seed, progress, filters=filters)[0]
