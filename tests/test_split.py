"""Tests for the per-user temporal split (export/data/split.py)."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from export.data.dataset import Dataset, Interactions
from export.data.split import Split, make_split, temporal_parts, temporal_split


def make_inter(user, timestamp) -> Interactions:
    user = np.asarray(user, dtype=np.int32)
    return Interactions(user=user, item=np.arange(len(user), dtype=np.int32),
                        rating=np.ones(len(user), dtype=np.float32),
                        timestamp=np.asarray(timestamp, dtype=np.int64))


def random_inter(seed: int, n: int = 3000, n_users: int = 60) -> Interactions:
    rng = np.random.default_rng(seed)
    # Few distinct timestamps so ties are common.
    return make_inter(rng.integers(0, n_users, n), rng.integers(0, 50, n))


def reference_split(inter: Interactions, holdout_frac: float, min_train: int) -> np.ndarray:
    """Plain-Python test mask: per user, sort rows by (timestamp, row) and take the tail."""
    return reference_parts(inter, holdout_frac, 0.0, min_train)[1]


def test_holdout_size_per_user():
    inter = make_inter([0] * 10 + [1] * 5 + [2] * 4, list(range(10)) + list(range(5)) + list(range(4)))
    train, test = temporal_split(inter, holdout_frac=0.2)
    assert train.dtype == bool and test.dtype == bool
    assert np.all(train ^ test)
    counts = np.bincount(inter.user[test], minlength=3)
    assert counts.tolist() == [2, 1, 0]                       # floor(2.0), floor(1.0), floor(0.8)


def test_float_floor_is_not_off_by_one():
    inter = make_inter([0] * 100, np.arange(100))
    _, test = temporal_split(inter, holdout_frac=0.29)       # 0.29 * 100 == 28.999... in floats
    assert test.sum() == 29


def test_test_rows_are_latest_and_ties_keep_row_order():
    # User 0: rows out of time order with ties at t=5.
    inter = make_inter([0, 0, 0, 0, 0, 1, 1], [5, 1, 5, 9, 5, 3, 2])
    train, test = temporal_split(inter, holdout_frac=0.5)
    # Order for user 0: t1(row1), t5(row0), t5(row2), t5(row4), t9(row3); last 2 = rows 4, 3.
    assert np.flatnonzero(test).tolist() == [3, 4, 5]


@pytest.mark.parametrize("seed", range(5))
def test_test_rows_never_precede_train_rows(seed):
    inter = random_inter(seed)
    train, test = temporal_split(inter, holdout_frac=0.3)
    for u in np.unique(inter.user):
        tr = inter.timestamp[train & (inter.user == u)]
        te = inter.timestamp[test & (inter.user == u)]
        if te.size:
            assert te.min() >= tr.max()


def test_min_train_rule():
    inter = make_inter([0] * 2 + [1] * 3 + [2] * 10, np.arange(15))
    _, test = temporal_split(inter, holdout_frac=0.5, min_train=2)
    counts = np.bincount(inter.user[test], minlength=3)
    # 2 rows: kept in train; 3 rows: floor(1.5)=1; 10 rows: 5.
    assert counts.tolist() == [0, 1, 5]
    # A high fraction is capped so min_train rows stay in train.
    _, test = temporal_split(inter, holdout_frac=0.9, min_train=4)
    assert np.bincount(inter.user[test], minlength=3).tolist() == [0, 0, 6]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("frac, min_train", [(0.2, 1), (0.5, 3), (0.75, 1), (0.1, 10)])
def test_matches_python_reference(seed, frac, min_train):
    inter = random_inter(seed, n=int(np.random.default_rng(seed).integers(1, 2000)))
    train, test = temporal_split(inter, frac, min_train)
    expected = reference_split(inter, frac, min_train)
    np.testing.assert_array_equal(test, expected)
    np.testing.assert_array_equal(train, ~expected)


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_holdout_frac(frac):
    with pytest.raises(ValueError, match="holdout_frac"):
        temporal_split(make_inter([0], [0]), holdout_frac=frac)


@pytest.mark.parametrize("min_train", [0, -1, 1.5])
def test_bad_min_train(min_train):
    with pytest.raises(ValueError, match="min_train"):
        temporal_split(make_inter([0], [0]), min_train=min_train)


def test_empty_interactions():
    train, test = temporal_split(make_inter([], []))
    assert train.shape == test.shape == (0,)


def test_make_split():
    inter = make_inter([0, 1, 0, 1, 0, 1, 0, 1, 0, 1], [1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    ds = Dataset(
        name="t", user_ids=np.array(["a", "b"]), item_ids=np.array([str(i) for i in range(10)]),
        interactions=inter, user_cat=np.zeros((2, 0), np.int32), user_cat_names=[],
        user_cat_vocab=[], item_cat=np.zeros((10, 0), np.int32), item_cat_names=[],
        item_cat_vocab=[], item_bag=np.zeros((10, 0), np.uint8), item_bag_names=[],
        item_titles=np.array([""] * 10),
    )
    split = make_split(ds, holdout_frac=0.4)
    assert isinstance(split, Split) and split.holdout_frac == 0.4
    assert len(split.train) == 6 and len(split.test) == 4
    assert split.test.timestamp.tolist() == [4, 4, 5, 5]
    assert split.test.item.tolist() == [6, 7, 8, 9]


def test_ml100k_split_is_fast_and_sized():
    from tests.test_datasets import ml100k_dir
    from export.data.atomic import load_movielens_100k

    ds = load_movielens_100k(ml100k_dir())
    start = time.perf_counter()
    split = make_split(ds, holdout_frac=0.2)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.2
    per_user = np.bincount(ds.interactions.user, minlength=ds.n_users)
    assert len(split.test) == int(np.floor(0.2 * per_user + 1e-9).sum())
    assert len(split.train) + len(split.test) == 100_000


def reference_parts(inter: Interactions, holdout_frac: float, valid_frac: float, min_train: int):
    """Plain-Python (valid, test) masks: the test tail first, then the validation rows just before it."""
    valid = np.zeros(len(inter), dtype=bool)
    test = np.zeros(len(inter), dtype=bool)
    rows_by_user: dict[int, list[int]] = {}
    for row, u in enumerate(inter.user.tolist()):
        rows_by_user.setdefault(u, []).append(row)
    for rows in rows_by_user.values():
        n = len(rows)
        ordered = sorted(rows, key=lambda r: (int(inter.timestamp[r]), r))
        k_test = max(0, min(math.floor(holdout_frac * n + 1e-9), n - min_train))
        k_valid = max(0, min(math.floor(valid_frac * n + 1e-9), n - k_test - min_train))
        test[ordered[n - k_test:]] = k_test > 0
        if k_valid:
            valid[ordered[n - k_test - k_valid:n - k_test]] = True
    return valid, test


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("frac, vfrac, min_train", [(0.2, 0.1, 1), (0.3, 0.3, 2), (0.1, 0.0, 1)])
def test_parts_match_python_reference(seed, frac, vfrac, min_train):
    inter = random_inter(seed, n=int(np.random.default_rng(seed).integers(1, 2000)))
    train, valid, test = temporal_parts(inter, frac, vfrac, min_train)
    ref_valid, ref_test = reference_parts(inter, frac, vfrac, min_train)
    np.testing.assert_array_equal(valid, ref_valid)
    np.testing.assert_array_equal(test, ref_test)
    np.testing.assert_array_equal(train, ~(ref_valid | ref_test))


@pytest.mark.parametrize("seed", range(4))
def test_validation_never_changes_the_test_part(seed):
    inter = random_inter(seed)
    _, test_only = temporal_split(inter, 0.2)
    _, valid, test = temporal_parts(inter, 0.2, 0.1)
    np.testing.assert_array_equal(test, test_only)
    for u in np.unique(inter.user):  # validation sits between train and test in time
        tr, va, te = (inter.timestamp[m & (inter.user == u)] for m in (~(valid | test), valid, test))
        if va.size:
            assert va.min() >= tr.max() and (te.size == 0 or te.min() >= va.max())


@pytest.mark.parametrize("vfrac", [-0.1, 1.0, float("nan")])
def test_bad_valid_frac(vfrac):
    with pytest.raises(ValueError, match="valid_frac"):
        temporal_parts(make_inter([0], [0]), 0.2, vfrac)


def test_split_known_is_train_plus_valid_in_log_order():
    inter = make_inter([0] * 10 + [1] * 10, list(range(10)) * 2)
    ds = Dataset(
        name="t", user_ids=np.array(["a", "b"]), item_ids=np.array([str(i) for i in range(20)]),
        interactions=inter, user_cat=np.zeros((2, 0), np.int32), user_cat_names=[],
        user_cat_vocab=[], item_cat=np.zeros((20, 0), np.int32), item_cat_names=[],
        item_cat_vocab=[], item_bag=np.zeros((20, 0), np.uint8), item_bag_names=[],
        item_titles=np.array([""] * 20),
    )
    split = make_split(ds, 0.2, valid_frac=0.1)
    assert (len(split.train), len(split.valid), len(split.test)) == (14, 2, 4)
    assert split.known.item.tolist() == [i for i in range(20) if i % 10 < 8]


def test_parts_are_index_views_of_the_log_gathered_once():
    inter = random_inter(3)
    ds = Dataset("t", np.array([str(u) for u in range(60)]), np.array([str(i) for i in range(3000)]), inter,
                 np.zeros((60, 0), np.int32), [], [], np.zeros((3000, 0), np.int32), [], [],
                 np.zeros((3000, 0), np.uint8), [], np.array([""] * 3000))
    split = make_split(ds, 0.2, valid_frac=0.1)
    train_mask, valid_mask, test_mask = temporal_parts(inter, 0.2, 0.1)
    for part, mask in ((split.train, train_mask), (split.valid, valid_mask), (split.test, test_mask),
                       (split.known, ~test_mask)):
        assert part._base is inter and part._index.dtype == np.int32 and part._columns == {}   # nothing copied yet
        for name in Interactions.COLUMNS:
            np.testing.assert_array_equal(getattr(part, name), getattr(inter, name)[mask])
        assert part.user is part.user                                   # gathered once
    cut = split.train.subset(np.arange(len(split.train)) % 2 == 0)      # a cut of a part: one index into the log
    assert cut._base is inter
    np.testing.assert_array_equal(cut.item, inter.item[train_mask][::2])
    assert len(cut) == (len(split.train) + 1) // 2
    import pickle

    plain = pickle.loads(pickle.dumps(cut))                             # pickled: its own rows only
    assert plain._base is None and len(plain) == len(cut)
    for name in Interactions.COLUMNS:
        np.testing.assert_array_equal(getattr(plain, name), getattr(cut, name))
