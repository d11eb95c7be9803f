"""HNSW against exact search over the whole index, for served user-tower queries (issue 28), with faiss IVF as a
peer on the same vectors.

    python -m benches.ann_user_queries (--snapshot DIR | --synthetic N_ITEMS [--save-vectors NPZ] | --vectors NPZ)
        [--queries 500] [--ef 50,100,200,400,800] [--nprobe 4,8,16,32] [--routing 2000] [--no-items-only]
        [--json PATH]

``--snapshot DIR``: a snapshot or a recall build (``Snapshot.open(DIR, verify=False)``). The queries are what
the recall server searches with: the ONNX user tower over each sampled user's snapshot record
(``recall_server.channels.ann.user_vector``). Users whose vector is one of the index's routing nodes
(``export.recall.ann_index``) are left out, so the routing nodes never meet their own query.

``--synthetic N_ITEMS``: the towers trained as ``python -m export --synthetic N_ITEMS`` trains them for its
validation cut (``export.recall.build``: the user sample, every item's served vector), without the rest of the
export; the queries are the torch user tower's vectors of validation users (what the export's ANN choice
searches with); the routing nodes are ``build_routing``'s sample of the other users, so no query meets its own
node. ``--save-vectors`` keeps those vectors, ``--vectors`` measures saved ones again (no training).

Rows:

* ``exact``: numpy over every item's vector (the referee) and its single-query latency;
* ``hnsw (snapshot)`` / ``hnsw (routing)``: the served index, or one built here, over every item plus the
  routing nodes, per ef;
* ``hnsw (items only)``: the same vectors without routing nodes, built here (issue 16's graph over all items);
* ``faiss ivf``: ``IndexIVFFlat`` (inner product, ``4 sqrt(n)`` lists, k-means on up to 64 points a list),
  per nprobe, one thread (pip install faiss-cpu, the ``bench`` extra).

Each row: recall@100 vs exact and single-query p50 / p99 (ms, one thread, one query at a time as the server
searches). Timings depend on the machine and its load; build times use every thread.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from benches.report import save_json


def _lat(fn, queries: np.ndarray) -> dict:
    ms = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q)
        ms.append((time.perf_counter() - t0) * 1000.0)
    return {"p50_ms": round(float(np.percentile(ms, 50)), 4), "p99_ms": round(float(np.percentile(ms, 99)), 4)}


def served_queries(snapshot, n: int, seed: int) -> np.ndarray:
    """The served user-tower vectors of ``n`` seeded users of the snapshot, float32 [n, dim]."""
    from recall_server.channels.ann import user_vector
    from recall_server.config import RecallConfig
    from recall_server.recall import build_query
    from recall_server.state import load_state

    rcfg = RecallConfig(snapshot=str(snapshot.path), use_fitted=False)
    state = load_state(snapshot, rcfg)
    user_ids = snapshot.features.array("user_ids")
    pick = np.random.default_rng(seed).choice(user_ids.size, min(n, user_ids.size), replace=False)
    return np.stack([user_vector(state, build_query(state, rcfg, str(user_ids[u]), None, [])[0])
                     for u in np.sort(pick).tolist()]).astype(np.float32)


def synthetic_vectors(n_items: int, seed: int) -> dict:
    """Items' served vectors, validation users' and the other training users' vectors of a synthetic export's
    validation cut (see the module docstring)."""
    import torch

    from common.config import load_config
    from export.__main__ import synthetic_overrides
    from export.config import ExportConfig
    from export.data.history import last_n
    from export.data.split import make_split
    from export.models.two_tower import item_embeddings, train_two_tower, user_embeddings, user_inputs
    from export.pipeline import load_dataset
    from export.recall.ann_index import served_vectors
    from export.recall.build import sample_users

    config = load_config(ExportConfig, None, synthetic_overrides(n_items))
    torch.set_num_threads(config.threads)
    ds = load_dataset(config)
    split = make_split(ds, config.holdout_frac, valid_frac=config.valid_frac)
    tt = config.two_tower
    user_tower, item_tower, _ = train_two_tower(
        ds, sample_users(split.train, ds.n_users, max_rows=tt.max_train_rows or config.max_train_rows, seed=1), tt)
    emb = served_vectors(item_embeddings(item_tower, ds), item_embeddings(item_tower, ds, drop_ids=True),
                         item_tower.train_counts, config.hnsw.min_count)
    history = last_n(split.train, ds.n_users, tt.history_len)
    users = user_embeddings(user_tower, user_inputs(ds, history))
    return {"emb": emb, "users": users, "history": history, "valid_users": np.unique(split.valid.user),
            "trained": np.asarray(item_tower.train_counts) >= config.hnsw.min_count}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benches.ann_user_queries", description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--snapshot")
    what.add_argument("--synthetic", type=int, metavar="N_ITEMS")
    what.add_argument("--vectors", metavar="NPZ", help="vectors saved by --synthetic --save-vectors")
    parser.add_argument("--save-vectors", metavar="NPZ")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--ef", default="50,100,200,400,800")
    parser.add_argument("--nprobe", default="4,8,16,32")
    parser.add_argument("--routing", default="", help="--synthetic / --vectors: routing-node counts to build "
                                                      "(default: export's hnsw.routing_nodes)")
    parser.add_argument("--M", type=int, default=16)
    parser.add_argument("--no-items-only", action="store_true", help="skip building the items-only HNSW")
    parser.add_argument("--threads", type=int, default=2, help="build threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    from export.config import HnswConfig
    from export.recall.ann_index import build_hnsw, build_routing, exact_topk, load_hnsw, overlap

    efs = [int(x) for x in args.ef.split(",") if x]
    report: dict = {"rows": []}
    built: list[tuple[str, object]] = []     # (row name, index) searched below
    if args.snapshot:
        from common.snapshot import Snapshot

        snapshot = Snapshot.open(args.snapshot, verify=False)
        emb = np.ascontiguousarray(snapshot.load_array("item_emb.npy"), np.float32)
        n, dim = emb.shape
        ann = snapshot.manifest.get("ann_index") or {}
        M, efc = int(ann.get("M", args.M)), int(ann.get("ef_construction", 200))
        routing_n = int(ann.get("routing_nodes", 0) or 0)
        index = load_hnsw(snapshot.path / "items.hnsw", dim, n)
        queries = served_queries(snapshot, args.queries + (routing_n and args.queries // 2), args.seed)
        snapshot.close()
        if routing_n:   # users that are routing nodes query with their own node's vector: left out
            labels = list(range(n, n + routing_n))
            for label in labels:        # hnswlib does not hand out deleted nodes' vectors: unmark, read, mark
                index.unmark_deleted(label)
            routing = np.asarray(index.get_items(labels), np.float32)
            for label in labels:
                index.mark_deleted(label)
            queries = queries[~((queries @ routing.T).max(axis=1) > 0.9999)]
        queries = queries[:args.queries]
        report.update(source=str(args.snapshot), manifest_ann_index={
            k: ann.get(k) for k in ("M", "ef", "items", "routing_nodes", "min_count")})
        built.append((f"hnsw (snapshot, M {M}, {routing_n} routing nodes)", index))
    else:
        if args.synthetic:
            vec = synthetic_vectors(args.synthetic, args.seed)
            if args.save_vectors:
                np.savez(args.save_vectors, **vec)
        else:
            vec = dict(np.load(args.vectors))
        emb, users, history = vec["emb"].astype(np.float32), vec["users"].astype(np.float32), vec["history"]
        n, dim = emb.shape
        M, efc = args.M, 200
        rng = np.random.default_rng(args.seed)
        valid = np.asarray(vec["valid_users"])
        qu = np.sort(rng.choice(valid, min(args.queries, valid.size), replace=False))
        queries = users[qu]
        history = history.copy()
        history[qu] = 0            # query users are not training users here: never routing nodes
        report.update(source=args.vectors or f"synthetic {args.synthetic}",
                      trained_share=round(float(np.mean(vec["trained"])), 4))
        for r in [int(x) for x in args.routing.split(",") if x] or [HnswConfig().routing_nodes]:
            t0 = time.perf_counter()
            routing = build_routing(users, history, r)
            routing = routing[(routing @ queries.T).max(axis=1) < 0.9999] if routing.size else routing
            idx = build_hnsw(emb, np.arange(n, dtype=np.int32), M, efc, args.threads, routing=routing)
            built.append((f"hnsw (M {M}, {routing.shape[0]} routing nodes, build {time.perf_counter() - t0:.0f} s)",
                          idx))
    ids = np.arange(n, dtype=np.int32)
    report.update(items=n, dim=dim, queries=int(queries.shape[0]),
                  distinct_vectors=int(np.unique(emb.view(np.dtype((np.void, emb.dtype.itemsize * dim))).ravel()).size))
    exact = exact_topk(emb, ids, queries, 100)
    ic, uc = emb.mean(0), queries.mean(0)
    report["centroid_cosine"] = round(float(ic @ uc / np.linalg.norm(ic) / np.linalg.norm(uc)), 4)
    timed = queries[:200]

    def exact_one(q):
        s = emb @ q
        return np.argpartition(-s, 99)[:100]
    report["rows"].append({"index": "exact (numpy)", "recall@100_vs_exact": 1.0, **_lat(exact_one, timed)})

    def hnsw_rows(name: str, idx) -> None:
        idx.set_num_threads(1)
        for ef in efs:
            idx.set_ef(max(ef, 100))
            got, _ = idx.knn_query(queries, k=100)
            row = {"index": name, "ef": ef, "recall@100_vs_exact": round(overlap(got, exact), 4),
                   **_lat(lambda q: idx.knn_query(q.reshape(1, -1), k=100), timed)}
            report["rows"].append(row)
            print(row, flush=True)

    for name, idx in built:
        hnsw_rows(name, idx)
    built.clear()
    if not args.no_items_only:
        t0 = time.perf_counter()
        plain = build_hnsw(emb, ids, M, efc, args.threads)
        hnsw_rows(f"hnsw (items only, M {M}, build {time.perf_counter() - t0:.0f} s)", plain)
        del plain
    nprobes = [int(x) for x in args.nprobe.split(",") if x]     # empty (--nprobe ''): no IVF peer
    try:
        import faiss
    except ImportError:
        faiss = None
        print("faiss not installed (pip install faiss-cpu): no IVF peer", file=sys.stderr)
    if faiss is not None and nprobes:
        nlist = max(1, int(4 * np.sqrt(n)))
        faiss.omp_set_num_threads(args.threads)
        t0 = time.perf_counter()
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(emb[np.random.default_rng(args.seed).choice(n, min(n, 64 * nlist), replace=False)])
        ivf.add(emb)
        name = f"faiss ivf-flat ({nlist} lists, build {time.perf_counter() - t0:.0f} s)"
        faiss.omp_set_num_threads(1)
        for nprobe in nprobes:
            ivf.nprobe = nprobe
            got = ivf.search(queries, 100)[1]
            row = {"index": name, "nprobe": nprobe, "recall@100_vs_exact": round(overlap(got, exact), 4),
                   **_lat(lambda q: ivf.search(q.reshape(1, -1), 100), timed)}
            report["rows"].append(row)
            print(row, flush=True)
    print(f"{n} items, {report['queries']} user-tower queries, cosine(item centroid, query centroid) "
          f"{report['centroid_cosine']}")
    print(f"{'index':58}{'ef/nprobe':>10}{'recall@100':>12}{'p50 ms':>9}{'p99 ms':>9}")
    for r in report["rows"]:
        print(f"{r['index']:58}{r.get('ef', r.get('nprobe', '')):>10}{r['recall@100_vs_exact']:>12.4f}"
              f"{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}")
    save_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
