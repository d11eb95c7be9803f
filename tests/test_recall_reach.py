"""Issue 28: the share of the catalogue each recall channel (and their union) can return, and recall on the
held-out items nobody interacted with before, as export.evaluation.recall reports them in the manifest."""
from __future__ import annotations

import numpy as np

from export.data.dataset import Interactions
from export.evaluation.recall import channel_items, evaluate_recall, reachable
from recall_server.config import RecallConfig
from recall_server.state import load_state


class _Ds:
    """The two fields evaluate_recall reads of a dataset."""

    def __init__(self, user_ids: np.ndarray) -> None:
        self.user_ids = user_ids
        self.n_users = int(user_ids.size)


def test_reach_and_cold_recall_rows(snapshot):
    config = RecallConfig(snapshot=str(snapshot.path))
    state = load_state(snapshot, config)
    reach = reachable(state, list(config.channels))
    assert reach["items"] == state.n_items and 0 < reach["union"] <= 1
    assert reach["ann"] == round(state.ann_items / state.n_items, 4)
    for name in config.channels:
        ids = channel_items(state, name)
        assert ids is not None and (ids.size == 0 or 0 <= ids.min() <= ids.max() < state.n_items)
        assert reach[name] <= reach["union"]
    # held-out rows: two users, one item the snapshot never saw an interaction of and one it did
    counts = snapshot.load_npz("item_stats.npz")["count"]
    cold, warm = int(np.flatnonzero(counts == 0)[0]), int(np.flatnonzero(counts > 0)[0])
    user_ids = snapshot.features.array("user_ids")
    test = Interactions(user=np.array([0, 1, 1], np.int32), item=np.array([cold, cold, warm], np.int32),
                        rating=np.ones(3, np.float32), timestamp=np.array([1, 2, 3], np.int64))
    out = evaluate_recall(snapshot, _Ds(user_ids), test, [50, 200], config)
    assert out["users"] == 2 and out["cold_truth"] == {"items": 2, "users": 2}
    for name in [*config.channels, "merged"]:
        assert 0.0 <= out[name]["cold_recall@200"] <= 1.0 and out[name]["cold_recall@50"] <= out[name]["cold_recall@200"]
