"""A stable 64-bit hash of strings (FNV-1a over UTF-8), computed for many strings in one kernel call.

Why not Python's ``hash``: it is salted per process, and the exposure filter's bits are written by one
process (the feedback writer) and read by others (every recall worker), and must survive restarts and
snapshot swaps. Items are therefore hashed by their external id string, never by a dense id that changes
with the snapshot. The strings travel as one UTF-8 buffer plus offsets, so hashing a 10^6-item catalogue
at snapshot load is one nogil pass instead of 10^6 Python calls.
"""
from __future__ import annotations

import numba
import numpy as np

from ._validate import check_array

FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)


@numba.njit(cache=True, nogil=True)
def _fnv1a64(buf, offsets):
    n = offsets.shape[0] - 1
    out = np.empty(n, np.uint64)
    for i in range(n):
        h = FNV_OFFSET
        for p in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(buf[p])) * FNV_PRIME
        # FNV-1a's low bits mix poorly for short keys; a final avalanche (splitmix64's) spreads them, which
        # the Bloom filter's double hashing (low and high 32 bits) relies on
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        out[i] = h ^ (h >> np.uint64(31))
    return out


def pack_strings(strings) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of ``strings`` back to back (uint8) and their int64 offsets (length n + 1)."""
    encoded = [str(s).encode("utf-8") for s in strings]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    if encoded:
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), np.uint8), offsets


def hash_packed(buf: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """uint64 hash of each string ``buf[offsets[i]:offsets[i+1]]``."""
    buf = check_array("buf", buf, np.uint8)
    offsets = check_array("offsets", offsets, np.int64)
    if offsets.shape[0] < 1 or offsets[0] != 0 or offsets[-1] != buf.shape[0] or np.any(np.diff(offsets) < 0):
        raise ValueError("offsets must start at 0, never decrease and end at len(buf)")
    return _fnv1a64(buf, offsets)


def hash_strings(strings) -> np.ndarray:
    """uint64 hash of each string (a list, tuple or numpy str array)."""
    return hash_packed(*pack_strings(strings))
