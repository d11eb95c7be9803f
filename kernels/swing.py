"""Swing item-item similarity (Yang et al., Alibaba, 2020) as a top-M table.

    sim(i, j) = sum_{u < v, both in U(i) & U(j)}  w_u * w_v / (alpha + |I(u) & I(v)|)
    w_u       = |I(u)| ** (-user_damping)        (user_damping = 0 disables)

Two users who both took i and j are strong evidence for (i, j) unless they
overlap on many items anyway, hence the 1/(alpha + overlap) factor.

Cost control: only the first ``max_users_per_item`` users of each item's row
in ``item_users`` enter the pair loop for that item (rows built by
``kernels.csr.transpose_csr`` are in ascending user id, so that is the lowest
ids, a deterministic but not random sample; renumber users, e.g. by recency,
before building the CSRs if a different subset should win). The cap makes
sim asymmetric for capped items: sim(i, j) uses i's capped user list, while
the overlaps |I(u) & I(v)| and membership in U(j) always use full lists.

Algorithm, per item i with (capped) users u_0..u_{m-1}:

1. bucket the users by item: for every j, L_j = [a : j in I(u_a)] (ascending a);
2. overlaps: for every bucket and every pair a < b in it, C[a, b] += 1, which
   yields C[a, b] = |I(u_a) & I(u_b)| (item i itself is counted implicitly);
3. W[a, b] = w_a w_b / (alpha + C[a, b]); sim(i, j) = sum of W over the pairs
   in L_j.

This costs sum_j |L_j|^2 per item, i.e. proportional to the overlaps, instead
of the |I(u)| + |I(v)| of merge-intersecting every user pair, which is many
times larger when users share a small part of their histories. C and W share
one packed upper-triangle float64 array: 4 m^2 bytes of scratch per chunk.
"""
from __future__ import annotations

import numba
import numpy as np

from ._neighbors import compact_rows, n_chunks_for, validate_interactions
from ._validate import check_int, check_real
from .i2i_ranges import check_item_range
from .topk_heap import heap_push, heap_sort_desc

# The per-item pair table (packed float64 upper triangle, m(m-1)/2 entries,
# one per chunk) is refused above this total size; it can only be reached by
# lifting the user cap on very popular items.
_MAX_PAIR_SCRATCH_BYTES = 4 << 30


