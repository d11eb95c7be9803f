"""kernels.next_item against the vectorised numpy build it replaced (kernels.reference.ref_next_item), bitwise."""
import numba
import numpy as np
import pytest

from kernels.next_item import next_item_topm, occurrences, sequence_csr
from kernels.reference import csr_rows, random_log, ref_next_item
from tests.test_kernels_itemcf import assert_bitwise, concat_ranges


def log(seed, n_users=50, n_items=60, n=1500, ts_range=40):
    rng = np.random.default_rng(seed)
    user, item = random_log(rng, n_users, n_items, n)
    # few distinct timestamps: many ties, which must keep the log's row order
    timestamp = rng.integers(0, ts_range, n).astype(np.int64)
    return user, item, timestamp


def build(user, item, timestamp, n_users, n_items, top_m, span=3, lo=0, hi=None):
    seq = sequence_csr(user, item, timestamp, n_users)
    return next_item_topm(*seq, *occurrences(*seq, n_items), n_items, top_m, span=span, lo=lo, hi=hi)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("top_m, span", [(10, 3), (3, 1), (100, 5)])
def test_next_item_matches_the_numpy_build_bitwise(seed, top_m, span):
    user, item, ts = log(seed)
    got = build(user, item, ts, 50, 60, top_m, span)
    assert_bitwise(got, ref_next_item(user, item, ts, 60, top_m, span))


def test_next_item_ranges_concatenate_to_the_full_build_bitwise():
    user, item, ts = log(5, n=3000)
    full = build(user, item, ts, 50, 60, 8)
    hot = int(np.argmax(np.bincount(item, minlength=60)))
    cuts = [0, 0, hot, hot, hot + 1, hot + 1, max(hot + 1, 30), 60, 60]
    parts = [build(user, item, ts, 50, 60, 8, lo=lo, hi=hi) for lo, hi in zip(cuts[:-1], cuts[1:])]
    assert_bitwise(concat_ranges(parts), full)
    only_hot = build(user, item, ts, 50, 60, 8, lo=hot, hi=hot + 1)
    assert only_hot[1].size == 8
    assert_bitwise(only_hot, csr_rows(full, hot, hot + 1))
    assert_bitwise(build(user, item, ts, 50, 60, 8, lo=12, hi=41), ref_next_item(user, item, ts, 60, 8, lo=12, hi=41))


def test_next_item_hand_computed():
    # user 0: 0, 1, 2, 1 (in time order, given out of order); user 1: 0, 1
    user = np.array([0, 0, 0, 0, 1, 1], np.int32)
    item = np.array([1, 0, 2, 1, 0, 1], np.int32)
    ts = np.array([3, 0, 2, 1, 5, 6], np.int64)
    indptr, ids, scores = build(user, item, ts, 2, 3, 5)
    # 0 -> 1: 1 (d=1) + 1/3 (d=3) + 1 (user 1); 0 -> 2: 1/2. total 17/6
    np.testing.assert_array_equal(indptr, [0, 2, 3, 4])
    np.testing.assert_array_equal(ids, [1, 2, 2, 1])
    np.testing.assert_allclose(scores[:2], [(7 / 3) / (17 / 6), 0.5 / (17 / 6)], rtol=1e-6)
    np.testing.assert_allclose(scores[2:], [1.0, 1.0])  # 1 -> 2 (1/1), the 1 -> 1 repeat dropped; 2 -> 1


def test_next_item_edge_cases_and_threads():
    empty32, empty64 = np.empty(0, np.int32), np.empty(0, np.int64)
    indptr, ids, _ = build(empty32, empty32, empty64, 3, 4, 5)
    np.testing.assert_array_equal(indptr, np.zeros(5))
    indptr, ids, _ = build(empty32, empty32, empty64, 0, 0, 5)
    np.testing.assert_array_equal(indptr, [0])
    user, item, ts = log(2)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = build(user, item, ts, 50, 60, 10)
    finally:
        numba.set_num_threads(before)
    assert_bitwise(single, build(user, item, ts, 50, 60, 10))
    assert build(user, item, ts, 50, 60, 0)[1].size == 0


def test_next_item_validation():
    user, item, ts = log(1, n=50)
    seq = sequence_csr(user, item, ts, 50)
    occ = occurrences(*seq, 60)
    with pytest.raises(ValueError, match="^occ_indptr"):
        next_item_topm(*seq, *occ, 61, 5)
    with pytest.raises(ValueError, match="^span"):
        next_item_topm(*seq, *occ, 60, 5, span=0)
    with pytest.raises(ValueError, match="^hi"):
        next_item_topm(*seq, *occ, 60, 5, lo=3, hi=2)
    with pytest.raises(ValueError, match="^occ_off"):
        next_item_topm(*seq, occ[0], occ[1], occ[2] + 100, 60, 5)
    with pytest.raises(ValueError, match="^user"):
        sequence_csr(user, item, ts, 3)
    with pytest.raises(ValueError, match="^timestamp"):
        sequence_csr(user, item, ts.astype(np.int32), 50)
