"""The LMDB feedback store: idempotency, per-user state, compaction, and no acknowledged event lost on kill -9."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from feedback.config import FeedbackConfig
from feedback.events import Event, EventType
from feedback.store import FeedbackStore
from kernels.string_hash import hash_strings

ROOT = Path(__file__).resolve().parents[1]


def open_store(tmp_path, **overrides) -> FeedbackStore:
    return FeedbackStore.open(FeedbackConfig(path=str(tmp_path / "feedback"), map_size_mb=256, **overrides))


def test_append_is_idempotent_by_event_id_and_builds_user_state(tmp_path):
    store = open_store(tmp_path, history_len=3)
    batch = [Event("u1", "a", EventType.IMPRESSION, event_id="e1"), Event("u1", "b", EventType.CLICK, event_id="e2"),
             Event("u1", "b", EventType.CLICK, event_id="e2"),  # repeated inside the batch
             Event("u2", "c", EventType.RATING, 4.0, 123.0)]
    result = store.append(batch, now=1000.0)
    assert result.seqs.tolist() == [1, 2, 3] and result.duplicates.tolist() == [2]
    again = store.append(batch[:2], now=1001.0)  # a retried call applies nothing twice
    assert again.seqs.tolist() == [] and again.duplicates.tolist() == [0, 1]
    state = store.user_state("u1")
    assert state.hist_items == ["b"]
    assert state.exposed(hash_strings(["a", "b", "zzz"]), 1002.0, store.config.exposure_window_s).tolist() == \
        [True, True, False]
    assert store.user_state("u2").hist_ts.tolist() == [123.0]
    assert store.user_state("nobody") is None
    assert [(s, e.item_id) for s, e in store.events()] == [(1, "a"), (2, "b"), (3, "c")]
    assert [s for s, _ in store.events(after_seq=1, upto_seq=2)] == [2]
    assert store.last_seq() == 3
    store.close()
    reopened = open_store(tmp_path, history_len=3)
    assert reopened.last_seq() == 3 and reopened.user_state("u1").hist_items == ["b"]


def test_history_keeps_the_newest_and_compaction_bounds_the_log(tmp_path):
    store = open_store(tmp_path, history_len=5, max_log_events=100)
    for b in range(10):
        store.append([Event("u", f"i{b * 30 + j}", EventType.CLICK, event_id=f"e{b * 30 + j}") for j in range(30)])
    seqs = [s for s, _ in store.events()]
    assert len(seqs) == 100 and seqs[0] == 201 and seqs[-1] == 300
    assert store.user_state("u").hist_items == [f"i{j}" for j in range(295, 300)]
    # compacted event ids are forgotten with their records; retained ones still deduplicate
    result = store.append([Event("u", "x", EventType.CLICK, event_id="e0"),
                           Event("u", "x", EventType.CLICK, event_id="e299")])
    assert result.seqs.tolist() == [301] and result.duplicates.tolist() == [1]


def test_a_full_store_refuses_the_whole_batch(tmp_path):
    small = FeedbackStore.open(FeedbackConfig(path=str(tmp_path / "small"), map_size_mb=1))
    small.append([Event("u", "first", EventType.CLICK)])
    huge = [Event(f"user{i}", "x" * 200, EventType.CLICK, event_id=f"ev{i}" * 20) for i in range(20000)]
    with pytest.raises(Exception, match="full"):
        small.append(huge)
    assert small.last_seq() == 1 and [e.item_id for _, e in small.events()] == ["first"]


WRITER = """
import sys
from feedback.config import FeedbackConfig
from feedback.events import Event, EventType
from feedback.store import FeedbackStore
store = FeedbackStore.open(FeedbackConfig(path=sys.argv[1], map_size_mb=512))
start, total, batch = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for b in range(start, start + total, batch):
    store.append([Event(f"u{i % 997}", f"i{i % 1700}", EventType.CLICK if i % 3 else EventType.IMPRESSION,
                        event_id=f"e{i}") for i in range(b, b + batch)])
    print(b + batch, flush=True)  # acknowledged: every event below this index
"""


@pytest.mark.parametrize("round_", range(3))
def test_no_acknowledged_event_is_lost_when_the_writer_is_killed(tmp_path, round_):
    path = tmp_path / "feedback"
    total, batch = 100_000, 500
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "0", str(total), str(batch)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    acked = 0
    kill_after = [5, 40, 120][round_]  # acknowledgements before the kill: early, middle, late
    for line in proc.stdout:
        acked = int(line)
        if acked >= kill_after * batch:
            break
    os.kill(proc.pid, signal.SIGKILL)  # mid-transaction most likely: the writer is in a tight loop
    proc.wait()
    proc.stdout.close()
    store = FeedbackStore.open(FeedbackConfig(path=str(path), map_size_mb=512))
    ids = {e.event_id for _, e in store.events()}
    assert all(f"e{i}" in ids for i in range(acked)), "an acknowledged event is missing"
    assert len(ids) % batch == 0  # batches are all or nothing
    assert store.last_seq() == len(ids)
    # the store stays writable after the crash and a retry of the in-flight batch is deduplicated
    retry = store.append([Event("u1", "i1", EventType.CLICK, event_id=f"e{i}") for i in range(acked, acked + batch)])
    assert len(retry.seqs) + len(retry.duplicates) == batch


def test_ingest_rejects_per_event_drops_unknown_items_and_stamps_arrival(tmp_path):
    from feedback.ingest import check_batch, ingest

    store = open_store(tmp_path)
    known = {"a", "b"}.__contains__
    events = [Event("u", "a", EventType.CLICK, event_id="1"), Event("u", "zzz", EventType.CLICK),
              Event("u", "b", EventType.RATING, float("nan")), Event("", "a", EventType.CLICK),
              Event("u", "b", EventType.LIKE, timestamp=5e9), Event("u", "a", EventType.CLICK, event_id="1"),
              Event("u", "b", EventType.IMPRESSION)]
    result = ingest(store, events, known, now=1000.0)
    assert result.accepted == 2 and result.duplicates == [5] and result.unknown_items == [1]
    assert [(i, r.split()[0]) for i, r in result.rejected] == [(2, "value"), (3, "user_id"), (4, "timestamp")]
    assert [e.timestamp for _, e in store.events()] == [1000.0, 1000.0]  # no timestamp: arrival time
    assert store.user_state("u").hist_items == ["a"]
    assert ingest(store, [], known, now=1.0).accepted == 0
    assert check_batch(10_001, store.config).startswith("events has 10001 entries")
    assert check_batch(10_000, store.config) is None
