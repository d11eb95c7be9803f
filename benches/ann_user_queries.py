"""HNSW against exact search over the whole index, for served user-tower queries (issue 28), with faiss IVF as a
peer on the same vectors.

    python -m benches.ann_user_queries (--snapshot DIR | --synthetic N_ITEMS [--save-vectors NPZ] | --vectors NPZ)
        [--queries 500] [--ef 50,100,200,400,800] [--nprobe 4,8,16,32] [--routing 2000|none] [--no-items-only]
        [--M 16] [--ef-construction 200] [--probe-routing] [--nlist N,..] [--ivf-train-per-list 64] [--ivf-hnsw]
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
* ``faiss ivf``: ``IndexIVFFlat`` (inner product, ``--nlist`` lists, default ``4 sqrt(n)``, k-means on up to
  ``--ivf-train-per-list`` points a list), per nprobe, one thread (pip install faiss-cpu, the ``bench`` extra);
* ``ivf (hnsw coarse, numpy scan)`` (``--ivf-hnsw``): the same lists as each faiss IVF (its centroids and
  inverted lists), the items stored sorted by list so that each list is one contiguous slice; a query finds its
  ``nprobe`` lists with an hnswlib HNSW over the centroids (inner product, M 32, ef_construction 200, ef
  ``max(2 nprobe, 64)``, or ``max(--coarse-ef, nprobe)``) and scores those slices exactly with numpy. Its rows
  also give ``coarse_recall``: the share of the exact top-``nprobe`` centroids (by inner product) that the
  coarse HNSW found. Then ``ivf (exact coarse, numpy scan)``: the same scans, the lists found by one
  matrix-vector product over every centroid (a few thousand: tens of microseconds).

``--routing none``: no routing-node HNSW (with ``--no-items-only``: no HNSW at all, e.g. for the IVF rows only).
``--ef-construction``: HNSW build parameter for the indexes built here (a snapshot's comes from its manifest).

``--probe-routing`` (``--synthetic`` / ``--vectors``): for each routing-node index, why routing nodes cost time.
On the same graph (the deleted marks lifted) and the first 50 queries, a ``knn_query`` filter that rejects the
routing labels and counts its calls: hnswlib calls it for every node that enters the candidate queue, i.e. the
nodes the search may expand (those popped before it stops), so its counts bound the items and routing nodes
  expanded per query from above (the results
equal the deleted-marks search: both reject the same nodes from the result heap on the same code path). Then
``hnsw (... routing visible, filtered after)`` rows: routing nodes not deleted, so they count in the ef result
heap and end the search like items; searched with ``k = ef`` and the routing labels dropped after, first 100
items kept. ``routing_probe`` in the JSON (``routing_closer_than_kth_exact``): per ef, the mean count of routing nodes with a higher inner product
with the query than its exact ef-th best item (the ones a search with ef full of true neighbours still expands).

Memory (``rss_mb``): the process's resident-set growth over the build, a rough figure.

Each row: recall@100 vs exact and single-query p50 / p99 (ms, one thread, one query at a time as the server
searches). Timings depend on the machine and its load; build times use every thread.
"""
from __future__ import annotations

import argparse
import os
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


