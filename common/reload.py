"""Hot reload of snapshot versions, the same mechanism in every server (docs/ARCHITECTURE.md §6).

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

Switch consistency without timers: the gateway pins one version per request (its live one) and names it
to every stage, recall included; a stage serves the version named (live or previous), so it does not matter
in which order the stages switch. The gateway switches last: after loading a new version it waits until
every stage worker it talks to holds it (``ready_fn``: each server reports the versions it holds as health
services ``version_service(v)``, ``set_versions``), at most ``activate_timeout_s``. A stage keeps the previous
version for ``keep_previous_s`` after its switch (or until the next one), for requests pinned to it.

Draining: a retired version is never closed while a request uses it. Its LMDB environment is closed by a
``weakref.finalize`` on its ``Snapshot`` (not on the state: a request may hold only the snapshot, e.g. the
gateway's funnel), that is when the last reference (a state, the reloader's or an in-flight request's
local) goes away, so no explicit refcount is kept on the request path.

A swap the tail does not see (issue 27; measured in docs/results/2026-12-06-swap-tail.md):

- *Warm before the switch.* ``load_fn`` self-tests the new state with real calls (every ONNX session run,
  every kernel called, on the stage's own code path), and what requests look up lazily
  (``Snapshot.item_index``) is built here, before the gateway waits for the stages and before the switch.
  After that a fresh state's first calls cost what later ones do (measured: within 0.3 CPU-ms per call,
  rank's 1,000-candidate calls included), so no further warm-up runs.
- *No full collection at the switch.* ``heap.freeze_new`` freezes the new state without walking the frozen
  heap (the full walk held each server's GIL for 0.2-1 s on the 2-core VM, right after its switch).
- *The old version freed off the request path.* The reloader drops the previous version on this thread
  (``keep_previous_s`` after the switch, or at the next switch), long after the gateway stopped pinning
  requests to it, so its memory, ONNX sessions and LMDB environment are freed here (``snapshot_retired``)
  and not by a request's last reference. A state has no reference cycle, so that is immediate; one still
  alive ``retire_grace_s`` later is held by a cycle (or a leak): one full collection then
  (``heap.refreeze``) and a ``snapshot_retained`` warning, so it is neither kept forever nor hidden.
"""
from __future__ import annotations

import gc
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable

from common import heap
from common.log import Logger
from common.snapshot import CURRENT, MANIFEST, SnapshotError, current_version


def version_service(version: str) -> str:
    """The health service name a server reports SERVING while it holds snapshot ``version``."""
    return f"recsys.snapshot/{version}"


def _close_snapshot(views: dict, log: Logger, version: str) -> None:
    """Close what a collected ``Snapshot`` opened (its ``__dict__``: holding it does not keep the snapshot)."""
    try:
        features = views.get("features")
        if features is not None:
            features.close()
    finally:
        log.info("snapshot_closed", version=version)


