"""CPU per stage call, one stage at a time: where each server's own Python goes, without gRPC or threads.

The in-process funnel (``benches.funnel``) records the requests each stage servicer receives; each stage's
requests are then replayed on this thread alone, timed by ``time.thread_time`` (CPU, so a busy machine moves
it far less than latency) and, in a second pass, under ``cProfile`` for the functions that hold the time.
What a process spends above this is gRPC's and the server's plumbing (``benches.latency`` measures the whole
process; ``benches.echo`` the empty call).

    python -m benches.stage_cost SNAPSHOT [--n 300] [--top 25] [--out reports/stage-cost.json]
"""
from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import time

from benches.funnel import build_funnel
from gateway.local_stages import STAGES, METHODS, LocalAioContext, LocalContext
from recsys.v2 import recommend_service_pb2 as recommend_pb2


def record_requests(gateway, users: list[str], n: int, k: int, deadline_ms: int) -> dict[str, list]:
    """Run ``n`` Recommend calls through the in-process funnel, keeping each stage's request protos."""
    seen: dict[str, list] = {s: [] for s in STAGES}
    for stage, servicer in gateway.local.items():
        method = getattr(servicer, METHODS[stage])

        def keep(request, context, _method=method, _stage=stage):
            seen[_stage].append(request)
            return _method(request, context)
        setattr(servicer, METHODS[stage], keep)
    gateway.stages = type(gateway.stages)(*(gateway.local_stage_call(s) for s in STAGES))

    async def run() -> None:
        for i in range(n):
            request = recommend_pb2.RecommendRequest(user_id=users[i % len(users)], k=k, deadline_ms=deadline_ms)
            await gateway.Recommend(request, LocalAioContext())
    asyncio.run(run())
    for stage, servicer in gateway.local.items():  # the plain methods back
        setattr(servicer, METHODS[stage], getattr(type(servicer), METHODS[stage]).__get__(servicer))
    return seen


def replay(servicer, method_name: str, requests: list, repeat: int = 1) -> float:
    """CPU-ms per call of ``servicer.method_name`` over ``requests`` on this thread."""
    method = getattr(servicer, method_name)
    c0 = time.thread_time()
    for _ in range(repeat):
        for request in requests:
            method(request, LocalContext(1.0))
    return (time.thread_time() - c0) * 1000.0 / (len(requests) * repeat)


def top_functions(servicer, method_name: str, requests: list, top: int) -> list[dict]:
    """The ``top`` functions by own time (tottime) while replaying ``requests`` under cProfile."""
    method = getattr(servicer, method_name)
    profile = cProfile.Profile()
    profile.enable()
    for request in requests:
        method(request, LocalContext(1.0))
    profile.disable()
    stats = pstats.Stats(profile, stream=io.StringIO())
    total = sum(row[2] for row in stats.stats.values()) or 1.0
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    return [{"function": f"{fn}:{line}({name})", "calls_per_request": round(row[1] / len(requests), 2),
             "own_share": round(row[2] / total, 4), "cumulative_share": round(row[3] / total, 4)}
            for (fn, line, name), row in rows]


def stage_cost(snapshot: str, n: int, k: int, top: int, deadline_ms: int = 50) -> dict:
    from common.snapshot import Snapshot

    users = [str(u) for u in Snapshot.open(snapshot, verify=False).features.array("user_ids").tolist()]
    # the full funnel on every call: the quality factor would cut candidates when this busy machine runs slow
    gateway = build_funnel(snapshot, {"gateway": [f"deadline_ms={deadline_ms}", "quality.enabled=false"]})
    requests = record_requests(gateway, users, n, k, deadline_ms)
    out: dict = {"snapshot": snapshot, "requests": n, "k": k, "stages": {}}
    for stage in STAGES:
        servicer, name = gateway.local[stage], METHODS[stage]
        replay(servicer, name, requests[stage][:50])  # warm caches and lazy compiles
        out["stages"][stage] = {"cpu_ms_per_call": round(replay(servicer, name, requests[stage], repeat=2), 3),
                                "request_bytes": round(sum(r.ByteSize() for r in requests[stage]) / n),
                                "top": top_functions(servicer, name, requests[stage], top)}
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m benches.stage_cost SNAPSHOT``: CPU-ms per call of each stage's servicer and its top
    functions by own time."""
    import argparse

    from benches.report import save_json

    parser = argparse.ArgumentParser(prog="python -m benches.stage_cost", description=main.__doc__)
    parser.add_argument("snapshot")
    parser.add_argument("--n", type=int, default=300, help="Recommend calls whose stage requests are replayed")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--out", help="JSON report path")
    args = parser.parse_args(argv)
    report = stage_cost(args.snapshot, args.n, args.k, args.top)
    for stage, row in report["stages"].items():
        print(f"\n{stage}: {row['cpu_ms_per_call']:.3f} CPU-ms per call, request {row['request_bytes']} bytes")
        for f in row["top"]:
            print(f"  {100 * f['own_share']:5.1f}% own {100 * f['cumulative_share']:5.1f}% cum "
                  f"{f['calls_per_request']:7.2f}/req  {f['function']}")
    save_json(report, args.out)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
