"""A serialized ``recsys.v2.FeedbackRequest`` read into an ``EventBatch`` in one Numba pass.

The gateway's handler receives the request parsed by protobuf, with a Python object per event behind every
field access; ``request.SerializeToString()`` is one C call, and this pass reads those bytes into columns
without a Python object per event (``feedback.event_batch`` says why that matters). The ids stay where they
are: the batch's columns point into the request's bytes.

Protobuf's rules, as its parsers apply them: fields in any order; for a field seen twice the last wins; a
field of unknown number, or a known number with another wire type, is skipped (groups included); the enum
``type`` is an int32 (a varint keeps its low 32 bits, sign included). A malformed message (truncated, bad
varint, a length past the end) is a ``ValueError``; bytes that protobuf itself serialized never are.
"""
from __future__ import annotations

import numba
import numpy as np

from feedback.event_batch import EventBatch

# FeedbackRequest.events = 1; FeedbackEvent: user_id = 1, item_id = 2, type = 3, value = 4, timestamp = 5,
# request_id = 6, event_id = 7 (protos/recsys/v2/recommend_service.proto); string field -> EventBatch column
_COLUMN_OF_FIELD = np.array([-1, 0, 1, -1, -1, -1, 2, 3], np.int64)
_VARINT, _FIXED64, _LEN, _START_GROUP, _END_GROUP, _FIXED32 = 0, 1, 2, 3, 4, 5


def parse_request(data: bytes) -> EventBatch:
    """The events of a serialized ``FeedbackRequest``; ``ValueError`` when the bytes are malformed."""
    buf = np.frombuffer(data, np.uint8)
    start, length, kind, value, ts, error = _parse(buf, _COLUMN_OF_FIELD)
    if error:
        raise ValueError(f"malformed FeedbackRequest near byte {error - 1}")
    return EventBatch(buf, start, length, kind, value, ts)


@numba.njit(cache=True, nogil=True)
def _varint(buf, pos, end):
    """(value, position after it); position -1 when it is cut off or longer than 10 bytes."""
    result = np.uint64(0)
    for shift in range(0, 70, 7):
        if pos >= end:
            return result, -1
        b = buf[pos]
        pos += 1
        result |= np.uint64(b & 0x7F) << np.uint64(shift)
        if b < 0x80:
            return result, pos
    return result, -1


@numba.njit(cache=True, nogil=True)
def _skip_value(buf, pos, end, wire):
    """Position after a varint, fixed or length-delimited value; -1 if malformed or another wire type."""
    if wire == _VARINT:
        _, pos = _varint(buf, pos, end)
        return pos
    if wire == _FIXED64:
        return pos + 8 if pos + 8 <= end else -1
    if wire == _FIXED32:
        return pos + 4 if pos + 4 <= end else -1
    if wire == _LEN:
        n, pos = _varint(buf, pos, end)
        if pos < 0 or n > np.uint64(end - pos):
            return -1
        return pos + np.int64(n)
    return -1


@numba.njit(cache=True, nogil=True)
def _skip(buf, pos, end, wire, field):
    """Position after a field's value of ``wire`` type (a group: after its matching end); -1 if malformed."""
    if wire != _START_GROUP:
        return _skip_value(buf, pos, end, wire)   # an end-group without its start, wire types 6, 7: -1
    open_fields = [field]
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        if pos < 0:
            return -1
        f, w = np.int64(tag >> np.uint64(3)), np.int64(tag & np.uint64(7))
        if w == _END_GROUP:
            if open_fields.pop() != f:
                return -1
            if len(open_fields) == 0:
                return pos
        elif w == _START_GROUP:
            open_fields.append(f)
        else:
            pos = _skip_value(buf, pos, end, w)
            if pos < 0:
                return -1
    return -1


@numba.njit(cache=True, nogil=True)
def _f64(buf, pos, scratch):
    v = np.uint64(0)
    for b in range(8):
        v |= np.uint64(buf[pos + b]) << np.uint64(8 * b)
    bits = scratch.view(np.uint64)
    bits[0] = v
    return scratch[0]


@numba.njit(cache=True, nogil=True)
def _event(buf, pos, end, i, column_of, start, length, kind, value, ts, scratch):
    """Fill event ``i`` from the FeedbackEvent in buf[pos:end]; 0, or 1 + the offset where it is malformed."""
    while pos < end:
        at = pos
        tag, pos = _varint(buf, pos, end)
        if pos < 0:
            return at + 1
        field, wire = np.int64(tag >> np.uint64(3)), np.int64(tag & np.uint64(7))
        if field == 0:
            return at + 1
        if field < 8 and column_of[field] >= 0 and wire == _LEN:
            n, pos = _varint(buf, pos, end)
            if pos < 0 or n > np.uint64(end - pos):
                return at + 1
            start[i, column_of[field]] = pos
            length[i, column_of[field]] = np.int64(n)
            pos += np.int64(n)
        elif field == 3 and wire == _VARINT:
            v, pos = _varint(buf, pos, end)
            if pos < 0:
                return at + 1
            low = np.int64(v & np.uint64(0xFFFFFFFF))
            kind[i] = low - (np.int64(1) << 32) if low >= (np.int64(1) << 31) else low
        elif (field == 4 or field == 5) and wire == _FIXED64:
            if pos + 8 > end:
                return at + 1
            if field == 4:
                value[i] = _f64(buf, pos, scratch)
            else:
                ts[i] = _f64(buf, pos, scratch)
            pos += 8
        else:
            pos = _skip(buf, pos, end, wire, field)
            if pos < 0:
                return at + 1
    return 0


@numba.njit(cache=True, nogil=True)
def _parse(buf, column_of):
    end = buf.shape[0]
    # pass 1: count the events (field 1, length-delimited) and check the top level's framing
    n, pos = 0, 0
    while pos < end:
        at = pos
        tag, pos = _varint(buf, pos, end)
        field, wire = np.int64(tag >> np.uint64(3)), np.int64(tag & np.uint64(7))
        if pos < 0 or field == 0:
            pos = -at - 1
            break
        if field == 1 and wire == _LEN:
            n += 1
        pos = _skip(buf, pos, end, wire, field)
        if pos < 0:
            pos = -at - 1
            break
    start = np.zeros((n, 4), np.int64)
    length = np.zeros((n, 4), np.int64)
    kind = np.zeros(n, np.int64)
    value = np.zeros(n, np.float64)
    ts = np.zeros(n, np.float64)
    if pos < 0:
        return start, length, kind, value, ts, -pos
    # pass 2: read each event
    scratch = np.zeros(1, np.float64)
    i, pos = 0, 0
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        field, wire = np.int64(tag >> np.uint64(3)), np.int64(tag & np.uint64(7))
        if field == 1 and wire == _LEN:
            size, pos = _varint(buf, pos, end)
            error = _event(buf, pos, pos + np.int64(size), i, column_of, start, length, kind, value, ts, scratch)
            if error:
                return start, length, kind, value, ts, error
            i += 1
            pos += np.int64(size)
        else:
            pos = _skip(buf, pos, end, wire, field)
    return start, length, kind, value, ts, 0
