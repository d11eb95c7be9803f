"""Recall server end to end, gRPC included, at low load: ``python -m benches.recall_grpc``.

    python -m benches.recall_grpc [--snapshot DIR | --synthetic N_ITEMS] [--n 1000] [--requests 500]
                                       [--warmup 50] [--set key=value ...] [--json PATH]

``--synthetic 1000000`` benches a synthetic 10^6-item catalogue (``export.data.synthetic``), exporting it into
``snapshots-synthetic-1000000`` on first use (about 4 minutes on 2 cores) and reusing it afterwards.

Starts only the recall server (``cluster.launcher.Cluster.start_stages``) on the snapshot, then sends
``--requests`` sequential Recall RPCs (one in flight: the latency without queueing) for random known users,
and reports p50 / p90 / p99 / max in ms, beside the same ``recall()`` called in this process (the
difference is what gRPC, protobuf and the process hop cost). Issue 6's target: p99 <= 5 ms for 1,000
candidates from a 10^6 catalogue. Timings depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from benches.report import save_json


def grpc_latency(addr: str, users: list[str], n: int, requests: int, warmup: int) -> tuple[dict, float]:
    """Sequential Recall RPCs: latency percentiles (ms) and the mean number of candidates returned."""
    import grpc

    from common import heap, wire
    from benches.loadgen import percentiles
    from recsys.stage.v1 import recall_service_pb2 as recall_pb2
    from recsys.stage.v1 import recall_service_pb2_grpc as recall_grpc

    ms, sizes = [], []
    heap.freeze()  # the bench's own full GC passes (numba and the snapshot are loaded here) are not the server's
    with grpc.insecure_channel(addr) as channel:
        stub = recall_grpc.RecallServiceStub(channel)
        for i, user_id in enumerate(users[:warmup + requests]):
            t0 = time.perf_counter()
            reply = stub.Recall(recall_pb2.RecallRequest(user_id=user_id, n=n), timeout=10.0)
            ids = wire.decode(reply.item_idx, wire.INT32, "item_idx")
            elapsed = (time.perf_counter() - t0) * 1000.0
            if i >= warmup:
                ms.append(elapsed)
                sizes.append(ids.size)
    return percentiles(ms), float(np.mean(sizes))


def in_process_latency(snapshot, users: list[str], n: int, requests: int, warmup: int) -> dict:
    """The same requests as plain ``recall()`` calls in this process (ms); ``snapshot`` is an open Snapshot."""
    from common import compute_threads
    from benches.loadgen import percentiles
    from recall_server.config import RecallConfig
    from recall_server.recall import recall
    from recall_server.state import load_state

    config = RecallConfig(snapshot=str(snapshot.path))
    compute_threads.limit(config.server.compute_threads)   # as the server runs it (common.server.load_server)
    state = load_state(snapshot, config)
    ms = []
    for i, user_id in enumerate(users[:warmup + requests]):
        t0 = time.perf_counter()
        recall(state, config, user_id, n)
        if i >= warmup:
            ms.append((time.perf_counter() - t0) * 1000.0)
    return percentiles(ms)


def quality_table(manifest: dict) -> str:
    """The snapshot's recall table (export's test part: each channel alone, the merged list, and on synthetic
    data the generator's oracle ceiling), the fitted merge and the ANN index's recall / latency, as text."""
    m = manifest.get("metrics", {})
    rows = {k: v for k, v in m.get("recall", {}).items() if k != "users"}
    cols = sorted({c for row in rows.values() for c in row if c.startswith("recall@")}, key=lambda c: int(c[7:]))
    lines = [f"recall on the test part ({m.get('recall', {}).get('users', '?')} users), from the snapshot's manifest:",
             f"{'source':18}" + "".join(f"{c:>13}" for c in cols)]
    lines += [f"{name:18}" + "".join(f"{row.get(c, float('nan')):>13.4f}" for c in cols) for name, row in rows.items()]
    merge, ann = manifest.get("recall_merge", {}), manifest.get("ann_index", {})
    if merge:
        lines.append(f"merge fitted on validation: weights {json.dumps(merge.get('weights'))} "
                     f"quotas {json.dumps(merge.get('quotas'))}")
    if ann:
        lines.append(f"ann index: {ann.get('items')} items, M {ann.get('M')}, ef {ann.get('ef')}; "
                     f"test queries {json.dumps(m.get('ann_query', {}))}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benches.recall_grpc", description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", help="snapshot root or version directory (default: snapshots, or "
                                           "snapshots-synthetic-N with --synthetic N)")
    parser.add_argument("--synthetic", type=int, metavar="N_ITEMS",
                        help="bench a synthetic catalogue of N_ITEMS items (exported on first use)")
    parser.add_argument("--n", type=int, default=1000, help="candidates per request")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recall server config override (repeatable)")
    parser.add_argument("--no-in-process", action="store_true", help="skip the in-process comparison")
    parser.add_argument("--json", help="also write the report here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import grpc

    from common.snapshot import Snapshot, SnapshotError
    from export.__main__ import ensure_snapshot, synthetic_root
    from benches.peers import machine_info
    from cluster.launcher import Cluster, ClusterConfig

    if args.n < 1 or args.requests < 1 or args.warmup < 0:
        print("bench_grpc: --n and --requests must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    if args.synthetic is not None and args.synthetic < 10:
        print("bench_grpc: --synthetic needs at least 10 items", file=sys.stderr)
        return 2
    if args.snapshot is None:
        args.snapshot = synthetic_root(args.synthetic) if args.synthetic else "snapshots"
    if args.synthetic and not ensure_snapshot(args.snapshot, synthetic=args.synthetic):
        return 2
    try:
        snapshot = Snapshot.open(args.snapshot, verify=False)
    except SnapshotError as exc:
        print(f"bench_grpc: {exc}", file=sys.stderr)
        return 2
    all_users = snapshot.features.array("user_ids")
    users = [str(u) for u in np.random.default_rng(args.seed).choice(all_users, args.warmup + args.requests)]
    report = {"machine": machine_info(), "snapshot": str(snapshot.path), "snapshot_version": snapshot.version,
              "dataset": snapshot.manifest.get("dataset", {}), "n": args.n, "requests": args.requests,
              "warmup": args.warmup, "overrides": args.overrides, "mode": "sequential (one request in flight)"}
    t0 = time.perf_counter()
    cluster = Cluster(ClusterConfig(snapshot=args.snapshot, overrides={"recall": args.overrides}))
    try:
        cluster.start_stages(["recall"])
    except (RuntimeError, TimeoutError, ValueError) as exc:
        print(f"bench_grpc: cannot start the recall server: {exc}", file=sys.stderr)
        return 2
    try:
        report["server_start_s"] = round(time.perf_counter() - t0, 2)
        report["grpc_ms"], report["mean_candidates"] = grpc_latency(cluster.addr("recall"), users, args.n,
                                                                    args.requests, args.warmup)
    except grpc.RpcError as exc:
        print(f"bench_grpc: the recall server answered {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    finally:
        cluster.stop()
    if not args.no_in_process:
        report["in_process_ms"] = in_process_latency(snapshot, users, args.n, args.requests, args.warmup)
    g = report["grpc_ms"]
    print(f"recall over gRPC, {args.requests} sequential requests, n={args.n}, "
          f"{report['dataset'].get('items', '?')} items: p50 {g['p50']:.2f} ms  p90 {g['p90']:.2f}  "
          f"p99 {g['p99']:.2f}  max {g['max']:.2f}  (mean {report['mean_candidates']:.0f} candidates)")
    if "in_process_ms" in report:
        p = report["in_process_ms"]
        print(f"recall() in process, same requests:  p50 {p['p50']:.2f} ms  p90 {p['p90']:.2f}  p99 {p['p99']:.2f}")
    report["quality"] = quality_table(snapshot.manifest)
    print(report["quality"])
    save_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
