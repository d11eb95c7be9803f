"""The feedback store's one writer: a thread that group-commits Feedback calls.

Why a thread of its own: LMDB's commit waits for fsync (milliseconds to tens of them on a shared disk), and
the caller's event loop serves Recommend; it only hands a call's bytes over and awaits a future. Why group
commit: calls that arrive while a transaction commits wait in a queue, and the next transaction takes all of
them, so one fsync serves many calls and a user touched by several calls is rewritten once. Nothing waits
on purpose to fill a group: an idle writer starts on the first call at once, so a lone click is as quick to
reach the readers as before, and under load the groups grow by themselves.

The promise of a Feedback call is kept per call: its future resolves only after the transaction holding its
events has committed (fsynced), so an acknowledged event survives kill -9, and a call's events are all in
one transaction (all or nothing on disk). A call cancelled before its group starts is not written.

A group holds at most ``feedback.max_batch`` events (one call may be that large alone): the write room
``FeedbackConfig`` plans for copy-on-write is sized for such a transaction.

When a group's transaction fails, nothing of it was written, and each of its calls is written again alone,
in its own transaction. Failing the whole group instead would let one call sink others: a batch too large
for the map (RESOURCE_EXHAUSTED) would fail every call that happened to share its transaction. Alone, each
call gets exactly the outcome it would have had without grouping; the retries cost one transaction per call,
on the failure path only.

A group's transaction is committed without syncing LMDB's meta page
(``FeedbackStore.append_batch(durable=False)``: its data pages are fsynced, and readers see its events from
the commit on); ``store.sync()`` (one ``fdatasync``) then makes it durable, and only then are its calls
answered. With ``feedback.sync_pipeline`` off (the default) the writer does that itself before its next
group. With it on, the outcomes go to a second thread, the syncer, which runs one ``fdatasync`` for every
group committed since its last one and then resolves their futures, while the writer builds and commits the
next group: the meta page's sync (about a third of a small commit's time on this VM's disk) is off the
writer's critical path, so under load the writer is busy less of the time and a click waits less behind
other calls, at the cost of smaller groups (more transactions, more CPU per event). Futures resolve in
commit order; so do duplicates (an event id met in a group not yet synced is answered after that group's
sync, never before its first copy is durable).

Checking and encoding run here too, as columns (``feedback.wire``, ``feedback.event_batch``): this thread
shares the interpreter with the event loop, and Numba passes release it.
"""
from __future__ import annotations

import asyncio
import queue
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from common.log import Logger
from feedback.event_batch import EventBatch
from feedback.ingest import Checked, IngestResult, check, result_of, split, split_checked
from feedback.known_items import KnownItems
from feedback.store import FeedbackStore, FeedbackStoreError
from feedback.wire import parse_request


@dataclass
class _Call:
    """One Feedback call waiting for the writer: its serialized request (or columns), size, arrival time."""

    request: bytes | EventBatch
    n_events: int
    items: object            # what ``known_items`` builds the item set from: ``version`` and ``item_ids``
    now: float
    future: Future


