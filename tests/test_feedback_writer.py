"""The feedback writer: calls that wait during a commit share the next transaction (one fsync), each call
gets its own answer, a failed group retries each call alone, and no acknowledged call is lost on kill -9."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from common.log import Logger
from feedback.config import FeedbackConfig
from feedback.event_batch import EventBatch
from feedback.events import Event, EventType
from feedback.store import FeedbackStore, FeedbackStoreFull
from feedback.writer import FeedbackWriter
from recsys.v2 import recommend_service_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = SimpleNamespace(version="v1", item_ids=np.array([f"i{j}" for j in range(100)] + ["x" * 200]))


def request(events: list[Event]) -> tuple[bytes, int]:
    return pb.FeedbackRequest(events=[pb.FeedbackEvent(user_id=e.user_id, item_id=e.item_id, type=int(e.type),
                                                       value=e.value, timestamp=e.timestamp,
                                                       event_id=e.event_id) for e in events]).SerializeToString(), \
        len(events)


class GatedStore:
    """A store whose first write waits for ``gate``: calls submitted meanwhile queue up as one group."""

    def __init__(self, store: FeedbackStore):
        self.store, self.config, self.gate, self.writes = store, store.config, threading.Event(), []
        self.started = threading.Event()

    def append_batch(self, batch, now=None, durable=True):
        self.writes.append(len(batch))
        self.started.set()
        self.gate.wait(30)
        return self.store.append_batch(batch, now, durable)

    def sync(self):
        self.store.sync()


class SlowSyncStore:
    """A store whose ``sync`` waits for ``gate``: a committed group's calls stay unanswered meanwhile."""

    def __init__(self, store: FeedbackStore):
        self.store, self.config, self.gate, self.syncing, self.syncs = store, store.config, threading.Event(), \
            threading.Event(), 0
        self.committed: list[int] = []   # last_txnid after each write

    def append_batch(self, batch, now=None, durable=True):
        assert not durable   # the writer leaves the sync to its syncer thread
        result = self.store.append_batch(batch, now, durable)
        self.committed.append(self.store.env.info()["last_txnid"])
        return result

    def sync(self):
        self.syncing.set()
        self.gate.wait(30)
        self.syncs += 1
        self.store.sync()


@pytest.fixture
def store(tmp_path):
    s = FeedbackStore.open(FeedbackConfig(path=str(tmp_path / "feedback"), map_size_mb=64))
    yield s
    s.close()


def test_calls_waiting_on_a_commit_share_one_transaction_and_keep_their_own_answers(store):
    gated = GatedStore(store)
    writer = FeedbackWriter(gated, Logger("test", stream=io.StringIO()))
    try:
        first = writer.submit(*request([Event("a", "i1", EventType.CLICK, event_id="a1")]), SNAPSHOT, 1000.0)
        assert gated.started.wait(30)
        txn_before = store.env.info()["last_txnid"]
        calls = [
            [Event("b", "i2", EventType.CLICK, event_id="b1"), Event("b", "nope", EventType.CLICK),
             Event("", "i3", EventType.CLICK), Event("b", "i4", EventType.IMPRESSION, event_id="a1")],
            [Event("c", "i5", EventType.RATING, 4.0, event_id="b1"), Event("c", "i6", EventType.LIKE, event_id="c1")],
            [Event("b", "i7", EventType.CLICK, event_id="c1"), Event("b", "i8", EventType.CLICK)],
            [Event("d", "i9", EventType.RATING, float("nan"))],       # nothing to write: answered too
        ]
        futures = [writer.submit(*request(events), SNAPSHOT, 1001.0) for events in calls]
        gated.gate.set()
        results = [f.result(30) for f in [first, *futures]]
    finally:
        writer.close()
    assert gated.writes == [1, 6]   # the four later calls' 6 valid, known events in one write
    assert store.env.info()["last_txnid"] == txn_before + 2   # five calls, two transactions: two fsyncs
    assert [r.accepted for r in results] == [1, 1, 1, 1, 0]
    # each call's duplicates, rejections and unknown items in its own indices; ids repeated across calls
    # (b1, c1) are applied once, to the earlier call
    assert [r.duplicates for r in results] == [[], [3], [0], [0], []]
    assert [r.unknown_items for r in results] == [[], [1], [], [], []]
    assert [[i for i, _ in r.rejected] for r in results] == [[], [2], [], [], [0]]
    assert results[4].rejected[0][1].startswith("value")
    assert [e.event_id for _, e in store.events()] == ["a1", "b1", "c1", ""]
    assert store.user_state("b").hist_items == ["i2", "i8"] and store.user_state("c").hist_items == ["i6"]
    assert [r.last_seq for r in results] == [1, 2, 3, 4, 0]


