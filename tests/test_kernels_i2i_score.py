"""kernels.i2i_score against the numpy reference in kernels.reference."""
import numpy as np
import pytest

from kernels.i2i_score import check_neighbor_table, i2i_score, recency_weights
from kernels.reference import ref_i2i_score, ref_recency_weights


def random_table(rng, n_items, max_deg, n_levels=None):
    degs = rng.integers(0, max_deg + 1, n_items)
    indptr = np.r_[0, np.cumsum(degs)].astype(np.int64)
    indices = np.concatenate([rng.choice(n_items, d, replace=False) for d in degs] + [[]]).astype(np.int32)
    if n_levels:  # few distinct values -> many exact ties in the sums
        scores = (rng.integers(1, n_levels + 1, indices.shape[0]) / n_levels).astype(np.float32)
    else:
        scores = rng.random(indices.shape[0]).astype(np.float32)
    return indptr, indices, scores


def assert_same(got, want):
    assert got[0].dtype == np.int32 and got[1].dtype == np.float32
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n_levels", [None, 2])
def test_i2i_random(seed, n_levels):
    rng = np.random.default_rng(seed)
    n_items = 300
    table = random_table(rng, n_items, 25, n_levels)
    history = rng.integers(0, n_items, 30).astype(np.int32)
    history[:5] = -1  # left padding
    history[10] = history[20]  # a repeated item counts twice
    weights = recency_weights(30, 0.9)
    exclude = np.r_[history[history >= 0], rng.integers(0, n_items, 40)].astype(np.int32)
    rng.shuffle(exclude)
    for n in (0, 1, 10, 50, 10_000):
        got = i2i_score(history, weights, *table, n, exclude)
        assert_same(got, ref_i2i_score(history, weights, *table, n, exclude))
    assert not np.isin(got[0], exclude).any()


def test_i2i_sums_over_history_and_breaks_ties_by_id():
    # item 0 -> {5: 1.0, 3: 0.5}; item 1 -> {3: 0.5, 4: 1.0}
    indptr = np.array([0, 2, 4], np.int64)
    indices = np.array([5, 3, 3, 4], np.int32)
    scores = np.array([1.0, 0.5, 0.5, 1.0], np.float32)
    ids, s = i2i_score(np.array([0, 1], np.int32), np.ones(2, np.float32), indptr, indices,
                       scores, 10, np.empty(0, np.int32))
    np.testing.assert_array_equal(ids, [3, 4, 5])  # all score 1.0
    np.testing.assert_array_equal(s, [1.0, 1.0, 1.0])
    ids, _ = i2i_score(np.array([0, 1], np.int32), np.ones(2, np.float32), indptr, indices,
                       scores, 2, np.array([4, 4, 99, -3], np.int32))
    np.testing.assert_array_equal(ids, [3, 5])


def test_i2i_empty_and_padding_only():
    table = (np.array([0, 1], np.int64), np.array([0], np.int32), np.ones(1, np.float32))
    for history in (np.empty(0, np.int32), np.array([-1, -1], np.int32)):
        ids, scores = i2i_score(history, np.ones(history.shape[0], np.float32), *table, 5,
                                np.empty(0, np.int32))
        assert ids.shape == (0,) and scores.shape == (0,)
    # Zero weights are ignored like padding.
    ids, _ = i2i_score(np.array([0], np.int32), np.zeros(1, np.float32), *table, 5,
                       np.empty(0, np.int32))
    assert ids.shape == (0,)
    # Everything excluded.
    ids, _ = i2i_score(np.array([0], np.int32), np.ones(1, np.float32), *table, 5,
                       np.array([0], np.int32))
    assert ids.shape == (0,)


def test_i2i_validation():
    table = (np.array([0, 1, 1], np.int64), np.array([1], np.int32), np.ones(1, np.float32))
    h = np.array([0, 1], np.int32)
    w = np.ones(2, np.float32)
    e = np.empty(0, np.int32)
    with pytest.raises(ValueError, match="^history"):
        i2i_score(np.array([0, 2], np.int32), w, *table, 3, e)
    with pytest.raises(ValueError, match="^history_weights"):
        i2i_score(h, np.array([1.0, np.inf], np.float32), *table, 3, e)
    with pytest.raises(ValueError, match="^history_weights"):
        i2i_score(h, np.ones(3, np.float32), *table, 3, e)
    with pytest.raises(ValueError, match="^n"):
        i2i_score(h, w, *table, -1, e)
    with pytest.raises(ValueError, match="^exclude"):
        i2i_score(h, w, *table, 3, e.astype(np.int64))
    with pytest.raises(ValueError, match="^nbr_indptr"):
        i2i_score(h, w, np.array([0, 5, 1], np.int64), table[1], table[2], 3, e)
    with pytest.raises(ValueError, match="^nbr_scores"):
        i2i_score(h, w, table[0], table[1], np.ones(2, np.float32), 3, e)
    check_neighbor_table(*table, 2)
    with pytest.raises(ValueError, match="^nbr_indices"):
        check_neighbor_table(table[0], np.array([7], np.int32), table[2], 2)
    with pytest.raises(ValueError, match="^nbr_scores"):
        check_neighbor_table(table[0], table[1], np.array([np.nan], np.float32), 2)


@pytest.mark.parametrize("n, decay", [(0, 0.5), (1, 0.5), (7, 0.8), (5, 1.0), (4, 0.0)])
def test_recency_weights(n, decay):
    got = recency_weights(n, decay)
    assert got.dtype == np.float32 and got.shape == (n,)
    np.testing.assert_allclose(got, ref_recency_weights(n, decay), rtol=1e-7)
    if n:
        assert got[-1] == 1.0


def test_recency_weights_validation():
    with pytest.raises(ValueError, match="^decay"):
        recency_weights(3, 1.5)
    with pytest.raises(ValueError, match="^n"):
        recency_weights(-1, 0.5)
