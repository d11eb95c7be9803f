"""One user's real-time state: recent positive items and a two-generation Bloom exposure filter.

Binary layout (little-endian, one LMDB value per user, never pickle)::

    header  <IHHdd   m_bytes, k, n_hist, start of the current generation, start of the previous one (s)
    bits    uint8[m_bytes] current generation, then uint8[m_bytes] previous generation
    hist    uint64[n_hist] event log sequence numbers, float64[n_hist] timestamps,
            uint16[n_hist] item id byte lengths, then the UTF-8 item ids back to back (oldest first)

Exposure ageing: a generation takes impressions for ``window`` seconds, then becomes the previous one and
a fresh one starts; a generation is consulted while it is younger than 2 * window. So an impression is
filtered for at least ``window`` and at most 2 * window seconds, and the filter never needs a scan or a
delete: rotation replaces whole bit arrays. Each generation is sized for ``capacity`` impressions at the
configured false-positive rate (kernels.bloom.bloom_size).

The history keeps each entry's timestamp so a reader can drop what a snapshot already holds (entries no newer
than the user's latest interaction in the snapshot), and its log sequence number for tracing.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from kernels.bloom import bloom_add, bloom_contains

_HEADER = struct.Struct("<IHHdd")


@dataclass
class UserState:
    """Decoded real-time state of one user (arrays are copies: safe to modify and re-encode)."""

    k: int
    current: np.ndarray        # uint8 [m_bytes] bits of the current generation
    previous: np.ndarray       # uint8 [m_bytes] bits of the previous generation
    current_start: float
    previous_start: float
    hist_seq: np.ndarray       # uint64 [n], oldest first
    hist_ts: np.ndarray        # float64 [n]
    hist_items: list[str]

    @classmethod
    def empty(cls, m_bytes: int, k: int, now: float) -> "UserState":
        """A user with no history and empty filters whose current generation starts at ``now``."""
        return cls(k, np.zeros(m_bytes, np.uint8), np.zeros(m_bytes, np.uint8), now, -np.inf,
                   np.empty(0, np.uint64), np.empty(0, np.float64), [])

    def rotate(self, now: float, window: float) -> None:
        """Age the filter to ``now``: start a new generation once the current one is ``window`` old."""
        if now - self.current_start < window:
            return
        if now - self.current_start < 2 * window:
            self.previous, self.previous_start = self.current, self.current_start
        else:  # idle for two windows: both generations have expired
            self.previous, self.previous_start = np.zeros_like(self.current), -np.inf
        self.current, self.current_start = np.zeros_like(self.current), now

    def expose(self, hashes: np.ndarray, now: float, window: float) -> None:
        """Record impressions of items with these uint64 hashes at time ``now``."""
        self.rotate(now, window)
        bloom_add(self.current, hashes, self.k)

    def exposed(self, hashes: np.ndarray, now: float, window: float) -> np.ndarray:
        """Bool per hash: impressed within the window (maybe; Bloom false positives at the sized rate)."""
        out = np.zeros(hashes.shape[0], np.bool_)
        for bits, start in ((self.current, self.current_start), (self.previous, self.previous_start)):
            if now - start < 2 * window:
                out |= bloom_contains(bits, hashes, self.k)
        return out

    def add_history(self, seq: int, ts: float, item_id: str, history_len: int) -> None:
        """Append a positive item (newest last), keeping the newest ``history_len``."""
        self.hist_seq = np.append(self.hist_seq, np.uint64(seq))[-history_len:]
        self.hist_ts = np.append(self.hist_ts, ts)[-history_len:]
        self.hist_items = (self.hist_items + [item_id])[-history_len:]

    def recent_items(self, after_ts: float = -np.inf) -> list[str]:
        """History items with timestamps after ``after_ts``, oldest first: with the user's latest interaction
        time in the serving snapshot, exactly what the snapshot does not hold yet (no double counting)."""
        return [item for item, ts in zip(self.hist_items, self.hist_ts.tolist()) if ts > after_ts]

    def encode(self) -> bytes:
        """The binary value (see module docstring)."""
        items = [x.encode("utf-8") for x in self.hist_items]
        n = len(items)
        return b"".join([
            _HEADER.pack(self.current.shape[0], self.k, n, self.current_start, self.previous_start),
            self.current.tobytes(), self.previous.tobytes(),
            self.hist_seq.astype("<u8").tobytes(), self.hist_ts.astype("<f8").tobytes(),
            struct.pack(f"<{n}H", *map(len, items)), *items])

    @classmethod
    def decode(cls, data: bytes) -> "UserState":
        """Inverse of ``encode``; ``ValueError`` when lengths do not add up."""
        if len(data) < _HEADER.size:
            raise ValueError("user state shorter than its header")
        m, k, n, cur_start, prev_start = _HEADER.unpack_from(data, 0)
        pos = _HEADER.size
        fixed = pos + 2 * m + n * (8 + 8 + 2)
        if len(data) < fixed or k < 1:
            raise ValueError("user state shorter than its header says")
        bits = np.frombuffer(data, np.uint8, 2 * m, pos).copy()  # one copy, two views: writable, independent
        pos += 2 * m
        seq = np.frombuffer(data, "<u8", n, pos).astype(np.uint64)
        ts = np.frombuffer(data, "<f8", n, pos + 8 * n).astype(np.float64)
        lengths = struct.unpack_from(f"<{n}H", data, pos + 16 * n)
        if fixed + sum(lengths) != len(data):
            raise ValueError("user state item ids do not match their lengths")
        items, pos = [], fixed
        for size in lengths:  # at most history_len short strings
            items.append(data[pos:pos + size].decode("utf-8"))
            pos += size
        return cls(k, bits[:m], bits[m:], cur_start, prev_start, seq, ts, items)