class FeedbackWriter:
    """``write`` (async) or ``submit`` a Feedback call; ``close`` when no more calls can come."""

    def __init__(self, store: FeedbackStore, log: Logger):
        self.store, self.log = store, log
        self.max_events = store.config.max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._known: dict[str, KnownItems] = {}      # by snapshot version; used by the writer thread only
        self._closed = False
        self._closing = threading.Lock()   # a call is queued before close's end mark, or refused
        warm_up(log)   # Numba's passes loaded (or compiled) now, not inside the first Feedback calls
        self._synced: queue.SimpleQueue = queue.SimpleQueue()   # committed groups' outcomes, in commit order
        self._syncer = None
        if store.config.sync_pipeline:
            self._syncer = threading.Thread(target=self._sync_run, name="feedback-syncer", daemon=True)
            self._syncer.start()
        self._thread = threading.Thread(target=self._run, name="feedback-writer", daemon=True)
        self._thread.start()

    def submit(self, request: bytes | EventBatch, n_events: int, items, now: float) -> Future:
        """Queue a call: ``request`` a serialized ``FeedbackRequest`` (or its columns) of ``n_events``,
        checked against ``items`` (the serving snapshot: ``version``, ``item_ids``) at ``now``. The future
        resolves to its ``IngestResult`` once its events are durable, or to the store's error."""
        future: Future = Future()
        if n_events == 0:   # nothing to make durable
            future.set_running_or_notify_cancel()
            future.set_result(IngestResult())
        else:
            with self._closing:
                if not self._closed:
                    self._queue.put(_Call(request, n_events, items, now, future))
                    return future
            future.set_running_or_notify_cancel()
            future.set_exception(FeedbackStoreError("the feedback writer is closed (the gateway is stopping)"))
        return future

    async def write(self, request: bytes | EventBatch, n_events: int, items, now: float) -> IngestResult:
        """``submit``, awaited on the running event loop (which never waits on the store itself)."""
        return await asyncio.wrap_future(self.submit(request, n_events, items, now))

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join()
        if self._syncer is not None:
            self._synced.put(None)   # after the writer's last group: every call handed over gets its answer
            self._syncer.join()

    def _run(self) -> None:
        held = None   # a call that did not fit the last group: it starts the next one
        while True:
            first = held if held is not None else self._queue.get()
            held = None
            if first is None:
                return
            group, size, stop = [first], first.n_events, False
            while size < self.max_events:
                try:
                    call = self._queue.get_nowait()
                except queue.Empty:
                    break
                if call is None:
                    stop = True
                    break
                if size + call.n_events > self.max_events:
                    held = call
                    break
                group.append(call)
                size += call.n_events
            try:
                outcomes = write_group(self.store, group, self.known_items, self.log)
            except Exception as exc:  # noqa: BLE001 - a bug here must fail these calls, not stop the writer
                self.log.error("feedback_writer_error", calls=len(group), error=repr(exc)[:300])
                outcomes = [(call, None, exc) for call in group if not call.future.done()]
            if self._syncer is not None:
                self._synced.put(outcomes)
            else:
                self._sync_and_resolve([outcomes])
            if stop:
                return

    def _sync_run(self) -> None:
        """Sync what the writer committed, then answer its calls: one ``fdatasync`` for all groups queued."""
        while True:
            first = self._synced.get()
            if first is None:
                return
            groups, stop = [first], False
            while True:
                try:
                    more = self._synced.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                groups.append(more)
            self._sync_and_resolve(groups)
            if stop:
                return

    def _sync_and_resolve(self, groups: list[list["Outcome"]]) -> None:
        """One ``fdatasync`` for ``groups`` (committed), then their calls' answers, in commit order."""
        failed = None
        try:
            self.store.sync()
        except Exception as exc:  # noqa: BLE001 - these calls fail (retryable), the writer goes on
            failed = exc
            self.log.error("feedback_sync_error", groups=len(groups), error=str(exc)[:300])
        for outcomes in groups:
            resolve(outcomes, failed)

    def known_items(self, items) -> KnownItems:
        """The item set of the snapshot ``items`` (built once per version; the two newest kept)."""
        known = self._known.get(items.version)
        if known is None:
            t0 = time.perf_counter()
            known = self._known[items.version] = KnownItems(items.item_ids)
            for old in list(self._known)[:-2]:
                del self._known[old]
            self.log.info("feedback_items_indexed", version=items.version, items=len(known),
                          ms=round((time.perf_counter() - t0) * 1000.0, 1))
        return known


Outcome = tuple[_Call, "IngestResult | None", "Exception | None"]


def resolve(outcomes: list[Outcome], failed: Exception | None = None) -> None:
    """Answer each call of ``outcomes`` (after the sync that made its group durable); ``failed``: that sync's
    error, which every call not already failing gets instead of its result."""
    for call, result, exc in outcomes:
        if exc is None and failed is not None:
            exc = failed
        if call.future.done():   # cancelled before it ran (only on the writer's error path): nothing to say
            continue
        if exc is not None:
            call.future.set_exception(exc)
        else:
            call.future.set_result(result)


