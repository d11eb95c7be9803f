"""Recall tables built at export time besides ItemCF: Swing, popular per demographic segment, blocklist.

``popular_segments.npz`` (read by ``recall_server.state``) maps a user's profile codes to a segment and the
segment to its most popular training-period items::

    fields       int32 [F]        columns of the user profile (``user_cat``) that define the segment
    code_bucket  int32 [F, V]     per field: profile code -> bucket (code 0 = unknown -> bucket 0)
    radix        int64 [F]        key = sum_f code_bucket[f, cat[fields[f]]] * radix[f]
    indptr       int64 [S + 1]    CSR over segment keys 0..S-1
    indices      int32            dense item ids, most popular in the segment first

Numeric fields (every raw value parses as a number, e.g. age) are bucketed by ``edges``
(bucket 1 + number of edges <= value); other fields use their code as the bucket.
"""
from __future__ import annotations

import numpy as np

from export.dataset import Dataset, Interactions
from kernels.csr import build_csr
from kernels.swing import swing_topm


def interaction_csrs(train: Interactions, n_users: int, n_items: int):
    """user->items and item->users CSR structures of the training interactions."""
    u_indptr, u_items, _ = build_csr(train.user.astype(np.int32), train.item.astype(np.int32), n_users)
    i_indptr, i_users, _ = build_csr(train.item.astype(np.int32), train.user.astype(np.int32), n_items)
    return u_indptr, u_items, i_indptr, i_users


def swing_table(train: Interactions, n_users: int, n_items: int, top_m: int, alpha: float,
                user_damping: float, max_users: int) -> dict[str, np.ndarray]:
    """Swing top-M neighbours (CSR) from the training interactions, via the Numba kernel."""
    indptr, indices, scores = swing_topm(*interaction_csrs(train, n_users, n_items), n_items, top_m,
                                         alpha=alpha, user_damping=user_damping,
                                         max_users_per_item=max_users or None)
    return {"indptr": indptr, "indices": indices, "scores": scores}


def _numeric(values: list[str]) -> np.ndarray | None:
    try:
        return np.array([float(v) for v in values], np.float64)
    except ValueError:
        return None


def segment_spec(ds: Dataset, fields: list[str], edges: list[float]) -> dict[str, np.ndarray]:
    """``fields``, ``code_bucket`` and ``radix`` of the segment key (see the module docstring)."""
    unknown = [f for f in fields if f not in ds.user_cat_names]
    if unknown:
        raise ValueError(f"segment_fields: {', '.join(unknown)} not among the user fields "
                         f"{', '.join(ds.user_cat_names) or '(none)'}")
    cols = [ds.user_cat_names.index(f) for f in fields]
    width = max([ds.user_cat_vocab[c] for c in cols], default=1)
    code_bucket = np.zeros((len(cols), width), np.int32)
    n_buckets = []
    for r, c in enumerate(cols):
        vocab = ds.user_cat_vocab[c]
        raw = ds.user_cat_values[c] if c < len(ds.user_cat_values) else []
        values = _numeric(raw) if len(raw) == vocab - 1 and raw else None
        if values is not None:
            code_bucket[r, 1:vocab] = 1 + np.searchsorted(np.asarray(edges, np.float64), values, side="right")
            n_buckets.append(len(edges) + 2)
        else:
            code_bucket[r, :vocab] = np.arange(vocab)
            n_buckets.append(vocab)
    radix = np.cumprod([1] + n_buckets[:-1]).astype(np.int64) if cols else np.zeros(0, np.int64)
    return {"fields": np.asarray(cols, np.int32), "code_bucket": code_bucket, "radix": radix,
            "n_segments": np.int64(np.prod(n_buckets) if cols else 1)}


def segment_keys(spec: dict[str, np.ndarray], user_cat: np.ndarray) -> np.ndarray:
    """Segment key of every profile row of ``user_cat`` [U, n_fields]."""
    keys = np.zeros(user_cat.shape[0], np.int64)
    for r, col in enumerate(spec["fields"]):
        keys += spec["code_bucket"][r, user_cat[:, col]].astype(np.int64) * spec["radix"][r]
    return keys


def popular_segments(ds: Dataset, train: Interactions, fields: list[str], edges: list[float],
                     top_n: int) -> dict[str, np.ndarray]:
    """The ``popular_segments.npz`` arrays: each segment's top ``top_n`` training items by count."""
    spec = segment_spec(ds, fields, edges)
    n_segments = int(spec.pop("n_segments"))
    user_key = segment_keys(spec, ds.user_cat)
    pair, count = np.unique(user_key[train.user] * ds.n_items + train.item.astype(np.int64),
                            return_counts=True)  # sparse: (segment, item) pairs that occur
    seg, item = pair // ds.n_items, pair % ds.n_items
    order = np.lexsort((item, -count, seg))
    seg, item = seg[order], item[order]
    start = np.searchsorted(seg, np.arange(n_segments + 1))
    rank = np.arange(seg.size) - start[seg]
    keep = rank < top_n
    indptr = np.searchsorted(seg[keep], np.arange(n_segments + 1)).astype(np.int64)
    return {**spec, "indptr": indptr, "indices": item[keep].astype(np.int32)}


def blocklist_ids(ds: Dataset, external: list[str]) -> np.ndarray:
    """Dense ids of the configured blocklist (sorted int32); an unknown id is an error naming it."""
    index = {item: i for i, item in enumerate(ds.item_ids.tolist())}
    missing = [x for x in external if x not in index]
    if missing:
        raise ValueError(f"blocklist: unknown item ids {', '.join(missing[:5])}")
    return np.unique(np.asarray([index[x] for x in external], np.int32)).astype(np.int32)
