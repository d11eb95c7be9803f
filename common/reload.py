"""Hot reload of snapshot versions, the same mechanism in every server (DESIGN §3).

A server holds its artifacts in one immutable *state* object per snapshot version (anything with a
``snapshot`` attribute). ``Reloader`` loads the first one at start-up, then watches ``<root>/CURRENT``
(every ``poll_s`` seconds, and at once on ``wake()``, which servers call on SIGHUP). When CURRENT names
a new version it loads it beside the live one with ``load_fn(path)``, which must verify the snapshot
(``Snapshot.open``: every sha256) and run the server's self-test on the new state, then switches with one
reference assignment. Servicers read the state once per request into a local (``reloader.get(...)``), so a
request runs start to end on one version and its reply names that version.

A version that fails to load (bad hash, missing file, self-test failure) is refused with one
``snapshot_refused`` log line naming the file; the live version keeps serving and the refused name is not
retried until CURRENT names another version.

Switch consistency: the previous state stays loaded for ``keep_previous_s`` after a switch (or until the
next one), and ``get(version)`` returns it for requests that name it. During a rolling switch the gateway
sends every stage the version recall answered with, so stages that switched earlier or later still serve
the request instead of refusing it.

Order of the switch: recall decides the version of a request (its reply names it), so it switches last:
its ``activate_delay_s`` (config ``reload_activate_delay_s``, longer than the other servers' poll interval
plus their load time) holds the loaded new version back, while rank, rerank and the gateway, which serve
both versions, switch as soon as they have loaded. If the delay is too short, requests degrade briefly
(gateway: recall's version unknown; rank/rerank: FAILED_PRECONDITION), they do not fail.

Draining: a retired state is never closed while a request uses it. Its LMDB environment is closed by a
``weakref.finalize`` on the state, that is when the last reference (the reloader's or an in-flight
request's local) goes away, so no explicit refcount is kept on the request path.
"""
from __future__ import annotations

import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable

from common.log import Logger
from common.snapshot import CURRENT, MANIFEST, SnapshotError, current_version


def _close_snapshot(snapshot, log: Logger, version: str) -> None:
    try:
        snapshot.close()
    finally:
        log.info("snapshot_closed", version=version)


class Reloader:
    """The live state of one server plus the previous one; watches CURRENT and swaps versions."""

    def __init__(self, root: str | Path, load_fn: Callable[[Path], Any], log: Logger, poll_s: float = 2.0,
                 keep_previous_s: float = 60.0, activate_delay_s: float = 0.0):
        self.root = Path(root)
        self.activate_delay_s = activate_delay_s
        self.load_fn = load_fn
        self.log = log
        self.poll_s = poll_s
        self.keep_previous_s = keep_previous_s
        # a version directory (not a root with CURRENT) is pinned: nothing to watch
        self.watching = poll_s >= 0 and not (self.root / MANIFEST).is_file() and (self.root / CURRENT).is_file()
        self._current = self._adopt(load_fn(self.root))
        self._previous: Any = None
        self._switched_at = 0.0
        self._refused: str | None = None
        self._lock = threading.Lock()          # one load at a time (poll thread vs. an explicit check)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def version_of(state: Any) -> str:
        return state.snapshot.version

    @property
    def current(self) -> Any:
        """The live state; read it once per request into a local."""
        return self._current

    @property
    def versions(self) -> list[str]:
        """Versions this server can serve now: live first, then the previous one if still kept."""
        previous = self._previous
        return [self.version_of(self._current)] + ([self.version_of(previous)] if previous is not None else [])

    def get(self, version: str = "") -> Any | None:
        """The state of ``version`` (live or previous); the live one for ""; None when neither matches."""
        current = self._current
        if not version or self.version_of(current) == version:
            return current
        previous = self._previous
        if previous is not None and self.version_of(previous) == version:
            return previous
        return None

    def _adopt(self, state: Any) -> Any:
        weakref.finalize(state, _close_snapshot, state.snapshot, self.log, self.version_of(state))
        return state

    def check(self) -> bool:
        """Load and switch to the version CURRENT names if it is new; True when a switch happened."""
        with self._lock:
            self._expire_previous()
            try:
                version = current_version(self.root)
            except SnapshotError as exc:
                if self._refused != "<CURRENT>":
                    self.log.error("snapshot_refused", file=str(self.root / CURRENT), error=str(exc),
                                   serving=self.version_of(self._current))
                self._refused = "<CURRENT>"
                return False
            if version == self.version_of(self._current) or version == self._refused:
                return False
            path = self.root / version
            started = time.perf_counter()
            try:
                state = self.load_fn(path)
            except Exception as exc:  # any failure of the new version keeps the old one serving
                self._refused = version
                self.log.error("snapshot_refused", version=version, file=_named_file(exc, path),
                               error=f"{type(exc).__name__}: {exc}", serving=self.version_of(self._current))
                return False
            if self.version_of(state) != version:
                self._refused = version
                self.log.error("snapshot_refused", version=version, file=str(path / MANIFEST),
                               error=f"manifest names version {self.version_of(state)!r}",
                               serving=self.version_of(self._current))
                return False
            self._refused = None
            if self.activate_delay_s > 0:  # loaded and tested; let the downstream servers load it too
                self.log.info("snapshot_staged", version=version, activate_in_s=self.activate_delay_s)
                if self._stop.wait(self.activate_delay_s):
                    return False
            old = self._current
            self._previous = old                   # kept for requests naming it; older one is dropped
            self._current = self._adopt(state)     # the switch: one reference assignment
            self._switched_at = time.monotonic()
            self.log.info("snapshot_reloaded", version=version, previous=self.version_of(old),
                          ms=round((time.perf_counter() - started) * 1000.0, 1))
            return True

    def _expire_previous(self) -> None:
        if self._previous is not None and time.monotonic() - self._switched_at > self.keep_previous_s:
            self._previous = None

    def wake(self) -> None:
        """Check CURRENT now (SIGHUP handler; safe from a signal handler)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s if self.poll_s > 0 else None)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.check()
            except Exception as exc:  # never let the watcher die
                self.log.error("reload_failed", error=f"{type(exc).__name__}: {exc}")

    def start(self) -> "Reloader":
        """Start the watcher thread (poll_s = 0: only on ``wake``); no-op for a pinned version dir."""
        if self.watching and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="snapshot-reload", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None


def _named_file(exc: Exception, path: Path) -> str:
    """The snapshot file an error message names (messages name the file), else the version directory."""
    message = str(exc)
    for token in message.replace("'", " ").replace(",", " ").split():
        if token.startswith(str(path)):
            return token.rstrip(":;.")
    return str(path)
