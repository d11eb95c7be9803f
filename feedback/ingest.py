"""A Feedback batch as a plain function: validate each event, drop unknown items, write the rest once.

Batch policy: per event. An invalid event is rejected with its index and the reason (naming the field);
an event for an item the serving snapshot does not know is dropped and counted (it cannot be recommended
or filtered, and a later snapshot that adds the item learns from its own log); the valid events are
written in one durable transaction (``FeedbackStore.append``: all of them or, on a store error, none).
Only the batch as a whole can be refused: empty is fine (nothing to do), more than ``max_batch`` events is
the caller's error. Retrying a batch is safe: events carrying an ``event_id`` are applied once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from feedback.config import FeedbackConfig
from feedback.events import Event, check_event
from feedback.store import FeedbackStore


@dataclass
class IngestResult:
    """What happened to each event of a batch (indices into the request's list)."""

    accepted: int = 0
    duplicates: list[int] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index, reason)
    unknown_items: list[int] = field(default_factory=list)
    last_seq: int = 0


def check_batch(n_events: int, config: FeedbackConfig) -> str | None:
    """Why a whole batch of ``n_events`` is refused, or None."""
    if n_events > config.max_batch:
        return f"events has {n_events} entries, the limit is {config.max_batch} per call (feedback.max_batch)"
    return None


def ingest(store: FeedbackStore, events: list[Event], known_item, now: float) -> IngestResult:
    """Validate ``events`` (``known_item(item_id) -> bool`` against the serving snapshot) and append the
    valid ones; an event without a timestamp gets ``now`` (the server's arrival time)."""
    result = IngestResult()
    keep: list[Event] = []
    index: list[int] = []
    for i, event in enumerate(events):
        problem = check_event(event, now, store.config)
        if problem:
            result.rejected.append((i, problem))
        elif not known_item(event.item_id):
            result.unknown_items.append(i)
        else:
            keep.append(event if event.timestamp else Event(event.user_id, event.item_id, event.type, event.value,
                                                            now, event.request_id, event.event_id))
            index.append(i)
    if keep:
        written = store.append(keep, now)
        result.accepted = len(written.seqs)
        result.duplicates = [index[j] for j in written.duplicates]
        result.last_seq = written.seqs[-1] if written.seqs else 0
    return result
