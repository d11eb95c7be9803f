"""Scale benchmark of the recall artifacts on synthetic data (``export.data.synthetic``).

    python -m benches.hnsw [--items 1000000] [--dim 64] [--queries 500] [--ef 200]
                                       [--interactions 10000000] [--skip-hnsw] [--skip-kernels]

* HNSW (hnswlib, inner product, M / ef_construction as export's defaults): build time (all threads),
  save + load time, recall@100 against exact numpy search on a sample of queries, single-threaded query
  latency p50 / p99 at the configured ef; exact numpy search latency beside it.
* ItemCF and Swing (``kernels``) on a synthetic log of ``--interactions`` rows: time and the process's
  peak resident memory (``resource.getrusage``; a high-water mark, so each step reports the peak so far).
Prints a table and writes JSON with ``--json``. Timings depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benches.report import save_json


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def exact_topk(emb: np.ndarray, queries: np.ndarray, k: int, block: int = 64) -> np.ndarray:
    out = np.empty((queries.shape[0], k), np.int64)
    for s in range(0, queries.shape[0], block):
        scores = queries[s:s + block] @ emb.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
        out[s:s + block] = np.take_along_axis(part, order, 1)
    return out


def bench_hnsw(args, catalog, report: dict) -> None:
    import hnswlib

    from export.data.synthetic import make_queries

    emb = catalog.emb
    n, dim = emb.shape
    queries = make_queries(catalog, args.queries, seed=args.seed + 1)
    t0 = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=n, M=args.M, ef_construction=args.ef_construction, random_seed=0)
    index.set_num_threads(args.build_threads)
    index.add_items(emb, np.arange(n))
    build_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "items.hnsw"
        t0 = time.perf_counter()
        index.save_index(str(path))
        save_s = time.perf_counter() - t0
        size_mib = path.stat().st_size / 2**20
        del index
        t0 = time.perf_counter()
        index = hnswlib.Index(space="ip", dim=dim)
        index.load_index(str(path), max_elements=n)
        load_s = time.perf_counter() - t0
    index.set_num_threads(1)
    k = 100
    t0 = time.perf_counter()
    exact = exact_topk(emb, queries, k)
    exact_ms = (time.perf_counter() - t0) * 1000 / queries.shape[0]
    rows = []
    for ef in sorted(set(args.ef)):
        index.set_ef(max(ef, k))
        lat = np.empty(queries.shape[0])
        got = np.empty((queries.shape[0], k), np.int64)
        for q in range(queries.shape[0]):
            t = time.perf_counter()
            labels, _ = index.knn_query(queries[q:q + 1], k=k)
            lat[q] = time.perf_counter() - t
            got[q] = labels[0]
        recall = float(np.mean([np.intersect1d(g, e).size / k for g, e in zip(got, exact)]))
        rows.append({"ef": ef, "recall@100": round(recall, 4), "p50_ms": round(float(np.median(lat)) * 1e3, 3),
                     "p99_ms": round(float(np.quantile(lat, 0.99)) * 1e3, 3)})
    report["hnsw"] = {"items": n, "dim": dim, "M": args.M, "ef_construction": args.ef_construction,
                      "build_threads": args.build_threads, "build_s": round(build_s, 2), "save_s": round(save_s, 2),
                      "load_s": round(load_s, 2), "index_mib": round(size_mib, 1), "queries": queries.shape[0],
                      "exact_numpy_ms_per_query": round(exact_ms, 3), "by_ef": rows,
                      "peak_rss_mib": round(peak_rss_mib(), 1)}


def bench_kernels(args, catalog, report: dict) -> None:
    from export.data.synthetic import make_log
    from kernels.csr import build_csr
    from kernels.itemcf import itemcf_topm
    from kernels.swing import swing_topm

    n_items = catalog.emb.shape[0]
    n_users = args.users or max(1, args.interactions // 50)
    t0 = time.perf_counter()
    user, item, _ = make_log(catalog, n_users, args.interactions, seed=args.seed + 2)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    u_indptr, u_items, _ = build_csr(user, item, n_users)
    i_indptr, i_users, _ = build_csr(item, user, n_items)
    csr_s = time.perf_counter() - t0
    del user, item
    out = {"interactions": int(u_items.size), "users": n_users, "items": n_items,
           "max_item_degree": int(np.diff(i_indptr).max()), "generate_s": round(gen_s, 2),
           "csr_s": round(csr_s, 2)}
    for name, fn, kw in (("itemcf", itemcf_topm, {}),
                         ("swing", swing_topm, {"max_users_per_item": args.swing_max_users})):
        small = slice(0, 0)  # compile on a tiny input first so the timing is the kernel, not Numba
        fn(np.zeros(2, np.int64), u_items[small], np.zeros(3, np.int64), i_users[small], 2, 2, **kw)
        t0 = time.perf_counter()
        indptr, _, _ = fn(u_indptr, u_items, i_indptr, i_users, n_items, args.top_m, **kw)
        out[name] = {"seconds": round(time.perf_counter() - t0, 2), "nnz": int(indptr[-1]),
                     "peak_rss_mib_so_far": round(peak_rss_mib(), 1)}
    report["kernels"] = out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benches.hnsw", description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--M", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--ef", type=int, nargs="+", default=[100, 200, 400])
    parser.add_argument("--build-threads", type=int, default=-1, help="-1: all cores")
    parser.add_argument("--interactions", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=0, help="default: interactions / 50")
    parser.add_argument("--top-m", type=int, default=100)
    parser.add_argument("--swing-max-users", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-hnsw", action="store_true")
    parser.add_argument("--skip-kernels", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    from export.data.synthetic import make_catalog

    report: dict = {}
    t0 = time.perf_counter()
    catalog = make_catalog(args.items, args.dim, args.clusters, seed=args.seed)
    report["catalog_s"] = round(time.perf_counter() - t0, 2)
    if not args.skip_hnsw:
        bench_hnsw(args, catalog, report)
        h = report["hnsw"]
        print(f"HNSW {h['items']} x {h['dim']} (M={h['M']}, efC={h['ef_construction']}): build {h['build_s']} s "
              f"({h['build_threads']} threads), save {h['save_s']} s, load {h['load_s']} s, {h['index_mib']} MiB; "
              f"exact numpy {h['exact_numpy_ms_per_query']} ms/query")
        for row in h["by_ef"]:
            print(f"  ef={row['ef']:<5} recall@100 vs exact {row['recall@100']:.4f}  "
                  f"p50 {row['p50_ms']:.3f} ms  p99 {row['p99_ms']:.3f} ms (1 thread)")
    if not args.skip_kernels:
        bench_kernels(args, catalog, report)
        k = report["kernels"]
        print(f"log: {k['interactions']} interactions, {k['users']} users, {k['items']} items "
              f"(max item degree {k['max_item_degree']}), generated in {k['generate_s']} s, CSR {k['csr_s']} s")
        for name in ("itemcf", "swing"):
            print(f"  {name:7} {k[name]['seconds']} s, {k[name]['nnz']} neighbours, "
                  f"peak RSS so far {k[name]['peak_rss_mib_so_far']} MiB")
    save_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
