"""The served ANN index: every item, the user-query routing nodes, and the HNSW parameters.

Issue 28: the index holds the whole catalogue. Every item has a vector (:func:`served_vectors`): the two-tower's
for items with at least ``hnsw.min_count`` rows in its training sample, and the features-only vector (the same
item tower with the id replaced by the unknown code 0, which its id dropout trains for) for the rest, whose id
embeddings never moved from their random start. ``item_emb.npy`` holds those served vectors, so the exact
referee, the filtered exact path and the candidate features score the vectors the index holds. (Issue 16 had
kept items under ``min_count`` out of the index: at 10^6 items it held 1.2% of the catalogue.)

Graph search for user queries. User vectors lie away from the item vectors (cosine between the two centroids
0.2; on the 10^5 catalogue the items sit within a cone, mean norm of their centroid 0.81), and HNSW over items
alone finds 0.71 / 0.82 of exact search's top-100 at ef 100 / 400 for user queries, against 0.99 for item
queries. So the graph is made query-aware: :func:`routing_vectors`, a seeded sample of ``hnsw.routing_nodes``
(export.config.HnswConfig) training users' vectors, are inserted as extra nodes (labels ``n_items ..``) and then
marked deleted. hnswlib still walks through deleted nodes but never returns them (``mark_deleted``), so a user
query enters the graph among user nodes whose links lead to their best items, and results hold only items, with
no filter callback in Python (a ``knn_query(filter=...)`` callable costs a GIL round trip per visited node: 4 ms
a query at 10^5 items).
Measured in docs/results/2026-12-06-catalogue-reachable.md.

HNSW parameters (``M`` at build time, ``ef`` at query time) are chosen on the validation cut
(:func:`choose_hnsw`): for each grid point, recall@k against exact inner-product search over every item's
vector and the single-query p50 latency, for the validation users' vectors; the fastest point reaching
``target_recall`` wins (within 10% of the fastest p50, the smallest ef, then M; the most accurate point when
none reaches it). The manifest's ``ann_index`` records the choice, the curve, the item and routing-node counts;
the recall server searches with that ``ef`` unless its config sets one.
"""
from __future__ import annotations

import time
from pathlib import Path

import hnswlib
import numpy as np


def informative_items(train_counts: np.ndarray, min_count: int) -> np.ndarray:
    """Dense ids (int32, ascending) of the items with at least ``min_count`` rows in the two-tower's training
    sample (the items whose tower vector is served); every item when ``min_count`` is 0."""
    counts = np.asarray(train_counts)
    return np.flatnonzero(counts >= max(min_count, 0)).astype(np.int32)


def served_vectors(tower_emb: np.ndarray, content_emb: np.ndarray, train_counts: np.ndarray | None,
                   min_count: int) -> np.ndarray:
    """Every item's served vector, float32 [n_items, dim]: the tower's (``tower_emb``, id included) for the items
    with at least ``min_count`` training rows, the features-only one (``content_emb``) for the others. No
    training counts (towers from elsewhere): the tower's for every item."""
    if train_counts is None:
        return np.ascontiguousarray(tower_emb, np.float32)
    trained = np.asarray(train_counts) >= max(min_count, 0)
    return np.where(trained[:, None], tower_emb, content_emb).astype(np.float32)


