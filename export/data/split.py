"""Per-user temporal split into train, validation and test (docs/ARCHITECTURE.md §9).

Each user's interactions are ordered by time; the most recent fraction is the
test part and the fraction just before it the validation part. This mimics
serving: a model only sees a user's past and is judged on what the user did
next. Every choice (epochs, weights, quotas, fusion, quantization, rerank
parameters) is made on validation; test is read once, for the report.

Ties: rows with equal timestamps keep their row order. The dataset loaders
(``export.data.atomic``) store rows ordered by (timestamp, user, item id), so for
loaded data a tie is broken by the dense item id, not by the file's order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from export.data.dataset import Dataset, Interactions

# floor(frac * n) on floats can land just below an integer (0.29 * 100 =
# 28.999...); the slack makes it the count a person would expect.
_FLOOR_SLACK = 1e-9


def _check_frac(name: str, value: float, allow_zero: bool) -> None:
    ok = (0.0 <= value < 1.0) if allow_zero else (0.0 < value < 1.0)
    if not ok:  # NaN fails too
        raise ValueError(f"{name} must be in {'[0' if allow_zero else '(0'}, 1), got {value!r}")


def temporal_parts(inter: Interactions, holdout_frac: float = 0.2, valid_frac: float = 0.1,
                   min_train: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks ``(train, valid, test)`` over the rows of ``inter``.

    Per user with ``n`` rows ordered by timestamp (ties keep row order): the last
    ``floor(holdout_frac * n)`` rows are test, the ``floor(valid_frac * n)`` rows
    before them validation, each capped so at least ``min_train`` rows stay in
    train (test is cut first, so the test part never depends on ``valid_frac``).
    """
    _check_frac("holdout_frac", holdout_frac, allow_zero=False)
    _check_frac("valid_frac", valid_frac, allow_zero=True)
    if holdout_frac + valid_frac >= 1.0:
        raise ValueError(f"holdout_frac + valid_frac must be < 1, got {holdout_frac} + {valid_frac}")
    if int(min_train) != min_train or min_train < 1:
        raise ValueError(f"min_train must be an integer >= 1, got {min_train!r}")
    n = len(inter)
    if n == 0:
        empty = np.zeros(0, dtype=bool)
        return empty, empty.copy(), empty.copy()

    user = np.asarray(inter.user, dtype=np.int64)
    # Group by user, then time; lexsort is stable, so equal timestamps keep row order.
    order = np.lexsort((inter.timestamp, user))
    counts = np.bincount(user)
    starts = np.cumsum(counts) - counts
    sorted_user = user[order]
    rank = np.arange(n) - starts[sorted_user]        # position within the user's history

    n_test = np.floor(holdout_frac * counts + _FLOOR_SLACK).astype(np.int64)
    n_test = np.clip(np.minimum(n_test, counts - min_train), 0, None)
    n_valid = np.floor(valid_frac * counts + _FLOOR_SLACK).astype(np.int64)
    n_valid = np.clip(np.minimum(n_valid, counts - n_test - min_train), 0, None)
    test_from = (counts - n_test)[sorted_user]
    valid_from = (counts - n_test - n_valid)[sorted_user]

    test = np.zeros(n, dtype=bool)
    valid = np.zeros(n, dtype=bool)
    test[order] = rank >= test_from
    valid[order] = (rank >= valid_from) & (rank < test_from)
    return ~(test | valid), valid, test


def temporal_split(inter: Interactions, holdout_frac: float = 0.2,
                   min_train: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks ``(train, test)``: :func:`temporal_parts` without a validation part."""
    train, _, test = temporal_parts(inter, holdout_frac, 0.0, min_train)
    return train, test


@dataclass
class Split:
    """Train, validation and test interactions (each still in global time order).

    ``valid`` is empty when the split was made with ``valid_frac = 0``.
    """

    train: Interactions
    test: Interactions
    holdout_frac: float
    valid: Interactions | None = None
    valid_frac: float = 0.0
    known: Interactions | None = None   # train + validation in log order: what the published snapshot knows

    def __post_init__(self) -> None:
        if self.known is None:
            self.known = self.train if self.valid is None or len(self.valid) == 0 else None
        if self.known is None:
            raise ValueError("Split with a validation part needs known (train + validation in log order)")


def make_split(ds: Dataset, holdout_frac: float = 0.2, min_train: int = 1, valid_frac: float = 0.0) -> Split:
    """Temporal split of ``ds.interactions``; see :func:`temporal_parts`."""
    train, valid, test = temporal_parts(ds.interactions, holdout_frac, valid_frac, min_train)
    return Split(train=ds.interactions.subset(train), test=ds.interactions.subset(test),
                 holdout_frac=holdout_frac, valid=ds.interactions.subset(valid), valid_frac=valid_frac,
                 known=ds.interactions.subset(~test))
