"""Recall channels. Each is ``channel(state, query, k) -> (dense ids int32, scores float32)``, best first.

A channel may return excluded items; the merge filters them once for all channels. Adding a channel
is one function here plus its name in ``RecallConfig.channels`` and a quota.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from kernels.i2i_score import i2i_score
from recall_server.state import RecallState


@dataclass(frozen=True)
class RecallQuery:
    """One user's request, resolved against the snapshot."""

    user_code: int                # dense id + 1; 0 for an unknown user
    user_cat: np.ndarray          # int32 [n_user_fields] profile codes (zeros when unknown)
    hist: np.ndarray              # int32 item codes, oldest first, at most history_len
    hist_weights: np.ndarray      # float32 recency weights aligned with hist (latest = 1)
    exclude: np.ndarray           # int32 dense ids never to return (seen + request + blocklist), sorted


def _padded_history(hist: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros((1, length), dtype=np.int64)
    tail = hist[-length:]
    if tail.size:
        out[0, length - tail.size:] = tail
    return out


def user_vector(state: RecallState, query: RecallQuery) -> np.ndarray:
    """The user-tower embedding [dim] for the query (ONNX, one row)."""
    feeds = {
        "user_code": np.array([query.user_code], dtype=np.int64),
        "user_cat": query.user_cat.astype(np.int64).reshape(1, -1),
        "hist": _padded_history(query.hist, state.history_len),
    }
    return state.user_tower.run(None, feeds)[0][0]


def ann(state: RecallState, query: RecallQuery, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-tower retrieval: user vector against the HNSW index of item vectors (inner product)."""
    k = min(k + query.exclude.size, state.n_items)  # over-fetch so filtering still leaves k
    if k <= 0:
        return np.empty(0, np.int32), np.empty(0, np.float32)
    vector = user_vector(state, query)
    if state.index.ef < k:
        state.index.set_ef(k)
    labels, distances = state.index.knn_query(vector.reshape(1, -1), k=k)
    # hnswlib's "ip" distance is 1 - <u, v>
    return labels[0].astype(np.int32), (1.0 - distances[0]).astype(np.float32)


def itemcf(state: RecallState, query: RecallQuery, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Item-to-item: the user's recent items' ItemCF neighbours, weighted by recency."""
    if query.hist.size == 0 or k <= 0:
        return np.empty(0, np.int32), np.empty(0, np.float32)
    indptr, indices, scores = state.itemcf
    return i2i_score(query.hist - 1, query.hist_weights, indptr, indices, scores, k, query.exclude)


def swing(state: RecallState, query: RecallQuery, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Item-to-item: the user's recent items' Swing neighbours, weighted by recency."""
    if query.hist.size == 0 or k <= 0:
        return np.empty(0, np.int32), np.empty(0, np.float32)
    indptr, indices, scores = state.swing
    return i2i_score(query.hist - 1, query.hist_weights, indptr, indices, scores, k, query.exclude)


def content(state: RecallState, query: RecallQuery, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cold start for new items: items with no training interactions whose content vector (item tower
    without the id) is nearest to the user's recent items', weighted by recency (``i2i_content.npz``)."""
    if query.hist.size == 0 or k <= 0 or state.content is None:
        return np.empty(0, np.int32), np.empty(0, np.float32)
    row, indptr, indices, scores = state.content
    items = query.hist.astype(np.int64) - 1
    rows = np.where(items >= 0, row[np.maximum(items, 0)], -1).astype(np.int32)  # unknown ids: ignored
    return i2i_score(rows, query.hist_weights, indptr, indices, scores, k, query.exclude)


def segment_popular(state: RecallState, query: RecallQuery, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cold start: the most popular items among users of the same demographic segment (e.g. age x gender).

    An unknown user (all profile codes 0) falls in the "unknown" segment, usually empty: global popular
    and ANN on the empty profile cover it.
    """
    seg = state.segments
    if k <= 0:
        return np.empty(0, np.int32), np.empty(0, np.float32)
    codes = query.user_cat[seg["fields"]]
    width = seg["code_bucket"].shape[1]
    codes = np.where((codes >= 0) & (codes < width), codes, 0)  # an out-of-vocabulary code is unknown
    key = int((seg["code_bucket"][np.arange(codes.size), codes] * seg["radix"]).sum())
    ids = seg["indices"][seg["indptr"][key]:seg["indptr"][key + 1]][: k + query.exclude.size]
    return ids, np.linspace(1.0, 0.0, ids.size, endpoint=False, dtype=np.float32)


def popular(state: RecallState, query: RecallQuery, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Most popular items in the training period: coverage and the fallback when nothing else fires."""
    ids = state.popular[: k + query.exclude.size]
    return ids, np.linspace(1.0, 0.0, ids.size, endpoint=False, dtype=np.float32)


Channel = Callable[[RecallState, RecallQuery, int], tuple[np.ndarray, np.ndarray]]

CHANNELS: dict[str, Channel] = {"ann": ann, "itemcf": itemcf, "swing": swing, "popular": popular,
                                 "segment_popular": segment_popular, "content": content}
