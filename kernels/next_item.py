"""Next-item transitions as a top-M table (``i2i_next.npz``).

Per user, the items in time order form a sequence. Every ordered pair (a at
position t, b at t + d) with 1 <= d <= ``span`` and b != a adds 1/d to the
weight of a -> b. Row a keeps its ``top_m`` heaviest targets (ties: smaller
id), each scored by its weight over the row's total outgoing weight, an
estimate of P(b soon after a).

Inputs are two CSRs: the sequences (user -> items in time order, repeats
kept) and their transpose by item, the *occurrences* (item -> (user, offset in
the user's sequence)), which lets the build walk only the anchor items of a
range ``[lo, hi)``. Summation order is fixed so every row is bit-identical to
the vectorised numpy build this replaced (``kernels.reference.ref_next_item``):
per pair, all d = 1 contributions first, then d = 2, and so on (equal
contributions, so their order within one d does not matter), and the row
total sums the pair weights by ascending target id.
"""
from __future__ import annotations

import numba
import numpy as np

from ._neighbors import compact_rows
from ._validate import check_array, check_csr, check_int, check_offsets, check_same_length
from .i2i_ranges import check_item_range
from .topk_heap import heap_push, heap_sort_desc


@numba.njit(cache=True)
def _occurrences(seq_indptr, seq_items, n_items):
    n_users = seq_indptr.shape[0] - 1
    indptr = np.zeros(n_items + 1, np.int64)
    for p in range(seq_items.shape[0]):
        indptr[seq_items[p] + 1] += 1
    for i in range(n_items):
        indptr[i + 1] += indptr[i]
    cursor = indptr[:n_items].copy()
    occ_user = np.empty(seq_items.shape[0], np.int32)
    occ_off = np.empty(seq_items.shape[0], np.int32)
    # users in increasing order: each item's occurrences come out sorted by (user, offset)
    for u in range(n_users):
        start = seq_indptr[u]
        for p in range(start, seq_indptr[u + 1]):
            i = seq_items[p]
            k = cursor[i]
            occ_user[k] = u
            occ_off[k] = p - start
            cursor[i] = k + 1
    return indptr, occ_user, occ_off