def routing_vectors(user_vecs: np.ndarray, users: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """The routing nodes: the vectors of a seeded sample of at most ``n`` of ``users`` (dense ids of users with a
    history), float32 [<= n, dim]."""
    users = np.asarray(users)
    if n <= 0 or users.size == 0:
        return np.zeros((0, user_vecs.shape[1]), np.float32)
    pick = np.sort(np.random.default_rng(seed).choice(users, min(n, users.size), replace=False))
    return np.ascontiguousarray(user_vecs[pick], np.float32)


def build_hnsw(emb: np.ndarray, ids: np.ndarray, M: int, ef_construction: int, threads: int,
               path: Path | None = None, routing: np.ndarray | None = None) -> hnswlib.Index:
    """An inner-product HNSW index over ``emb[ids]``, labels = the dense ids, plus the ``routing`` vectors as
    nodes labelled ``len(emb) ..`` and marked deleted (walked through, never returned; module docstring);
    saved to ``path`` if given."""
    n_routing = 0 if routing is None else int(routing.shape[0])
    index = hnswlib.Index(space="ip", dim=emb.shape[1])
    index.init_index(max_elements=max(int(ids.size) + n_routing, 1), M=M, ef_construction=ef_construction,
                     random_seed=0)
    index.set_num_threads(threads)
    if ids.size:
        index.add_items(emb[ids], ids.astype(np.int64))
    if n_routing:
        labels = np.arange(emb.shape[0], emb.shape[0] + n_routing, dtype=np.int64)
        index.add_items(np.ascontiguousarray(routing, np.float32), labels)
        for label in labels.tolist():   # a few thousand calls, once per build
            index.mark_deleted(label)
    if path is not None:
        index.save_index(str(path))
    return index


def routing_count(index: hnswlib.Index, n_items: int) -> int:
    """Routing nodes held by ``index`` (its labels at or above ``n_items``)."""
    return int(index.get_current_count()) - int(np.count_nonzero(np.asarray(index.get_ids_list()) < n_items))


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
                built: dict[int, hnswlib.Index] | None = None,
                routing: np.ndarray | None = None) -> tuple[dict, hnswlib.Index]:
    """HNSW ``M`` and ``ef`` for ``emb[ids]`` (with the ``routing`` nodes) chosen on ``queries`` (see the module
    docstring), and the chosen index: ``({"M", "ef", "ef_construction", "k", "target_recall", "chosen": row,
    "curve": [rows]}, index)``. ``built`` maps an ``M`` to an index already built over the same vectors (reused,
    not rebuilt)."""
    k = min(k, int(ids.size))
    exact = exact_topk(emb, ids, queries, k)
    curve, indexes = [], {}
    for M in M_grid:
        t0 = time.perf_counter()
        index = indexes[M] = (built or {}).get(M) or build_hnsw(emb, ids, M, ef_construction, threads,
                                                                  routing=routing)
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
    """A saved index (its routing nodes included: hnswlib keeps the saved capacity when it is larger)."""
    index = hnswlib.Index(space="ip", dim=dim)
    index.load_index(str(path), max_elements=n_items)
    return index


def validation_queries(user_vecs: np.ndarray, valid, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(users, their vectors)``: a seeded sample of at most ``n`` users with validation rows."""
    users = np.unique(valid.user)
    if users.size > n:
        users = np.sort(np.random.default_rng(seed).choice(users, n, replace=False))
    return users, user_vecs[users]


def select_on_validation(build, ds, user_vecs: np.ndarray, valid, config, seed: int = 0
                         ) -> tuple[dict, hnswlib.Index, np.ndarray]:
    """:func:`choose_hnsw` for a recall build of the validation cut (``export.recall.build.RecallBuild``) and
    every user's vector from it (``export.recall.build.user_vectors``, passed in so that this module, which the
    build imports, does not import the build back): every item is indexed, with the build's routing nodes
    (:func:`build_routing`, the same sample as the build drew); the queries are the vectors of up to ``hnsw.select_users``
    users with validation rows (seeded sample); the index the build already holds is reused for ``hnsw.M``.
    Empty grids keep ``hnsw.M`` / ``ef_eval``. Returns ``(choice, index, indexed ids)``; the choice also
    carries ``min_count`` (which items serve their tower vector) and ``items`` / ``routing_nodes``."""
    h = config.hnsw
    _, queries = validation_queries(user_vecs, valid, h.select_users, seed)
    current = load_hnsw(build.path / "items.hnsw", build.item_emb.shape[1], ds.n_items)
    routing = (build.routing if getattr(build, "routing", None) is not None
               else build_routing(user_vecs, build.history, h.routing_nodes))
    ids = np.arange(ds.n_items, dtype=np.int32)
    choice, index = choose_hnsw(build.item_emb, ids, queries, list(h.M_grid) or [h.M], list(h.ef_grid) or [h.ef_eval],
                                h.ef_construction, h.target_recall, config.threads, built={h.M: current},
                                routing=routing)
    return ({**choice, "min_count": h.min_count, "items": int(ids.size),
             "routing_nodes": routing_count(index, ds.n_items)}, index, ids)


def build_routing(user_vecs: np.ndarray, history: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """A recall build's routing nodes (:func:`routing_vectors`) from every user's vector and the build's
    history codes (int32 [n_users, N]): training users (those with a history) first, topped up with the others
    when fewer than ``n`` have one, so that every cut of one dataset holds ``min(n, n_users)`` nodes (the
    manifest's ``routing_nodes``, which the recall server checks, is written once for both cuts)."""
    has = (history > 0).any(axis=1)
    active = routing_vectors(user_vecs, np.flatnonzero(has), n, seed)
    rest = routing_vectors(user_vecs, np.flatnonzero(~has), n - active.shape[0], seed)
    return np.concatenate([active, rest]) if rest.shape[0] else active