def write_group(store: FeedbackStore, group: list[_Call], known_items, log: Logger) -> list[Outcome]:
    """Check the calls of ``group`` (``known_items(call.items)``: a call's snapshot's item set), write their
    events in one transaction, committed but not yet synced (``append_batch(durable=False)``), and return
    each call's own answer (or error), to be given by ``resolve`` once ``store.sync()`` has run. The calls are
    checked together, as one batch per snapshot version (a swap may leave two in a group): the checks' fixed
    cost is paid per group, not per call. A call cancelled before this starts is dropped, unwritten."""
    t0 = time.perf_counter()
    out: list[Outcome] = []
    parsed: dict[str, list[tuple[_Call, EventBatch]]] = {}
    for call in group:
        if not call.future.set_running_or_notify_cancel():
            continue   # the caller gave up before its events were written: they are not
        try:
            batch = call.request if isinstance(call.request, EventBatch) else parse_request(call.request)
        except Exception as exc:  # noqa: BLE001 - this call's failure, not the group's
            out.append((call, None, exc))
            continue
        parsed.setdefault(call.items.version, []).append((call, batch))
    checked: list[tuple[_Call, Checked]] = []
    for calls in parsed.values():
        sizes = [len(batch) for _, batch in calls]
        try:
            together = check(EventBatch.concat([batch for _, batch in calls]), known_items(calls[0][0].items),
                             np.repeat([call.now for call, _ in calls], sizes), store.config)
        except Exception as exc:  # noqa: BLE001 - a bug or a bad snapshot: these calls fail, not the writer
            out += [(call, None, exc) for call, _ in calls]
            continue
        checked += zip([call for call, _ in calls], split_checked(together, sizes))
    writes = [(call, c) for call, c in checked if c.keep.size]
    out += [(call, result_of(c, None), None) for call, c in checked if not c.keep.size]
    if not writes:
        return out
    try:
        written = store.append_batch(EventBatch.concat([c.batch for _, c in writes]),
                                     max(call.now for call, _ in writes), durable=False)
    except Exception as exc:  # noqa: BLE001 - nothing of the group was written: each call alone
        if len(writes) == 1:
            return out + [(writes[0][0], None, exc)]
        log.warning("feedback_group_failed", calls=len(writes), error=str(exc)[:300], then="each call written alone")
        for call, c in writes:
            try:
                out.append((call, result_of(c, store.append_batch(c.batch, call.now, durable=False)), None))
            except Exception as alone:  # noqa: BLE001
                out.append((call, None, alone))
        return out
    out += [(call, result_of(c, part), None)
            for (call, c), part in zip(writes, split(written, [c.keep.size for _, c in writes]))]
    log.debug("feedback_group", calls=len(writes), events=int(sum(c.keep.size for _, c in writes)),
              stored=int(written.seqs.shape[0]), ms=round((time.perf_counter() - t0) * 1000.0, 2))
    return out


def warm_up(log: Logger) -> None:
    """Write a group of two small calls through ``write_group`` into a throwaway store: every Numba pass
    of the write path is loaded from Numba's cache (or compiled) now, in each variant the path uses,
    rather than inside the first Feedback calls while they hold the interpreter."""
    from feedback.config import FeedbackConfig
    from feedback.events import Event, EventType
    from recsys.v2 import recommend_service_pb2 as pb

    items = SimpleNamespace(version="warm-up", item_ids=np.array(["i", "j"]))
    request = pb.FeedbackRequest(events=[pb.FeedbackEvent(user_id="u", item_id="i", type=2, event_id="ev-1"),
                                         pb.FeedbackEvent(user_id="v", item_id="k", type=1)]).SerializeToString()
    with tempfile.TemporaryDirectory(prefix="feedback-warm-up-") as tmp:
        store = FeedbackStore.open(FeedbackConfig(path=tmp, map_size_mb=8))
        try:
            calls = [_Call(request, 2, items, 1e9, Future()),
                     _Call(EventBatch.from_events([Event("u", "j", EventType.IMPRESSION, event_id="ev-1")]), 1,
                           items, 1e9, Future())]
            outcomes = write_group(store, calls, lambda snapshot: KnownItems(snapshot.item_ids), log)
            store.sync()
            resolve(outcomes)
            results = [call.future.result(0) for call in calls]
        finally:
            store.close()
    if [(r.accepted, r.unknown_items, r.duplicates) for r in results] != [(1, [1], []), (0, [], [0])]:
        raise RuntimeError(f"self-test: the feedback write path answered {results}")
