"""Vectorised numpy / scipy versions of the kernels, written for speed: the peers ``benches.kernel_timings`` times.

The references in ``kernels/reference.py`` are oracles written to be obviously right (dense matrices,
determinants per candidate, Python dicts); timing a Numba kernel against them overstates its gain. These
compute the same results as the kernels (``tests/test_numpy_peers.py`` checks each against its kernel) the
way a numpy programmer would to make them fast: sparse products, incremental updates, one sort for all rows.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def unit_rows(emb: np.ndarray) -> np.ndarray:
    """float64 rows scaled to unit norm; zero rows stay zero."""
    e = emb.astype(np.float64)
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    return np.divide(e, norms, out=np.zeros_like(e), where=norms > 0)


def topm_rows(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int, top_m: int):
    """CSR top-M per row of a sparse (row, col, value) list: value > 0, no diagonal, by float32 value
    descending then column ascending; one lexsort for every row at once."""
    v32 = vals.astype(np.float32)
    keep = (v32 > 0) & (rows != cols)
    rows, cols, v32 = rows[keep], cols[keep], v32[keep]
    order = np.lexsort((cols, -v32, rows))
    rows, cols, v32 = rows[order], cols[order], v32[order]
    starts = np.searchsorted(rows, np.arange(n_rows))
    rank = np.arange(rows.size) - starts[rows]
    take = rank < top_m
    indptr = np.r_[0, np.cumsum(np.bincount(rows[take], minlength=n_rows))].astype(np.int64)
    return indptr, cols[take].astype(np.int32), v32[take]


def itemcf_topm(user_indptr: np.ndarray, user_items: np.ndarray, n_items: int, top_m: int,
                popularity_damping: float = 0.5, iuf: bool = True):
    """ItemCF top-M (``kernels.itemcf.itemcf_topm``'s result) with one scipy sparse product A^T W A."""
    n_users = user_indptr.shape[0] - 1
    a = sp.csr_matrix((np.ones(user_items.shape[0]), user_items, user_indptr), shape=(n_users, n_items))
    deg_u = np.diff(user_indptr).astype(np.float64)
    w = np.divide(1.0, np.log1p(deg_u), out=np.zeros_like(deg_u), where=deg_u > 0) if iuf else np.ones(n_users)
    co = (a.T @ sp.diags(w) @ a).tocoo()
    pop = np.asarray(a.sum(axis=0)).ravel()
    sim = co.data / (pop[co.row] * pop[co.col]) ** popularity_damping
    return topm_rows(co.row, co.col, sim, n_items, top_m)


def mmr_select(relevance: np.ndarray, emb: np.ndarray, k: int, lam: float, window: int = 0) -> np.ndarray:
    """Greedy MMR with the max-similarity vector updated per pick (one O(n) step), not recomputed."""
    n = relevance.shape[0]
    k = min(k, n)
    e = unit_rows(emb)
    rel = relevance.astype(np.float64)
    out = np.empty(k, np.int32)
    if k == 0:
        return out
    picked = np.zeros(n, bool)
    sims = np.empty((k, n))
    max_sim = np.full(n, -np.inf)
    for step in range(k):
        if step == 0:
            val = rel.copy()
        else:
            val = lam * rel - (1.0 - lam) * max_sim
        val[picked] = -np.inf
        best = int(np.argmax(val))
        out[step] = best
        picked[best] = True
        sims[step] = e @ e[best]
        if window == 0:
            np.maximum(max_sim, sims[step], out=max_sim)
        else:
            max_sim = sims[max(0, step - window + 1): step + 1].max(axis=0)
    return out


def dpp_select(relevance: np.ndarray, emb: np.ndarray, k: int, alpha: float, epsilon: float = 1e-6) -> np.ndarray:
    """Greedy DPP MAP (Chen et al. 2018, window 0): incremental Cholesky rows, all candidates per step."""
    n = relevance.shape[0]
    k = min(k, n)
    e = unit_rows(emb)
    q = np.exp(alpha * relevance.astype(np.float64))
    d2 = q * q  # L_ii = q_i^2 (S_ii = 1)
    c = np.zeros((k, n))
    out: list[int] = []
    picked = np.zeros(n, bool)
    for step in range(k):
        gains = np.where(picked, -np.inf, d2)
        best = int(np.argmax(gains))
        if gains[best] < epsilon:
            break
        out.append(best)
        picked[best] = True
        s_best = e @ e[best]
        s_best[best] = 1.0
        l_row = q * s_best * q[best]
        ci = (l_row - c[:step, best] @ c[:step]) / np.sqrt(d2[best])
        c[step] = ci
        d2 = d2 - ci * ci
    return np.array(out, np.int32)


def i2i_lookup(history: np.ndarray, weights: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
               scores: np.ndarray, candidates: np.ndarray, n_items: int) -> np.ndarray:
    """Each candidate's weighted neighbour similarity to the history (``kernels.i2i_lookup`` with one
    weighting): every (history item, neighbour) pair gathered at once, summed into a dense catalogue-sized
    array by ``bincount``, read at the candidates."""
    keep = (history >= 0) & (weights != 0)
    h, w = history[keep], weights[keep].astype(np.float64)
    starts, ends = indptr[h], indptr[h + 1]
    lengths = ends - starts
    pos = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    dense = np.bincount(indices[pos], weights=np.repeat(w, lengths) * scores[pos], minlength=n_items)
    inside = (candidates >= 0) & (candidates < n_items)
    out = np.zeros(candidates.shape[0], np.float32)
    out[inside] = dense[candidates[inside]]
    return out


def history_similarity(unit: np.ndarray, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """(mean, max, last) cosine of each candidate to the history (``kernels.history_similarity``): one
    [C, H] product of the gathered rows."""
    out = np.zeros((candidates.shape[0], 3), np.float32)
    if history.size == 0:
        return out
    hist = unit[history]
    cand = unit[candidates]
    sims = cand @ hist.T
    centre = hist.sum(0, dtype=np.float64)
    norm = np.linalg.norm(centre)
    if norm > 1e-12:
        out[:, 0] = cand @ (centre / norm).astype(np.float32)
    out[:, 1] = sims.max(1)
    out[:, 2] = sims[:, -1]
    return out