@pytest.mark.parametrize("pipeline", [True, False])
def test_a_call_is_answered_only_after_its_sync(tmp_path, pipeline):
    store = FeedbackStore.open(FeedbackConfig(path=str(tmp_path / "feedback"), map_size_mb=64,
                                              sync_pipeline=pipeline))
    slow = SlowSyncStore(store)
    writer = FeedbackWriter(slow, Logger("test", stream=io.StringIO()))
    try:
        first = writer.submit(*request([Event("a", "i1", EventType.CLICK, event_id="a1")]), SNAPSHOT, 1000.0)
        assert slow.syncing.wait(30)   # committed: readers see it; not yet durable, so not answered
        assert store.user_state("a") is not None and not first.done()
        second = writer.submit(*request([Event("b", "i2", EventType.CLICK, event_id="b1")]), SNAPSHOT, 1001.0)
        again = writer.submit(*request([Event("a", "i1", EventType.CLICK, event_id="a1")]), SNAPSHOT, 1001.0)
        # pipelined, the writer does not wait for the sync: the next group commits meanwhile; else it waits
        for _ in range(300 if pipeline else 30):
            if len(slow.committed) == 2:
                break
            threading.Event().wait(0.01)
        assert len(slow.committed) == (2 if pipeline else 1)
        assert (store.user_state("b") is not None) == pipeline
        assert not (first.done() or second.done() or again.done())   # a duplicate waits for the first copy too
        slow.gate.set()
        results = [f.result(30) for f in (first, second, again)]
    finally:
        writer.close()
        store.close()
    assert [(r.accepted, r.duplicates) for r in results] == [(1, []), (1, []), (0, [0])]
    assert 1 <= slow.syncs <= 2   # one fdatasync may serve the groups committed while the last one ran


def test_the_store_syncs_before_append_returns_and_publishes_without_metasync(tmp_path):
    store = FeedbackStore.open(FeedbackConfig(path=str(tmp_path / "feedback"), map_size_mb=16))
    try:
        assert store.env.flags()["metasync"] is False   # the meta page is synced by ``sync``, not by LMDB
        synced = []
        real = store.sync
        store.sync = lambda: (synced.append(1), real())
        store.append([Event("u", "i1", EventType.CLICK)])
        assert synced == [1]
        store.append_batch(EventBatch.from_events([Event("v", "i2", EventType.CLICK)]), durable=False)
        assert synced == [1] and store.user_state("v") is not None   # committed, visible, its sync left to us
    finally:
        store.close()


def test_a_failed_group_writes_each_call_alone(tmp_path):
    small = FeedbackStore.open(FeedbackConfig(path=str(tmp_path / "small"), map_size_mb=1))
    gated = GatedStore(small)
    writer = FeedbackWriter(gated, Logger("test", stream=io.StringIO()))
    try:
        first = writer.submit(*request([Event("a", "i1", EventType.CLICK)]), SNAPSHOT, 1000.0)
        assert gated.started.wait(30)
        ok = writer.submit(*request([Event("b", "i2", EventType.CLICK, event_id="ok")]), SNAPSHOT, 1001.0)
        huge = writer.submit(*request([Event(f"user{i}", "x" * 200, EventType.CLICK, event_id=f"ev{i}" * 20)
                                       for i in range(2000)]), SNAPSHOT, 1001.0)
        also = writer.submit(*request([Event("c", "i3", EventType.CLICK)]), SNAPSHOT, 1001.0)
        gated.gate.set()
        assert first.result(30).accepted == 1
        with pytest.raises(FeedbackStoreFull):
            huge.result(30)
        assert ok.result(30).accepted == 1 and also.result(30).accepted == 1   # not sunk by the full one
    finally:
        writer.close()
    assert gated.writes[1] == 2002 and gated.writes[2:] == [1, 2000, 1]
    assert sorted(e.user_id for _, e in small.events()) == ["a", "b", "c"]
    small.close()


