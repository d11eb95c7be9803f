"""CPU per stage call, one stage at a time: where each server's own Python goes, without gRPC or threads.

The in-process funnel (``benches.funnel``) records the requests each stage servicer receives; each stage's
requests are then replayed on this thread alone, timed by ``time.thread_time`` (CPU, so a busy machine moves
it far less than latency) and, in a second pass, under ``cProfile`` for the functions that hold the time.
What a process spends above this is gRPC's and the server's plumbing (``benches.latency`` measures the whole
process; ``benches.echo`` the empty call).

    python -m benches.stage_cost SNAPSHOT [--n 300] [--top 25] [--out reports/stage-cost.json]
    python -m benches.stage_cost SNAPSHOT --levels      # CPU per stage at each quality level (gateway.quality)

With ``--levels`` the recorded requests are cut to each level's counts (recall's ``n``; rank's first
``recall_n`` candidates, its ``prerank_keep`` and ``prerank_order``; rerank's first ``rank_n``) and replayed
level after level, three rounds, so a busy machine's drift spreads over all levels alike; medians reported.
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


# the quality factor's default shape (gateway.quality.default_levels) and the skip-the-ranker level
DEFAULT_LEVELS = [(1000, 200, 200, False), (500, 200, 200, False), (250, 100, 100, False), (125, 25, 25, False),
                  (125, 25, 25, True)]


def _cut(request, fields: tuple[str, ...], n: int):
    """A copy of ``request`` with its per-candidate byte fields (4 bytes each) cut to the first ``n``."""
    out = type(request)()
    out.CopyFrom(request)
    for name in fields:
        setattr(out, name, getattr(request, name)[: 4 * n])
    return out


def level_cost(snapshot: str, levels: list[tuple[int, int, int, bool]], n: int, k: int, rounds: int = 3,
               deadline_ms: int = 50) -> list[dict]:
    """Median CPU-ms per call of each stage at each level ``(recall_n, prerank_keep, rank_n, prerank_order)``."""
    import numpy as np

    from common.snapshot import Snapshot

    users = [str(u) for u in Snapshot.open(snapshot, verify=False).features.array("user_ids").tolist()]
    gateway = build_funnel(snapshot, {"gateway": [f"deadline_ms={deadline_ms}", "quality.enabled=false"]})
    recorded = record_requests(gateway, users, n, k, deadline_ms)
    per_level = []
    for recall_n, keep, rank_n, skip in levels:
        recall = [_cut(r, (), 0) for r in recorded["recall"]]
        for r in recall:
            r.n = recall_n
        rank = [_cut(r, ("item_idx", "channel_masks", "recall_scores"), recall_n) for r in recorded["rank"]]
        for r in rank:
            r.prerank_keep, r.prerank_order = max(keep, k), skip
        rerank = [_cut(r, ("item_idx", "scores"), max(rank_n, k)) for r in recorded["rerank"]]
        per_level.append({"recall": recall, "rank": rank, "rerank": rerank})
    for stage in STAGES:   # warm caches and lazy compiles
        replay(gateway.local[stage], METHODS[stage], per_level[0][stage][:50])
    times = [[[] for _ in STAGES] for _ in levels]
    for _ in range(rounds):
        for i, requests in enumerate(per_level):
            for j, stage in enumerate(STAGES):
                times[i][j].append(replay(gateway.local[stage], METHODS[stage], requests[stage]))
    out = []
    for (recall_n, keep, rank_n, skip), t in zip(levels, times):
        row = {s: round(float(np.median(v)), 3) for s, v in zip(STAGES, t)}
        out.append({"recall_n": recall_n, "prerank_keep": keep, "rank_n": rank_n, "prerank_order": skip, **row,
                    "stages": round(sum(row.values()), 3)})
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
    parser.add_argument("--levels", action="store_true", help="CPU per stage at each quality level instead")
    args = parser.parse_args(argv)
    if args.levels:
        rows = level_cost(args.snapshot, DEFAULT_LEVELS, args.n, args.k)
        print("level  recall_n/prerank_keep/rank_n  ranker   recall    rank  rerank  stages (CPU-ms per call)")
        for i, r in enumerate(rows):
            print(f"{i:>5}  {r['recall_n']:>5}/{r['prerank_keep']:>4}/{r['rank_n']:>4}          "
                  f"{'pre-rank' if r['prerank_order'] else 'MMoE':<8} {r['recall']:>6.2f} {r['rank']:>7.2f} "
                  f"{r['rerank']:>7.2f} {r['stages']:>7.2f}")
        save_json({"snapshot": args.snapshot, "levels": rows}, args.out)
        return 0
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
