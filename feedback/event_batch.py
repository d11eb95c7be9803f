"""A batch of feedback events as columns: ids as slices of one byte buffer, the numbers as arrays.

Why columns: the gateway's feedback writer is a thread of the process whose event loop serves Recommend, and
Python work per event there is time the loop waits for the interpreter (the GIL). So a batch is checked,
deduplicated and encoded as whole arrays and in Numba passes that release the GIL; Python objects are made
only for a rejected event (its reason) and, because LMDB's binding takes them one by one, for each key and
value stored.

Ids (user, item, request, event: the columns ``USER``..``EVENT``) are UTF-8 bytes in ``buf``: column c of
event i is ``buf[start[i, c]:start[i, c] + length[i, c]]``. A batch parsed from a request (``feedback.wire``)
points into the request's own bytes; one built from ``Event`` objects (the Python API) holds them back to
back. The checks are ``feedback.events``' (same order, same texts), and ``records`` writes the log record
layout of ``feedback.events.encode`` byte for byte.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numba
import numpy as np

from feedback.config import FeedbackConfig
from feedback.events import (BAD_TIMESTAMP, BAD_TYPE, FUTURE_TIMESTAMP, ITEM_EMPTY, NOT_UTF8, RATING_RANGE,
                             TOO_LONG, USER_EMPTY, VALID_TYPES, VALUE_NOT_FINITE, Event, EventType, problem)
from kernels.string_hash import hash_packed

USER, ITEM, REQUEST, EVENT = range(4)
MAX_ID_BYTES = 0xFFFF   # the log record's uint16 length prefix


@dataclass
class EventBatch:
    """Events as columns (see the module docstring); ``bad_utf8`` only for ids a Python caller passed
    that UTF-8 cannot encode (a request's strings were checked by the protobuf parser)."""

    buf: np.ndarray         # uint8
    start: np.ndarray       # int64 [n, 4]
    length: np.ndarray      # int64 [n, 4]
    type: np.ndarray        # int64 [n]
    value: np.ndarray       # float64 [n]
    timestamp: np.ndarray   # float64 [n]
    bad_utf8: np.ndarray | None = None  # bool [n, 4]

    def __len__(self) -> int:
        return self.type.shape[0]

    @classmethod
    def from_events(cls, events) -> "EventBatch":
        """The columns of ``Event`` objects (the Python API: tests, tools, ``FeedbackStore.append``)."""
        n = len(events)
        parts, bad = [], np.zeros((n, 4), np.bool_)
        for i, e in enumerate(events):
            for c, text in enumerate((e.user_id, e.item_id, e.request_id, e.event_id)):
                try:
                    parts.append(text.encode("utf-8"))
                except UnicodeEncodeError:
                    parts.append(b"")
                    bad[i, c] = True
        length = np.fromiter(map(len, parts), np.int64, 4 * n).reshape(n, 4)
        start = (np.cumsum(length.reshape(-1)) - length.reshape(-1)).reshape(n, 4)
        return cls(np.frombuffer(b"".join(parts), np.uint8), start, length,
                   np.fromiter((int(e.type) for e in events), np.int64, n),
                   np.fromiter((float(e.value) for e in events), np.float64, n),
                   np.fromiter((float(e.timestamp) for e in events), np.float64, n), bad if bad.any() else None)

    def take(self, idx: np.ndarray) -> "EventBatch":
        """The events at ``idx`` (same buffer, no bytes copied)."""
        return EventBatch(self.buf, self.start[idx], self.length[idx], self.type[idx], self.value[idx],
                          self.timestamp[idx], None if self.bad_utf8 is None else self.bad_utf8[idx])

    @staticmethod
    def concat(batches: list["EventBatch"]) -> "EventBatch":
        """One batch of several, in order (their buffers joined once; parts of one batch share it as is)."""
        if len(batches) == 1:
            return batches[0]
        if all(b.buf is batches[0].buf for b in batches):
            shift, data = [0] * len(batches), batches[0].buf
        else:
            shift = np.cumsum([0] + [b.buf.shape[0] for b in batches[:-1]])
            # the joined ids as bytes, read-only like every batch's buffer (Numba compiles one variant, not two)
            data = np.frombuffer(b"".join(b.data for b in batches), np.uint8)
        bad = None
        if any(b.bad_utf8 is not None for b in batches):
            bad = np.concatenate([b.bad_utf8 if b.bad_utf8 is not None else np.zeros((len(b), 4), np.bool_)
                                  for b in batches])
        return EventBatch(data,
                          np.concatenate([b.start + s for b, s in zip(batches, shift)]).astype(np.int64),
                          np.concatenate([b.length for b in batches]), np.concatenate([b.type for b in batches]),
                          np.concatenate([b.value for b in batches]),
                          np.concatenate([b.timestamp for b in batches]), bad)

    def key(self, i: int, column: int) -> bytes:
        """The UTF-8 bytes of one id."""
        s = int(self.start[i, column])
        return self.buf[s:s + int(self.length[i, column])].tobytes()

    @cached_property
    def data(self) -> bytes:
        """``buf`` as bytes (once per batch: slicing bytes is the cheapest way to make many small keys)."""
        return self.buf.base if isinstance(self.buf.base, bytes) and len(self.buf.base) == self.buf.shape[0] \
            else self.buf.tobytes()

    def keys(self, idx: np.ndarray, column: int) -> list[bytes]:
        """The UTF-8 bytes of column ``column`` of the events at ``idx`` (LMDB takes keys one by one)."""
        data = self.data
        ends = self.start[idx, column] + self.length[idx, column]
        return [data[a:b] for a, b in zip(self.start[idx, column].tolist(), ends.tolist())]

    def packed(self, column: int) -> tuple[np.ndarray, np.ndarray]:
        """Column ``column``'s ids back to back (uint8) and their int64 offsets (n + 1)."""
        return _gather(self.buf, self.start[:, column].copy(), self.length[:, column].copy())

    def hashes(self, column: int) -> np.ndarray:
        """uint64 hash of each id of ``column`` (``kernels.string_hash``: the exposure filter's keys)."""
        return hash_packed(*self.packed(column))

    def first_equal(self, column: int, hashes: np.ndarray | None = None) -> np.ndarray:
        """Per event, the index of the first event whose ``column`` id has the same bytes (itself when none
        before it): grouping and duplicate detection without a Python string per event."""
        hashes = self.hashes(column) if hashes is None else hashes
        order = np.argsort(hashes, kind="stable")
        return _first_equal(self.buf, self.start[:, column].copy(), self.length[:, column].copy(), hashes, order)

    def records(self) -> tuple[np.ndarray, np.ndarray]:
        """The log record of each event (``feedback.events.encode``'s layout) back to back, and offsets."""
        if len(self) and (self.length.max() > MAX_ID_BYTES or self.type.min() < 0 or self.type.max() > 255):
            raise ValueError(f"an id is longer than {MAX_ID_BYTES} bytes or a type is outside 0..255")
        return _records(self.buf, self.start, self.length, self.timestamp, self.value, self.type)

    def problems(self, now: float, config: FeedbackConfig) -> tuple[np.ndarray, list[str]]:
        """The indices of invalid events and each one's first problem (``feedback.events.check_event``'s
        checks, in its order, with its texts)."""
        n = len(self)
        checks = np.zeros((n, FUTURE_TIMESTAMP + 1), np.bool_)
        for f in range(4):
            if self.bad_utf8 is not None:
                checks[:, 2 * f + NOT_UTF8] = self.bad_utf8[:, f]
            checks[:, 2 * f + TOO_LONG] = self.length[:, f] > config.max_id_len
        checks[:, USER_EMPTY] = self.length[:, USER] == 0
        checks[:, ITEM_EMPTY] = self.length[:, ITEM] == 0
        checks[:, BAD_TYPE] = ~np.isin(self.type, np.asarray(VALID_TYPES, np.int64))
        with np.errstate(invalid="ignore"):
            checks[:, VALUE_NOT_FINITE] = ~np.isfinite(self.value)
            checks[:, RATING_RANGE] = (self.type == EventType.RATING) & ~(
                (self.value >= config.rating_min) & (self.value <= config.rating_max))
            checks[:, BAD_TIMESTAMP] = ~np.isfinite(self.timestamp) | (self.timestamp < 0)
            checks[:, FUTURE_TIMESTAMP] = self.timestamp > now + config.max_future_s
        bad = np.flatnonzero(checks.any(axis=1))
        first = checks[bad].argmax(axis=1)
        return bad, [problem(int(code), int(self.type[i]), float(self.value[i]), config)
                     for i, code in zip(bad.tolist(), first.tolist())]


def stamped(batch: EventBatch, now: float) -> EventBatch:
    """``batch`` with the events that carry no timestamp (0) at ``now``, the server's arrival time."""
    return EventBatch(batch.buf, batch.start, batch.length, batch.type, batch.value,
                      np.where(batch.timestamp == 0, now, batch.timestamp), batch.bad_utf8)


def events_of(batch: EventBatch) -> list[Event]:
    """``Event`` objects of a batch (for tests and tools; the write path never needs them)."""
    return [Event(*(batch.key(i, c).decode("utf-8") for c in (USER, ITEM)), int(batch.type[i]),
                  float(batch.value[i]), float(batch.timestamp[i]),
                  *(batch.key(i, c).decode("utf-8") for c in (REQUEST, EVENT))) for i in range(len(batch))]


@numba.njit(cache=True, nogil=True)
def _gather(buf, start, length):
    n = start.shape[0]
    offsets = np.zeros(n + 1, np.int64)
    for i in range(n):
        offsets[i + 1] = offsets[i] + length[i]
    out = np.empty(offsets[n], np.uint8)
    for i in range(n):
        out[offsets[i]:offsets[i + 1]] = buf[start[i]:start[i] + length[i]]
    return out, offsets


@numba.njit(cache=True, nogil=True)
def _same(buf, a_start, a_len, b_start, b_len):
    if a_len != b_len:
        return False
    for p in range(a_len):
        if buf[a_start + p] != buf[b_start + p]:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _first_equal(buf, start, length, hashes, order):
    # runs of equal hashes in sorted order (stable: by position within a run); inside a run, compare bytes
    # with the run's earlier distinct ids, so a hash collision never merges two different ids
    n = order.shape[0]
    rep = np.empty(n, np.int64)
    i = 0
    while i < n:
        j = i
        while j + 1 < n and hashes[order[j + 1]] == hashes[order[i]]:
            j += 1
        for a in range(i, j + 1):
            ea = order[a]
            rep[ea] = ea
            for b in range(i, a):
                eb = order[b]
                if rep[eb] == eb and _same(buf, start[ea], length[ea], start[eb], length[eb]):
                    rep[ea] = eb
                    break
        i = j + 1
    return rep


@numba.njit(cache=True, nogil=True)
def _put_u64(out, pos, v):
    for b in range(8):
        out[pos + b] = np.uint8((v >> np.uint64(8 * b)) & np.uint64(0xFF))


@numba.njit(cache=True, nogil=True)
def _records(buf, start, length, ts, value, kind):
    # <d timestamp, <d value, B type, then per id a <H length and its bytes (feedback.events.encode)
    n = start.shape[0]
    offsets = np.zeros(n + 1, np.int64)
    for i in range(n):
        offsets[i + 1] = offsets[i] + 17 + 8 + length[i, 0] + length[i, 1] + length[i, 2] + length[i, 3]
    out = np.empty(offsets[n], np.uint8)
    scratch = np.empty(2, np.float64)
    bits = scratch.view(np.uint64)
    for i in range(n):
        p = offsets[i]
        scratch[0] = ts[i]
        scratch[1] = value[i]
        _put_u64(out, p, bits[0])
        _put_u64(out, p + 8, bits[1])
        out[p + 16] = np.uint8(kind[i])
        p += 17
        for c in range(4):
            m = length[i, c]
            out[p] = np.uint8(m & 0xFF)
            out[p + 1] = np.uint8(m >> 8)
            out[p + 2:p + 2 + m] = buf[start[i, c]:start[i, c] + m]
            p += 2 + m
    return out, offsets