def test_a_cancelled_call_is_not_written_and_close_drains_the_queue(store):
    gated = GatedStore(store)
    writer = FeedbackWriter(gated, Logger("test", stream=io.StringIO()))
    first = writer.submit(*request([Event("a", "i1", EventType.CLICK)]), SNAPSHOT, 1000.0)
    assert gated.started.wait(30)
    gone = writer.submit(*request([Event("gone", "i1", EventType.CLICK)]), SNAPSHOT, 1000.0)
    kept = writer.submit(*request([Event("kept", "i1", EventType.CLICK)]), SNAPSHOT, 1000.0)
    assert gone.cancel()
    gated.gate.set()
    writer.close()   # returns once the queued call is written
    assert first.done() and kept.result(0).accepted == 1
    assert [e.user_id for _, e in store.events()] == ["a", "kept"]
    assert writer.submit(*request([Event("late", "i1", EventType.CLICK)]), SNAPSHOT, 1.0).exception(0) is not None
    assert writer.submit(b"", 0, SNAPSHOT, 1.0).result(0).accepted == 0   # an empty call needs no writer


WRITER = """
import sys, threading, io
import numpy as np
from types import SimpleNamespace
from common.log import Logger
from feedback.config import FeedbackConfig
from feedback.store import FeedbackStore
from feedback.writer import FeedbackWriter
from recsys.v2 import recommend_service_pb2 as pb
store = FeedbackStore.open(FeedbackConfig(path=sys.argv[1], map_size_mb=512, sync_pipeline=sys.argv[2] == "1"))
writer = FeedbackWriter(store, Logger("w", stream=io.StringIO()))
snapshot = SimpleNamespace(version="v", item_ids=np.array([f"i{j}" for j in range(1700)]))
lock = threading.Lock()

def client(c):   # one client's calls in turn; the eight clients' calls share transactions
    for call in range(c, 100000, 8):
        events = [pb.FeedbackEvent(user_id=f"u{(call * 7 + j) % 997}", item_id=f"i{(call + j) % 1700}",
                                   type=2 if j % 3 else 1, event_id=f"c{call}-{j}") for j in range(50)]
        writer.submit(pb.FeedbackRequest(events=events).SerializeToString(), 50, snapshot, 1e9).result()
        with lock:
            print(call, flush=True)   # acknowledged: all 50 events of this call

threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


@pytest.mark.parametrize("round_,pipeline", [(0, False), (1, False), (0, True), (1, True)])
def test_no_acknowledged_call_is_lost_when_a_group_committing_writer_is_killed(tmp_path, round_, pipeline):
    path = tmp_path / "feedback"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(int(pipeline))], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    acked: list[int] = []
    for line in proc.stdout:
        acked.append(int(line))
        if len(acked) >= [60, 400][round_]:
            break
    os.kill(proc.pid, signal.SIGKILL)   # most likely while a group commits: eight clients keep it busy
    proc.wait()
    proc.stdout.close()
    store = FeedbackStore.open(FeedbackConfig(path=str(path), map_size_mb=512))
    try:
        per_call: dict[int, int] = {}
        for _, e in store.events():
            call = int(e.event_id[1:].split("-")[0])
            per_call[call] = per_call.get(call, 0) + 1
        assert set(acked) <= set(per_call), "an acknowledged call is missing"
        assert set(per_call.values()) == {50}   # each call all or nothing, in whichever group it was
        assert store.last_seq() == 50 * len(per_call)
    finally:
        store.close()
