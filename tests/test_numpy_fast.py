"""The bench's fast numpy peers compute what the kernels compute (kernels.numpy_fast), so the speedups
``kernels.bench`` prints compare like with like."""
from __future__ import annotations

import numpy as np
import pytest

from kernels import numpy_fast
from kernels.bench import powerlaw_log
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
    got = numpy_fast.itemcf_topm(ui[0], ui[1], 500, 50)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[2], want[2], rtol=1e-5)


@pytest.mark.parametrize("window", [0, 10])
def test_mmr_matches_the_kernel(window):
    rng = np.random.default_rng(window)
    rel = rng.random(200).astype(np.float32)
    emb = rng.standard_normal((200, 64)).astype(np.float32)
    np.testing.assert_array_equal(numpy_fast.mmr_select(rel, emb, 50, 0.7, window),
                                  mmr_select(rel, emb, 50, 0.7, window))


def test_dpp_matches_the_kernel():
    rng = np.random.default_rng(3)
    rel = rng.random(200).astype(np.float32)
    emb = rng.standard_normal((200, 64)).astype(np.float32)
    np.testing.assert_array_equal(numpy_fast.dpp_select(rel, emb, 50, 2.0), dpp_select(rel, emb, 50, 2.0))
