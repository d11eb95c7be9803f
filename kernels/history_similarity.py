"""Cosine similarities of candidates to a user's recent items (the ranker's embedding features).

For unit item vectors ``U`` [n_items, d], history ids ``h`` (oldest first) and candidates ``c``::

    mean[c] = U[c] . m / |m|,  m = mean_h U[h]      (similarity to the history's centre)
    max[c]  = max_h U[c] . U[h]                      (to the closest history item)
    last[c] = U[c] . U[h_last]                       (to the latest item)

A plain loop instead of a BLAS matmul: the shapes are small (1,000 x 20 x 64) and a multi-threaded BLAS on a
busy 2-core machine was measured at 15 ms for this product against 0.14 ms single-threaded; the loop's
cost does not depend on how the process's BLAS is configured. O(C * H * d).
"""
from __future__ import annotations

import numba
import numpy as np

from ._validate import check_array


@numba.njit(cache=True, nogil=True, fastmath=True)
def _history_similarity(unit, history, candidates):
    n, h, d = candidates.shape[0], history.shape[0], unit.shape[1]
    out = np.zeros((n, 3), np.float32)
    if h == 0:
        return out
    # the history rows, then the centre's unit vector, copied into one contiguous block: with float32
    # accumulators the dot products vectorise (2.5x faster than gathering rows and summing in float64)
    hv = np.empty((h + 1, d), np.float32)
    centre = np.zeros(d, np.float64)
    for j in range(h):
        for t in range(d):
            hv[j, t] = unit[history[j], t]
            centre[t] += unit[history[j], t]
    norm = 0.0
    for t in range(d):
        norm += centre[t] * centre[t]
    norm = np.sqrt(norm)
    for t in range(d):
        hv[h, t] = np.float32(centre[t] / norm) if norm > 1e-12 else np.float32(0.0)
    for i in range(n):
        row = unit[candidates[i]]
        best = np.float32(-np.inf)
        s = np.float32(0.0)
        for j in range(h):
            s = np.float32(0.0)
            for t in range(d):
                s += row[t] * hv[j, t]
            if s > best:
                best = s
        m = np.float32(0.0)
        for t in range(d):
            m += row[t] * hv[h, t]
        out[i, 0] = m
        out[i, 1] = best
        out[i, 2] = s    # the last history item's
    return out


def history_similarity(unit: np.ndarray, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """float32 [C, 3]: (mean, max, last) cosine of each candidate to the history (zeros without history).

    ``unit``: float32 [n_items, d] unit-length item vectors; ``history`` / ``candidates``: int32 item ids in
    ``0..n_items-1``."""
    unit = check_array("unit", unit, np.float32, ndim=2)
    history = check_array("history", history, np.int32)
    candidates = check_array("candidates", candidates, np.int32)
    n_items = unit.shape[0]
    for name, ids in (("history", history), ("candidates", candidates)):
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= n_items):
            raise ValueError(f"{name} ids must be in 0..{n_items - 1}")
    return _history_similarity(unit, history, candidates)