def _rss_mb() -> float:
    """Resident set of this process, MB (Linux ``/proc/self/statm``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


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
                                                      "(default: export's hnsw.routing_nodes; 'none': no routing "
                                                      "index)")
    parser.add_argument("--M", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=200, help="--synthetic / --vectors: HNSW build "
                                                                           "ef_construction")
    parser.add_argument("--probe-routing", action="store_true", help="count expanded routing nodes and measure "
                                                                     "routing nodes filtered after the search")
    parser.add_argument("--nlist", default="", help="faiss IVF list counts (default 4 sqrt(n))")
    parser.add_argument("--ivf-train-per-list", type=int, default=64, help="k-means points per IVF list")
    parser.add_argument("--ivf-hnsw", action="store_true", help="also an IVF with an HNSW coarse quantizer and "
                                                                 "exact numpy list scans, on each faiss IVF's lists")
    parser.add_argument("--coarse-ef", type=int, default=0, help="--ivf-hnsw: ef of the HNSW over the centroids "
                                                                 "(default max(2 nprobe, 64))")
    parser.add_argument("--no-items-only", action="store_true", help="skip building the items-only HNSW")
    parser.add_argument("--threads", type=int, default=2, help="build threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    from export.config import HnswConfig
    from export.recall.ann_index import build_hnsw, build_routing, exact_topk, load_hnsw, overlap

    efs = [int(x) for x in args.ef.split(",") if x]
    report: dict = {"rows": []}
    built: list[tuple[str, object, np.ndarray | None]] = []     # (row name, index, routing vectors) searched below
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
        built.append((f"hnsw (snapshot, M {M}, {routing_n} routing nodes)", index, None))
    else:
        if args.synthetic:
            vec = synthetic_vectors(args.synthetic, args.seed)
            if args.save_vectors:
                np.savez(args.save_vectors, **vec)
        else:
            vec = dict(np.load(args.vectors))
        emb, users, history = vec["emb"].astype(np.float32), vec["users"].astype(np.float32), vec["history"]
        n, dim = emb.shape
        M, efc = args.M, args.ef_construction
        rng = np.random.default_rng(args.seed)
        valid = np.asarray(vec["valid_users"])
        qu = np.sort(rng.choice(valid, min(args.queries, valid.size), replace=False))
        queries = users[qu]
        history = history.copy()
        history[qu] = 0            # query users are not training users here: never routing nodes
        report.update(source=args.vectors or f"synthetic {args.synthetic}",
                      trained_share=round(float(np.mean(vec["trained"])), 4))
        counts = [] if args.routing == "none" else ([int(x) for x in args.routing.split(",") if x]
                                                    or [HnswConfig().routing_nodes])
        for r in counts:
            t0, rss0 = time.perf_counter(), _rss_mb()
            routing = build_routing(users, history, r)
            routing = routing[(routing @ queries.T).max(axis=1) < 0.9999] if routing.size else routing
            idx = build_hnsw(emb, np.arange(n, dtype=np.int32), M, efc, args.threads, routing=routing)
            build_s, rss = time.perf_counter() - t0, _rss_mb() - rss0
            report.setdefault("builds", []).append({"index": "hnsw", "M": M, "ef_construction": efc,
                                                    "routing": int(routing.shape[0]), "build_s": round(build_s, 1),
                                                    "rss_mb": round(rss)})
            built.append((f"hnsw (M {M}, efc {efc}, {routing.shape[0]} routing nodes, build {build_s:.0f} s, "
                          f"+{rss:.0f} MB)", idx, routing))
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

    def ivf_hnsw_rows(ivf, nlist: int, nprobes: list[int], kmeans_s: float, faiss) -> None:
        """IVF over the faiss index's lists with an HNSW coarse quantizer and exact numpy scans (docstring)."""
        import hnswlib

        t0 = time.perf_counter()
        centroids = np.ascontiguousarray(ivf.quantizer.reconstruct_n(0, nlist), np.float32)
        invlists = ivf.invlists
        sizes = np.array([invlists.list_size(i) for i in range(nlist)], np.int64)
        order = np.concatenate([faiss.rev_swig_ptr(invlists.get_ids(i), int(sizes[i])).copy()
                                for i in range(nlist) if sizes[i]]).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        assert order.size == n and np.unique(order).size == n     # every item in exactly one list
        sorted_emb = np.ascontiguousarray(emb[order])
        coarse = hnswlib.Index(space="ip", dim=dim)
        coarse.init_index(max_elements=nlist, M=32, ef_construction=200, random_seed=0)
        coarse.set_num_threads(args.threads)
        coarse.add_items(centroids, np.arange(nlist))
        coarse.set_num_threads(1)
        build_s = time.perf_counter() - t0
        report.setdefault("builds", []).append({"index": "ivf (hnsw coarse, numpy scan)", "nlist": nlist,
                                                "build_s_after_kmeans": round(build_s, 1),
                                                "memory_mb": round((sorted_emb.nbytes + order.nbytes) / 2**20)})
        name = (f"ivf (hnsw coarse, numpy scan; {nlist} lists, kmeans {kmeans_s:.0f} s + {build_s:.0f} s, "
                f"{(sorted_emb.nbytes + order.nbytes) / 2**20:.0f} MB)")

        def hnsw_lists(q, nprobe: int) -> np.ndarray:
            return coarse.knn_query(q.reshape(1, -1), k=nprobe)[0][0]

        def exact_lists(q, nprobe: int) -> np.ndarray:
            return np.argpartition(-(centroids @ q), nprobe - 1)[:nprobe]

        def search(q, nprobe: int, find=hnsw_lists) -> np.ndarray:
            lists = find(q, nprobe)
            starts, ends = offsets[lists], offsets[lists + 1]
            scores = np.concatenate([sorted_emb[a:b] @ q for a, b in zip(starts.tolist(), ends.tolist())])
            top = np.argpartition(-scores, 99)[:100] if scores.size > 100 else np.arange(scores.size)
            lens = ends - starts
            cum = np.cumsum(lens)
            which = np.searchsorted(cum, top, side="right")
            return order[starts[which] + top - (cum[which] - lens[which])]
        csims = queries @ centroids.T
        for nprobe in nprobes:
            cef = max(args.coarse_ef, nprobe) if args.coarse_ef else max(2 * nprobe, 64)
            coarse.set_ef(cef)
            got = [search(q, nprobe) for q in queries]
            rec = overlap(got, exact)
            found = coarse.knn_query(queries, k=nprobe)[0]
            best = np.argpartition(-csims, nprobe - 1, axis=1)[:, :nprobe]
            row = {"index": name, "nprobe": nprobe, "coarse_ef": cef, "recall@100_vs_exact": round(rec, 4),
                   "coarse_recall": round(overlap(found, best), 4), **_lat(lambda q: search(q, nprobe), timed)}
            report["rows"].append(row)
            print(row, flush=True)
        exact_name = name.replace("hnsw coarse", "exact coarse")
        for nprobe in nprobes:
            got = [search(q, nprobe, exact_lists) for q in queries]
            rec = overlap(got, exact)
            row = {"index": exact_name, "nprobe": nprobe, "recall@100_vs_exact": round(rec, 4),
                   **_lat(lambda q: search(q, nprobe, exact_lists), timed)}
            report["rows"].append(row)
            print(row, flush=True)

    def hnsw_rows(name: str, idx) -> None:
        idx.set_num_threads(1)
        for ef in efs:
            idx.set_ef(max(ef, 100))
            got, _ = idx.knn_query(queries, k=100)
            row = {"index": name, "ef": ef, "recall@100_vs_exact": round(overlap(got, exact), 4),
                   **_lat(lambda q: idx.knn_query(q.reshape(1, -1), k=100), timed)}
            report["rows"].append(row)
            print(row, flush=True)

    def probe_routing(name: str, idx, routing: np.ndarray) -> None:
        """Expanded routing nodes per query, and routing nodes visible in the graph with the results filtered
        after the search (the module docstring's ``--probe-routing``)."""
        r = routing.shape[0]
        labels = list(range(n, n + r))
        for label in labels:
            idx.unmark_deleted(label)
        rsims = queries @ routing.T                    # [q, r]
        kth_ids = exact_topk(emb, ids, queries, max(efs + [100]))
        kth_sims = np.sort(np.einsum("qd,qkd->qk", queries, emb[kth_ids]), axis=1)[:, ::-1]
        probe = queries[:50]
        calls = np.zeros(2, np.int64)

        def reject_routing(label: int) -> bool:
            calls[int(label >= n)] += 1
            return label < n
        for ef in efs:
            e = max(ef, 100)
            idx.set_ef(e)
            calls[:] = 0
            got = np.stack([idx.knn_query(q.reshape(1, -1), k=100, filter=reject_routing)[0][0] for q in probe])
            closer = float(np.mean((rsims > kth_sims[:, e - 1:e]).sum(axis=1)))
            row = {"index": name, "ef": ef, "probe_queries": int(probe.shape[0]),
                   "queued_items_per_query": round(float(calls[0]) / probe.shape[0], 1),
                   "queued_routing_per_query": round(float(calls[1]) / probe.shape[0], 1),
                   "routing_closer_than_kth_exact": round(closer, 1),
                   "recall@100_filter_probe": round(overlap(got, exact[:probe.shape[0]]), 4)}
            report.setdefault("routing_probe", []).append(row)
            print(row, flush=True)
        for ef in efs:                                  # routing nodes live, dropped after the search
            e = max(ef, 100)
            idx.set_ef(e)

            def search(q2, e=e):
                lab, _ = idx.knn_query(q2, k=e)
                return [row[row < n][:100] for row in lab]
            got = search(queries)
            short = float(np.mean([g.size < 100 for g in got]))
            rec = overlap(got, exact)
            row = {"index": name.replace("routing nodes", "routing nodes visible, filtered after"), "ef": ef,
                   "recall@100_vs_exact": round(rec, 4), "share_under_100_items": round(short, 4),
                   **_lat(lambda q: search(q.reshape(1, -1)), timed)}
            report["rows"].append(row)
            print(row, flush=True)
        for label in labels:
            idx.mark_deleted(label)

    for name, idx, routing in built:
        hnsw_rows(name, idx)
        if args.probe_routing and routing is not None and routing.shape[0]:
            probe_routing(name, idx, routing)
    built.clear()
    if not args.no_items_only:
        t0, rss0 = time.perf_counter(), _rss_mb()
        plain = build_hnsw(emb, ids, M, efc, args.threads)
        hnsw_rows(f"hnsw (items only, M {M}, efc {efc}, build {time.perf_counter() - t0:.0f} s, "
                  f"+{_rss_mb() - rss0:.0f} MB)", plain)
        del plain
    nprobes = [int(x) for x in args.nprobe.split(",") if x]     # empty (--nprobe ''): no IVF peer
    try:
        import faiss
    except ImportError:
        faiss = None
        print("faiss not installed (pip install faiss-cpu): no IVF peer", file=sys.stderr)
    nlists = [int(x) for x in args.nlist.split(",") if x] or [max(1, int(4 * np.sqrt(n)))]
    for nlist in (nlists if faiss is not None and nprobes else []):
        faiss.omp_set_num_threads(args.threads)
        t0, rss0 = time.perf_counter(), _rss_mb()
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(emb[np.random.default_rng(args.seed).choice(n, min(n, args.ivf_train_per_list * nlist),
                                                              replace=False)])
        ivf.add(emb)
        build_s, rss = time.perf_counter() - t0, _rss_mb() - rss0
        report.setdefault("builds", []).append({"index": "faiss ivf-flat", "nlist": nlist, "build_s": round(build_s, 1),
                                                "rss_mb": round(rss)})
        name = f"faiss ivf-flat ({nlist} lists, build {build_s:.0f} s, +{rss:.0f} MB)"
        faiss.omp_set_num_threads(1)
        for nprobe in nprobes:
            ivf.nprobe = nprobe
            got = ivf.search(queries, 100)[1]
            row = {"index": name, "nprobe": nprobe, "recall@100_vs_exact": round(overlap(got, exact), 4),
                   **_lat(lambda q: ivf.search(q.reshape(1, -1), 100), timed)}
            report["rows"].append(row)
            print(row, flush=True)
        if args.ivf_hnsw:
            ivf_hnsw_rows(ivf, nlist, nprobes, build_s, faiss)
        del ivf
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