class Reloader:
    """The live state of one server plus the previous one; watches CURRENT and swaps versions."""

    def __init__(self, root: str | Path, load_fn: Callable[[Path], Any], log: Logger, poll_s: float = 2.0,
                 keep_previous_s: float = 60.0, ready_fn: Callable[[str], bool] | None = None,
                 activate_timeout_s: float = 60.0, retire_grace_s: float = 30.0):
        self.root = Path(root)
        self.ready_fn = ready_fn                   # gateway: do the stages hold this version yet?
        self.activate_timeout_s = activate_timeout_s
        self.on_versions: Callable[[list[str]], None] | None = None  # told the held versions after each change
        self.load_fn = load_fn
        self.log = log
        self.poll_s = poll_s
        self.keep_previous_s = keep_previous_s
        # longer than any request runs (the gateway's max_deadline_ms is 10 s): a retired snapshot alive after
        # this is held by a reference cycle, not by a request
        self.retire_grace_s = retire_grace_s
        # a version directory (not a root with CURRENT) is pinned: nothing to watch
        self.watching = poll_s >= 0 and not (self.root / MANIFEST).is_file() and (self.root / CURRENT).is_file()
        self._current = self._prepare(load_fn(self.root))
        self._previous: Any = None
        self._retired: list[tuple[weakref.ref, str, float]] = []   # (snapshot, version, dropped at)
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

    def _prepare(self, state: Any) -> Any:
        """Make a loaded ``state`` ready to serve before any request sees it."""
        snapshot = state.snapshot
        snapshot.item_index  # noqa: B018 - built now, before the swap, not by the first request after it
        weakref.finalize(snapshot, _close_snapshot, snapshot.__dict__, self.log, self.version_of(state))
        return state

    def _release(self, holder: list) -> None:
        """Let go of the retired state in ``holder`` (its only reference) here, on the reload thread: with
        no request holding it (the gateway pins its live version, and this runs at a later switch or
        ``keep_previous_s`` after this one) its arrays, sessions and LMDB environment are freed now, off the
        request path. One still alive is watched by ``_check_retired``."""
        state = holder.pop()
        if state is None:
            return
        version = self.version_of(state)
        alive = weakref.ref(state.snapshot)
        started = time.perf_counter()
        del state
        freed = alive() is None
        self.log.info("snapshot_retired", version=version, freed=freed,
                      ms=round((time.perf_counter() - started) * 1e3, 1))
        if not freed:   # a request still holds it (it frees it when it ends), or a reference cycle does
            self._retired.append((alive, version, time.monotonic()))

    def _check_retired(self) -> None:
        """A retired snapshot still alive ``retire_grace_s`` after it was dropped is held by a cycle: collect
        the whole heap once (the frozen part included) and say so."""
        now = time.monotonic()
        alive = [(ref, version, dropped) for ref, version, dropped in self._retired if ref() is not None]
        self._retired = [entry for entry in alive if now - entry[2] < self.retire_grace_s]
        held = [entry for entry in alive if now - entry[2] >= self.retire_grace_s]
        if not held:
            return
        heap.refreeze(self.log)   # frozen cycles (a serving process froze its heap at start-up)
        gc.collect()              # and unfrozen ones (a process that never froze: tools, tests)
        for ref, version, dropped in held:
            self.log.warning("snapshot_retained", version=version, held_s=round(now - dropped, 1),
                             freed_by_full_collection=ref() is None)

    def check(self) -> bool:
        """Load and switch to the version CURRENT names if it is new; True when a switch happened."""
        with self._lock:
            self._expire_previous()
            self._check_retired()
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
            state = self._prepare(state)           # before the gateway's wait on the stages, not after it
            if self.ready_fn is not None and not self._await_ready(version):
                return False
            previous = self.version_of(self._current)
            retiring = [self._previous]            # the older version: released below, after the switch
            self._previous = self._current         # kept for requests naming it
            self._current = state                  # the switch: one reference assignment
            del state
            self._switched_at = time.monotonic()
            self.log.info("snapshot_reloaded", version=version, previous=previous,
                          ms=round((time.perf_counter() - started) * 1000.0, 1))
            self._report_versions()
            heap.freeze_new(self.log)  # the new state out of full passes; the frozen heap is not walked
            self._release(retiring)
            return True

    def _await_ready(self, version: str) -> bool:
        """Wait until ``ready_fn(version)`` (the stages hold it), at most ``activate_timeout_s``; False if
        the reloader was stopped meanwhile."""
        self.log.info("snapshot_staged", version=version)
        give_up = time.monotonic() + self.activate_timeout_s
        while not self.ready_fn(version):
            if time.monotonic() > give_up:  # switch anyway: stages still without it degrade, not fail
                self.log.warning("snapshot_not_held_by_stages", version=version, waited_s=self.activate_timeout_s)
                return True
            if self._stop.wait(0.05):
                return False
        return True

    def _expire_previous(self) -> None:
        if self._previous is not None and time.monotonic() - self._switched_at > self.keep_previous_s:
            retiring = [self._previous]
            self._previous = None
            self._report_versions()
            self._release(retiring)

    def _report_versions(self) -> None:
        if self.on_versions is not None:
            self.on_versions(self.versions)

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