@numba.njit(cache=True, parallel=True)
def _swing_topm(user_indptr, user_items, item_indptr, item_users, n_items, top_m,
                alpha, user_damping, cap, max_m, lo, hi, n_chunks):
    n_users = user_indptr.shape[0] - 1
    user_w = np.empty(n_users, np.float64)
    for u in range(n_users):
        deg = user_indptr[u + 1] - user_indptr[u]
        user_w[u] = float(deg) ** (-user_damping) if deg > 0 else 0.0

    # Rows of the anchor items lo..hi-1 only: every user pair of U(i) is
    # formed inside item i's row, so ranges need no exchange of pairs and
    # concatenate to the full build.
    out_ids = np.empty((hi - lo, top_m), np.int32)
    out_scores = np.empty((hi - lo, top_m), np.float32)
    counts = np.zeros(hi - lo, np.int64)

    # Scratch is per chunk (see itemcf): items c, c + n_chunks, ... share it.
    for c in numba.prange(n_chunks):
        bucket_len = np.zeros(n_items, np.int32)  # |L_j|; zero again after each item
        bucket_start = np.empty(n_items, np.int64)
        touched = np.empty(n_items, np.int32)
        members = np.empty(1024, np.int32)  # concatenated buckets, grown on demand
        pair_w = np.empty(max_m * (max_m - 1) // 2 + 1, np.float64)
        local_w = np.empty(max_m, np.float64)
        heap_scores = np.empty(top_m, np.float32)
        heap_ids = np.empty(top_m, np.int32)
        for i in range(lo + c, hi, n_chunks):
            base = item_indptr[i]
            m = min(item_indptr[i + 1] - base, cap)
            if m < 2:
                continue  # no user pair, no similarity; counts[i] stays 0

            # 1. bucket sizes (counting sort of (a, j) by j) ...
            n_touched = 0
            total = 0
            for a in range(m):
                u = item_users[base + a]
                local_w[a] = user_w[u]
                for q in range(user_indptr[u], user_indptr[u + 1]):
                    j = user_items[q]
                    if bucket_len[j] == 0:
                        touched[n_touched] = j
                        n_touched += 1
                    bucket_len[j] += 1
                total += user_indptr[u + 1] - user_indptr[u]
            if total > members.shape[0]:
                members = np.empty(2 * total, np.int32)
            offset = 0
            for t in range(n_touched):
                j = touched[t]
                bucket_start[j] = offset
                offset += bucket_len[j]
                bucket_len[j] = 0  # reused as the fill cursor below
            # ... then the fill; scanning a in order keeps every bucket sorted.
            for a in range(m):
                u = item_users[base + a]
                for q in range(user_indptr[u], user_indptr[u + 1]):
                    j = user_items[q]
                    members[bucket_start[j] + bucket_len[j]] = a
                    bucket_len[j] += 1

            # 2. pairwise overlaps of the m users, counted in place in the
            # packed upper triangle (a < b at row_base(a) + b).
            n_pairs = m * (m - 1) // 2
            for p in range(n_pairs):
                pair_w[p] = 0.0
            for t in range(n_touched):
                j = touched[t]
                if j == i:
                    continue  # every pair shares i: added as the "+ 1" below
                s0 = bucket_start[j]
                n_j = bucket_len[j]
                for x in range(n_j - 1):
                    a = members[s0 + x]
                    row = a * m - a * (a + 1) // 2 - a - 1
                    for y in range(x + 1, n_j):
                        pair_w[row + members[s0 + y]] += 1.0  # exact in float64

            # 3. counts -> pair weights in place, then one sum per candidate j.
            p = 0
            for a in range(m):
                for b in range(a + 1, m):
                    pair_w[p] = local_w[a] * local_w[b] / (alpha + 1.0 + pair_w[p])
                    p += 1
            size = 0
            for t in range(n_touched):
                j = touched[t]
                n_j = bucket_len[j]
                bucket_len[j] = 0  # leave the scratch clean for the next item
                if j == i or n_j < 2:
                    continue
                s0 = bucket_start[j]
                acc = 0.0
                for x in range(n_j - 1):
                    a = members[s0 + x]
                    row = a * m - a * (a + 1) // 2 - a - 1
                    for y in range(x + 1, n_j):
                        acc += pair_w[row + members[s0 + y]]
                # Rank on the returned float32 value so output ties go by id.
                s = np.float32(acc)
                if s > 0:
                    size = heap_push(heap_scores, heap_ids, size, s, j)
            heap_sort_desc(heap_scores, heap_ids, size)
            for t in range(size):
                out_ids[i - lo, t] = heap_ids[t]
                out_scores[i - lo, t] = heap_scores[t]
            counts[i - lo] = size
    return compact_rows(counts, out_ids, out_scores)


def swing_topm(
    user_indptr: np.ndarray,
    user_items: np.ndarray,
    item_indptr: np.ndarray,
    item_users: np.ndarray,
    n_items: int,
    top_m: int,
    alpha: float = 1.0,
    user_damping: float = 0.5,
    max_users_per_item: int | None = 1000,
    lo: int = 0,
    hi: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-M Swing neighbours of the anchor items ``lo..hi-1`` (see the module docstring).

    Args:
        user_indptr, user_items: user->items CSR structure (int64, int32),
            rows sorted and duplicate-free (``kernels.csr.build_csr``).
        item_indptr, item_users: its transpose, item->users
            (``kernels.csr.transpose_csr``); ``len(item_indptr) == n_items + 1``.
        n_items: catalogue size.
        top_m: neighbours kept per item (>= 0).
        alpha: smoothing constant >= 0 in 1/(alpha + |I(u) & I(v)|).
        user_damping: exponent d >= 0 of the user weight |I(u)|^-d
            (0.5 = 1/sqrt, 0 disables).
        max_users_per_item: only the first this-many users of each item row
            form pairs for that item (bounds the O(|U(i)|^2) cost and the
            O(cap^2) scratch per thread); None or 0 means no cap.
        lo, hi: the anchor items whose rows are built, ``0 <= lo <= hi <=
            n_items`` (default: every item); ranges concatenate to the full
            build (``kernels.i2i_ranges``).

    Returns:
        CSR ``(indptr int64[hi-lo+1], indices int32, scores float32)``: row
        r (item lo + r) holds at most ``top_m`` items j != lo + r with
        sim > 0, ordered by score descending then id ascending.
    """
    user_indptr, user_items, item_indptr, item_users, n_items, _ = validate_interactions(
        user_indptr, user_items, item_indptr, item_users, n_items
    )
    top_m = check_int("top_m", top_m, minimum=0)
    alpha = check_real("alpha", alpha, minimum=0.0)
    user_damping = check_real("user_damping", user_damping, minimum=0.0)
    if max_users_per_item is None:
        max_users_per_item = 0
    cap = check_int("max_users_per_item", max_users_per_item, minimum=0)
    lo, hi = check_item_range(lo, hi, n_items)
    # An item has at most n_items - 1 neighbours; clamping keeps the padded
    # [n_items, top_m] output buffer from being sized by an oversized top_m.
    top_m = min(top_m, max(n_items - 1, 0))
    # scratch sized by the range's own items: a range without the hottest
    # item does not pay for its pair table
    max_deg = int(np.diff(item_indptr[lo:hi + 1]).max()) if hi > lo else 0
    max_m = max_deg if cap == 0 else min(cap, max_deg)
    n_chunks = n_chunks_for(hi - lo, 2)
    scratch = 4 * max_m * max_m * max(n_chunks, 1)
    if scratch > _MAX_PAIR_SCRATCH_BYTES:
        raise ValueError(
            f"max_users_per_item: {max_m} users per item would need {scratch / 2**30:.1f} GiB "
            f"of pair scratch; set a smaller cap"
        )
    return _swing_topm(user_indptr, user_items, item_indptr, item_users, n_items, top_m,
                       alpha, user_damping, cap if cap > 0 else max_deg + 1, max_m, lo, hi, n_chunks)
