"""kernels.mmr against the numpy reference in kernels.reference."""
import numpy as np
import pytest

from kernels.mmr import mmr_select
from kernels.reference import ref_mmr


def random_inputs(rng, n, d):
    rel = rng.permutation(n).astype(np.float32) / n + rng.random(n).astype(np.float32) * 1e-3
    emb = rng.standard_normal((n, d)).astype(np.float32)
    return rel, emb


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("window", [0, 1, 3])
def test_mmr_random(seed, lam, window):
    rng = np.random.default_rng(seed)
    rel, emb = random_inputs(rng, 60, 12)
    got = mmr_select(rel, emb, 15, lam, window)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, ref_mmr(rel, emb, 15, lam, window))


def test_mmr_k_at_least_n_returns_every_item():
    rng = np.random.default_rng(1)
    rel, emb = random_inputs(rng, 20, 5)
    got = mmr_select(rel, emb, 50, 0.5)
    np.testing.assert_array_equal(got, ref_mmr(rel, emb, 50, 0.5))
    np.testing.assert_array_equal(np.sort(got), np.arange(20))
    assert got[0] == np.argmax(rel)


def test_mmr_lam_one_is_relevance_order():
    rng = np.random.default_rng(2)
    rel, emb = random_inputs(rng, 30, 4)
    np.testing.assert_array_equal(mmr_select(rel, emb, 10, 1.0), np.argsort(-rel)[:10])


def test_mmr_ties_go_to_lowest_index():
    # Equal relevance, one-hot embeddings: every score ties exactly.
    emb = np.eye(6, dtype=np.float32)
    got = mmr_select(np.ones(6, np.float32), emb, 6, 0.5)
    np.testing.assert_array_equal(got, np.arange(6))
    # Items 0 and 1 are identical and most relevant; 1 is penalised after 0.
    emb = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    rel = np.array([1.0, 1.0, 0.5], np.float32)
    np.testing.assert_array_equal(mmr_select(rel, emb, 3, 0.5), [0, 2, 1])


def test_mmr_zero_rows_are_orthogonal_and_scale_is_ignored():
    rng = np.random.default_rng(3)
    rel, emb = random_inputs(rng, 25, 6)
    emb[[2, 9, 17]] = 0.0
    got = mmr_select(rel, emb, 12, 0.4)
    np.testing.assert_array_equal(got, ref_mmr(rel, emb, 12, 0.4))
    scaled = emb * rng.uniform(0.1, 10.0, (25, 1)).astype(np.float32)
    np.testing.assert_array_equal(mmr_select(rel, scaled, 12, 0.4), got)


def test_mmr_empty_and_k_zero():
    assert mmr_select(np.empty(0, np.float32), np.empty((0, 4), np.float32), 5, 0.5).shape == (0,)
    rel, emb = random_inputs(np.random.default_rng(0), 5, 3)
    assert mmr_select(rel, emb, 0, 0.5).shape == (0,)


def test_mmr_validation():
    rel, emb = random_inputs(np.random.default_rng(0), 5, 3)
    for bad in (np.nan, np.inf, -np.inf):
        r = rel.copy()
        r[2] = bad
        with pytest.raises(ValueError, match=r"^relevance contains NaN or inf$"):
            mmr_select(r, emb, 3, 0.5)
    e = emb.copy()
    e[0, 0] = np.nan
    with pytest.raises(ValueError, match="^emb"):
        mmr_select(rel, e, 3, 0.5)
    with pytest.raises(ValueError, match="^emb"):
        mmr_select(rel, emb[:4], 3, 0.5)
    with pytest.raises(ValueError, match="^lam"):
        mmr_select(rel, emb, 3, 1.5)
    with pytest.raises(ValueError, match="^k"):
        mmr_select(rel, emb, -1, 0.5)
    with pytest.raises(ValueError, match="^window"):
        mmr_select(rel, emb, 3, 0.5, window=-1)
    with pytest.raises(ValueError, match="^relevance"):
        mmr_select(rel.astype(np.float64), emb, 3, 0.5)
