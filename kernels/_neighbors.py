"""Shared plumbing for the item-item neighbour-table builds (ItemCF, Swing).

Both builds take the same pair of interaction CSRs, run one independent top-M
selection per item in parallel, and return the same CSR neighbour table.
"""
from __future__ import annotations

import numba
import numpy as np

from ._validate import check_array, check_csr, check_int


def validate_interactions(user_indptr, user_items, item_indptr, item_users, n_items):
    """Validate the user->items / item->users CSR pair; return arrays and sizes.

    Both CSRs must have sorted, duplicate-free rows (as produced by
    ``kernels.csr.build_csr`` and ``transpose_csr``) and the same number of
    entries. Full mutual consistency (item_users being exactly the transpose)
    is the caller's contract; checking it would cost as much as a transpose.
    """
    user_indptr = check_array("user_indptr", user_indptr, np.int64)
    user_items = check_array("user_items", user_items, np.int32)
    item_indptr = check_array("item_indptr", item_indptr, np.int64)
    item_users = check_array("item_users", item_users, np.int32)
    n_items = check_int("n_items", n_items, minimum=0)
    if item_indptr.shape[0] != n_items + 1:
        raise ValueError(
            f"item_indptr must have n_items + 1 = {n_items + 1} elements, got {item_indptr.shape[0]}"
        )
    n_users = check_csr("user_indptr", user_indptr, "user_items", user_items, n_items, sorted_unique=True)
    check_csr("item_indptr", item_indptr, "item_users", item_users, n_users, sorted_unique=True)
    if item_users.shape[0] != user_items.shape[0]:
        raise ValueError(
            f"item_users must hold as many entries as user_items ({user_items.shape[0]}), "
            f"got {item_users.shape[0]}; pass the transpose of the user CSR"
        )
    return user_indptr, user_items, item_indptr, item_users, n_items, n_users


def n_chunks_for(n_items: int, per_thread: int) -> int:
    """Number of scratch-sharing item chunks for a parallel build.

    Each chunk allocates its own O(n_items) scratch once, so there should be
    few of them; a few per thread still lets the scheduler even out skew.
    """
    return max(0, min(n_items, per_thread * numba.get_num_threads()))


@numba.njit(cache=True, parallel=True)
def compact_rows(counts, out_ids, out_scores):
    """Pack a padded [n_rows, top_m] table (valid prefix ``counts[r]``) into CSR."""
    n_rows = counts.shape[0]
    indptr = np.zeros(n_rows + 1, np.int64)
    for r in range(n_rows):
        indptr[r + 1] = indptr[r] + counts[r]
    nnz = indptr[n_rows]
    ids = np.empty(nnz, np.int32)
    scores = np.empty(nnz, np.float32)
    for r in numba.prange(n_rows):
        start = indptr[r]
        for t in range(counts[r]):
            ids[start + t] = out_ids[r, t]
            scores[start + t] = out_scores[r, t]
    return indptr, ids, scores
