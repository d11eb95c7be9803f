"""Bloom filter kernels: set and test k bit positions per key in a byte array of m bits.

Positions come from one 64-bit key hash by double hashing (Kirsch and Mitzenmacher): h1 + i * h2 mod m
for i < k, with h1 and h2 the hash's low and high 32 bits (h2 forced odd). False positives are accepted
(rate ~ (1 - e^(-k n / m))^k after n insertions); false negatives never happen. ``bloom_size`` picks m and
k for a capacity and target rate. Work is O(k) per key and nothing is O(m) except allocating the bits.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from ._validate import check_array, check_int, check_real


@numba.njit(cache=True, inline="always")
def _position(h, i, m):
    h1 = h & np.uint64(0xFFFFFFFF)
    h2 = (h >> np.uint64(32)) | np.uint64(1)
    return (h1 + np.uint64(i) * h2) % np.uint64(m)


@numba.njit(cache=True, nogil=True)
def _bloom_add(bits, hashes, k):
    m = bits.shape[0] * 8
    for j in range(hashes.shape[0]):
        for i in range(k):
            p = _position(hashes[j], i, m)
            bits[p >> np.uint64(3)] |= np.uint8(1) << np.uint8(p & np.uint64(7))


@numba.njit(cache=True, nogil=True)
def _bloom_contains(bits, hashes, k):
    m = bits.shape[0] * 8
    out = np.ones(hashes.shape[0], np.bool_)
    for j in range(hashes.shape[0]):
        for i in range(k):
            p = _position(hashes[j], i, m)
            if (bits[p >> np.uint64(3)] >> np.uint8(p & np.uint64(7))) & np.uint8(1) == 0:
                out[j] = False
                break
    return out


def bloom_size(capacity: int, fp_rate: float) -> tuple[int, int]:
    """(bytes, k) of a filter holding ``capacity`` keys at false-positive rate ``fp_rate``:
    m = -n ln p / (ln 2)^2 bits rounded up to whole bytes, k = round(m / n * ln 2), at least 1."""
    capacity = check_int("capacity", capacity, minimum=1)
    fp_rate = check_real("fp_rate", fp_rate, minimum=0.0, strict_minimum=True, maximum=0.5)
    m_bits = math.ceil(-capacity * math.log(fp_rate) / math.log(2) ** 2)
    n_bytes = (m_bits + 7) // 8
    return n_bytes, max(1, round(n_bytes * 8 / capacity * math.log(2)))


def bloom_add(bits: np.ndarray, hashes: np.ndarray, k: int) -> None:
    """Set the ``k`` positions of each of ``hashes`` (uint64) in ``bits`` (uint8, modified in place)."""
    if not isinstance(bits, np.ndarray) or not bits.flags.c_contiguous or not bits.flags.writeable:
        raise ValueError("bits must be a writeable C-contiguous numpy.ndarray")
    bits = check_array("bits", bits, np.uint8)
    if bits.shape[0] == 0:
        raise ValueError("bits must not be empty")
    _bloom_add(bits, check_array("hashes", hashes, np.uint64), check_int("k", k, minimum=1, maximum=64))


def bloom_contains(bits: np.ndarray, hashes: np.ndarray, k: int) -> np.ndarray:
    """Bool per hash: True if all its ``k`` positions are set (maybe present), False if surely absent."""
    bits = check_array("bits", bits, np.uint8)
    if bits.shape[0] == 0:
        raise ValueError("bits must not be empty")
    return _bloom_contains(bits, check_array("hashes", hashes, np.uint64), check_int("k", k, minimum=1, maximum=64))
