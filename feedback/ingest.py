"""A Feedback batch as plain functions: check each event, drop unknown items, write the rest, say what happened.

Batch policy: per event. An invalid event is rejected with its index and the reason (naming the field);
an event for an item the serving snapshot does not know is dropped and counted (it cannot be recommended
or filtered, and a later snapshot that adds the item learns from its own log); the valid events are
written in one durable transaction (``FeedbackStore.append_batch``: all of them or, on a store error, none).
Only the batch as a whole can be refused: empty is fine (nothing to do), more than ``max_batch`` events is
the caller's error. Retrying a batch is safe: events carrying an ``event_id`` are applied once.

The steps are separate so the gateway's writer (``feedback.writer``) can check each call's batch, write
several calls' events in one transaction, and give each call its own answer (``split``); ``ingest`` is
the three for one batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from feedback.config import FeedbackConfig
from feedback.event_batch import ITEM, EventBatch, stamped
from feedback.events import Event
from feedback.known_items import KnownItems
from feedback.store import AppendResult, FeedbackStore


@dataclass
class IngestResult:
    """What happened to each event of a batch (indices into the request's list)."""

    accepted: int = 0
    duplicates: list[int] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index, reason)
    unknown_items: list[int] = field(default_factory=list)
    last_seq: int = 0


@dataclass
class Checked:
    """One batch after the per-event checks: the events to store (``keep``: their indices in the batch;
    ``batch``: those events, stamped) and what to say about the others."""

    keep: np.ndarray
    batch: EventBatch
    rejected: list[tuple[int, str]]
    unknown_items: np.ndarray


def check_batch(n_events: int, config: FeedbackConfig) -> str | None:
    """Why a whole batch of ``n_events`` is refused, or None."""
    if n_events > config.max_batch:
        return f"events has {n_events} entries, the limit is {config.max_batch} per call (feedback.max_batch)"
    return None


def check(batch: EventBatch, known, now, config: FeedbackConfig) -> Checked:
    """Check every event of ``batch`` (``feedback.events``' rules), then its item against ``known`` (a
    ``KnownItems``, or for the Python API a ``known_item(item_id) -> bool``); events without a timestamp
    get ``now``, the server's arrival time (a float, or one per event for several calls checked at once)."""
    bad, reasons = batch.problems(now, config)
    valid = np.ones(len(batch), np.bool_)
    valid[bad] = False
    candidates = np.flatnonzero(valid)
    sub = batch.take(candidates)
    if isinstance(known, KnownItems):
        found = known.contains(sub)
    else:
        found = np.fromiter((bool(known(sub.key(i, ITEM).decode("utf-8"))) for i in range(len(sub))), np.bool_,
                            len(sub))
    keep = candidates[found]
    return Checked(keep, stamped(batch.take(keep), now if np.isscalar(now) else now[keep]),
                   list(zip(bad.tolist(), reasons)), candidates[~found])


def split_checked(checked: Checked, sizes: list[int]) -> list[Checked]:
    """``check`` of several calls' batches back to back (``sizes`` events each), as each call's own."""
    out, start, at = [], 0, 0
    for size in sizes:
        end = start + size
        lo, hi = np.searchsorted(checked.keep, [start, end])
        while at < len(checked.rejected) and checked.rejected[at][0] < start:
            at += 1
        first = at
        while at < len(checked.rejected) and checked.rejected[at][0] < end:
            at += 1
        unknown = checked.unknown_items[(checked.unknown_items >= start) & (checked.unknown_items < end)]
        out.append(Checked(checked.keep[lo:hi] - start, checked.batch.take(np.arange(lo, hi)),
                           [(i - start, reason) for i, reason in checked.rejected[first:at]], unknown - start))
        start = end
    return out


def split(written: AppendResult, sizes: list[int]) -> list[AppendResult]:
    """The part of one ``append_batch`` over several batches written back to back (``sizes`` events each)
    that concerns each batch: its sequence numbers and its duplicates' indices in it."""
    ends = np.cumsum(sizes)
    starts = ends - np.asarray(sizes, np.int64)
    stored = np.ones(int(ends[-1]) if sizes else 0, np.bool_)
    stored[written.duplicates] = False
    stored_at = np.flatnonzero(stored)                # seqs are the stored events', in order
    out = []
    for a, b in zip(starts.tolist(), ends.tolist()):
        lo, hi = np.searchsorted(stored_at, [a, b])
        dups = written.duplicates[(written.duplicates >= a) & (written.duplicates < b)] - a
        out.append(AppendResult(written.seqs[lo:hi], dups, written.compacted, written.evicted))
    return out


def result_of(checked: Checked, written: AppendResult | None) -> IngestResult:
    """The reply's view of one batch: ``checked``'s rejections and unknown items, ``written``'s outcome."""
    result = IngestResult(rejected=checked.rejected, unknown_items=checked.unknown_items.tolist())
    if written is not None:
        result.accepted = int(written.seqs.shape[0])
        result.duplicates = checked.keep[written.duplicates].tolist()
        result.last_seq = int(written.seqs[-1]) if written.seqs.shape[0] else 0
    return result


def ingest(store: FeedbackStore, events: list[Event] | EventBatch, known, now: float) -> IngestResult:
    """Check ``events`` (``check``: ``known`` against the serving snapshot) and append the valid ones in
    one durable transaction; an event without a timestamp gets ``now``."""
    batch = events if isinstance(events, EventBatch) else EventBatch.from_events(events)
    checked = check(batch, known, now, store.config)
    return result_of(checked, store.append_batch(checked.batch, now) if checked.keep.size else None)
