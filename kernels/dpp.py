"""Fast greedy MAP inference for a DPP (Chen, Zhang & Zhou, NeurIPS 2018).

"Fast Greedy MAP Inference for Determinantal Point Process to Improve
Recommendation Diversity". The kernel is the quality/diversity decomposition

    L = diag(q) S diag(q),   q_i = exp(alpha * rel_i),   S_ij = <e_i, e_j>

with unit-norm embedding rows e_i (so S_ii = 1; an all-zero row is treated as
orthogonal to everything, keeping S_ii = 1). Greedy MAP adds, at each step,
the item with the largest log det(L_{Y+i}) - log det(L_Y) = log d_i^2, where
d_i^2 is the Schur complement of L_ii given the selected set Y. The paper's
trick keeps one incremental Cholesky row c_i per candidate so that adding
item j to Y updates every candidate in O(|Y|):

    e_i   = (L_ji - <c_j, c_i>) / d_j,     c_i <- [c_i, e_i],     d_i^2 -= e_i^2

L_ji = q_j q_i <e_j, e_i> is computed on the fly (L is never formed), giving
O(N k D + N k^2) for k picks. The walk stops early when the best d_j^2 falls
below ``epsilon`` (the next item would add (almost) no volume, e.g. it
duplicates a picked one or the embedding rank is exhausted), so fewer than k
items can come back. ``epsilon`` is absolute: gains scale with q_i^2.

Sliding window (``window = w > 0``, the paper's Algorithm 2 setting): an item
only has to be diverse w.r.t. the last w - 1 picks. Instead of the paper's
Cholesky downdate this module re-runs the incremental factorisation over the
last w - 1 picks after every pick once the window is full; the cosines to
each pick are cached when it is picked, so the rebuild is O(N w^2) per step.
Items picked earlier are never picked again.

Rounding can push d_i^2 slightly below zero (e.g. for duplicates); it is
clamped to 0 so such items simply look redundant.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from ._rerank_inputs import cosines_to, unit_columns, validate_rerank_inputs
from ._validate import check_real


@numba.njit(cache=True)
def _add_pivot(pivot, col, q, pivot_sims, chol, d2, skip, dot):
    # One incremental-Cholesky step: condition every candidate on ``pivot``,
    # writing row ``col`` of chol ([step, item] layout). The pivot's own
    # entries chol[:col, pivot] and d2[pivot] must already be final;
    # pivot_sims[i] = <e_i, e_pivot>.
    n = q.shape[0]
    # <c_pivot, c_i> for all i at once, accumulated along contiguous rows
    # so it vectorises (same t order as a per-item dot product).
    for i in range(n):
        dot[i] = 0.0
    for t in range(col):
        v = chol[t, pivot]
        for i in range(n):
            dot[i] += chol[t, i] * v
    d_pivot = math.sqrt(d2[pivot])
    q_pivot = q[pivot]
    for i in range(n):
        if skip[i] or i == pivot:
            continue
        e = (q_pivot * q[i] * pivot_sims[i] - dot[i]) / d_pivot
        chol[col, i] = e
        v = d2[i] - e * e
        d2[i] = v if v > 0.0 else 0.0


@numba.njit(cache=True, nogil=True)
def condition_on(unit_t, best, n_picked, width, out, q, sims, chol, d2, picked, no_skip, dot):
    """Condition the remaining gains ``d2`` on the pick ``best`` (the ``n_picked``-th).

    While the conditioning window holds every pick so far, this is one incremental Cholesky step.
    Once it is full, d2 is rebuilt from scratch over the last ``width`` picks; picked items are
    updated too, because each window member acts as a pivot after its predecessors.
    """
    cosines_to(unit_t, best, sims[n_picked - 1])
    if n_picked <= width:
        _add_pivot(best, n_picked - 1, q, sims[n_picked - 1], chol, d2, picked, dot)
        return
    for i in range(d2.shape[0]):
        d2[i] = q[i] * q[i]
    first = n_picked - width
    for col in range(width):
        pivot = out[first + col]
        if d2[pivot] <= 0.0:
            # Cannot happen in exact arithmetic (each window member was picked with d2 >= epsilon
            # given a superset of its predecessors); guard against rounding.
            continue
        _add_pivot(pivot, col, q, sims[first + col], chol, d2, no_skip, dot)


@numba.njit(cache=True, nogil=True)
def _dpp_select(relevance, emb, k, alpha, epsilon, window):
    n = emb.shape[0]
    k = min(k, n)
    unit_t = unit_columns(emb)
    q = np.empty(n, np.float64)
    for i in range(n):
        q[i] = math.exp(alpha * np.float64(relevance[i]))
    d2 = q * q
    out = np.empty(k, np.int32)
    picked = np.zeros(n, np.bool_)
    no_skip = np.zeros(n, np.bool_)
    dot = np.empty(n, np.float64)
    # sims[s, i] = <e_i, e_{out[s]}>, filled when out[s] is picked, so the
    # window rebuild never recomputes a D-length dot product.
    sims = np.empty((max(k, 1), n), np.float64)
    # The conditioning set never exceeds min(k, w - 1) items.
    width = k if window == 0 else max(0, min(k, window - 1))
    chol = np.zeros((max(width, 1), n), np.float64)

    n_picked = 0
    while n_picked < k:
        best = -1
        best_d2 = 0.0
        for i in range(n):
            if not picked[i] and (best < 0 or d2[i] > best_d2):  # strict: lowest index on ties
                best = i
                best_d2 = d2[i]
        # d2 <= 0 would divide by zero below, whatever epsilon is.
        if best < 0 or best_d2 < epsilon or best_d2 <= 0.0:
            break
        out[n_picked] = best
        picked[best] = True
        n_picked += 1
        if n_picked == k:
            break
        condition_on(unit_t, best, n_picked, width, out, q, sims, chol, d2, picked, no_skip, dot)
    return out[:n_picked].copy()


def dpp_select(
    relevance: np.ndarray,
    emb: np.ndarray,
    k: int,
    alpha: float,
    epsilon: float = 1e-6,
    window: int = 0,
) -> np.ndarray:
    """Greedy DPP MAP selection of up to k items (see the module docstring).

    Args:
        relevance: float32[N] finite relevance scores
            (else ``ValueError("relevance contains NaN or inf")``).
        emb: float32[N, D] finite item embeddings, L2-normalised here;
            an all-zero row is orthogonal to every other item.
        k: maximum number of items; k >= N may return all N items.
        alpha: relevance sharpness in q_i = exp(alpha * rel_i); larger
            favours relevance over diversity. exp(2 * alpha * rel) must not
            overflow float64 (|alpha * rel| < ~350).
        epsilon: stop when the best remaining gain d^2 is below this (> 0).
        window: 0 = diversify against all picks; w > 0 = against the last
            w - 1 picks only (sliding window; w = 1 is pure relevance order).

    Returns:
        int32[k'] indices into the inputs in pick order; k' <= min(k, N)
        and is smaller when the gains run out (see ``epsilon``). The first
        pick is the most relevant item (for alpha > 0).
    """
    relevance, emb, k, window = validate_rerank_inputs(relevance, emb, k, window)
    alpha = check_real("alpha", alpha)
    epsilon = check_real("epsilon", epsilon, minimum=0.0, strict_minimum=True)
    if relevance.size and float(np.max(np.abs(relevance), initial=0.0)) * abs(alpha) > 350.0:
        raise ValueError("alpha * relevance must stay within +-350 so that q^2 = exp(2 alpha rel) "
                         "is finite; rescale relevance or lower alpha")
    return _dpp_select(relevance, emb, k, alpha, epsilon, window)
