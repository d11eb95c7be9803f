"""Input handling shared by the diversity re-rankers (MMR, DPP).

Both take per-candidate relevance plus an embedding matrix and measure
similarity as the cosine of embedding rows. Rows are L2-normalised here, in
float64, so callers may pass raw embeddings. An all-zero row (an item without
an embedding) stays zero: it has cosine 0 with every other item, i.e. it is
treated as orthogonal to everything, and never produces a NaN.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from ._validate import check_array, check_finite, check_int


@numba.njit(cache=True, nogil=True)
def unit_columns(emb):
    """Unit-norm rows of ``emb`` as a float64 [D, N] array (zero rows stay zero).

    Transposed on purpose: the re-rankers need the cosines of one picked item
    with all N candidates, and accumulating ``out[t, :] * out[t, pick]`` over
    t runs along contiguous memory and vectorises (a per-candidate dot
    product is a serial floating-point reduction). The terms are still added
    in t order, so the values equal a row-wise dot product.
    """
    n, d = emb.shape
    out = np.empty((d, n), np.float64)
    for i in range(n):
        sq = 0.0
        for t in range(d):
            v = np.float64(emb[i, t])
            sq += v * v
        inv = 1.0 / math.sqrt(sq) if sq > 0.0 else 0.0
        for t in range(d):
            out[t, i] = np.float64(emb[i, t]) * inv
    return out


@numba.njit(cache=True, nogil=True)
def cosines_to(unit_t, pick, out):
    """out[i] = <e_i, e_pick> for every i, from ``unit_columns`` output."""
    d, n = unit_t.shape
    for i in range(n):
        out[i] = 0.0
    for t in range(d):
        v = unit_t[t, pick]
        for i in range(n):
            out[i] += unit_t[t, i] * v


def validate_rerank_inputs(relevance, emb, k, window):
    """Check relevance/emb/k/window for ``mmr_select`` and ``dpp_select``."""
    relevance = check_array("relevance", relevance, np.float32)
    emb = check_array("emb", emb, np.float32, ndim=2)
    if emb.shape[0] != relevance.shape[0]:
        raise ValueError(f"emb must have one row per relevance entry ({relevance.shape[0]}), "
                         f"got {emb.shape[0]}")
    check_finite("relevance", relevance)
    check_finite("emb", emb)
    k = check_int("k", k, minimum=0)
    window = check_int("window", window, minimum=0)
    return relevance, emb, k, window
