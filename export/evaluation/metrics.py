"""Offline evaluation metrics (numpy only).

``auc`` matches sklearn's ``roc_auc_score`` for binary labels (tied scores
count one half); the top-k metrics take a padded prediction matrix and the
held-out truth in CSR form (``truth_items[truth_indptr[u]:truth_indptr[u+1]]``
are user ``u``'s items).
"""
from __future__ import annotations

import numpy as np


def _tied_ranks(sorted_scores: np.ndarray, block_key: np.ndarray | None = None) -> np.ndarray:
    """1-based ranks of already-sorted values, ties given their average rank.

    A new tie block starts wherever the score (or ``block_key``) changes.
    """
    m = sorted_scores.shape[0]
    change = np.empty(m, dtype=bool)
    change[0] = True
    change[1:] = sorted_scores[1:] != sorted_scores[:-1]
    if block_key is not None:
        change[1:] |= block_key[1:] != block_key[:-1]
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], m)  # exclusive
    # Positions start..end-1 hold 1-based ranks start+1..end; their mean:
    avg = (starts + 1 + ends) / 2.0
    return np.repeat(avg, ends - starts)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative).

    Labels are 0/1 (any truthy value counts as positive); tied scores count one
    half. Returns NaN when only one class is present.
    """
    y = np.asarray(labels).reshape(-1).astype(bool)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    ranks = _tied_ranks(s[order])
    pos_rank_sum = ranks[y[order]].sum()
    return float((pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Group AUC: per-group AUC averaged with weights = group size (rows).

    Only groups holding both classes take part (others have no AUC). Returns
    NaN when no group does.
    """
    y = np.asarray(labels).reshape(-1).astype(bool)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    g = np.asarray(groups).reshape(-1)
    if not (y.shape == s.shape == g.shape):
        raise ValueError("labels, scores and groups must have the same length")
    if y.shape[0] == 0:
        return float("nan")
    _, gi = np.unique(g, return_inverse=True)
    gi = gi.reshape(-1)
    order = np.lexsort((s, gi))
    gs, ss, ys = gi[order], s[order], y[order]
    n_groups = int(gi.max()) + 1
    size = np.bincount(gs, minlength=n_groups)
    n_pos = np.bincount(gs, weights=ys, minlength=n_groups)
    n_neg = size - n_pos
    # Global tied ranks within (group, score) blocks, shifted to be 1-based
    # within each group: rows of a group are contiguous after the lexsort.
    ranks = _tied_ranks(ss, block_key=gs)
    group_start = np.concatenate(([0], np.cumsum(size)[:-1]))
    ranks = ranks - group_start[gs]
    pos_rank_sum = np.bincount(gs, weights=np.where(ys, ranks, 0.0), minlength=n_groups)
    ok = (n_pos > 0) & (n_neg > 0)
    if not ok.any():
        return float("nan")
    group_auc = (pos_rank_sum[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2.0) / (n_pos[ok] * n_neg[ok])
    w = size[ok].astype(np.float64)
    return float((group_auc * w).sum() / w.sum())


def _hits_and_truth(
    pred: np.ndarray, truth_indptr: np.ndarray, truth_items: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per user: number of distinct top-k items in the truth, distinct truth size."""
    pred = np.asarray(pred)
    indptr = np.asarray(truth_indptr, dtype=np.int64)
    items = np.asarray(truth_items, dtype=np.int64)
    if pred.ndim != 2:
        raise ValueError(f"pred must be [U, K], got {pred.shape}")
    n_users = indptr.shape[0] - 1
    if pred.shape[0] != n_users:
        raise ValueError(f"pred has {pred.shape[0]} rows but truth has {n_users} users")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    top = pred[:, :k].astype(np.int64)
    width = int(max(items.max(initial=-1), top.max(initial=-1))) + 1
    # Encode (user, item) pairs as one int64 key so set operations vectorise;
    # np.unique drops duplicate predictions and duplicate truth items.
    truth_user = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(indptr))
    truth_keys = np.unique(truth_user * width + items)
    pred_user = np.repeat(np.arange(n_users, dtype=np.int64), top.shape[1])
    flat = top.reshape(-1)
    valid = flat >= 0
    pred_keys = np.unique(pred_user[valid] * width + flat[valid])
    hit_keys = pred_keys[np.isin(pred_keys, truth_keys, assume_unique=True)]
    hits = np.bincount(hit_keys // width, minlength=n_users)
    n_truth = np.bincount(truth_keys // width, minlength=n_users)
    return hits, n_truth


def recall_at_k(
    pred: np.ndarray, truth_indptr: np.ndarray, truth_items: np.ndarray, k: int
) -> float:
    """Mean over users with >= 1 truth item of |top-k ∩ truth| / |truth|.

    ``pred`` is int [U, K'] with each user's ranked items, padded with -1;
    only its first ``k`` columns count. Returns NaN when no user has truth.
    """
    hits, n_truth = _hits_and_truth(pred, truth_indptr, truth_items, k)
    has = n_truth > 0
    if not has.any():
        return float("nan")
    return float((hits[has] / n_truth[has]).mean())


def hit_rate_at_k(
    pred: np.ndarray, truth_indptr: np.ndarray, truth_items: np.ndarray, k: int
) -> float:
    """Fraction of users with >= 1 truth item that have a truth item in their top k."""
    hits, n_truth = _hits_and_truth(pred, truth_indptr, truth_items, k)
    has = n_truth > 0
    if not has.any():
        return float("nan")
    return float((hits[has] > 0).mean())


def ndcg_per_user(
    pred: np.ndarray, truth_indptr: np.ndarray, truth_items: np.ndarray, k: int
) -> np.ndarray:
    """Binary-relevance NDCG@k of every user: float64 [U], NaN for a user without truth items.

    DCG = sum over the first k predictions that are truth items of 1 / log2(position + 2) (a repeated
    prediction counts once, at its first position); the ideal DCG puts min(k, |truth|) hits first.
    ``pred`` is int [U, K'] padded with -1. Per-user values let callers compare two orderings user by
    user (paired differences and their standard error, as the ranker's choices do).
    """
    pred = np.asarray(pred)
    indptr = np.asarray(truth_indptr, dtype=np.int64)
    items = np.asarray(truth_items, dtype=np.int64)
    if pred.ndim != 2 or pred.shape[0] != indptr.shape[0] - 1:
        raise ValueError(f"pred must be [U, K] with U = {indptr.shape[0] - 1}, got {pred.shape}")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    top = pred[:, :k].astype(np.int64)
    n_users, width = top.shape
    span = int(max(items.max(initial=-1), top.max(initial=-1))) + 1
    truth_user = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(indptr))
    truth_keys = np.unique(truth_user * span + items)
    n_truth = np.bincount(truth_keys // span, minlength=n_users)
    keys = np.arange(n_users, dtype=np.int64)[:, None] * span + top
    # first occurrence of each prediction in its row (later repeats earn nothing)
    sorted_keys = np.sort(keys, axis=1)
    first = np.ones_like(top, dtype=bool)
    if width > 1:
        order = np.argsort(keys, axis=1, kind="stable")
        dup_sorted = np.zeros_like(top, dtype=bool)
        dup_sorted[:, 1:] = sorted_keys[:, 1:] == sorted_keys[:, :-1]
        np.put_along_axis(first, order, ~dup_sorted, axis=1)
    hit = (top >= 0) & first & np.isin(keys, truth_keys)
    discount = 1.0 / np.log2(np.arange(2, width + 2))
    dcg = hit @ discount
    ideal_cum = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    idcg = ideal_cum[np.minimum(n_truth, k)]
    out = np.full(n_users, np.nan)
    has = n_truth > 0
    out[has] = dcg[has] / idcg[has]
    return out


def ndcg_at_k(
    pred: np.ndarray, truth_indptr: np.ndarray, truth_items: np.ndarray, k: int
) -> float:
    """Mean over users with >= 1 truth item of binary-relevance NDCG@k (see :func:`ndcg_per_user`).

    ``pred`` is int [U, K'] padded with -1. Returns NaN when no user has truth.
    """
    per_user = ndcg_per_user(pred, truth_indptr, truth_items, k)
    has = ~np.isnan(per_user)
    return float(per_user[has].mean()) if has.any() else float("nan")


def concentration(lists: np.ndarray) -> dict:
    """How spread the served lists are (rows of dense item ids, -1 padded): ``distinct`` items across all lists,
    and ``top_share``, the share of lists that hold the most common item. A ranker that collapses onto the head
    shows here before it shows in NDCG (issue 30's guard: at least 600 distinct items over ML-100K's 943 users'
    10-lists, no item in more than 20% of them)."""
    lists = np.asarray(lists)
    n_lists = int((lists >= 0).any(axis=1).sum()) if lists.ndim == 2 else 0
    if n_lists == 0:
        return {"lists": 0, "distinct": 0, "top_share": 0.0}
    # each list counts an item once (a -1 pad is not an item)
    per_list = [np.unique(row[row >= 0]) for row in lists]
    counts = np.bincount(np.concatenate(per_list).astype(np.int64))
    return {"lists": n_lists, "distinct": int((counts > 0).sum()), "top_share": float(counts.max() / n_lists)}
