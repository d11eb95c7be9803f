"""Structured logs: one JSON object per line on stderr, one line per event.

``log = get_logger("recall")`` then ``log.info("snapshot_loaded", version=v, ms=12.3)``. The event name
is a short snake_case verb phrase; fields carry the facts. Messages for people go in ``msg``.

The request id of the call being served (``x-request-id`` gRPC metadata, set by the server interceptor
in ``common.metrics``) is added to every line logged while serving it. ``RECSYS_LOG_LEVEL`` (debug,
info, warning, error) sets the threshold of loggers made by ``get_logger``.
"""
from __future__ import annotations

import contextvars
import json
import os
import sys
import threading
import time
from typing import Any, TextIO

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_lock = threading.Lock()
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class Logger:
    """A tiny structured logger; thread safe, no handlers or formatters to configure."""

    def __init__(self, component: str, stream: TextIO | None = None, level: str = "info"):
        self.component = component
        self.stream = stream
        self.level = _LEVELS[level]

    def log(self, level: str, event: str, **fields: Any) -> None:
        """Write one event line if ``level`` passes the logger's threshold."""
        if _LEVELS[level] < self.level:
            return
        record = {"ts": round(time.time(), 6), "level": level, "component": self.component, "event": event}
        request_id = request_id_var.get()
        if request_id:
            record["request_id"] = request_id
        record.update(fields)
        line = json.dumps(record, default=str, separators=(",", ":"))
        with _lock:
            stream = self.stream or sys.stderr
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):  # the reader is gone (the launcher's log pipe, closed): the line is
                pass                       # lost, but a log line must never stop a server from stopping

    def debug(self, event: str, **fields: Any) -> None:
        self.log("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self.log("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.log("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.log("error", event, **fields)


def get_logger(component: str, level: str | None = None) -> Logger:
    """A logger whose lines carry ``component``; ``level`` defaults to ``$RECSYS_LOG_LEVEL`` or info."""
    level = level or os.environ.get("RECSYS_LOG_LEVEL", "info").lower()
    if level not in _LEVELS:
        raise ValueError(f"log level must be one of {', '.join(_LEVELS)}, got {level!r}")
    return Logger(component, level=level)
