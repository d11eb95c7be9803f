"""Peers the funnel's lists are compared with on the same split (issue 11, docs/ARCHITECTURE.md §10).

* ``popularity``: the most interacted items the user has not seen;
* ``als``: implicit-feedback ALS (Hu, Koren & Volinsky 2008: confidence 1 + alpha * r, exact least-squares
  solves per user and item), 64 factors; ``alpha`` and the regularisation picked on the validation part;
* ``itemcf_recent``: exact (untruncated) ItemCF over the last 10 items with recency decay 0.9 (cosine
  similarity of the item co-occurrence vectors).

Dense numpy: meant for catalogues up to ~20,000 items (``max_items``); larger ones skip ALS and exact
ItemCF (the recall channels are their scalable versions).
"""
from __future__ import annotations

import time

import numpy as np

from export.data.dataset import Interactions
from export.evaluation.recall import truth_subset, truth_users
from export.evaluation.metrics import ndcg_at_k, recall_at_k

ALS_GRID = ((10.0, 0.1), (40.0, 1.0), (2.0, 0.01))   # (alpha, reg) tried on validation
ALS_FACTORS = 64
ALS_ITERATIONS = 12


def _user_items(known: Interactions, n_users: int, n_items: int) -> np.ndarray:
    m = np.zeros((n_users, n_items), np.float32)
    m[known.user, known.item] = 1.0
    return m


def _top(scores: np.ndarray, seen: np.ndarray, users: np.ndarray, k: int) -> np.ndarray:
    s = np.where(seen[users] > 0, -np.inf, scores)
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(s, top, 1), axis=1, kind="stable")
    return np.take_along_axis(top, order, 1).astype(np.int64)


def als_factors(r: np.ndarray, alpha: float, reg: float, factors: int = ALS_FACTORS,
                iterations: int = ALS_ITERATIONS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """User and item factors of implicit ALS on the 0/1 matrix ``r`` [U, I]."""
    rng = np.random.default_rng(seed)
    n_users, n_items = r.shape
    x = rng.normal(0, 0.01, (n_users, factors))
    y = rng.normal(0, 0.01, (n_items, factors))
    eye = reg * np.eye(factors)

    def solve(fixed: np.ndarray, rows: np.ndarray) -> np.ndarray:
        gram = fixed.T @ fixed + eye
        out = np.empty((rows.shape[0], factors))
        for u in range(rows.shape[0]):        # offline, one small solve per row
            idx = np.flatnonzero(rows[u])
            f = fixed[idx]
            a = gram + alpha * (f.T @ f)
            b = (1.0 + alpha) * f.sum(axis=0)
            out[u] = np.linalg.solve(a, b)
        return out

    for _ in range(iterations):
        x = solve(y, r)
        y = solve(x, r.T)
    return x, y


def peer_lists(known: Interactions, n_users: int, n_items: int, users: np.ndarray, k: int,
               popular: np.ndarray, als: tuple[float, float] | None, history_len: int = 10,
               decay: float = 0.9) -> dict[str, np.ndarray]:
    """Top-``k`` lists [len(users), k] of every peer for ``users``, everything seen in ``known`` excluded."""
    seen = _user_items(known, n_users, n_items)
    pop_scores = np.zeros(n_items)
    pop_scores[popular] = np.linspace(1.0, 0.5, popular.size)
    out = {"popularity": _top(np.broadcast_to(pop_scores, (users.size, n_items)), seen, users, k)}
    norms = np.sqrt(seen.sum(axis=0))
    sim = (seen.T @ seen) / np.maximum(np.outer(norms, norms), 1e-12)
    np.fill_diagonal(sim, 0.0)
    order = np.lexsort((known.timestamp, known.user))
    u_sorted, i_sorted = known.user[order], known.item[order]
    starts = np.searchsorted(u_sorted, np.arange(n_users + 1))
    scores = np.zeros((users.size, n_items), np.float32)
    for row, u in enumerate(users.tolist()):
        hist = i_sorted[starts[u]:starts[u + 1]][-history_len:]
        w = decay ** np.arange(hist.size - 1, -1, -1)
        scores[row] = w @ sim[hist]
    out["itemcf_recent"] = _top(scores, seen, users, k)
    if als is not None:
        x, y = als_factors(seen, *als)
        out["als"] = _top((x[users] @ y.T).astype(np.float32), seen, users, k)
    return out


def evaluate_peers(known: Interactions, truth: Interactions, n_users: int, n_items: int, popular: np.ndarray,
                   valid_known: Interactions | None = None, valid_truth: Interactions | None = None,
                   max_items: int = 20000) -> dict:
    """recall@10, NDCG@10 and recall@50 of each peer against ``truth``, fitted on ``known``.

    ALS's (alpha, reg) is the best of :data:`ALS_GRID` by NDCG@10 on (``valid_known`` → ``valid_truth``)."""
    t0 = time.perf_counter()
    if n_items > max_items:
        return {"skipped": f"{n_items} items > max_items {max_items}"}
    out: dict = {}
    als = None
    if valid_known is not None and valid_truth is not None and len(valid_truth):
        vi, vt, vusers, _ = truth_users(valid_truth, n_users)
        v_indptr, v_items = truth_subset(vi, vt, vusers)
        seen = _user_items(valid_known, n_users, n_items)
        grid = {}
        for alpha, reg in ALS_GRID:
            x, y = als_factors(seen, alpha, reg)
            pred = _top((x[vusers] @ y.T).astype(np.float32), seen, vusers, 10)
            grid[f"alpha={alpha:g},reg={reg:g}"] = round(ndcg_at_k(pred, v_indptr, v_items, 10), 4)
        best = max(grid, key=grid.get)
        als = next(p for p in ALS_GRID if f"alpha={p[0]:g},reg={p[1]:g}" == best)
        out["als_validation_ndcg@10"] = grid
        out["als_choice"] = best
    indptr, items, users, _ = truth_users(truth, n_users)
    sub_indptr, sub_items = truth_subset(indptr, items, users)
    rows = {}
    for name, pred in peer_lists(known, n_users, n_items, users, 50, popular, als).items():
        rows[name] = {"recall@10": round(recall_at_k(pred, sub_indptr, sub_items, 10), 4),
                      "ndcg@10": round(ndcg_at_k(pred, sub_indptr, sub_items, 10), 4),
                      "recall@50": round(recall_at_k(pred, sub_indptr, sub_items, 50), 4)}
    out["rows"] = rows
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out
