"""The bench's fast numpy peers compute what the kernels compute (benches.numpy_peers), so the speedups
``benches.kernel_timings`` prints compare like with like."""
from __future__ import annotations

import numpy as np
import pytest

from benches import numpy_peers
from benches.kernel_timings import powerlaw_log
from kernels.csr import build_csr, transpose_csr
from kernels.dpp import dpp_select
from kernels.itemcf import itemcf_topm
from kernels.mmr import mmr_select


@pytest.mark.parametrize("seed", [0, 1])
def test_itemcf_matches_the_kernel(seed):
    users, items = powerlaw_log(300, 500, 12_000, seed=seed)
    ui = build_csr(users, items, 300, n_cols=500)
    iu = transpose_csr(*ui, 500)
    want = itemcf_topm(ui[0], ui[1], iu[0], iu[1], 500, 50)
    got = numpy_peers.itemcf_topm(ui[0], ui[1], 500, 50)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[2], want[2], rtol=1e-5)


@pytest.mark.parametrize("window", [0, 10])
def test_mmr_matches_the_kernel(window):
    rng = np.random.default_rng(window)
    rel = rng.random(200).astype(np.float32)
    emb = rng.standard_normal((200, 64)).astype(np.float32)
    np.testing.assert_array_equal(numpy_peers.mmr_select(rel, emb, 50, 0.7, window),
                                  mmr_select(rel, emb, 50, 0.7, window))


def test_dpp_matches_the_kernel():
    rng = np.random.default_rng(3)
    rel = rng.random(200).astype(np.float32)
    emb = rng.standard_normal((200, 64)).astype(np.float32)
    np.testing.assert_array_equal(numpy_peers.dpp_select(rel, emb, 50, 2.0), dpp_select(rel, emb, 50, 2.0))


@pytest.mark.parametrize("seed", [0, 1])
def test_i2i_lookup_matches_the_kernel(seed):
    from kernels.i2i_lookup import i2i_lookup

    rng = np.random.default_rng(seed)
    users, items = powerlaw_log(300, 500, 12_000, seed=seed)
    ui = build_csr(users, items, 300, n_cols=500)
    iu = transpose_csr(*ui, 500)
    table = itemcf_topm(ui[0], ui[1], iu[0], iu[1], 500, 30)
    history = np.concatenate([rng.choice(500, 20, replace=False), [-1]]).astype(np.int32)
    weights = rng.random(21).astype(np.float32)
    cand = np.concatenate([rng.choice(500, 200, replace=False), [7, 7, 10**6, -3]]).astype(np.int32)
    np.testing.assert_allclose(numpy_peers.i2i_lookup(history, weights, *table, cand, 500),
                               i2i_lookup(history, weights, *table, cand), rtol=1e-5, atol=1e-7)


def test_history_similarity_matches_the_kernel():
    from kernels.history_similarity import history_similarity

    rng = np.random.default_rng(3)
    emb = rng.normal(size=(400, 32)).astype(np.float32)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    history = rng.choice(400, 15, replace=False).astype(np.int32)
    cand = rng.choice(400, 120, replace=False).astype(np.int32)
    np.testing.assert_allclose(numpy_peers.history_similarity(unit, history, cand),
                               history_similarity(unit, history, cand), rtol=1e-4, atol=1e-5)
    assert not numpy_peers.history_similarity(unit, np.empty(0, np.int32), cand).any()
