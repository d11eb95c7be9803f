"""Two-tower retrieval: the user tower's vector against the HNSW index of item vectors (inner product).

The index and the user tower are core state (``recall_server.state``), loaded for every snapshot.
"""
from __future__ import annotations

import numpy as np

from recall_server.channels import RecallQuery, empty
from recall_server.filtering import exact_top, fetch_size, restrict

APPLIES_FILTER = True  # exact scores over the eligible items, or HNSW over-fetch (recall_server.filtering)


def _padded_history(hist: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros((1, length), dtype=np.int64)
    tail = hist[-length:]
    if tail.size:
        out[0, length - tail.size:] = tail
    return out


def user_vector(state, query: RecallQuery) -> np.ndarray:
    """The user-tower embedding [dim] for the query (ONNX, one row)."""
    feeds = {
        "user_code": np.array([query.user_code], dtype=np.int64),
        "user_cat": query.user_cat.astype(np.int64).reshape(1, -1),
        "hist": _padded_history(query.hist, state.history_len),
    }
    return state.user_tower.run(None, feeds)[0][0]


def recall(state, query: RecallQuery, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` items by inner product with the user vector, over-fetched by the exclude list's size up to
    ``state.ann_max_overfetch``; from HNSW, or exactly over the index's items when it is small
    (``state.ann_exact``, ``RecallConfig.ann_exact_items``). Under a filter (``query.eligible``) only
    eligible items: scored exactly when at most ``state.ann_exact_max`` are eligible, else over-fetched
    from HNSW and restricted. The shared index
    is never changed here: hnswlib searches with max(ef, k), and knn_query runs without the GIL, so a
    per-request set_ef would race with other searches."""
    if k <= 0:
        return empty()
    # filtering still leaves k; the index may hold fewer items than the catalogue (export.recall.ann_index)
    k = min(k + min(query.exclude.size, state.ann_max_overfetch), state.ann_items or state.n_items)
    vector = user_vector(state, query)
    eligible = query.eligible
    if eligible is not None and eligible.count <= state.ann_exact_max:
        return exact_top(eligible.item_vectors(state.item_emb), eligible.ids, vector, k)
    if eligible is None and state.ann_exact is not None:  # a small index: exact is cheaper than HNSW here
        ids, vectors = state.ann_exact
        return exact_top(vectors, ids, vector, k)
    fetch = min(state.ann_items or state.n_items, fetch_size(k, eligible, state.filter_overfetch, state.n_items))
    try:
        labels, distances = state.index.knn_query(vector.reshape(1, -1), k=fetch)
    except RuntimeError:  # hnswlib found fewer than `fetch` neighbours (a very large over-fetch): search exactly
        if eligible is None:
            raise
        return exact_top(eligible.item_vectors(state.item_emb), eligible.ids, vector, k)
    # hnswlib's "ip" distance is 1 - <u, v>
    return restrict(labels[0].astype(np.int32), (1.0 - distances[0]).astype(np.float32), eligible)
