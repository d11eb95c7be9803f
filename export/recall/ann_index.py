"""The served ANN index: which items it holds and which HNSW parameters it is built and searched with.

Issue 16: on the 10^6-item synthetic catalogue about 800k items never appear in the two-tower's training
sample. Their id embeddings keep their random initialisation, so their vectors differ only by the content
features and crowd together; HNSW's graph degenerates around such near-duplicates (0.41 of exact search's
top-100 found). Those vectors carry no collaborative information either, so the index holds only items with
at least ``min_count`` training rows in the two-tower's sample (:func:`informative_items`); items left out
are still recalled by the i2i, popularity and content (cold-start) channels, and keep their row in
``item_emb.npy`` for the candidate features and the rerank.

HNSW parameters (``M`` at build time, ``ef`` at query time) are chosen on the validation cut
(:func:`choose_hnsw`): for each grid point, recall@k against exact inner-product search over the indexed
vectors and the single-query p50 latency, for the validation users' vectors; the fastest point reaching
``target_recall`` wins (within 10% of the fastest p50, the smallest ef, then M; the most accurate point when
none reaches it). The manifest's ``ann_index`` records the
choice, the curve and the item count; the recall server searches with that ``ef`` unless its config sets one.
"""
from __future__ import annotations

import time
from pathlib import Path

import hnswlib
import numpy as np


def informative_items(train_counts: np.ndarray, min_count: int) -> np.ndarray:
    """Dense ids (int32, ascending) of the items with at least ``min_count`` rows in the two-tower's training
    sample; every item when ``min_count`` is 0."""
    counts = np.asarray(train_counts)
    return np.flatnonzero(counts >= max(min_count, 0)).astype(np.int32)


def build_hnsw(emb: np.ndarray, ids: np.ndarray, M: int, ef_construction: int, threads: int,
               path: Path | None = None) -> hnswlib.Index:
    """An inner-product HNSW index over ``emb[ids]``, labels = the dense ids; saved to ``path`` if given."""
    index = hnswlib.Index(space="ip", dim=emb.shape[1])
    index.init_index(max_elements=max(int(ids.size), 1), M=M, ef_construction=ef_construction, random_seed=0)
    index.set_num_threads(threads)
    if ids.size:
        index.add_items(emb[ids], ids.astype(np.int64))
    if path is not None:
        index.save_index(str(path))
    return index


