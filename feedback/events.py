"""Feedback events: the types, per-event validation, and the event log's binary record.

A Feedback batch is validated event by event; invalid events are rejected with their index and reason and
the valid ones are kept (a caller retrying the batch does not double-apply them: events with an event id
are applied once). A log record is ``<d d B`` (timestamp seconds, value, type) followed by four strings,
each a little-endian uint16 byte length and UTF-8 bytes: user, item, request id, event id. No pickle.
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


def check_event(event: Event, now: float, config: FeedbackConfig) -> str | None:
    """The first problem with ``event`` naming the field, or None. ``now``: the server's clock (seconds)."""
    for name in ("user_id", "item_id", "request_id", "event_id"):
        try:
            size = len(getattr(event, name).encode("utf-8"))
        except UnicodeEncodeError:
            return f"{name} is not valid UTF-8"
        if size > config.max_id_len:
            return f"{name} is longer than {config.max_id_len} bytes"
    if not event.user_id:
        return "user_id must not be empty"
    if not event.item_id:
        return "item_id must not be empty"
    if event.type not in EventType.__members__.values() or event.type == EventType.UNSPECIFIED:
        return f"type must be IMPRESSION, CLICK, LIKE or RATING, got {event.type}"
    if not math.isfinite(event.value):
        return "value must be a finite number"
    if event.type == EventType.RATING and not config.rating_min <= event.value <= config.rating_max:
        return f"value of a RATING must be in {config.rating_min}..{config.rating_max}, got {event.value}"
    if not math.isfinite(event.timestamp) or event.timestamp < 0:
        return "timestamp must be >= 0 (seconds since the epoch; 0: now)"
    if event.timestamp > now + config.max_future_s:
        return f"timestamp is more than {config.max_future_s:g} s in the future"
    return None


def encode(event: Event) -> bytes:
    """The log record of ``event`` (see module docstring)."""
    parts = [_HEAD.pack(event.timestamp, event.value, int(event.type))]
    for text in (event.user_id, event.item_id, event.request_id, event.event_id):
        data = text.encode("utf-8")
        parts += [_LEN.pack(len(data)), data]
    return b"".join(parts)


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
