"""ItemCF item-item similarity with user-activity damping, as a top-M table.

    sim(i, j) = sum_{u in U(i) & U(j)} w_u / (|U(i)| * |U(j)|) ** popularity_damping
    w_u       = 1 / log(1 + |I(u)|)       (iuf=True; "inverse user frequency")
              = 1                         (iuf=False)

U(i) is the set of users of item i and I(u) the set of items of user u. The
IUF weight discounts very active users (a user who clicked everything says
little about any pair); ``popularity_damping`` = 0.5 gives cosine-like
normalisation, 0 gives raw weighted co-occurrence counts.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from ._neighbors import compact_rows, n_chunks_for, validate_interactions
from .i2i_ranges import check_item_range
from ._validate import check_int, check_real
from .topk_heap import heap_push, heap_sort_desc


@numba.njit(cache=True, parallel=True)
def _itemcf_topm(user_indptr, user_items, item_indptr, item_users, n_items, top_m,
                 popularity_damping, iuf, lo, hi, n_chunks):
    n_users = user_indptr.shape[0] - 1
    user_w = np.empty(n_users, np.float64)
    for u in range(n_users):
        deg = user_indptr[u + 1] - user_indptr[u]
        user_w[u] = 1.0 / math.log(1.0 + deg) if (iuf and deg > 0) else 1.0
    # (|U(i)| |U(j)|)^p == |U(i)|^p |U(j)|^p: precomputing per item keeps pow()
    # out of the per-pair loop.
    item_pow = np.empty(n_items, np.float64)
    for j in range(n_items):
        item_pow[j] = float(item_indptr[j + 1] - item_indptr[j]) ** popularity_damping

    # Rows of the anchor items lo..hi-1 only: a row depends on nothing but the
    # CSRs, so ranges built apart and concatenated equal the full build.
    out_ids = np.empty((hi - lo, top_m), np.int32)
    out_scores = np.empty((hi - lo, top_m), np.float32)
    counts = np.zeros(hi - lo, np.int64)

    # One dense accumulator per chunk, not per item: allocating/zeroing
    # n_items floats per item would be O(n_items^2). Chunk c takes items
    # lo + c, lo + c + n_chunks, ... so popular (expensive) items, which often
    # have nearby ids, are spread across chunks and threads.
    for c in numba.prange(n_chunks):
        acc = np.zeros(n_items, np.float64)
        touched = np.empty(n_items, np.int32)
        heap_scores = np.empty(top_m, np.float32)
        heap_ids = np.empty(top_m, np.int32)
        for i in range(lo + c, hi, n_chunks):
            n_touched = 0
            for p in range(item_indptr[i], item_indptr[i + 1]):
                u = item_users[p]
                w = user_w[u]
                for q in range(user_indptr[u], user_indptr[u + 1]):
                    j = user_items[q]
                    if j == i:
                        continue
                    # Every weight is > 0, so acc[j] == 0 means "first visit".
                    if acc[j] == 0.0:
                        touched[n_touched] = j
                        n_touched += 1
                    acc[j] += w
            size = 0
            for t in range(n_touched):
                j = touched[t]
                # Rank on the float32 value that is returned, so ties in the
                # output are always resolved by id.
                s = np.float32(acc[j] / (item_pow[i] * item_pow[j]))
                acc[j] = 0.0  # reset only what was touched: O(work), not O(n_items)
                if s > 0:
                    size = heap_push(heap_scores, heap_ids, size, s, j)
            heap_sort_desc(heap_scores, heap_ids, size)
            for t in range(size):
                out_ids[i - lo, t] = heap_ids[t]
                out_scores[i - lo, t] = heap_scores[t]
            counts[i - lo] = size
    return compact_rows(counts, out_ids, out_scores)


def itemcf_topm(
    user_indptr: np.ndarray,
    user_items: np.ndarray,
    item_indptr: np.ndarray,
    item_users: np.ndarray,
    n_items: int,
    top_m: int,
    popularity_damping: float = 0.5,
    iuf: bool = True,
    lo: int = 0,
    hi: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-M ItemCF neighbours of the anchor items ``lo..hi-1`` (see the module docstring).

    Args:
        user_indptr, user_items: user->items CSR structure (int64, int32),
            rows sorted and duplicate-free (``kernels.csr.build_csr``).
        item_indptr, item_users: its transpose, item->users
            (``kernels.csr.transpose_csr``); ``len(item_indptr) == n_items + 1``.
        n_items: catalogue size.
        top_m: neighbours kept per item (>= 0).
        popularity_damping: exponent p >= 0 of the (|U(i)||U(j)|)^p normaliser.
        iuf: weight each co-occurring user by 1/log(1+|I(u)|) (else 1).
        lo, hi: the anchor items whose rows are built, ``0 <= lo <= hi <=
            n_items`` (default: every item). The rows of a range are exactly
            those of the full build, so a build split into ranges (one per
            task or machine, ``kernels.i2i_ranges``) concatenates to it.

    Returns:
        CSR ``(indptr int64[hi-lo+1], indices int32, scores float32)``: row
        r (item lo + r) holds at most ``top_m`` items j != lo + r with
        sim > 0, ordered by score descending then id ascending.

    Runs in parallel over items with O(threads * n_items) scratch memory plus
    an O((hi - lo) * top_m) output buffer; time is sum over the range's
    items i of sum_{u in U(i)} |I(u)| (sum_u |I(u)|^2 for the full build).
    """
    user_indptr, user_items, item_indptr, item_users, n_items, _ = validate_interactions(
        user_indptr, user_items, item_indptr, item_users, n_items
    )
    top_m = check_int("top_m", top_m, minimum=0)
    lo, hi = check_item_range(lo, hi, n_items)
    popularity_damping = check_real("popularity_damping", popularity_damping, minimum=0.0)
    if not isinstance(iuf, (bool, np.bool_)):
        raise ValueError(f"iuf must be a bool, got {type(iuf).__name__}")
    # An item has at most n_items - 1 neighbours; clamping keeps the padded
    # [n_items, top_m] output buffer from being sized by an oversized top_m.
    top_m = min(top_m, max(n_items - 1, 0))
    return _itemcf_topm(user_indptr, user_items, item_indptr, item_users, n_items, top_m,
                        popularity_damping, bool(iuf), lo, hi, n_chunks_for(hi - lo, 4))
