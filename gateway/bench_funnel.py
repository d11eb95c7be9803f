"""The in-process funnel: the cluster's own code path with the network taken out.

The gateway's servicer (``GatewayServicer.Recommend``: validation, admission, ``run_funnel`` with its
budgets and fallbacks, the reply) calls the three stage servicers (``Recall``, ``Rank``, ``Rerank``:
validation, the stage's work, business rules included, the reply protos) as plain function calls in this
process. Only gRPC is missing (serialisation, HTTP/2, the event-loop and thread hand-offs), so the cluster
p50 / in-process p50 ratio is the distribution tax and nothing else.
"""
from __future__ import annotations

import asyncio
import io
import time

from common.log import Logger
from gateway.loadgen import percentiles
from recsys.v2 import recommend_service_pb2 as recommend_pb2


class LocalAbort(Exception):
    """``context.abort`` of an in-process call."""


class LocalContext:
    """The part of ``grpc.ServicerContext`` the servicers use, for a call made in process."""

    def __init__(self, timeout_s: float | None = None, metadata=()):
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._metadata = tuple(metadata or ())

    def invocation_metadata(self):
        return self._metadata

    def time_remaining(self):
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def is_active(self) -> bool:
        return True

    def set_trailing_metadata(self, _metadata) -> None:
        pass

    def abort(self, code, details):
        raise LocalAbort(f"{code.name}: {details}")


class LocalAioContext(LocalContext):
    """``LocalContext`` for the gateway's ``async`` servicer."""

    async def abort(self, code, details):
        raise LocalAbort(f"{code.name}: {details}")


def _local(method):
    """A stage servicer method as the funnel's stage call (``call(request, timeout=, metadata=)``)."""
    def call(request, timeout=None, metadata=()):
        return method(request, LocalContext(timeout, metadata))
    return call


def build_funnel(snapshot_path: str, overrides: dict[str, list[str]] | None = None):
    """The gateway servicer wired to in-process stage servicers, all on ``snapshot_path``."""
    from common.config import load_config
    from gateway.config import GatewayConfig
    from gateway.funnel import Stages
    from gateway.server import GatewayServicer
    from rank_server.config import RankConfig
    from rank_server.server import RankServicer
    from recall_server.config import RecallConfig
    from recall_server.server import RecallServicer
    from rerank_server.config import RerankConfig
    from rerank_server.server import RerankServicer

    overrides = overrides or {}
    quiet = Logger("bench", stream=io.StringIO())

    def config(cls, stage):
        return load_config(cls, None, [f"snapshot={snapshot_path}", *overrides.get(stage, [])])

    recall = RecallServicer(config(RecallConfig, "recall"), quiet)
    rank = RankServicer(config(RankConfig, "rank"), quiet)
    rerank = RerankServicer(config(RerankConfig, "rerank"), quiet)
    gateway = GatewayServicer(config(GatewayConfig, "gateway"), quiet)
    gateway.stages = Stages(_local(recall.Recall), _local(rank.Rank), _local(rerank.Rerank))
    return gateway


def in_process_funnel(snapshot_path: str, users: list[str], n: int, k: int, deadline_ms: int,
                      overrides: dict[str, list[str]] | None = None, warmup: int = 50) -> dict:
    """Per-stage and total latency (ms) of ``n`` Recommend calls through ``build_funnel``, how many replies
    were degraded (a stage over its budget counts as in the cluster), and the CPU-ms per call (this process's
    CPU time, all threads: on a busy machine latency includes waiting for a core, CPU time does not, so this
    is the number to set beside the cluster's CPU-ms per request)."""
    import numpy as np

    gateway = build_funnel(snapshot_path, overrides)
    times: dict[str, list[float]] = {"recall": [], "rank": [], "rerank": [], "total": []}
    degraded = 0
    cpu_s = 0.0
    rng = np.random.default_rng(1)

    async def run() -> None:
        nonlocal degraded, cpu_s
        for i, user_id in enumerate(rng.choice(users, n + warmup)):
            request = recommend_pb2.RecommendRequest(user_id=str(user_id), k=k, deadline_ms=deadline_ms)
            c0 = time.process_time()
            t0 = time.perf_counter()
            reply = await gateway.Recommend(request, LocalAioContext())
            total = (time.perf_counter() - t0) * 1000.0
            if i < warmup:  # the first calls warm caches
                continue
            cpu_s += time.process_time() - c0
            times["total"].append(total)
            degraded += bool(reply.degraded_stages)
            for timing in reply.stage_timings:
                if timing.stage in times and timing.stage != "total":
                    times[timing.stage].append(timing.ms)

    asyncio.run(run())
    out = {name: percentiles(v) for name, v in times.items()}
    out["degraded_replies"] = degraded
    out["cpu_ms_per_request"] = cpu_s * 1000.0 / n
    out["requests"] = n
    return out
