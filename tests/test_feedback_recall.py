"""Recall and rank read the feedback store: clicks join the history at once, impressions are not recalled."""
from __future__ import annotations

import time

import numpy as np
import pytest

from feedback.config import FeedbackConfig
from feedback.events import Event, EventType
from feedback.ingest import ingest
from feedback.realtime import Realtime
from rank_server.config import RankConfig
from rank_server.rank import load_state as load_rank_state
from rank_server.rank import rank
from recall_server.config import RecallConfig
from recall_server.recall import recall
from recall_server.state import load_state


@pytest.fixture(scope="module")
def feedback_env(snapshot, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("feedback") / "store")
    fb = FeedbackConfig(path=path, map_size_mb=64)
    config = RecallConfig(feedback=fb)
    realtime = Realtime(fb)
    yield config, load_state(snapshot, config), realtime
    realtime.close()


def test_a_new_user_with_three_clicks_gets_personalised_recall(snapshot, feedback_env):
    config, state, realtime = feedback_env
    before = recall(state, config, "rt-new-user", 500, realtime=realtime)
    assert before.cold_start
    popular = set(snapshot.item_ids[state.popular[:50]].tolist())
    clicked = [x for x in snapshot.item_ids[state.popular[200:260]].tolist() if x not in popular][:3]
    result = ingest(realtime.store, [Event("rt-new-user", x, EventType.CLICK) for x in clicked],
                    set(snapshot.item_ids.tolist()).__contains__, now=time.time())
    assert result.accepted == 3
    after = recall(state, config, "rt-new-user", 500, realtime=realtime)
    assert not after.cold_start
    names = after.channel_names
    i2i = np.zeros(after.ids.size, bool)
    for name in ("itemcf", "swing", "ann"):
        i2i |= (after.channel_masks & np.uint32(1 << names.index(name))) != 0
    assert i2i.sum() >= 100  # history channels now recall for the user, not only popular and cold-start
    assert not set(snapshot.item_dense(clicked).tolist()) & set(after.ids.tolist())  # clicked: seen
    off = recall(state, config, "rt-new-user", 500)  # without the reader: the snapshot alone
    assert off.cold_start


def test_impressed_items_are_not_recalled_unless_bypassed(snapshot, feedback_env):
    config, state, realtime = feedback_env
    user = str(snapshot.features.array("user_ids")[1])
    first = recall(state, config, user, 300, realtime=realtime)
    shown = snapshot.item_ids[first.ids[:20]].tolist()
    ingest(realtime.store, [Event(user, x, EventType.IMPRESSION) for x in shown],
           set(snapshot.item_ids.tolist()).__contains__, now=time.time())
    again = recall(state, config, user, 300, realtime=realtime)
    assert not set(first.ids[:20].tolist()) & set(again.ids.tolist())
    assert again.ids.size == 300  # the list stays full
    bypass = recall(state, config, user, 300, realtime=realtime, exposure_filter=False)
    np.testing.assert_array_equal(bypass.ids, first.ids)


def test_rank_features_read_the_real_time_history(snapshot, feedback_env):
    _, recall_state, realtime = feedback_env
    config = RankConfig(feedback=realtime.config)
    state = load_rank_state(snapshot, config)
    user = "rt-rank-user"
    cand = np.arange(50, dtype=np.int32)
    cold = rank(state, config, user, cand, 0, realtime=realtime)
    liked = snapshot.item_ids[recall_state.popular[:5]].tolist()
    ingest(realtime.store, [Event(user, x, EventType.LIKE) for x in liked],
           set(snapshot.item_ids.tolist()).__contains__, now=time.time())
    warm = rank(state, config, user, cand, 0, realtime=realtime)
    assert not np.allclose(cold.fused, warm.fused)  # history features now differ from a cold user's
    np.testing.assert_allclose(rank(state, config, user, cand, 0).fused, cold.fused)  # no reader: unchanged
