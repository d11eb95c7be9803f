"""Tests of export.data.history against a plain-Python reference."""
import numpy as np
import pytest

from export.data.dataset import Interactions
from export.data.history import history_before, last_n, latest_rows


def _log(seed: int, n_rows: int, n_users: int, n_items: int, shuffle: bool = False) -> Interactions:
    rng = np.random.default_rng(seed)
    # Few distinct timestamps, so ties (resolved by log order) are common.
    ts = np.sort(rng.integers(0, max(n_rows // 3, 1), n_rows)).astype(np.int64)
    inter = Interactions(
        user=rng.integers(0, n_users, n_rows).astype(np.int32),
        item=rng.integers(0, n_items, n_rows).astype(np.int32),
        rating=np.ones(n_rows, dtype=np.float32),
        timestamp=ts,
    )
    if shuffle:
        inter = inter.subset(rng.permutation(n_rows))
    return inter


def _time_order(inter: Interactions) -> list[int]:
    return np.argsort(inter.timestamp, kind="stable").tolist()


def _ref_history_before(inter: Interactions, n: int) -> np.ndarray:
    out = np.zeros((len(inter), n), dtype=np.int32)
    seen: dict[int, list[int]] = {}
    for r in _time_order(inter):
        prev = seen.setdefault(int(inter.user[r]), [])
        window = prev[-n:] if n else []
        if window:
            out[r, n - len(window):] = window
        prev.append(int(inter.item[r]) + 1)
    return out


def _ref_last_n(inter: Interactions, n_users: int, n: int) -> np.ndarray:
    out = np.zeros((n_users, n), dtype=np.int32)
    seen: dict[int, list[int]] = {}
    for r in _time_order(inter):
        seen.setdefault(int(inter.user[r]), []).append(int(inter.item[r]) + 1)
    for u, codes in seen.items():
        window = codes[-n:] if n else []
        if window:
            out[u, n - len(window):] = window
    return out


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("n", [0, 1, 3, 7, 50])
def test_history_before_matches_reference(n, shuffle):
    inter = _log(seed=n, n_rows=300, n_users=12, n_items=40, shuffle=shuffle)
    got = history_before(inter, 12, n)
    assert got.dtype == np.int32 and got.shape == (300, n)
    np.testing.assert_array_equal(got, _ref_history_before(inter, n))


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("n", [0, 1, 3, 7, 50])
def test_last_n_matches_reference(n, shuffle):
    inter = _log(seed=100 + n, n_rows=300, n_users=15, n_items=40, shuffle=shuffle)
    got = last_n(inter, 20, n)  # users 15..19 have no interactions
    assert got.dtype == np.int32 and got.shape == (20, n)
    np.testing.assert_array_equal(got, _ref_last_n(inter, 20, n))
    np.testing.assert_array_equal(got[15:], 0)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("n", [0, 1, 3, 30])
def test_latest_rows_matches_reference(n, shuffle):
    inter = _log(seed=200 + n, n_rows=300, n_users=15, n_items=40, shuffle=shuffle)
    got = latest_rows(inter, n)
    rows: dict[int, list[int]] = {}
    for r in _time_order(inter):
        rows.setdefault(int(inter.user[r]), []).append(r)
    want = sorted(r for user_rows in rows.values() for r in (user_rows[-n:] if n else user_rows))
    np.testing.assert_array_equal(got.user, inter.user[want])   # the kept rows, in the log's order
    np.testing.assert_array_equal(got.item, inter.item[want])
    np.testing.assert_array_equal(got.timestamp, inter.timestamp[want])
    with pytest.raises(ValueError, match="n must be >= 0"):
        latest_rows(inter, -1)


def test_small_hand_example():
    # user 0: items 5, 6, 7 ; user 1: item 9, interleaved in time.
    inter = Interactions(
        user=np.array([0, 1, 0, 0], dtype=np.int32),
        item=np.array([5, 9, 6, 7], dtype=np.int32),
        rating=np.ones(4, dtype=np.float32),
        timestamp=np.array([10, 11, 12, 13], dtype=np.int64),
    )
    np.testing.assert_array_equal(
        history_before(inter, 2, 2),
        [[0, 0], [0, 0], [0, 6], [6, 7]],
    )
    np.testing.assert_array_equal(last_n(inter, 3, 2), [[7, 8], [0, 10], [0, 0]])


def test_empty_log():
    empty = Interactions(
        user=np.zeros(0, np.int32), item=np.zeros(0, np.int32),
        rating=np.zeros(0, np.float32), timestamp=np.zeros(0, np.int64),
    )
    assert history_before(empty, 3, 4).shape == (0, 4)
    np.testing.assert_array_equal(last_n(empty, 3, 4), np.zeros((3, 4)))


def test_user_out_of_range_is_an_error():
    inter = _log(seed=1, n_rows=20, n_users=5, n_items=5)
    with pytest.raises(ValueError):
        history_before(inter, 2, 3)
    with pytest.raises(ValueError):
        last_n(inter, 2, 3)
