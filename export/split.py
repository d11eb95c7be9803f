"""Per-user temporal train/test split.

Each user's interactions are ordered by time and the most recent fraction is
held out, which mimics serving: the model only sees a user's past and is
evaluated on what that user did next.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from export.dataset import Dataset, Interactions

# floor(frac * n) on floats can land just below an integer (0.29 * 100 =
# 28.999...); the slack makes it the count a person would expect.
_FLOOR_SLACK = 1e-9


def temporal_split(inter: Interactions, holdout_frac: float = 0.2,
                   min_train: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks ``(train, test)`` over the rows of ``inter``.

    Per user, rows are ordered by timestamp (ties keep row order) and the last
    ``floor(holdout_frac * n_u)`` go to test, capped so at least ``min_train``
    stay in train; users with at most ``min_train`` rows keep everything in train.
    """
    if not 0.0 < holdout_frac < 1.0:
        raise ValueError(f"holdout_frac must be in (0, 1), got {holdout_frac!r}")
    if int(min_train) != min_train or min_train < 1:
        raise ValueError(f"min_train must be an integer >= 1, got {min_train!r}")
    n = len(inter)
    if n == 0:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=bool)

    user = np.asarray(inter.user, dtype=np.int64)
    # Group by user, then time; lexsort is stable, so equal timestamps keep row order.
    order = np.lexsort((inter.timestamp, user))
    counts = np.bincount(user)
    starts = np.cumsum(counts) - counts
    sorted_user = user[order]
    rank = np.arange(n) - starts[sorted_user]        # position within the user's history

    n_test = np.floor(holdout_frac * counts + _FLOOR_SLACK).astype(np.int64)
    n_test = np.clip(np.minimum(n_test, counts - min_train), 0, None)
    in_test = rank >= (counts - n_test)[sorted_user]

    test = np.zeros(n, dtype=bool)
    test[order] = in_test
    return ~test, test


@dataclass
class Split:
    """Train and test interactions (each still in global time order)."""

    train: Interactions
    test: Interactions
    holdout_frac: float


def make_split(ds: Dataset, holdout_frac: float = 0.2, min_train: int = 1) -> Split:
    """Temporal split of ``ds.interactions``; see :func:`temporal_split`."""
    train, test = temporal_split(ds.interactions, holdout_frac, min_train)
    return Split(train=ds.interactions.subset(train), test=ds.interactions.subset(test),
                 holdout_frac=holdout_frac)