def exact_topk(emb: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact inner-product top-``k`` (dense ids, unordered within the k) of each query over ``emb[ids]``."""
    sub = emb[ids]
    k = min(k, ids.size)
    out = np.empty((queries.shape[0], k), np.int64)
    block = max(1, (1 << 26) // max(ids.size, 1))   # ~256 MB of float32 scores per block
    for s in range(0, queries.shape[0], block):
        scores = queries[s:s + block] @ sub.T
        out[s:s + block] = ids[np.argpartition(-scores, k - 1, axis=1)[:, :k]]
    return out


def overlap(got: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each row of ``exact`` found in the same row of ``got``."""
    if not exact.size:
        return 0.0
    return float(np.mean([np.intersect1d(g, e).size / e.size for g, e in zip(got, exact)]))


def search_profile(index: hnswlib.Index, queries: np.ndarray, exact: np.ndarray, k: int, ef: int,
                   timed: int = 200) -> dict:
    """recall@k vs ``exact`` and single-query latency (ms, one thread) of ``index`` searched with ``ef``."""
    index.set_ef(max(ef, k))
    index.set_num_threads(1)
    got, _ = index.knn_query(queries, k=k)
    ms = []
    for q in queries[:timed]:           # one query at a time, as the server searches
        t0 = time.perf_counter()
        index.knn_query(q.reshape(1, -1), k=k)
        ms.append((time.perf_counter() - t0) * 1000.0)
    return {"ef": int(ef), f"recall@{k}_vs_exact": round(overlap(got, exact), 4),
            "p50_ms": round(float(np.percentile(ms, 50)), 4), "p99_ms": round(float(np.percentile(ms, 99)), 4)}


def choose_hnsw(emb: np.ndarray, ids: np.ndarray, queries: np.ndarray, M_grid: list[int], ef_grid: list[int],
                ef_construction: int, target_recall: float, threads: int, k: int = 100,
                built: dict[int, hnswlib.Index] | None = None) -> tuple[dict, hnswlib.Index]:
    """HNSW ``M`` and ``ef`` for ``emb[ids]`` chosen on ``queries`` (see the module docstring), and the chosen
    index: ``({"M", "ef", "ef_construction", "k", "target_recall", "chosen": row, "curve": [rows]}, index)``.
    ``built`` maps an ``M`` to an index already built over the same vectors (reused, not rebuilt)."""
    k = min(k, int(ids.size))
    exact = exact_topk(emb, ids, queries, k)
    curve, indexes = [], {}
    for M in M_grid:
        t0 = time.perf_counter()
        index = indexes[M] = (built or {}).get(M) or build_hnsw(emb, ids, M, ef_construction, threads)
        build_s = round(time.perf_counter() - t0, 2)
        for ef in ef_grid:
            curve.append({"M": int(M), "build_s": build_s, **search_profile(index, queries, exact, k, ef)})
    key = f"recall@{k}_vs_exact"
    ok = [row for row in curve if row[key] >= target_recall]
    if ok:   # single-query timings are noisy: points within 10% of the fastest tie, the cheapest (ef, M) wins
        fastest = min(r["p50_ms"] for r in ok)
        chosen = min((r for r in ok if r["p50_ms"] <= 1.1 * fastest), key=lambda r: (r["ef"], r["M"]))
    else:
        chosen = max(curve, key=lambda r: (r[key], -r["p50_ms"]))
    return ({"M": chosen["M"], "ef": chosen["ef"], "ef_construction": int(ef_construction), "k": k,
             "target_recall": target_recall, "chosen": chosen, "curve": curve, "queries": int(queries.shape[0])},
            indexes[chosen["M"]])


def load_hnsw(path: Path, dim: int, n_items: int) -> hnswlib.Index:
    """A saved index (capacity up to ``n_items``)."""
    index = hnswlib.Index(space="ip", dim=dim)
    index.load_index(str(path), max_elements=n_items)
    return index


def choose_min_count(emb: np.ndarray, train_counts: np.ndarray | None, queries: np.ndarray, min_counts: list[int],
                     M_grid: list[int], ef_grid: list[int], ef_construction: int, target_recall: float, threads: int,
                     built: dict[tuple[int, int], hnswlib.Index] | None = None) -> tuple[dict, hnswlib.Index, np.ndarray]:
    """The largest index that stays faithful to exact search: for each ``min_count`` in ascending order,
    :func:`choose_hnsw` over :func:`informative_items`; the first whose chosen point reaches ``target_recall``
    wins (the last one when none does). Returns ``(choice with "min_count" and "by_min_count", index, ids)``.
    ``built`` maps ``(min_count, M)`` to an index already built. No training counts: every item, once."""
    n_items = emb.shape[0]
    tried, last = [], None
    for mc in sorted(min_counts) if train_counts is not None else [0]:
        ids = informative_items(train_counts, mc) if train_counts is not None else np.arange(n_items, dtype=np.int32)
        if ids.size == 0:
            break
        reuse = {M: idx for (m, M), idx in (built or {}).items() if m == mc}
        choice, index = choose_hnsw(emb, ids, queries, M_grid, ef_grid, ef_construction, target_recall, threads,
                                    built=reuse)
        key = f"recall@{choice['k']}_vs_exact"
        tried.append({"min_count": mc, "items": int(ids.size), **choice["chosen"]})
        last = (choice, index, ids, mc)
        if choice["chosen"][key] >= target_recall:
            break
    choice, index, ids, mc = last
    return {**choice, "min_count": mc, "items": int(ids.size), "by_min_count": tried}, index, ids


def select_on_validation(build, ds, user_vecs: np.ndarray, valid, config, seed: int = 0
                         ) -> tuple[dict, hnswlib.Index, np.ndarray]:
    """:func:`choose_min_count` for a recall build of the validation cut (``export.recall.build.RecallBuild``)
    and every user's vector from it (``export.recall.build.user_vectors``, passed in so that this module, which
    the build imports, does not import the build back): the queries are the vectors of up to
    ``hnsw.select_users`` users with validation rows (seeded sample),
    the index the build already holds is reused for (``hnsw.min_count``, ``hnsw.M``). Empty grids keep
    ``hnsw.min_count`` / ``hnsw.M`` / ``ef_eval``. Returns ``(choice, index, indexed ids)``."""
    h = config.hnsw
    users = np.unique(valid.user)
    if users.size > h.select_users:
        users = np.sort(np.random.default_rng(seed).choice(users, h.select_users, replace=False))
    queries = user_vecs[users]
    current = load_hnsw(build.path / "items.hnsw", build.item_emb.shape[1], ds.n_items)
    return choose_min_count(build.item_emb, build.item_tower.train_counts, queries,
                            sorted({h.min_count, *h.min_count_grid}), list(h.M_grid) or [h.M],
                            list(h.ef_grid) or [h.ef_eval], h.ef_construction, h.target_recall, config.threads,
                            built={(h.min_count, h.M): current})
