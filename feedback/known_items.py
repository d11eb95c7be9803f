"""The serving snapshot's item ids as a set a whole batch is tested against at once.

Feedback for an item the snapshot does not know is dropped and counted (``feedback.ingest``). Asking a dict
per event would make a Python string per event; instead each id's 64-bit hash (``kernels.string_hash``) is
looked up in the snapshot's sorted hashes, and a hit is confirmed by comparing the bytes, so a hash
collision never lets an unknown item in. Built once per snapshot version (the writer keeps the newest).
"""
from __future__ import annotations

import numba
import numpy as np

from feedback.event_batch import ITEM, EventBatch
from kernels.string_hash import hash_packed, pack_strings


class KnownItems:
    """``contains(batch)``: which events' items are among ``item_ids``."""

    def __init__(self, item_ids):
        if isinstance(item_ids, np.ndarray) and item_ids.dtype.kind == "U" and item_ids.size:
            codes = np.ascontiguousarray(item_ids).view(np.uint32).reshape(item_ids.shape[0], -1)
            codes.setflags(write=False)
            self.buf, self.offsets = _utf8_of_ucs4(codes)   # a snapshot's ids: no Python string per item
        else:
            self.buf, self.offsets = pack_strings(item_ids)
        self.buf.setflags(write=False)   # one kind of buffer for Numba, whichever way it was built
        hashes = hash_packed(self.buf, self.offsets)
        self.order = np.argsort(hashes, kind="stable")
        self.sorted = hashes[self.order]

    def __len__(self) -> int:
        return self.order.shape[0]

    def contains(self, batch: EventBatch, hashes: np.ndarray | None = None) -> np.ndarray:
        """Bool per event of ``batch``: its item id is one of the set's (``hashes``: the item column's)."""
        hashes = batch.hashes(ITEM) if hashes is None else hashes
        return _contains(self.sorted, self.order, self.buf, self.offsets, hashes, batch.buf,
                         batch.start[:, ITEM].copy(), batch.length[:, ITEM].copy())


@numba.njit(cache=True, nogil=True)
def _contains(sorted_hashes, order, ref_buf, ref_off, hashes, buf, start, length):
    out = np.zeros(hashes.shape[0], np.bool_)
    pos = np.searchsorted(sorted_hashes, hashes)
    for i in range(hashes.shape[0]):
        j = pos[i]
        while j < sorted_hashes.shape[0] and sorted_hashes[j] == hashes[i]:   # equal hashes: compare bytes
            r = order[j]
            a, n = ref_off[r], ref_off[r + 1] - ref_off[r]
            if n == length[i]:
                same = True
                for p in range(n):
                    if ref_buf[a + p] != buf[start[i] + p]:
                        same = False
                        break
                if same:
                    out[i] = True
                    break
            j += 1
    return out


@numba.njit(cache=True, nogil=True)
def _utf8_of_ucs4(codes):
    # a numpy str array is UCS-4 padded with zeros at the end (numpy drops trailing NULs, as here): each
    # id's code points to UTF-8
    n, width = codes.shape
    ends = np.zeros(n, np.int64)
    offsets = np.zeros(n + 1, np.int64)
    for i in range(n):
        end = width
        while end > 0 and codes[i, end - 1] == 0:
            end -= 1
        ends[i] = end
        size = 0
        for c in range(end):
            cp = codes[i, c]
            size += 1 if cp < 0x80 else 2 if cp < 0x800 else 3 if cp < 0x10000 else 4
        offsets[i + 1] = offsets[i] + size
    out = np.empty(offsets[n], np.uint8)
    for i in range(n):
        p = offsets[i]
        for c in range(ends[i]):
            cp = codes[i, c]
            if cp < 0x80:
                out[p] = cp
                p += 1
            elif cp < 0x800:
                out[p] = 0xC0 | (cp >> 6)
                out[p + 1] = 0x80 | (cp & 0x3F)
                p += 2
            elif cp < 0x10000:
                out[p] = 0xE0 | (cp >> 12)
                out[p + 1] = 0x80 | ((cp >> 6) & 0x3F)
                out[p + 2] = 0x80 | (cp & 0x3F)
                p += 3
            else:
                out[p] = 0xF0 | (cp >> 18)
                out[p + 1] = 0x80 | ((cp >> 12) & 0x3F)
                out[p + 2] = 0x80 | ((cp >> 6) & 0x3F)
                out[p + 3] = 0x80 | (cp & 0x3F)
                p += 4
    return out, offsets
