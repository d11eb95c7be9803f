"""The ranker's history kernels against plain numpy references: i2i_lookup and history_similarity."""
from __future__ import annotations

import numpy as np
import pytest

from kernels.history_similarity import history_similarity
from kernels.i2i_lookup import i2i_lookup


def _table(rng, n_items: int, m: int):
    indptr = np.zeros(n_items + 1, np.int64)
    rows = [rng.choice(n_items, size=rng.integers(0, m + 1), replace=False) for _ in range(n_items)]
    indptr[1:] = np.cumsum([r.size for r in rows])
    indices = np.concatenate(rows).astype(np.int32)
    scores = rng.random(indices.size).astype(np.float32)
    return indptr, indices, scores


def _lookup_reference(history, weights, indptr, indices, scores, candidates):
    dense = np.zeros(indptr.size - 1)
    for h, w in zip(history.tolist(), weights.tolist()):
        if h < 0 or w == 0:
            continue
        for p in range(indptr[h], indptr[h + 1]):
            dense[indices[p]] += w * scores[p]
    return np.array([dense[c] if 0 <= c < dense.size else 0.0 for c in candidates.tolist()])


@pytest.mark.parametrize("seed", range(5))
def test_i2i_lookup_matches_reference(seed):
    rng = np.random.default_rng(seed)
    n = 200
    table = _table(rng, n, 15)
    history = rng.integers(-1, n, 12).astype(np.int32)           # with padding and repeats
    weights = rng.random(12).astype(np.float32)
    weights[3] = 0.0
    # repeats, unknown ids, negative ids (-1 is the hash table's empty key), and a list longer than the catalogue
    candidates = np.concatenate([rng.integers(0, n, 80 if seed % 2 else 700), [5, 5, 10**6, -1, -7, -1]]).astype(np.int32)
    got = i2i_lookup(history, weights, *table, candidates)
    np.testing.assert_allclose(got, _lookup_reference(history, weights, *table, candidates), rtol=1e-5, atol=1e-7)


def test_i2i_lookup_validates():
    table = _table(np.random.default_rng(0), 10, 3)
    with pytest.raises(ValueError, match="history ids must be < 10"):
        i2i_lookup(np.array([10], np.int32), np.ones(1, np.float32), *table, np.arange(3, dtype=np.int32))
    with pytest.raises(ValueError, match="dtype"):
        i2i_lookup(np.array([1], np.int64), np.ones(1, np.float32), *table, np.arange(3, dtype=np.int32))
    assert i2i_lookup(np.empty(0, np.int32), np.empty(0, np.float32), *table, np.empty(0, np.int32)).size == 0


@pytest.mark.parametrize("seed", range(4))
def test_history_similarity_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(300, 16)).astype(np.float32)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    history = rng.integers(0, 300, 7).astype(np.int32)
    cand = rng.integers(0, 300, 50).astype(np.int32)
    sims = unit[cand] @ unit[history].T
    centre = unit[history].mean(0)
    want = np.stack([unit[cand] @ (centre / np.linalg.norm(centre)), sims.max(1), sims[:, -1]], axis=1)
    np.testing.assert_allclose(history_similarity(unit, history, cand), want, rtol=1e-4, atol=1e-5)
    assert not history_similarity(unit, np.empty(0, np.int32), cand).any()
    with pytest.raises(ValueError, match="candidates ids"):
        history_similarity(unit, history, np.array([300], np.int32))


def test_i2i_lookup_several_weightings_in_one_pass():
    rng = np.random.default_rng(9)
    table = _table(rng, 100, 10)
    history = rng.integers(0, 100, 8).astype(np.int32)
    weights = rng.random((2, 8)).astype(np.float32)
    cand = rng.integers(0, 100, 40).astype(np.int32)
    got = i2i_lookup(history, weights, *table, cand)
    assert got.shape == (40, 2)
    for w in range(2):
        np.testing.assert_allclose(got[:, w], i2i_lookup(history, weights[w], *table, cand), rtol=1e-6)
    with pytest.raises(ValueError, match="entries per row"):
        i2i_lookup(history, weights[:, :5], *table, cand)
