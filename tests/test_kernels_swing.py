"""kernels.swing against the numpy reference in kernels.reference."""
import numba
import numpy as np
import pytest

from kernels.swing import swing_topm
from kernels.reference import csr_rows, random_log, ref_swing
from tests.test_kernels_itemcf import assert_bitwise, assert_table_equal, concat_ranges, hot_ranges, interactions


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("alpha, damping, cap", [(1.0, 0.5, 1000), (0.0, 0.0, None), (5.0, 1.0, 7)])
def test_swing_random(seed, alpha, damping, cap):
    rng = np.random.default_rng(seed)
    n_users, n_items = 50, 70
    rows, cols = random_log(rng, n_users, n_items, 800)
    csrs = interactions(rows, cols, n_users, n_items)
    got = swing_topm(*csrs, n_items, 10, alpha=alpha, user_damping=damping, max_users_per_item=cap)
    want = ref_swing(*csrs, n_items, 10, alpha, damping, cap)
    assert_table_equal(got, want)


def test_swing_matches_hand_computed_value():
    # Users 0 and 1 both took items 0 and 1; user 1 also took item 2.
    rows = np.array([0, 0, 1, 1, 1], np.int32)
    cols = np.array([0, 1, 0, 1, 2], np.int32)
    indptr, ids, scores = swing_topm(*interactions(rows, cols, 2, 3), 3, 5, alpha=1.0)
    expected = (1 / np.sqrt(2)) * (1 / np.sqrt(3)) / (1.0 + 2)
    np.testing.assert_array_equal(indptr, [0, 1, 2, 2])  # item 2 has one user: no pair
    np.testing.assert_array_equal(ids, [1, 0])
    np.testing.assert_allclose(scores, [expected, expected], rtol=1e-6)


def test_swing_cap_uses_first_users_of_each_item_row():
    rng = np.random.default_rng(3)
    rows, cols = random_log(rng, 40, 30, 600)
    csrs = interactions(rows, cols, 40, 30)
    capped = swing_topm(*csrs, 30, 8, max_users_per_item=3)
    assert_table_equal(capped, ref_swing(*csrs, 30, 8, 1.0, 0.5, 3))
    uncapped = swing_topm(*csrs, 30, 8, max_users_per_item=0)
    # The cap must matter on this log, or the comparison above proves little.
    assert any(not np.array_equal(a, b) for a, b in zip(capped, uncapped))


def test_swing_ties_and_edge_cases():
    users = np.repeat(np.arange(3, dtype=np.int32), 5)
    items = np.tile(np.arange(5, dtype=np.int32), 3)
    csrs = interactions(users, items, 3, 5)
    indptr, ids, scores = swing_topm(*csrs, 5, 2)
    np.testing.assert_array_equal(ids, [1, 2, 0, 2, 0, 1, 0, 1, 0, 1])
    assert np.all(scores == scores[0])
    empty = np.empty(0, np.int32)
    indptr, ids, _ = swing_topm(*interactions(empty, empty, 4, 6), 6, 3)
    np.testing.assert_array_equal(indptr, np.zeros(7))
    indptr, ids, _ = swing_topm(*interactions(empty, empty, 0, 0), 0, 3)
    np.testing.assert_array_equal(indptr, [0])
    indptr, ids, _ = swing_topm(*csrs, 5, 0)
    assert ids.shape == (0,)


def test_swing_independent_of_thread_count():
    rng = np.random.default_rng(5)
    rows, cols = random_log(rng, 80, 120, 2500)
    csrs = interactions(rows, cols, 80, 120)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = swing_topm(*csrs, 120, 15)
    finally:
        numba.set_num_threads(before)
    multi = swing_topm(*csrs, 120, 15)
    for a, b in zip(single, multi):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cap", [1000, 4])
def test_swing_ranges_concatenate_to_the_full_build_bitwise(cap):
    rng = np.random.default_rng(9)
    n_users, n_items = 60, 80
    rows, cols = random_log(rng, n_users, n_items, 1100)
    csrs = interactions(rows, cols, n_users, n_items)
    full = swing_topm(*csrs, n_items, 10, max_users_per_item=cap)
    cuts = hot_ranges(csrs[2], n_items)
    parts = [swing_topm(*csrs, n_items, 10, max_users_per_item=cap, lo=lo, hi=hi)
             for lo, hi in zip(cuts[:-1], cuts[1:])]
    assert_bitwise(concat_ranges(parts), full)
    hot = int(np.argmax(np.diff(csrs[2])))
    only_hot = swing_topm(*csrs, n_items, 10, max_users_per_item=cap, lo=hot, hi=hot + 1)
    assert only_hot[1].size > 0
    assert_bitwise(only_hot, csr_rows(full, hot, hot + 1))
    empty = swing_topm(*csrs, n_items, 10, lo=n_items, hi=n_items)
    assert empty[0].tolist() == [0] and empty[1].size == 0
    assert_table_equal(swing_topm(*csrs, n_items, 10, max_users_per_item=cap, lo=7, hi=33),
                       ref_swing(*csrs, n_items, 10, 1.0, 0.5, cap, lo=7, hi=33))


def test_swing_validation():
    rows = np.array([0, 0, 1], np.int32)
    cols = np.array([0, 1, 1], np.int32)
    csrs = interactions(rows, cols, 2, 2)
    with pytest.raises(ValueError, match="^alpha"):
        swing_topm(*csrs, 2, 5, alpha=-1.0)
    with pytest.raises(ValueError, match="^user_damping"):
        swing_topm(*csrs, 2, 5, user_damping=float("nan"))
    with pytest.raises(ValueError, match="^max_users_per_item"):
        swing_topm(*csrs, 2, 5, max_users_per_item=-2)
    with pytest.raises(ValueError, match="^top_m"):
        swing_topm(*csrs, 2, 2.5)
    with pytest.raises(ValueError, match="^hi"):
        swing_topm(*csrs, 2, 5, lo=2, hi=1)


def test_swing_refuses_oversized_pair_scratch(monkeypatch):
    import kernels.swing as swing_module

    rows = np.repeat(np.arange(10, dtype=np.int32), 2)
    cols = np.tile(np.arange(2, dtype=np.int32), 10)
    csrs = interactions(rows, cols, 10, 2)
    monkeypatch.setattr(swing_module, "_MAX_PAIR_SCRATCH_BYTES", 100)
    with pytest.raises(ValueError, match="^max_users_per_item"):
        swing_topm(*csrs, 2, 5, max_users_per_item=None)
    swing_topm(*csrs, 2, 5, max_users_per_item=3)  # 3 users fit
