"""Client-controlled text at the API edge: bounded before it is echoed in an error detail or a log line.

A client may send strings of any length (ids, version names, map keys, metadata). Echoing one whole would
let a caller inflate every error detail past gRPC's metadata limits and write megabyte log lines, so
servers echo at most ``ServerOptions.max_echo_chars`` characters with the original length, and refuse
string fields longer than ``ServerOptions.max_string_len`` with INVALID_ARGUMENT naming the field.
"""
from __future__ import annotations

from typing import Iterable


def clip(text: str | bytes, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, saying how long it was when it was cut."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if len(text) <= limit:
        return text
    suffix = f"... ({len(text)} characters)"
    return text[:max(0, limit - len(suffix))] + suffix


def too_long(fields: Iterable[tuple[str, str | Iterable[str]]], limit: int) -> str | None:
    """The first field (a string or a list of strings) holding a string over ``limit`` characters, as an
    error message naming it; None when every string fits."""
    for name, value in fields:
        values = [value] if isinstance(value, str) else value
        for i, item in enumerate(values):
            if len(item) > limit:
                where = name if isinstance(value, str) else f"{name}[{i}]"
                return f"{where} is {len(item)} characters long, the limit is {limit}"
    return None
