"""kernels.itemcf against the dense numpy reference in kernels.reference."""
import numba
import numpy as np
import pytest

from kernels.csr import build_csr, transpose_csr
from kernels.itemcf import itemcf_topm
from kernels.reference import csr_rows, random_log, ref_itemcf


def interactions(rows, cols, n_users, n_items):
    user_indptr, user_items, data = build_csr(rows, cols, n_users, n_cols=n_items)
    item_indptr, item_users, _ = transpose_csr(user_indptr, user_items, data, n_items)
    return user_indptr, user_items, item_indptr, item_users


def assert_table_equal(got, want):
    assert got[0].dtype == np.int64 and got[1].dtype == np.int32 and got[2].dtype == np.float32
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[2], want[2], rtol=1e-6)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("damping, iuf", [(0.5, True), (0.0, True), (1.0, False)])
def test_itemcf_random(seed, damping, iuf):
    rng = np.random.default_rng(seed)
    n_users, n_items = 60, 80
    rows, cols = random_log(rng, n_users, n_items, 900)
    csrs = interactions(rows, cols, n_users, n_items)
    got = itemcf_topm(*csrs, n_items, 10, popularity_damping=damping, iuf=iuf)
    assert_table_equal(got, ref_itemcf(csrs[0], csrs[1], n_items, 10, damping, iuf))


def test_itemcf_top_m_larger_than_catalogue_and_zero():
    rng = np.random.default_rng(7)
    rows, cols = random_log(rng, 20, 15, 150)
    csrs = interactions(rows, cols, 20, 15)
    assert_table_equal(itemcf_topm(*csrs, 15, 100), ref_itemcf(csrs[0], csrs[1], 15, 100))
    indptr, ids, scores = itemcf_topm(*csrs, 15, 0)
    np.testing.assert_array_equal(indptr, np.zeros(16))
    assert ids.shape == (0,) and scores.shape == (0,)


def test_itemcf_ties_broken_by_item_id():
    # Every user took every item: all similarities are equal, so each row
    # must list the smallest other ids.
    users = np.repeat(np.arange(4, dtype=np.int32), 6)
    items = np.tile(np.arange(6, dtype=np.int32)[::-1], 4)
    csrs = interactions(users, items, 4, 6)
    indptr, ids, scores = itemcf_topm(*csrs, 6, 3)
    np.testing.assert_array_equal(ids[indptr[0]:indptr[1]], [1, 2, 3])
    np.testing.assert_array_equal(ids[indptr[2]:indptr[3]], [0, 1, 3])
    assert np.all(scores == scores[0])
    assert_table_equal((indptr, ids, scores), ref_itemcf(csrs[0], csrs[1], 6, 3))


def test_itemcf_duplicated_log_entries_do_not_count_twice():
    rows = np.array([0, 0, 1, 1], np.int32)
    cols = np.array([0, 1, 0, 1], np.int32)
    once = itemcf_topm(*interactions(rows, cols, 2, 3), 3, 5)
    twice = itemcf_topm(*interactions(np.r_[rows, rows], np.r_[cols, cols], 2, 3), 3, 5)
    assert_table_equal(twice, once)
    # sim(0, 1) = 2 users * 1/log(3) / sqrt(2 * 2); item 2 has no users.
    np.testing.assert_array_equal(once[0], [0, 1, 2, 2])
    np.testing.assert_allclose(once[2], [2 / np.log(3) / 2] * 2, rtol=1e-6)


def test_itemcf_empty_inputs():
    empty = np.empty(0, np.int32)
    csrs = interactions(empty, empty, 5, 7)
    indptr, ids, _ = itemcf_topm(*csrs, 7, 4)
    np.testing.assert_array_equal(indptr, np.zeros(8))
    assert ids.shape == (0,)
    csrs = interactions(empty, empty, 0, 0)
    indptr, ids, _ = itemcf_topm(*csrs, 0, 4)
    np.testing.assert_array_equal(indptr, [0])


def test_itemcf_independent_of_thread_count():
    rng = np.random.default_rng(11)
    rows, cols = random_log(rng, 100, 150, 3000)
    csrs = interactions(rows, cols, 100, 150)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = itemcf_topm(*csrs, 150, 20)
    finally:
        numba.set_num_threads(before)
    multi = itemcf_topm(*csrs, 150, 20)
    for a, b in zip(single, multi):
        np.testing.assert_array_equal(a, b)


