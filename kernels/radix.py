"""Stable LSD radix argsort for int32 keys, for use inside njit code.

The online kernels group a few thousand (id, value) pairs by id per request.
numba's comparison sorts cost ~30 ns per element there; a radix sort over the
key range (11-bit digits, so one pass for spans below 2048 and two below
4 M) is several times faster and is stable, which keeps equal keys in input
order and therefore makes per-key floating-point sums reproducible.
"""
from __future__ import annotations

import numba
import numpy as np

_DIGIT_BITS = 11
_RADIX = 1 << _DIGIT_BITS


@numba.njit(cache=True)
def radix_argsort(keys):
    """Stable argsort (int64 indices) of a 1-D int32 array; any sign allowed."""
    n = keys.shape[0]
    order = np.arange(n)
    if n < 2:
        return order
    lo = np.int64(keys.min())
    span = np.int64(keys.max()) - lo  # sorting key - lo needs only bits(span)
    tmp = np.empty(n, np.int64)
    counts = np.empty(_RADIX + 1, np.int64)
    shift = 0
    while (span >> shift) > 0:
        counts[:] = 0
        for t in range(n):
            counts[((np.int64(keys[order[t]]) - lo) >> shift & (_RADIX - 1)) + 1] += 1
        for d in range(_RADIX):
            counts[d + 1] += counts[d]
        for t in range(n):
            k = order[t]
            d = (np.int64(keys[k]) - lo) >> shift & (_RADIX - 1)
            tmp[counts[d]] = k
            counts[d] += 1
        order, tmp = tmp, order
        shift += _DIGIT_BITS
    return order
