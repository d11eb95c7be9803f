"""Request ids from ``x-request-id`` metadata: accepted only when short and plain, else replaced.

A caller's id travels to every stage and onto every log line, so an unbounded one could push the
stages' metadata past gRPC's limits (every call fails) or flood the logs. Accepted: 1 to
``ServerOptions.max_request_id_len`` characters of letters, digits and ``._:-``.
"""
from __future__ import annotations

import re
import uuid
from typing import Iterable

HEADER = "x-request-id"
_PLAIN = re.compile(r"[A-Za-z0-9._:\-]+")


def is_valid(value: str | None, max_len: int) -> bool:
    """Whether ``value`` may be used as a request id."""
    return bool(value) and len(value) <= max_len and _PLAIN.fullmatch(value) is not None


def from_metadata(metadata: Iterable[tuple[str, str | bytes]], max_len: int) -> tuple[str | None, str | None]:
    """``(valid id or None, the raw value when one was sent and refused)`` from gRPC invocation metadata."""
    for key, value in metadata:
        if key == HEADER:
            if isinstance(value, str) and is_valid(value, max_len):
                return value, None
            return None, value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None, None


def new() -> str:
    """A fresh request id (32 hex digits)."""
    return uuid.uuid4().hex