def sequence_csr(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, n_users: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Each user's items in time order (ties: log order), as CSR ``(indptr int64[n_users+1], items int32)``.

    Args:
        user, item: int32 [n] dense ids of the log's rows (repeats allowed: each row is one step).
        timestamp: int64 [n] seconds.
        n_users: number of users (rows of the result).
    """
    user = check_array("user", user, np.int32)
    item = check_array("item", item, np.int32)
    timestamp = check_array("timestamp", timestamp, np.int64)
    check_same_length("item", item, "user", user)
    check_same_length("timestamp", timestamp, "user", user)
    n_users = check_int("n_users", n_users, minimum=0)
    if user.size and (int(user.min()) < 0 or int(user.max()) >= n_users):
        raise ValueError(f"user must lie in [0, {n_users}), got values in [{int(user.min())}, {int(user.max())}]")
    # lexsort is stable: rows with equal (user, timestamp) keep their log order
    order = np.lexsort((timestamp, user))
    indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(user, minlength=n_users), out=indptr[1:])
    return indptr, item[order]


def occurrences(seq_indptr: np.ndarray, seq_items: np.ndarray, n_items: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each item occurs in the sequences: CSR ``(indptr int64[n_items+1], user int32, offset int32)``,
    each item's occurrences in (user, offset) order; ``seq_indptr[user] + offset`` is the position."""
    seq_indptr = check_array("seq_indptr", seq_indptr, np.int64)
    seq_items = check_array("seq_items", seq_items, np.int32)
    n_items = check_int("n_items", n_items, minimum=0)
    check_csr("seq_indptr", seq_indptr, "seq_items", seq_items, n_items, sorted_unique=False)
    return _occurrences(seq_indptr, seq_items, n_items)


@numba.njit(cache=True, parallel=True)
def _next_item_topm(seq_indptr, seq_items, occ_indptr, occ_user, occ_off, n_items, top_m, span, lo, hi,
                    n_chunks):
    out_ids = np.empty((hi - lo, top_m), np.int32)
    out_scores = np.empty((hi - lo, top_m), np.float32)
    counts = np.zeros(hi - lo, np.int64)
    for c in numba.prange(n_chunks):
        acc = np.zeros(n_items, np.float64)
        touched = np.empty(n_items, np.int32)
        heap_w = np.empty(top_m, np.float64)
        heap_ids = np.empty(top_m, np.int32)
        for a in range(lo + c, hi, n_chunks):
            n_touched = 0
            for d in range(1, span + 1):   # d outermost: the summation order of the docstring
                inv = 1.0 / d
                for k in range(occ_indptr[a], occ_indptr[a + 1]):
                    u = occ_user[k]
                    p = seq_indptr[u] + occ_off[k] + d
                    if p >= seq_indptr[u + 1]:
                        continue
                    b = seq_items[p]
                    if b == a:
                        continue
                    if acc[b] == 0.0:   # every contribution is > 0: zero means first visit
                        touched[n_touched] = b
                        n_touched += 1
                    acc[b] += inv
            order = np.sort(touched[:n_touched])
            total = 0.0
            for t in range(n_touched):
                total += acc[order[t]]
            # rank on the float64 weights (heaviest first, then smaller id), as the numpy build did
            size = 0
            for t in range(n_touched):
                b = order[t]
                size = heap_push(heap_w, heap_ids, size, acc[b], b)
                acc[b] = 0.0
            heap_sort_desc(heap_w, heap_ids, size)
            denom = max(total, 1e-12)
            for t in range(size):
                out_ids[a - lo, t] = heap_ids[t]
                out_scores[a - lo, t] = np.float32(heap_w[t] / denom)
            counts[a - lo] = size
    return compact_rows(counts, out_ids, out_scores)


def next_item_topm(
    seq_indptr: np.ndarray,
    seq_items: np.ndarray,
    occ_indptr: np.ndarray,
    occ_user: np.ndarray,
    occ_off: np.ndarray,
    n_items: int,
    top_m: int,
    span: int = 3,
    lo: int = 0,
    hi: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-M next-item transitions of the source items ``lo..hi-1`` (see the module docstring).

    Args:
        seq_indptr, seq_items: the sequences (:func:`sequence_csr`).
        occ_indptr, occ_user, occ_off: their occurrences by item (:func:`occurrences`).
        n_items: catalogue size.
        top_m: targets kept per source item (>= 0).
        span: the largest step d counted (>= 1).
        lo, hi: the source items whose rows are built (default: all); ranges concatenate to the full
            build (``kernels.i2i_ranges``).

    Returns:
        CSR ``(indptr int64[hi-lo+1], indices int32, scores float32)``: row r (item lo + r) holds at
        most ``top_m`` targets, heaviest first, then smaller id.
    """
    seq_indptr = check_array("seq_indptr", seq_indptr, np.int64)
    seq_items = check_array("seq_items", seq_items, np.int32)
    occ_indptr = check_array("occ_indptr", occ_indptr, np.int64)
    occ_user = check_array("occ_user", occ_user, np.int32)
    occ_off = check_array("occ_off", occ_off, np.int32)
    n_items = check_int("n_items", n_items, minimum=0)
    top_m = check_int("top_m", top_m, minimum=0)
    span = check_int("span", span, minimum=1)
    lo, hi = check_item_range(lo, hi, n_items)
    if occ_indptr.shape[0] != n_items + 1:
        raise ValueError(f"occ_indptr must have n_items + 1 = {n_items + 1} elements, got {occ_indptr.shape[0]}")
    n_users = check_csr("seq_indptr", seq_indptr, "seq_items", seq_items, n_items, sorted_unique=False)
    check_offsets("occ_indptr", occ_indptr, occ_user.shape[0])
    check_same_length("occ_off", occ_off, "occ_user", occ_user)
    if occ_user.shape[0] != seq_items.shape[0]:
        raise ValueError(f"occ_user must hold as many entries as seq_items ({seq_items.shape[0]}), "
                         f"got {occ_user.shape[0]}; pass occurrences(seq_indptr, seq_items, n_items)")
    if occ_user.size:
        if int(occ_user.min()) < 0 or int(occ_user.max()) >= n_users:
            raise ValueError(f"occ_user must lie in [0, {n_users})")
        # every occurrence must point inside its user's sequence (else the kernel reads out of bounds)
        row_len = np.diff(seq_indptr)[occ_user]
        if int(occ_off.min()) < 0 or np.any(occ_off >= row_len):
            raise ValueError("occ_off must lie inside each user's sequence")
    top_m = min(top_m, max(n_items - 1, 0))
    return _next_item_topm(seq_indptr, seq_items, occ_indptr, occ_user, occ_off, n_items, top_m, span,
                           lo, hi, max(0, min(hi - lo, 4 * numba.get_num_threads())))
