"""Feedback events: the types, per-event validation, and the event log's binary record.

A Feedback batch is validated event by event; invalid events are rejected with their index and reason and
the valid ones are kept (a caller retrying the batch does not double-apply them: events with an event id
are applied once). A log record is ``<d d B`` (timestamp seconds, value, type) followed by four strings,
each a little-endian uint16 byte length and UTF-8 bytes: user, item, request id, event id. No pickle.
A whole batch is validated and encoded as columns by ``feedback.event_batch``, to the same rules and bytes.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from enum import IntEnum

from feedback.config import FeedbackConfig


class EventType(IntEnum):
    """What happened; the numbers are those of the public proto's enum."""

    UNSPECIFIED = 0
    IMPRESSION = 1   # shown: enters the exposure filter
    CLICK = 2        # positive: enters the recent history (and the exposure filter)
    LIKE = 3
    RATING = 4       # value is the rating


POSITIVE = frozenset({EventType.CLICK, EventType.LIKE, EventType.RATING})


@dataclass(frozen=True)
class Event:
    """One feedback event with external ids; ``timestamp`` in seconds since the epoch (0: arrival time)."""

    user_id: str
    item_id: str
    type: int
    value: float = 0.0
    timestamp: float = 0.0
    request_id: str = ""
    event_id: str = ""


_HEAD = struct.Struct("<ddB")
_LEN = struct.Struct("<H")


# the checks of one event, in the order they are made (the first failing one is reported). ``check_event``
# tests one event and ``feedback.event_batch`` a whole batch at once; both take their texts from ``problem``
ID_FIELDS = ("user_id", "item_id", "request_id", "event_id")
NOT_UTF8, TOO_LONG = 0, 1   # + 2 * the field's index in ID_FIELDS (user, item, request, event)
USER_EMPTY, ITEM_EMPTY, BAD_TYPE, VALUE_NOT_FINITE, RATING_RANGE, BAD_TIMESTAMP, FUTURE_TIMESTAMP = range(8, 15)
VALID_TYPES = (EventType.IMPRESSION, EventType.CLICK, EventType.LIKE, EventType.RATING)


_TEXTS = {USER_EMPTY: "user_id must not be empty", ITEM_EMPTY: "item_id must not be empty",
          VALUE_NOT_FINITE: "value must be a finite number",
          BAD_TIMESTAMP: "timestamp must be >= 0 (seconds since the epoch; 0: now)"}


def problem(code: int, event_type: int, value: float, config: FeedbackConfig) -> str:
    """The reason text of check ``code`` (naming the field) for an event of ``event_type`` and ``value``."""
    if code < USER_EMPTY:
        name = ID_FIELDS[code // 2]
        return f"{name} is not valid UTF-8" if code % 2 == NOT_UTF8 else \
            f"{name} is longer than {config.max_id_len} bytes"
    if code == BAD_TYPE:
        return f"type must be IMPRESSION, CLICK, LIKE or RATING, got {event_type}"
    if code == RATING_RANGE:
        return f"value of a RATING must be in {config.rating_min}..{config.rating_max}, got {value}"
    if code == FUTURE_TIMESTAMP:
        return f"timestamp is more than {config.max_future_s:g} s in the future"
    return _TEXTS[code]


def check_event(event: Event, now: float, config: FeedbackConfig) -> str | None:
    """The first problem with ``event`` naming the field, or None. ``now``: the server's clock (seconds)."""
    for f, name in enumerate(ID_FIELDS):
        try:
            size = len(getattr(event, name).encode("utf-8"))
        except UnicodeEncodeError:
            return problem(2 * f + NOT_UTF8, event.type, event.value, config)
        if size > config.max_id_len:
            return problem(2 * f + TOO_LONG, event.type, event.value, config)
    code = (USER_EMPTY if not event.user_id else
            ITEM_EMPTY if not event.item_id else
            BAD_TYPE if event.type not in VALID_TYPES else
            VALUE_NOT_FINITE if not math.isfinite(event.value) else
            RATING_RANGE if event.type == EventType.RATING and not config.rating_min <= event.value <= config.rating_max
            else BAD_TIMESTAMP if not math.isfinite(event.timestamp) or event.timestamp < 0 else
            FUTURE_TIMESTAMP if event.timestamp > now + config.max_future_s else None)
    return None if code is None else problem(code, event.type, event.value, config)


def encode(event: Event) -> bytes:
    """The log record of ``event`` (see module docstring)."""
    parts = [_HEAD.pack(event.timestamp, event.value, int(event.type))]
    for text in (event.user_id, event.item_id, event.request_id, event.event_id):
        data = text.encode("utf-8")
        parts += [_LEN.pack(len(data)), data]
    return b"".join(parts)


def record_event_id(record) -> bytes:
    """The event id's UTF-8 bytes of a log record (compaction needs only it; no full ``decode``)."""
    pos = _HEAD.size
    for _ in range(3):
        pos += _LEN.size + _LEN.unpack_from(record, pos)[0]
    (n,) = _LEN.unpack_from(record, pos)
    return bytes(record[pos + _LEN.size:pos + _LEN.size + n])


def decode(record: bytes) -> Event:
    """Inverse of ``encode``; ``ValueError`` on a truncated or malformed record."""
    try:
        timestamp, value, kind = _HEAD.unpack_from(record, 0)
        pos, texts = _HEAD.size, []
        for _ in range(4):
            (n,) = _LEN.unpack_from(record, pos)
            pos += _LEN.size
            if pos + n > len(record):
                raise ValueError("string runs past the record")
            texts.append(bytes(record[pos:pos + n]).decode("utf-8"))
            pos += n
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed event record: {exc}") from None
    if pos != len(record):
        raise ValueError("event record has trailing bytes")
    return Event(texts[0], texts[1], kind, value, timestamp, texts[2], texts[3])
