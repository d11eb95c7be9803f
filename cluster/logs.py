"""The launcher's log files: every line JSON, every file size-bounded and rotated.

Each child's stdout and stderr come to the launcher through one pipe (``pump``). Lines the child's own logger
wrote (``common.log``: one JSON object per line) pass through unchanged; anything else (gRPC core's own log lines,
such as the ~213-byte ``Handshake failed`` line each failed TLS handshake writes, a Python traceback, absl's
start-up notice) is wrapped as one JSON object: ``{"level": "warning", "component": ..., "event": "grpc_core" |
"stderr", "message": ...}``. ``RotatingLog`` keeps ``<worker>.log`` under ``cluster.log_max_mb`` and
``cluster.log_backups`` older files (``<worker>.log.1`` the newest), so a flood of failed handshakes cannot fill
the disk. (Under Kubernetes the servers log to stderr only and the container runtime rotates.)
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path
from typing import BinaryIO

# gRPC core (absl / glog format): "E0000 00:00:1765000000.123456   12345 ssl_transport_security.cc:1654] message"
_GRPC_LINE = re.compile(r"^([EWIDF])\d{4} [\d:.]+\s+\d+ ([^\s\]]+)\] ?(.*)$")
_GRPC_LEVEL = {"E": "warning", "W": "warning", "I": "info", "D": "debug", "F": "error"}
MAX_MESSAGE_CHARS = 2000  # a wrapped line's message is cut to this (the whole line stays under 4,000 characters)


def as_json_line(raw: bytes, component: str, worker: str) -> bytes:
    """``raw`` (one line, with or without its newline) as one JSON line; b"" for a blank line."""
    text = raw.rstrip(b"\r\n").decode("utf-8", "replace")
    if not text.strip():
        return b""
    if text.startswith("{"):
        try:
            if isinstance(json.loads(text), dict):
                return text.encode() + b"\n"
        except ValueError:
            pass
    record: dict = {"ts": round(time.time(), 6), "level": "warning", "component": component, "worker": worker}
    match = _GRPC_LINE.match(text)
    if match:
        severity, source, message = match.groups()
        record.update(level=_GRPC_LEVEL[severity], event="grpc_core", severity=severity, source=source,
                      message=message[:MAX_MESSAGE_CHARS])
    else:
        record.update(event="stderr", message=text[:MAX_MESSAGE_CHARS])
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


class RotatingLog:
    """An append-only file that rotates to ``path.1`` .. ``path.<backups>`` before it would pass ``max_bytes``
    (0: never rotates). Thread safe: a restarted worker's pump and its predecessor's may overlap."""

    def __init__(self, path: Path, max_bytes: int, backups: int):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()
        self._fh: BinaryIO | None = open(self.path, "ab")
        self._size = self._fh.tell()

    def write(self, data: bytes) -> None:
        if not data:
            return
        with self._lock:
            if self._fh is None:
                return
            if self.max_bytes and self._size and self._size + len(data) > self.max_bytes:
                self._rotate()
            self._fh.write(data)
            self._fh.flush()
            self._size += len(data)

    def _rotate(self) -> None:
        self._fh.close()
        if self.backups > 0:
            for i in range(self.backups - 1, 0, -1):
                older = Path(f"{self.path}.{i}")
                if older.exists():
                    os.replace(older, f"{self.path}.{i + 1}")
            os.replace(self.path, f"{self.path}.1")
        self._fh = open(self.path, "wb")
        self._size = 0

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def pump(stream: BinaryIO, log: RotatingLog, component: str, worker: str) -> None:
    """Copy ``stream`` (a child's stdout + stderr) into ``log`` line by line, as JSON, until EOF."""
    try:
        for raw in iter(lambda: stream.readline(1 << 20), b""):  # a runaway line comes in 1 MiB pieces
            log.write(as_json_line(raw, component, worker))
    finally:
        stream.close()


def start_pump(stream: BinaryIO, log: RotatingLog, component: str, worker: str) -> threading.Thread:
    thread = threading.Thread(target=pump, args=(stream, log, component, worker), name=f"log-{worker}", daemon=True)
    thread.start()
    return thread
