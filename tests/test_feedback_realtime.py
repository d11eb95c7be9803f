"""Serving's real-time view against the exported test snapshot: history made current, exposures dropped."""
from __future__ import annotations

import time

import numpy as np

from feedback.config import FeedbackConfig
from feedback.events import Event, EventType
from feedback.ingest import ingest
from feedback.realtime import Realtime, SnapshotKeys, history_codes
from kernels.string_hash import hash_strings


def test_realtime_history_and_exposures(snapshot, tmp_path):
    keys = SnapshotKeys.of(snapshot)
    assert keys.item_hash.shape[0] == snapshot.item_ids.shape[0]
    np.testing.assert_array_equal(keys.item_hash[:5], hash_strings(snapshot.item_ids[:5]))
    rt = Realtime(FeedbackConfig(path=str(tmp_path / "fb"), map_size_mb=64, history_len=5))
    user = snapshot.features.array("user_ids")[0]
    record = snapshot.features.user(user)
    last = int(keys.user_last_ts[record.dense_id])
    items = snapshot.item_ids
    known = set(items.tolist()).__contains__
    old, new1, new2, shown = items[10], items[11], items[12], items[13]
    ingest(rt.store, [Event(user, old, EventType.CLICK, timestamp=max(last, 1)),   # the snapshot holds it
                      Event(user, new1, EventType.CLICK, timestamp=last + 10),
                      Event(user, new2, EventType.LIKE, timestamp=last + 20),
                      Event(user, shown, EventType.IMPRESSION)], known, now=time.time())
    view = rt.view(snapshot, keys, user, record.dense_id)
    assert snapshot.item_ids[view.recent_dense].tolist() == [new1, new2]
    codes = history_codes(record.hist, view, 5)
    assert codes[-2:].tolist() == [11 + 1, 12 + 1] and codes.size == min(5, record.hist.size + 2)
    cand = np.array([10, 11, 12, 13, 14, 15], np.int32)
    assert set(rt.exposed(view, keys, cand).tolist()) >= {10, 11, 12, 13}
    assert 15 not in rt.exposed(view, keys, cand).tolist() or 14 not in rt.exposed(view, keys, cand).tolist()
    stranger = rt.view(snapshot, keys, "never-seen", None)
    assert stranger.state is None and stranger.recent_dense.size == 0
    assert rt.exposed(stranger, keys, cand).size == 0
    off = Realtime(FeedbackConfig())
    assert off.view(snapshot, keys, user, record.dense_id).state is None
    rt.close()
