"""kernels.dpp (fast greedy MAP) against the slow log-det reference."""
import numpy as np
import pytest

from kernels.dpp import dpp_select
from kernels.reference import ref_dpp


def random_inputs(rng, n, d):
    rel = rng.permutation(n).astype(np.float32) / n  # distinct relevance
    emb = rng.standard_normal((n, d)).astype(np.float32)
    return rel, emb


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("alpha", [0.5, 3.0])
@pytest.mark.parametrize("d", [8, 16])
def test_dpp_random_matches_logdet_greedy(seed, alpha, d):
    rng = np.random.default_rng(seed)
    rel, emb = random_inputs(rng, 40, d)
    got = dpp_select(rel, emb, 10, alpha)
    assert got.dtype == np.int32
    want = ref_dpp(rel, emb, 10, alpha)
    np.testing.assert_array_equal(got, want)
    # D = 8 embeddings have rank 8: the gains run out before k = 10.
    assert got.shape[0] == min(10, d)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("window", [1, 2, 3, 5])
def test_dpp_window_matches_logdet_greedy(seed, window):
    rng = np.random.default_rng(100 + seed)
    rel, emb = random_inputs(rng, 40, 8)
    got = dpp_select(rel, emb, 12, 1.5, window=window)
    np.testing.assert_array_equal(got, ref_dpp(rel, emb, 12, 1.5, window=window))
    # With a window of w the rank limit applies per window, not overall.
    assert got.shape[0] == 12


def test_dpp_window_one_is_relevance_order():
    rng = np.random.default_rng(4)
    rel, emb = random_inputs(rng, 30, 4)
    np.testing.assert_array_equal(dpp_select(rel, emb, 10, 1.0, window=1), np.argsort(-rel)[:10])


def test_dpp_k_at_least_n_returns_every_item_when_full_rank():
    rng = np.random.default_rng(5)
    rel, emb = random_inputs(rng, 12, 32)
    got = dpp_select(rel, emb, 100, 1.0)
    np.testing.assert_array_equal(got, ref_dpp(rel, emb, 100, 1.0))
    np.testing.assert_array_equal(np.sort(got), np.arange(12))
    assert got[0] == np.argmax(rel)


def test_dpp_duplicates_do_not_crash_and_are_not_repicked():
    rng = np.random.default_rng(6)
    rel, emb = random_inputs(rng, 20, 16)
    emb[5] = emb[11]  # exact duplicates
    emb[7] = 3.0 * emb[11]  # same direction, different scale
    got = dpp_select(rel, emb, 20, 1.0)
    assert len(set(got.tolist()) & {5, 7, 11}) == 1
    np.testing.assert_array_equal(got, ref_dpp(rel, emb, 20, 1.0))
    # Only duplicates: one pick, then the gain is 0 and the walk stops.
    same = np.tile(emb[:1], (6, 1))
    np.testing.assert_array_equal(dpp_select(rel[:6], same, 6, 1.0), [np.argmax(rel[:6])])


def test_dpp_zero_rows_are_orthogonal():
    rng = np.random.default_rng(7)
    rel, emb = random_inputs(rng, 30, 16)
    emb[[3, 4, 20]] = 0.0
    got = dpp_select(rel, emb, 12, 2.0)
    np.testing.assert_array_equal(got, ref_dpp(rel, emb, 12, 2.0))
    # Zero rows plus orthogonal unit vectors: all gains stay q_i^2, so the
    # order is pure relevance.
    emb = np.zeros((5, 3), np.float32)
    emb[0, 0] = emb[1, 1] = 1.0
    rel = np.array([0.1, 0.5, 0.3, 0.9, 0.2], np.float32)
    np.testing.assert_array_equal(dpp_select(rel, emb, 5, 1.0), [3, 1, 2, 4, 0])


def test_dpp_ties_go_to_lowest_index():
    got = dpp_select(np.ones(5, np.float32), np.eye(5, dtype=np.float32), 5, 1.0)
    np.testing.assert_array_equal(got, np.arange(5))


def test_dpp_epsilon_stops_early():
    rng = np.random.default_rng(8)
    rel, emb = random_inputs(rng, 40, 16)
    full = dpp_select(rel, emb, 16, 1.0)
    short = dpp_select(rel, emb, 16, 1.0, epsilon=0.5)
    assert short.shape[0] < full.shape[0]
    np.testing.assert_array_equal(short, full[: short.shape[0]])
    np.testing.assert_array_equal(short, ref_dpp(rel, emb, 16, 1.0, epsilon=0.5))


def test_dpp_empty_and_k_zero():
    assert dpp_select(np.empty(0, np.float32), np.empty((0, 4), np.float32), 5, 1.0).shape == (0,)
    rel, emb = random_inputs(np.random.default_rng(0), 5, 3)
    assert dpp_select(rel, emb, 0, 1.0).shape == (0,)


def test_dpp_validation():
    rel, emb = random_inputs(np.random.default_rng(0), 5, 3)
    for bad in (np.nan, np.inf):
        r = rel.copy()
        r[1] = bad
        with pytest.raises(ValueError, match=r"^relevance contains NaN or inf$"):
            dpp_select(r, emb, 3, 1.0)
    with pytest.raises(ValueError, match="^epsilon"):
        dpp_select(rel, emb, 3, 1.0, epsilon=0.0)
    with pytest.raises(ValueError, match="^alpha"):
        dpp_select(rel, emb, 3, float("inf"))
    with pytest.raises(ValueError, match="^alpha"):
        dpp_select(rel * 1000, emb, 3, 1.0)
    with pytest.raises(ValueError, match="^window"):
        dpp_select(rel, emb, 3, 1.0, window=-2)
    with pytest.raises(ValueError, match="^emb"):
        dpp_select(rel, emb.astype(np.float64), 3, 1.0)