def concat_ranges(parts):
    """The driver's concatenation of range tables, in order."""
    indptr, ids, scores, offset = [np.zeros(1, np.int64)], [], [], 0
    for p_indptr, p_ids, p_scores in parts:
        indptr.append(p_indptr[1:] + offset)
        offset += int(p_indptr[-1])
        ids.append(p_ids)
        scores.append(p_scores)
    return np.concatenate(indptr), np.concatenate(ids), np.concatenate(scores)


def hot_ranges(item_indptr, n_items):
    """Cuts that give the hottest item a range of its own, with empty ranges at both ends and beside it."""
    hot = int(np.argmax(np.diff(item_indptr)))
    return [0, 0, hot, hot, hot + 1, hot + 1, n_items // 2 if n_items // 2 > hot + 1 else hot + 1, n_items, n_items]


def assert_bitwise(got, want):
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("seed", range(3))
def test_itemcf_ranges_concatenate_to_the_full_build_bitwise(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items = 70, 90
    rows, cols = random_log(rng, n_users, n_items, 1200)
    csrs = interactions(rows, cols, n_users, n_items)
    full = itemcf_topm(*csrs, n_items, 12)
    cuts = hot_ranges(csrs[2], n_items)
    parts = [itemcf_topm(*csrs, n_items, 12, lo=lo, hi=hi) for lo, hi in zip(cuts[:-1], cuts[1:])]
    assert_bitwise(concat_ranges(parts), full)
    hot = int(np.argmax(np.diff(csrs[2])))
    only_hot = itemcf_topm(*csrs, n_items, 12, lo=hot, hi=hot + 1)
    assert only_hot[0].tolist() == [0, full[0][hot + 1] - full[0][hot]] and only_hot[1].size > 0
    assert_bitwise(only_hot, csr_rows(full, hot, hot + 1))
    empty = itemcf_topm(*csrs, n_items, 12, lo=5, hi=5)
    assert empty[0].tolist() == [0] and empty[1].size == 0 and empty[1].dtype == np.int32
    assert_table_equal(itemcf_topm(*csrs, n_items, 12, lo=10, hi=40), ref_itemcf(csrs[0], csrs[1], n_items, 12, lo=10, hi=40))


def test_itemcf_range_validation():
    csrs = interactions(np.array([0, 0, 1], np.int32), np.array([0, 1, 1], np.int32), 2, 2)
    with pytest.raises(ValueError, match="^lo"):
        itemcf_topm(*csrs, 2, 5, lo=3)
    with pytest.raises(ValueError, match="^hi"):
        itemcf_topm(*csrs, 2, 5, lo=1, hi=0)
    with pytest.raises(ValueError, match="^hi"):
        itemcf_topm(*csrs, 2, 5, hi=3)


def test_itemcf_validation():
    rows = np.array([0, 0, 1], np.int32)
    cols = np.array([0, 1, 1], np.int32)
    ui, uitems, ii, iusers = interactions(rows, cols, 2, 2)
    with pytest.raises(ValueError, match="^item_indptr"):
        itemcf_topm(ui, uitems, ii, iusers, 3, 5)
    with pytest.raises(ValueError, match="^top_m"):
        itemcf_topm(ui, uitems, ii, iusers, 2, -1)
    with pytest.raises(ValueError, match="^popularity_damping"):
        itemcf_topm(ui, uitems, ii, iusers, 2, 5, popularity_damping=-0.5)
    with pytest.raises(ValueError, match="^user_items"):
        itemcf_topm(ui, uitems[::-1].copy(), ii, iusers, 2, 5)  # rows not sorted
    with pytest.raises(ValueError, match="^user_indptr"):
        itemcf_topm(ui.astype(np.int32), uitems, ii, iusers, 2, 5)
    with pytest.raises(ValueError, match=r"^item_indptr\[-1\]"):
        itemcf_topm(ui, uitems, ii, iusers[:2].copy(), 2, 5)
    with pytest.raises(ValueError, match="^item_users must hold as many entries"):
        itemcf_topm(ui, uitems, np.array([0, 1, 1], np.int64), np.array([0], np.int32), 2, 5)
    with pytest.raises(ValueError, match="^iuf"):
        itemcf_topm(ui, uitems, ii, iusers, 2, 5, iuf=1)
