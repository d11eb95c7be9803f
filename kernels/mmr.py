"""Maximal Marginal Relevance re-ranking (Carbonell & Goldstein, 1998).

Greedy: the first pick is the most relevant item; each later pick maximises

    lam * rel(i) - (1 - lam) * max_{j in S'} cos(i, j)

over the items not yet picked, where S' is every picked item (window = 0) or
only the last ``window`` picks (a sliding window: an item only has to differ
from what the user sees nearby). Ties go to the lowest index.
"""
from __future__ import annotations

import numba
import numpy as np

from ._rerank_inputs import cosines_to, unit_columns, validate_rerank_inputs
from ._validate import check_real


@numba.njit(cache=True, nogil=True)
def update_max_sim(unit_t, best, step, window, sims, max_sim):
    """After picking ``best`` at ``step``: refresh each item's max cosine to the selected set.

    window == 0 keeps a running max (row 0 of ``sims`` is scratch); window > 0 stores the cosines of
    every pick in row ``step`` and recomputes the max over the last ``window`` picks.
    """
    n = max_sim.shape[0]
    row = step if window > 0 else 0
    cosines_to(unit_t, best, sims[row])
    if window == 0:
        for i in range(n):
            if sims[0, i] > max_sim[i]:
                max_sim[i] = sims[0, i]
    else:
        first = max(0, step - window + 1)
        for i in range(n):
            max_sim[i] = sims[first, i]
        for r in range(first + 1, step + 1):
            for i in range(n):
                if sims[r, i] > max_sim[i]:
                    max_sim[i] = sims[r, i]


@numba.njit(cache=True, nogil=True)
def _mmr_select(relevance, emb, k, lam, window):
    n = emb.shape[0]
    k = min(k, n)
    out = np.empty(k, np.int32)
    if k == 0:
        return out
    unit_t = unit_columns(emb)
    picked = np.zeros(n, np.bool_)
    # Running max cosine to the picked set, updated with one new column per
    # pick: O(N * D) per step instead of re-scanning S'.
    max_sim = np.full(n, -np.inf)
    # With a window the max must forget old picks, so the per-pick cosines
    # are kept (row s = cosines to the s-th pick) and the max is re-taken
    # over the window's rows: O(N * window) per step.
    sims = np.empty((k if window > 0 else 1, n), np.float64)

    best = 0
    for i in range(1, n):
        if relevance[i] > relevance[best]:
            best = i
    for step in range(k):
        if step > 0:
            best = -1
            best_val = -np.inf
            for i in range(n):
                if picked[i]:
                    continue
                val = lam * np.float64(relevance[i]) - (1.0 - lam) * max_sim[i]
                if best < 0 or val > best_val:  # strict: ties keep the lowest index
                    best = i
                    best_val = val
        out[step] = best
        picked[best] = True
        if step == k - 1:
            break
        update_max_sim(unit_t, best, step, window, sims, max_sim)
    return out


def mmr_select(
    relevance: np.ndarray,
    emb: np.ndarray,
    k: int,
    lam: float,
    window: int = 0,
) -> np.ndarray:
    """Greedy MMR selection of k items (see the module docstring).

    Args:
        relevance: float32[N] finite relevance scores
            (else ``ValueError("relevance contains NaN or inf")``).
        emb: float32[N, D] finite item embeddings. Rows are L2-normalised
            here (callers may pass raw vectors); an all-zero row counts as
            orthogonal to every item.
        k: number of items to pick; k >= N returns all N items, re-ordered.
        lam: trade-off in [0, 1]; 1 = pure relevance, 0 = pure diversity
            (after the first, most relevant, pick).
        window: 0 = penalise similarity to every pick; w > 0 = only to the
            last w picks.

    Returns:
        int32[min(k, N)] indices into the inputs, in pick order.

    Cost O(N * k * D) (+ O(N * k * window) with a window).
    """
    relevance, emb, k, window = validate_rerank_inputs(relevance, emb, k, window)
    lam = check_real("lam", lam, minimum=0.0, maximum=1.0)
    return _mmr_select(relevance, emb, k, lam, window)
