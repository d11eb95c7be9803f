"""Anchor-item ranges of the item-item builds (ItemCF, Swing, next-item), split by work.

Every i2i kernel builds the rows of the anchor items in ``[lo, hi)`` only, and a
row depends on the interaction CSRs alone, so a build split into ranges and
concatenated in order is the full build, bit for bit. Splitting the catalogue
into ranges of equal *item count* would not balance anything: the cost of a
row grows with how many users took the item and how active they are, and a few
head items hold most of it. So ranges are cut at equal *work*:

    work(i) = sum_{u in U(i)} |I(u)|                     (ItemCF: every step of i's row)
            + m (m - 1) / 2,  m = min(|U(i)|, cap)       (Swing adds its user-pair table)

(Swing's bucketing also walks the capped users' items, the first term over the
first ``m`` users.) The pair term is the size of the table Swing fills and
reads per item; the overlap counting, sum_j |L_j|^2, cannot be known without
doing it and is left out. A single item heavier than one range's share gets
a range of its own (its neighbours' ranges may then be empty).
"""
from __future__ import annotations

import numba
import numpy as np

from ._validate import check_array, check_csr, check_int


def check_item_range(lo, hi, n_items: int) -> tuple[int, int]:
    """``(lo, hi)`` as ints after checking ``0 <= lo <= hi <= n_items``; ``hi`` None means ``n_items``."""
    lo = check_int("lo", lo, minimum=0, maximum=n_items)
    hi = n_items if hi is None else check_int("hi", hi, minimum=lo, maximum=n_items)
    return lo, hi


@numba.njit(cache=True)
def _item_work(user_indptr, item_indptr, item_users, cap, pair_term):
    n_items = item_indptr.shape[0] - 1
    work = np.zeros(n_items, np.int64)
    for i in range(n_items):
        base = item_indptr[i]
        m = item_indptr[i + 1] - base
        if cap > 0 and m > cap:
            m = cap
        w = 0
        for a in range(m):
            u = item_users[base + a]
            w += user_indptr[u + 1] - user_indptr[u]
        if pair_term:
            w += m * (m - 1) // 2
        work[i] = w
    return work


def item_work(user_indptr: np.ndarray, item_indptr: np.ndarray, item_users: np.ndarray,
              max_users_per_item: int | None = None, pair_term: bool = False) -> np.ndarray:
    """Estimated cost of each item's row, int64 [n_items] (see the module docstring).

    Args:
        user_indptr: user->items CSR row pointers (int64 [n_users + 1]).
        item_indptr, item_users: the item->users CSR (int64 [n_items + 1], int32).
        max_users_per_item: only the first this-many users of an item count
            (Swing's cap); None or 0: all of them (ItemCF).
        pair_term: add m (m - 1) / 2 for the m counted users (Swing).
    """
    user_indptr = check_array("user_indptr", user_indptr, np.int64)
    item_indptr = check_array("item_indptr", item_indptr, np.int64)
    item_users = check_array("item_users", item_users, np.int32)
    if user_indptr.shape[0] < 1:
        raise ValueError("user_indptr must have n_users + 1 >= 1 elements")
    check_csr("item_indptr", item_indptr, "item_users", item_users, user_indptr.shape[0] - 1, sorted_unique=False)
    cap = check_int("max_users_per_item", max_users_per_item or 0, minimum=0)
    if not isinstance(pair_term, (bool, np.bool_)):
        raise ValueError(f"pair_term must be a bool, got {type(pair_term).__name__}")
    return _item_work(user_indptr, item_indptr, item_users, cap, bool(pair_term))


def split_ranges(work: np.ndarray, n_parts: int) -> np.ndarray:
    """Cut items ``0..len(work)-1`` into ``n_parts`` contiguous ranges of about equal total work.

    Returns int64 bounds ``[n_parts + 1]`` with ``bounds[0] = 0``, ``bounds[-1] = len(work)``,
    non-decreasing: range p is ``[bounds[p], bounds[p + 1])`` and may be empty. Cut p sits at the
    item boundary whose prefix work is nearest to p / n_parts of the total (the lower one on a tie),
    so no range exceeds its share by more than one item's work.
    """
    work = np.asarray(work)
    if work.ndim != 1 or not (np.issubdtype(work.dtype, np.integer) or np.issubdtype(work.dtype, np.floating)):
        raise ValueError(f"work must be a 1-D numeric array, got {work.dtype} of shape {work.shape}")
    n_parts = check_int("n_parts", n_parts, minimum=1)
    if work.size and (not np.isfinite(work).all() or work.min() < 0):
        raise ValueError("work must be finite and >= 0")
    n = work.shape[0]
    # prefix[k] = work of items 0..k-1; float64 is exact for integer totals below 2^53
    prefix = np.concatenate([[0.0], np.cumsum(work, dtype=np.float64)])
    targets = prefix[-1] * np.arange(1, n_parts, dtype=np.float64) / n_parts
    above = np.searchsorted(prefix, targets, side="left")          # first k with prefix[k] >= target
    below = np.maximum(above - 1, 0)
    nearer_below = (targets - prefix[below]) <= (prefix[above] - targets)
    cuts = np.where(nearer_below, below, above)
    bounds = np.concatenate([[0], cuts, [n]]).astype(np.int64)
    return np.maximum.accumulate(bounds)
