"""Structured logs: one JSON object per line on stderr, one line per event.

``log = get_logger("recall")`` then ``log.info("snapshot_loaded", version=v, ms=12.3)``. The event name
is a short snake_case verb phrase; fields carry the facts. Messages for people go in ``msg``.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, TextIO

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_lock = threading.Lock()


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
        record.update(fields)
        line = json.dumps(record, default=str, separators=(",", ":"))
        with _lock:
            stream = self.stream or sys.stderr
            stream.write(line + "\n")
            stream.flush()

    def debug(self, event: str, **fields: Any) -> None:
        self.log("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self.log("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.log("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.log("error", event, **fields)


def get_logger(component: str, level: str = "info") -> Logger:
    """A logger whose lines carry ``component``."""
    return Logger(component, level=level)
