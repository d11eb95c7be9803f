"""Recall tables built at export time besides ItemCF and Swing (``export.recall.i2i``): next-item
transitions, popular per demographic segment, content neighbours of cold items, blocklist, item statistics.

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

from export.data.dataset import Dataset, Interactions
from kernels.next_item import next_item_topm, occurrences, sequence_csr


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


def content_table(content_emb: np.ndarray, ds: Dataset, train: Interactions, top_m: int,
                  block_bytes: int = 64 << 20, threads: int = 2, exact_pairs: int = 1 << 30) -> dict[str, np.ndarray]:
    """``i2i_content.npz``: per item, the ``top_m`` *cold* items (no training interaction) nearest in content space.

    ``content_emb`` are item-tower vectors computed with the id code dropped (features only), so they
    depend only on the item's features: items with equal features (``item_cat``, ``item_bag`` and, when the data
    has one, the content vector ``item_content``) share one table row, which keeps the table small at 10^6 items
    when the features are categorical only. With content vectors every item has its own row::

        row      int32 [n_items]  item -> table row
        indptr   int64 [R + 1]    CSR over rows
        indices  int32            cold dense item ids, most similar first (equal features: smaller id first)
        scores   float32          cosine of the content vectors

    Exact search by blocked matmul over the distinct feature rows (R x distinct cold rows x dim) while that is at
    most ``exact_pairs`` scores; beyond it (content vectors at 10^5 items and more) an HNSW index over the
    distinct cold rows (inner product, M 16, ef max(2 top_m, 100), ``threads`` threads) finds each row's nearest.
    """
    n = ds.n_items
    content = ds.item_content
    if content is not None:     # continuous vectors: every item's features are its own
        row = np.arange(n, dtype=np.int32)
        first = np.arange(n)
    else:
        feats = np.concatenate([ds.item_cat.reshape(n, -1).astype(np.int64), ds.item_bag.reshape(n, -1).astype(np.int64),
                                np.zeros((n, 1), np.int64)], axis=1)
        _, first, row = np.unique(feats, axis=0, return_index=True, return_inverse=True)
        row = row.reshape(-1).astype(np.int32)
    vec = content_emb[first].astype(np.float32)
    vec /= np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
    n_rows = first.size
    cold = np.flatnonzero(np.bincount(train.item, minlength=n) == 0).astype(np.int32)
    if cold.size == 0 or top_m < 1:
        return {"row": row, "indptr": np.zeros(n_rows + 1, np.int64), "indices": np.empty(0, np.int32),
                "scores": np.empty(0, np.float32)}
    order = np.argsort(row[cold], kind="stable")     # cold items grouped by row, ids ascending inside
    cold_sorted, cold_rows = cold[order], row[cold][order]
    groups, start, size = np.unique(cold_rows, return_index=True, return_counts=True)
    gvec = np.ascontiguousarray(vec[groups])
    m = min(top_m, groups.size)                      # every group holds >= 1 item, so m groups fill top_m
    block = max(1, block_bytes // (4 * groups.size))
    index = None
    if n_rows * groups.size > exact_pairs:
        import hnswlib

        index = hnswlib.Index(space="ip", dim=gvec.shape[1])
        index.init_index(max_elements=groups.size, M=16, ef_construction=200, random_seed=0)
        index.set_num_threads(threads)
        index.add_items(gvec, np.arange(groups.size, dtype=np.int64))
        index.set_ef(max(2 * m, 100))
        block = 1 << 16
    indptr = np.zeros(n_rows + 1, np.int64)
    out_ids, out_scores = [], []
    for s in range(0, n_rows, block):
        if index is not None:
            labels, dist = index.knn_query(vec[s:s + block], k=m)
            top, top_sim = labels.astype(np.int64), (1.0 - dist).astype(np.float32)
        else:
            sim = vec[s:s + block] @ gvec.T
            top = np.argpartition(-sim, m - 1, axis=1)[:, :m] if m < groups.size else np.tile(np.arange(m), (len(sim), 1))
            top_sim = np.take_along_axis(sim, top, 1)
        rank = np.argsort(-top_sim, axis=1, kind="stable")
        top, top_sim = np.take_along_axis(top, rank, 1), np.take_along_axis(top_sim, rank, 1)
        if m >= top_m and (size[top] == 1).all():   # one cold item per group (content vectors): no expansion
            out_ids.append(cold_sorted[start[top[:, :top_m]]].reshape(-1))
            out_scores.append(top_sim[:, :top_m].astype(np.float32).reshape(-1))
            indptr[s + 1:s + len(top) + 1] = indptr[s] + top_m * np.arange(1, len(top) + 1)
            continue
        for r in range(len(top)):
            sz = size[top[r]]
            need = int(np.searchsorted(np.cumsum(sz), top_m)) + 1   # groups needed to reach top_m items
            sz, sel = sz[:need], top[r, :need]
            pos = np.repeat(start[sel] - np.cumsum(sz) + sz, sz) + np.arange(sz.sum())
            out_ids.append(cold_sorted[pos[:top_m]])
            out_scores.append(np.repeat(top_sim[r, :need], sz)[:top_m].astype(np.float32))
            indptr[s + r + 1] = indptr[s + r] + min(int(sz.sum()), top_m)
    return {"row": row, "indptr": indptr, "indices": np.concatenate(out_ids).astype(np.int32),
            "scores": np.concatenate(out_scores).astype(np.float32)}


def sequence_tables(inter: Interactions, n_users: int, n_items: int) -> tuple[np.ndarray, ...]:
    """The next-item kernel's inputs: each user's items in time order and their occurrences by item
    (``kernels.next_item``), ``(seq_indptr, seq_items, occ_indptr, occ_user, occ_off)``."""
    seq = sequence_csr(inter.user.astype(np.int32, copy=False), inter.item.astype(np.int32, copy=False),
                       inter.timestamp.astype(np.int64, copy=False), n_users)
    return (*seq, *occurrences(*seq, n_items))


def transition_table(inter: Interactions, n_users: int, n_items: int, top_m: int, span: int = 3
                     ) -> dict[str, np.ndarray]:
    """``i2i_next.npz``: next-item transitions, CSR like the ItemCF table (rows: source item).

    Per user, items in time order; every ordered pair (a at t, b at t + d) with 1 <= d <= ``span`` adds
    1 / d to the weight of a -> b. A row keeps its ``top_m`` heaviest targets, scores normalised by the
    row's total outgoing weight (an estimate of P(b soon after a)); ties: smaller id first. The Numba
    kernel (``kernels.next_item``) builds it bit for bit as the vectorised numpy build did, in O(span *
    len(inter)) plus the rows' sorts, and by ranges of source items for a distributed build.
    """
    indptr, indices, scores = next_item_topm(*sequence_tables(inter, n_users, n_items), n_items, top_m, span)
    return {"indptr": indptr, "indices": indices, "scores": scores}


def item_stats(inter: Interactions, n_items: int, recent_days: float) -> dict[str, np.ndarray]:
    """``item_stats.npz``: per item, its interaction ``count`` and ``recent_count`` (rows in the last
    ``recent_days`` days before the data's latest timestamp), float32 [n_items] each."""
    count = np.bincount(inter.item, minlength=n_items).astype(np.float32)
    if len(inter) == 0:
        return {"count": count, "recent_count": count.copy()}
    recent = inter.timestamp >= int(inter.timestamp.max()) - recent_days * 86400
    return {"count": count,
            "recent_count": np.bincount(inter.item[recent], minlength=n_items).astype(np.float32)}
