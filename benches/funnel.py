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

from common import compute_threads
from common.log import Logger
from gateway.local_stages import STAGES, LocalAioContext
from benches.loadgen import percentiles
from recsys.v2 import recommend_service_pb2 as recommend_pb2


def build_funnel(snapshot_path: str, overrides: dict[str, list[str]] | None = None):
    """The gateway servicer with all three stages local (``stages.*=local``, ``gateway.local_stages``), on
    ``snapshot_path``: the co-located gateway without its gRPC server. ``overrides`` per process name
    ("gateway", "recall", ...) as the cluster takes them; a stage's go to ``local.<stage>.*``."""
    from common.config import load_config
    from gateway.config import GatewayConfig
    from gateway.funnel import Stages
    from gateway.server import GatewayServicer

    overrides = overrides or {}
    quiet = Logger("bench", stream=io.StringIO())
    items = [f"snapshot={snapshot_path}", *(f"stages.{s}=local" for s in STAGES), *overrides.get("gateway", [])]
    items += [f"local.{s}.{item}" for s in STAGES for item in overrides.get(s, [])]
    config = load_config(GatewayConfig, None, items)
    compute_threads.limit(config.server.compute_threads)   # as the served process runs (common.server.load_server)
    gateway = GatewayServicer(config, quiet)
    gateway.stages = Stages(*(gateway.local_stage_call(s) for s in STAGES))
    return gateway


def meter_stage_cpu(gateway) -> dict[str, float]:
    """Wrap each local stage servicer's method so the CPU seconds of its thread add up per stage (the stages
    run on executor threads: ``time.thread_time`` there is the stage's own work, validation and reply
    included). Returns the dict that fills as calls run; the gateway's share is the rest of the process's."""
    from gateway.local_stages import METHODS

    used = {s: 0.0 for s in STAGES}
    for stage, servicer in gateway.local.items():
        method = getattr(servicer, METHODS[stage])

        def timed(request, context, _method=method, _stage=stage):
            c0 = time.thread_time()
            try:
                return _method(request, context)
            finally:
                used[_stage] += time.thread_time() - c0
        setattr(servicer, METHODS[stage], timed)
    gateway.stages = type(gateway.stages)(*(gateway.local_stage_call(s) for s in STAGES))
    return used


def in_process_funnel(snapshot_path: str, users: list[str], n: int, k: int, deadline_ms: int,
                      overrides: dict[str, list[str]] | None = None, warmup: int = 50) -> dict:
    """Per-stage and total latency (ms) of ``n`` Recommend calls through ``build_funnel``, how many replies
    were degraded (a stage over its budget counts as in the cluster), and the CPU-ms per call (this process's
    CPU time, all threads: on a busy machine latency includes waiting for a core, CPU time does not, so this
    is the number to set beside the cluster's CPU-ms per request)."""
    import numpy as np

    gateway = build_funnel(snapshot_path, overrides)
    stage_cpu = meter_stage_cpu(gateway)
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
                if i == warmup - 1:
                    stage_cpu.update({s: 0.0 for s in stage_cpu})
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
    # per step: each stage's own thread CPU, and the gateway's (the process's CPU less the stages')
    steps = {s: v * 1000.0 / n for s, v in stage_cpu.items()}
    steps["gateway"] = out["cpu_ms_per_request"] - sum(steps.values())
    out["cpu_ms_per_request_by_step"] = {k: round(v, 3) for k, v in steps.items()}
    out["requests"] = n
    return out


TIMESTAMP = 1_700_000_000


def replies(snapshot_path: str, users: list[str], k: int, deadline_ms: int,
            overrides: dict[str, list[str]] | None = None) -> dict[str, list]:
    """Each user's final list through ``build_funnel`` (item ids and scores rounded to 1e-5): what must not
    change when the serving code is made cheaper. A generous deadline keeps a slow call from degrading."""
    gateway = build_funnel(snapshot_path, overrides)

    async def run() -> dict[str, list]:
        out = {}
        for user_id in users:
            # a fixed timestamp: the rank features read the hour and weekday of "now" otherwise
            reply = await gateway.Recommend(recommend_pb2.RecommendRequest(
                user_id=user_id, k=k, deadline_ms=deadline_ms, context=recommend_pb2.Context(timestamp=TIMESTAMP)),
                LocalAioContext())
            out[user_id] = [[it.item_id, round(it.score, 5), sorted(it.channels)] for it in reply.items] + \
                [list(reply.degraded_stages)]
        return out

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    """``python -m benches.funnel SNAPSHOT``: the in-process funnel alone (a driver to profile, e.g.
    under ``py-spy record``), or with ``--dump FILE`` every listed user's final list as JSON (to compare the
    lists of two commits)."""
    import argparse
    import json

    from common.snapshot import Snapshot

    parser = argparse.ArgumentParser(prog="python -m benches.funnel", description=main.__doc__)
    parser.add_argument("snapshot")
    parser.add_argument("--n", type=int, default=1000, help="timed requests")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--deadline-ms", type=int, default=50)
    parser.add_argument("--dump", default="", help="write the final lists of --users users here instead")
    parser.add_argument("--users", type=int, default=300)
    args = parser.parse_args(argv)
    users = Snapshot.open(args.snapshot, verify=False).features.array("user_ids").tolist()
    overrides = {"gateway": [f"deadline_ms={args.deadline_ms}"]}
    if args.dump:
        chosen = [str(u) for u in users[: args.users]] + ["\x00unknown-user"]
        with open(args.dump, "w") as fh:
            json.dump(replies(args.snapshot, chosen, args.k, 5000, overrides), fh)
        return 0
    print(json.dumps(in_process_funnel(args.snapshot, [str(u) for u in users], args.n, args.k, args.deadline_ms,
                                       overrides), indent=1))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
