"""Per-user item histories as fixed-length code windows.

A history window holds item *codes* (dense item id + 1), most recent LAST and
left-padded with 0, the layout the user tower expects for its ``hist`` input.
"Before" means earlier in the log's order: rows are ordered by timestamp
(stable, so rows with equal timestamps keep their log order).
"""
from __future__ import annotations

import numpy as np

from export.data.dataset import Interactions


def _user_time_order(inter: Interactions) -> np.ndarray:
    """Row order grouping rows by user, each user's rows in time (then log) order."""
    by_time = np.argsort(inter.timestamp, kind="stable")
    return by_time[np.argsort(inter.user[by_time], kind="stable")]


def history_before(inter: Interactions, n_users: int, n: int) -> np.ndarray:
    """For every row, the codes of the same user's previous ``n`` items.

    Returns int32 [len(inter), n]: row ``r`` holds the items that user
    ``inter.user[r]`` interacted with strictly before row ``r``, most recent in
    the last column, left-padded with 0. This is the training-time input of the
    user tower: the history a server would have seen when the interaction
    happened, so no row sees its own item or the future.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    m = len(inter)
    out = np.zeros((m, n), dtype=np.int32)
    if m == 0 or n == 0:
        return out
    if int(inter.user.max()) >= n_users or int(inter.user.min()) < 0:
        raise ValueError("interaction user id out of range of n_users")
    order = _user_time_order(inter)
    users = inter.user[order]
    codes = inter.item[order].astype(np.int32) + 1
    hist_sorted = np.zeros((m, n), dtype=np.int32)
    # Shift k fills column n-k with the item k positions earlier in the grouped
    # order, kept only where that earlier row belongs to the same user.
    for k in range(1, min(n, m - 1) + 1):
        same = users[k:] == users[:-k]
        hist_sorted[k:, n - k] = np.where(same, codes[:-k], 0)
    out[order] = hist_sorted
    return out


def latest_rows(inter: Interactions, n: int) -> Interactions:
    """The log restricted to each user's latest ``n`` rows (``n`` = 0: all), in the log's row order."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n == 0 or len(inter) == 0:
        return inter
    order = _user_time_order(inter)
    users = inter.user[order]
    # position from the end of the user's block: rows with fewer than n later rows of the same user stay
    block_end = np.searchsorted(users, users, side="right")
    keep = block_end - np.arange(users.size) <= n
    return inter.subset(np.sort(order[keep]))


def last_n(inter: Interactions, n_users: int, n: int) -> np.ndarray:
    """Each user's final history: codes of the user's last ``n`` items.

    Returns int32 [n_users, n] in the same layout as :func:`history_before`
    (most recent last, left-padded with 0); users without interactions get an
    all-zero row. This is the history the user tower is served with.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    out = np.zeros((n_users, n), dtype=np.int32)
    m = len(inter)
    if m == 0 or n == 0:
        return out
    if int(inter.user.max()) >= n_users or int(inter.user.min()) < 0:
        raise ValueError("interaction user id out of range of n_users")
    order = _user_time_order(inter)
    users = inter.user[order]
    codes = inter.item[order].astype(np.int32) + 1
    # Each user's last row in the grouped order, then walk back k = 0..n-1.
    is_last = np.ones(m, dtype=bool)
    is_last[:-1] = users[1:] != users[:-1]
    last_pos = np.flatnonzero(is_last)
    last_user = users[last_pos]
    for k in range(min(n, m)):
        pos = last_pos - k
        ok = pos >= 0
        ok[ok] = users[pos[ok]] == last_user[ok]
        out[last_user[ok], n - 1 - k] = codes[pos[ok]]
    return out
