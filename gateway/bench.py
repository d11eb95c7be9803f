"""Latency benchmark: ``python -m gateway.bench`` (``make bench``).

Builds or reuses a snapshot, starts the cluster, warms it, then drives the gateway open-loop
(``gateway.loadgen``) over a sweep of request rates. In the same run it times the in-process funnel
(all three stages called as functions in this process: what the distribution costs is the difference)
and component peers (hnswlib vs exact numpy search, Numba kernels vs their numpy references).
Writes a JSON report, prints a table, and plots latency percentiles vs offered rate when matplotlib
is installed. ``python -m gateway.bench compare A.json B.json`` prints the ratios of two reports.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from common.snapshot import Snapshot, SnapshotError
from export.__main__ import ensure_snapshot, synthetic_root
from gateway.cluster import Cluster, ClusterConfig
from gateway.loadgen import percentiles, run_rate


def machine_info() -> dict:
    import grpc
    import numba
    import onnxruntime

    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "processor": platform.processor(), "numpy": np.__version__, "numba": numba.__version__,
            "onnxruntime": onnxruntime.__version__, "grpcio": grpc.__version__}


def in_process_funnel(snapshot: Snapshot, users: list[str], n: int, k: int, recall_n: int, rank_n: int) -> dict:
    """The funnel as plain function calls in one process: per-stage and total latency (ms)."""
    from rank_server.config import RankConfig
    from rank_server.rank import load_state as load_rank
    from rank_server.rank import rank
    from recall_server.config import RecallConfig
    from recall_server.recall import recall
    from recall_server.state import load_state as load_recall
    from rerank_server.config import RerankConfig
    from rerank_server.rerank import rerank, resolve_params

    rc = RecallConfig(snapshot=str(snapshot.path))
    kc = RankConfig(snapshot=str(snapshot.path))
    ec = RerankConfig(snapshot=str(snapshot.path))
    recall_state, rank_state = load_recall(snapshot, rc), load_rank(snapshot, kc)
    item_emb = snapshot.load_array("item_emb.npy")
    params = resolve_params(ec, None)
    times: dict[str, list[float]] = {"recall": [], "rank": [], "rerank": [], "total": []}
    rng = np.random.default_rng(1)
    for i, user_id in enumerate(rng.choice(users, n + 50)):
        t0 = time.perf_counter()
        got = recall(recall_state, rc, str(user_id), recall_n)
        t1 = time.perf_counter()
        ranked = rank(rank_state, kc, str(user_id), got.ids, 0)
        top = np.lexsort((np.arange(ranked.fused.size), -ranked.fused))[:rank_n]
        t2 = time.perf_counter()
        rerank(item_emb, ranked.item_idx[top], ranked.fused[top], k, params)
        t3 = time.perf_counter()
        if i >= 50:  # the first 50 warm caches
            for name, a, b in (("recall", t0, t1), ("rank", t1, t2), ("rerank", t2, t3), ("total", t0, t3)):
                times[name].append((b - a) * 1000.0)
    return {name: percentiles(v) for name, v in times.items()}


def ann_vs_exact(snapshot: Snapshot, users: list[str], k: int = 100, n_queries: int = 300) -> dict:
    """hnswlib against exact numpy inner-product search on the same user vectors: recall and latency."""
    from recall_server.channels.ann import user_vector
    from recall_server.config import RecallConfig
    from recall_server.recall import build_query
    from recall_server.state import load_state

    config = RecallConfig(snapshot=str(snapshot.path))
    state = load_state(snapshot, config)
    emb = snapshot.load_array("item_emb.npy")
    queries = np.stack([user_vector(state, build_query(state, config, u, None, [])[0])
                        for u in users[:n_queries]]).astype(np.float32)
    k = min(k, emb.shape[0])
    state.index.set_ef(max(config.hnsw_ef, k))
    out = {"items": int(emb.shape[0]), "dim": int(emb.shape[1]), "k": k, "ef": max(config.hnsw_ef, k)}
    hnsw_ms, exact_ms, overlap = [], [], []
    for q in queries:
        t0 = time.perf_counter()
        labels, _ = state.index.knn_query(q.reshape(1, -1), k=k)
        t1 = time.perf_counter()
        scores = emb @ q
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top])]
        t2 = time.perf_counter()
        hnsw_ms.append((t1 - t0) * 1000)
        exact_ms.append((t2 - t1) * 1000)
        overlap.append(np.intersect1d(labels[0], top).size / k)
    out.update({"hnswlib_ms": percentiles(hnsw_ms), "numpy_exact_ms": percentiles(exact_ms),
                "hnswlib_recall_vs_exact": float(np.mean(overlap))})
    try:
        import faiss  # optional peer
        index = faiss.IndexFlatIP(emb.shape[1])
        index.add(emb)
        t0 = time.perf_counter()
        for q in queries:
            index.search(q.reshape(1, -1), k)
        out["faiss_flat_ms_mean"] = (time.perf_counter() - t0) * 1000 / len(queries)
    except ImportError:
        out["faiss"] = "not installed"
    return out


def kernel_peers() -> list[dict]:
    """Numba kernels against their numpy references (``kernels.bench``), seconds per call."""
    from kernels.bench import run as run_kernels

    return [{"kernel": name, "workload": workload, "first_call_s": first, "kernel_s": t, "numpy_s": ref,
             "speedup": (ref / t) if ref else None} for name, workload, first, t, ref in run_kernels()]


def start_profilers(cluster: Cluster, duration_s: float, out_dir: Path) -> dict:
    """Sample every server with py-spy (``pip install py-spy``) while load runs; collapsed stacks per stage."""
    import shutil
    import subprocess

    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        return {}
    procs = {}
    for name, proc in cluster.procs.items():
        out = out_dir / f"profile-{name}.txt"
        procs[name] = (subprocess.Popen([exe, "record", "--pid", str(proc.pid), "--duration", str(int(duration_s)),
                                         "--format", "raw", "--rate", "200", "--output", str(out), "--nonblocking"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out)
    return procs


_IDLE = ("_serve (grpc/_server.py", "_blocking (grpc/_channel.py", "wait (threading.py", "_worker (concurrent",
         "select (", "poll (")  # a thread parked in one of these is waiting, not working
_OURS = ("common/", "kernels/", "recall_server/", "rank_server/", "rerank_server/", "gateway/", "export/")


def top_costs(profilers: dict, n: int = 3) -> dict:
    """Wait for the profilers; per stage, the ``n`` costliest places while busy.

    Idle samples (threads waiting in gRPC's completion queue or on a stage reply) are dropped. Each
    busy sample is charged to the deepest frame of this project's code and the library call under
    it, e.g. ``rank (rank_server/rank.py:65) > Session.run``: that names what to change.
    """
    out = {}
    for name, (proc, path) in profilers.items():
        proc.wait(timeout=120)
        counts: dict[str, int] = {}
        busy = idle = 0
        for line in path.read_text().splitlines() if path.exists() else []:
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            if any(marker in frames[-1] for marker in _IDLE):
                idle += int(count)
                continue
            busy += int(count)
            ours = [i for i, f in enumerate(frames) if any(f"({p}" in f for p in _OURS)]
            if ours:
                i = ours[-1]
                key = frames[i] + (f" > {frames[-1].split(' (')[0]}" if i < len(frames) - 1 else "")
            else:
                key = "grpc/runtime: " + frames[-1]
            counts[key] = counts.get(key, 0) + int(count)
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
        out[name] = {"busy_samples": busy, "idle_samples": idle,
                     "top": [{"where": k, "share_of_busy": round(c / max(busy, 1), 3)} for k, c in top],
                     "collapsed_stacks": str(path)}
    return out


def progress_bar(label: str):
    def show(i: int, n: int) -> None:
        if i == n or i % max(1, n // 50) == 0:
            filled = int(30 * i / n)
            sys.stderr.write(f"\r  {label} [{'#' * filled}{'.' * (30 - filled)}] {i}/{n}")
            if i == n:
                sys.stderr.write("\n")
            sys.stderr.flush()
    return show


def print_table(report: dict) -> None:
    ds = report.get("dataset") or {}
    if ds:
        print(f"\ndataset {ds.get('name')}: {ds.get('items')} items, {ds.get('users')} users, "
              f"{ds.get('interactions')} interactions (snapshot {report.get('snapshot')})")
    print(f"\nopen-loop sweep (k={report['config']['k']}, deadline {report['config']['deadline_ms']} ms), ms:")
    print(f"  {'rate':>6} {'sent':>6} {'ok':>6} {'err':>4} {'degr':>5} {'achieved':>8} "
          f"{'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} {'max':>7}")
    for r in report["rates"]:
        lat = r["latency_ms"] or {key: float("nan") for key in ("p50", "p90", "p99", "p99.9", "max")}
        print(f"  {r['offered_rate']:>6.0f} {r['sent']:>6} {r['ok']:>6} {r['error_count']:>4} "
              f"{sum(r['degraded'].values()):>5} {r['achieved_rate']:>8.1f} {lat['p50']:>7.2f} {lat['p90']:>7.2f} "
              f"{lat['p99']:>7.2f} {lat['p99.9']:>7.2f} {lat['max']:>7.2f}")
    for r in report["rates"]:
        stages = "  ".join(f"{s} p50 {v['p50']:.2f}/p99 {v['p99']:.2f}" for s, v in r["stage_ms"].items() if v)
        print(f"  {r['offered_rate']:>6.0f}/s stages: {stages}")
    inproc = report.get("in_process_funnel")
    if inproc:
        print("in-process funnel (same stages as function calls): " +
              "  ".join(f"{s} p50 {v['p50']:.2f}" for s, v in inproc.items()))
        lowest = report["rates"][0]["latency_ms"].get("p50")
        if lowest:
            print(f"cluster p50 / in-process p50 at {report['rates'][0]['offered_rate']:.0f}/s: "
                  f"{lowest / inproc['total']['p50']:.2f}x")
    for stage, prof in report.get("profile", {}).get("stages", {}).items():
        print(f"profile {stage} ({prof['busy_samples']} busy samples): " +
              "; ".join(f"{t['share_of_busy']:.0%} {t['where']}" for t in prof["top"]))
    ann = report.get("ann_vs_exact")
    if ann:
        print(f"hnswlib vs exact numpy ({ann['items']} items x {ann['dim']}, k={ann['k']}, ef={ann['ef']}): "
              f"recall {ann['hnswlib_recall_vs_exact']:.4f}, p50 {ann['hnswlib_ms']['p50']:.3f} ms vs "
              f"{ann['numpy_exact_ms']['p50']:.3f} ms")


def plot(report: dict, path: Path) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install '.[bench]'): no plot"
    rates = [r["offered_rate"] for r in report["rates"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in ("p50", "p90", "p99", "p99.9"):
        ax.plot(rates, [r["latency_ms"].get(key, np.nan) for r in report["rates"]], marker="o", label=key)
    ax.set_xlabel("offered rate (requests/s)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"Recommend latency, {(report.get('dataset') or {}).get('name', '')} "
                 f"snapshot {report['snapshot_version']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


def run(args) -> int:
    if args.synthetic and args.snapshot is None:
        args.snapshot = synthetic_root(args.synthetic)  # one root per catalogue size, reused by later runs
    root = Path(args.snapshot or "snapshots")
    if not ensure_snapshot(str(root), quick=args.quick, synthetic=args.synthetic):
        return 2
    try:
        snapshot = Snapshot.open(root, verify=False)
    except SnapshotError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    users = snapshot.features.array("user_ids").tolist()
    rates = [float(r) for r in args.rates.split(",")]
    out = Path(args.out or f"reports/bench-{time.strftime('%Y%m%dT%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine_info(), "snapshot_version": snapshot.version, "snapshot": str(root),
              "dataset": snapshot.manifest.get("dataset", {}),
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "config": {"rates": rates, "duration_s": args.duration, "k": args.k, "deadline_ms": args.deadline_ms,
                         "warmup": args.warmup, "quick": args.quick}, "rates": []}
    overrides = {"gateway": [f"deadline_ms={args.deadline_ms}"]}
    with Cluster(ClusterConfig(snapshot=str(root), gateway_port=0, overrides=overrides)) as cluster:
        run_rate(cluster.gateway_addr, users, min(rates[0], 100.0), args.warmup / min(rates[0], 100.0), args.k,
                 args.deadline_ms)
        for rate in rates:
            profilers = (start_profilers(cluster, args.duration, out.parent)
                         if args.profile and rate == args.profile_rate else {})
            result = run_rate(cluster.gateway_addr, users, rate, args.duration, args.k, args.deadline_ms,
                              progress=progress_bar(f"{rate:>5.0f}/s"))
            report["rates"].append(result.summary())
            if profilers:
                report["profile"] = {"rate": rate, "stages": top_costs(profilers)}
    report["in_process_funnel"] = in_process_funnel(snapshot, users, 100 if args.quick else 500, args.k, 1000, 200)
    report["ann_vs_exact"] = ann_vs_exact(snapshot, users, n_queries=100 if args.quick else 300)
    if not args.quick:
        report["kernels"] = kernel_peers()
    out.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"report: {out}\nplot: {plot(report, out.with_suffix('.png'))}")
    return 0


def compare(a_path: str, b_path: str) -> int:
    """Print B / A ratios of the end-to-end percentiles at each common rate."""
    try:
        a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))
    except (OSError, json.JSONDecodeError) as exc:
        print(f"bench compare: {exc}", file=sys.stderr)
        return 2
    by_rate = {r["offered_rate"]: r for r in a["rates"]}
    print(f"B / A  (A = {a_path}, B = {b_path}; < 1 means B is faster)")
    for rb in b["rates"]:
        ra = by_rate.get(rb["offered_rate"])
        if not ra or not ra["latency_ms"] or not rb["latency_ms"]:
            continue
        ratios = "  ".join(f"{key} {rb['latency_ms'][key] / ra['latency_ms'][key]:.2f}"
                           for key in ("p50", "p90", "p99", "max"))
        print(f"  {rb['offered_rate']:>6.0f}/s  {ratios}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except (RuntimeError, TimeoutError) as exc:  # a server could not start: its log tail is in the message
        print(f"bench: cannot start the cluster: {exc}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "compare":
        if len(argv) != 3:
            print("usage: python -m gateway.bench compare A.json B.json", file=sys.stderr)
            return 2
        return compare(argv[1], argv[2])
    parser = argparse.ArgumentParser(prog="python -m gateway.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", help="snapshot root (default: snapshots, or snapshots-synthetic-N "
                                           "with --synthetic N)")
    parser.add_argument("--synthetic", type=int, metavar="N_ITEMS",
                        help="bench on a synthetic catalogue of N_ITEMS items (exported on first use)")
    parser.add_argument("--rates", default="50,100,200,300", help="comma-separated requests/s")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    parser.add_argument("--warmup", type=float, default=200, help="warm-up requests")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--deadline-ms", type=int, default=50)
    parser.add_argument("--out", help="report path (default reports/bench-<time>.json)")
    parser.add_argument("--profile", action="store_true", help="py-spy every server during --profile-rate")
    parser.add_argument("--profile-rate", type=float, default=100.0)
    parser.add_argument("--quick", action="store_true", help="smoke check: two short rates, under a minute")
    args = parser.parse_args(argv)
    if args.quick:
        args.rates, args.duration, args.warmup = "20,50", 2.0, 40
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
