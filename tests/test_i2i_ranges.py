"""kernels.i2i_ranges: the per-item work estimate against numpy, and the equal-work range splitter."""
import numpy as np
import pytest

from kernels.i2i_ranges import check_item_range, item_work, split_ranges
from kernels.reference import random_log
from tests.test_kernels_itemcf import interactions


def ref_item_work(user_indptr, item_indptr, item_users, cap=0, pair_term=False):
    deg = np.diff(user_indptr)
    out = []
    for i in range(item_indptr.shape[0] - 1):
        users = item_users[item_indptr[i]:item_indptr[i + 1]][:cap or None]
        m = users.size
        out.append(int(deg[users].sum()) + (m * (m - 1) // 2 if pair_term else 0))
    return np.array(out, np.int64)


@pytest.mark.parametrize("cap, pair_term", [(None, False), (5, True), (0, True)])
def test_item_work_matches_numpy(cap, pair_term):
    rng = np.random.default_rng(4)
    rows, cols = random_log(rng, 40, 50, 700)
    ui, _, ii, iu = interactions(rows, cols, 40, 50)
    got = item_work(ui, ii, iu, cap, pair_term)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, ref_item_work(ui, ii, iu, cap or 0, pair_term))
    # ItemCF's work sums to sum_u |I(u)|^2: every user's items meet every item of that user
    if cap is None:
        assert got.sum() == (np.diff(ui) ** 2).sum()


def brute_force_max(work, n_parts):
    """The smallest possible largest range (contiguous partition), by binary search over the answer."""
    def parts_needed(limit):
        parts, acc = 1, 0
        for w in work:
            if acc + w > limit:
                parts, acc = parts + 1, w
            else:
                acc += w
        return parts
    lo, hi = max(work.max(), 0), work.sum()
    while lo < hi:
        mid = (lo + hi) // 2
        if parts_needed(mid) <= n_parts:
            hi = mid
        else:
            lo = mid + 1
    return lo


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_parts", [1, 2, 3, 8])
def test_split_ranges_is_contiguous_and_balanced(seed, n_parts):
    rng = np.random.default_rng(seed)
    work = (rng.pareto(1.2, 200) * 100).astype(np.int64)
    bounds = split_ranges(work, n_parts)
    assert bounds.dtype == np.int64 and bounds.shape == (n_parts + 1,)
    assert bounds[0] == 0 and bounds[-1] == work.size and np.all(np.diff(bounds) >= 0)
    sums = np.array([work[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:])])
    assert sums.sum() == work.sum()
    # each range is within one item's work of its equal share, and so within one item of the optimum
    assert sums.max() <= work.sum() / n_parts + work.max()
    assert sums.max() <= brute_force_max(work, n_parts) + work.max()


def test_split_ranges_gives_a_hot_item_its_own_range():
    work = np.array([1, 1, 1, 1000, 1, 1, 1], np.int64)
    bounds = split_ranges(work, 4)
    ranges = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
    assert (3, 4) in ranges                               # the hot item alone
    assert any(a == b for a, b in ranges)                 # and an empty range beside it
    assert split_ranges(np.zeros(5, np.int64), 3).tolist() == [0, 0, 0, 5]
    assert split_ranges(np.zeros(0, np.int64), 2).tolist() == [0, 0, 0]
    assert split_ranges(np.ones(6), 3).tolist() == [0, 2, 4, 6]


def test_validation():
    with pytest.raises(ValueError, match="^n_parts"):
        split_ranges(np.ones(3), 0)
    with pytest.raises(ValueError, match="^work"):
        split_ranges(np.array([1.0, -1.0]), 2)
    with pytest.raises(ValueError, match="^lo"):
        check_item_range(-1, None, 5)
    with pytest.raises(ValueError, match="^hi"):
        check_item_range(2, 6, 5)
    assert check_item_range(2, None, 5) == (2, 5)
    ui, _, ii, iu = interactions(np.array([0], np.int32), np.array([0], np.int32), 1, 1)
    with pytest.raises(ValueError, match="^item_users"):
        item_work(ui, ii, iu + 3)
    with pytest.raises(ValueError, match="^pair_term"):
        item_work(ui, ii, iu, pair_term=1)
