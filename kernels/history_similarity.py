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
    centre = np.zeros(d, np.float64)
    for j in range(h):
        for t in range(d):
            centre[t] += unit[history[j], t]
    norm = 0.0
    for t in range(d):
        norm += centre[t] * centre[t]
    norm = np.sqrt(norm)
    for i in range(n):
        c = candidates[i]
        best = -np.inf
        last = 0.0
        for j in range(h):
            s = 0.0
            for t in range(d):
                s += unit[c, t] * unit[history[j], t]
            if s > best:
                best = s
            last = s
        m = 0.0
        if norm > 1e-12:
            for t in range(d):
                m += unit[c, t] * centre[t]
            m /= norm
        out[i, 0] = m
        out[i, 1] = best
        out[i, 2] = last
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
