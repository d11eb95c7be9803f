"""Online item-to-item recall: score a user's recent history against a neighbour table.

    score(j) = sum_h w_h * sim(history[h], j)      over history entries h

with ``sim`` read from a CSR neighbour table (e.g. ``itemcf_topm`` output).
Per request the work is linear in the P (history item, neighbour) pairs
(gather, stable radix sort by id, segment sums, top-n heap) and nothing is
O(n_items), so a 10^6-item catalogue costs about the same as a small one.
"""
from __future__ import annotations

import numba
import numpy as np

from ._validate import check_array, check_csr, check_finite, check_int, check_real, check_same_length
from .radix import radix_argsort
from .topk_heap import heap_push, heap_sort_desc


@numba.njit(cache=True, inline="always")
def _contains_sorted(sorted_arr, x):
    k = np.searchsorted(sorted_arr, x)
    return k < sorted_arr.shape[0] and sorted_arr[k] == x


@numba.njit(cache=True, nogil=True)
def _i2i_score(history, history_weights, nbr_indptr, nbr_indices, nbr_scores, n, exclude):
    # Gather every (neighbour, weighted sim) pair. Padding (id < 0) and
    # zero-weight entries contribute nothing and are skipped.
    total = 0
    for h in range(history.shape[0]):
        item = history[h]
        if item >= 0 and history_weights[h] != 0:
            total += nbr_indptr[item + 1] - nbr_indptr[item]
    cand = np.empty(total, np.int32)
    contrib = np.empty(total, np.float64)
    k = 0
    for h in range(history.shape[0]):
        item = history[h]
        w = history_weights[h]
        if item < 0 or w == 0:
            continue
        for p in range(nbr_indptr[item], nbr_indptr[item + 1]):
            cand[k] = nbr_indices[p]
            contrib[k] = np.float64(w) * np.float64(nbr_scores[p])
            k += 1

    # Sorting the pairs by id replaces a dense O(n_items) accumulator. The
    # stable (radix) sort keeps each item's terms in history order, so the
    # float sum is reproducible.
    order = radix_argsort(cand)
    excluded = np.sort(exclude)
    cap = min(n, total)
    heap_scores = np.empty(cap, np.float32)
    heap_ids = np.empty(cap, np.int32)
    size = 0
    t = 0
    while t < total:
        j = cand[order[t]]
        s = 0.0
        while t < total and cand[order[t]] == j:
            s += contrib[order[t]]
            t += 1
        if not _contains_sorted(excluded, j):
            # Rank on the returned float32 value so output ties go by id.
            size = heap_push(heap_scores, heap_ids, size, np.float32(s), j)
    heap_sort_desc(heap_scores, heap_ids, size)
    return heap_ids[:size].copy(), heap_scores[:size].copy()


def i2i_score(
    history: np.ndarray,
    history_weights: np.ndarray,
    nbr_indptr: np.ndarray,
    nbr_indices: np.ndarray,
    nbr_scores: np.ndarray,
    n: int,
    exclude: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-n items by weighted neighbour-similarity to a user's history.

    Args:
        history: int32[N] recent item ids; ids < 0 are padding and ignored.
            A repeated item contributes once per occurrence.
        history_weights: float32[N] finite weights (e.g. ``recency_weights``);
            entries with weight 0 are ignored like padding.
        nbr_indptr, nbr_indices, nbr_scores: neighbour table CSR
            (int64[n_items+1], int32, float32), e.g. from ``itemcf_topm``.
        n: number of results wanted (>= 0).
        exclude: int32[E] ids never returned (history, already seen, ...);
            any order, duplicates and out-of-catalogue ids are fine.

    Returns:
        ``(ids int32[n'], scores float32[n'])``, n' = min(n, #candidates),
        ordered by score descending then id ascending. Candidates are all
        neighbours of non-ignored history items that are not excluded.
    """
    history = check_array("history", history, np.int32)
    history_weights = check_array("history_weights", history_weights, np.float32)
    check_same_length("history_weights", history_weights, "history", history)
    check_finite("history_weights", history_weights)
    nbr_indptr = check_array("nbr_indptr", nbr_indptr, np.int64)
    nbr_indices = check_array("nbr_indices", nbr_indices, np.int32)
    nbr_scores = check_array("nbr_scores", nbr_scores, np.float32)
    check_same_length("nbr_scores", nbr_scores, "nbr_indices", nbr_indices)
    n_items = nbr_indptr.shape[0] - 1
    if n_items < 0:
        raise ValueError("nbr_indptr must have at least one element")
    if history.size and int(history.max()) >= n_items:
        raise ValueError(f"history ids must be < {n_items} (rows of the neighbour table), "
                         f"got {int(history.max())}")
    # Validating the whole table per request would make every call O(nnz), so
    # only the rows this request reads are checked (enough to rule out
    # out-of-bounds reads); ``check_neighbor_table`` checks it all at load.
    rows = history[history >= 0]
    if rows.size:
        lo, hi = nbr_indptr[rows], nbr_indptr[rows + 1]
        if lo.min() < 0 or hi.max() > nbr_indices.shape[0] or np.any(lo > hi):
            raise ValueError("nbr_indptr is not a valid row-pointer array for the history rows")
    n = check_int("n", n, minimum=0)
    exclude = check_array("exclude", exclude, np.int32)
    return _i2i_score(history, history_weights, nbr_indptr, nbr_indices, nbr_scores, n, exclude)


def check_neighbor_table(nbr_indptr: np.ndarray, nbr_indices: np.ndarray,
                         nbr_scores: np.ndarray, n_items: int) -> None:
    """Fully validate a neighbour table once (e.g. when a snapshot is loaded).

    ``i2i_score`` only does O(1) structural checks per call; this one checks
    dtypes, monotone row pointers, id range and finite scores.
    """
    nbr_indptr = check_array("nbr_indptr", nbr_indptr, np.int64)
    nbr_indices = check_array("nbr_indices", nbr_indices, np.int32)
    nbr_scores = check_array("nbr_scores", nbr_scores, np.float32)
    check_same_length("nbr_scores", nbr_scores, "nbr_indices", nbr_indices)
    n_items = check_int("n_items", n_items, minimum=0)
    if nbr_indptr.shape[0] != n_items + 1:
        raise ValueError(f"nbr_indptr must have n_items + 1 = {n_items + 1} elements, "
                         f"got {nbr_indptr.shape[0]}")
    check_csr("nbr_indptr", nbr_indptr, "nbr_indices", nbr_indices, n_items, sorted_unique=False)
    check_finite("nbr_scores", nbr_scores)


def recency_weights(n: int, decay: float) -> np.ndarray:
    """Positional recency weights for a length-n history, oldest first.

    ``w[t] = decay ** (n - 1 - t)``: the last (most recent) position gets 1,
    the one before it ``decay``, and so on. Weights are positional, so a
    left-padded history lines up with its real items at the end.

    Args:
        n: history length (>= 0).
        decay: per-step decay in [0, 1] (1 = uniform, 0 = last item only).

    Returns:
        float32[n].
    """
    n = check_int("n", n, minimum=0)
    decay = check_real("decay", decay, minimum=0.0, maximum=1.0)
    # float64 powers then one rounding; 0.0 ** 0 == 1 keeps the last weight 1.
    return (decay ** np.arange(n - 1, -1, -1, dtype=np.float64)).astype(np.float32)
