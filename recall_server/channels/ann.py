"""Two-tower retrieval: the user tower's vector against the HNSW index of item vectors (inner product).

The index and the user tower are core state (``recall_server.state``), loaded for every snapshot.
"""
from __future__ import annotations

import numpy as np

from recall_server.channels import RecallQuery, empty


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
    ``state.ann_max_overfetch``. The shared index is never changed here: hnswlib searches with max(ef, k),
    and knn_query runs without the GIL, so a per-request set_ef would race with other searches."""
    if k <= 0:
        return empty()
    # filtering still leaves k; the index may hold fewer items than the catalogue (export.ann_index)
    k = min(k + min(query.exclude.size, state.ann_max_overfetch), state.ann_items or state.n_items)
    vector = user_vector(state, query)
    labels, distances = state.index.knn_query(vector.reshape(1, -1), k=k)
    # hnswlib's "ip" distance is 1 - <u, v>
    return labels[0].astype(np.int32), (1.0 - distances[0]).astype(np.float32)
