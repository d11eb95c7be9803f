"""Export folds logged feedback into the dataset: positives become interactions, nothing counts twice."""
from __future__ import annotations

import numpy as np

from export.data.atomic import load_movielens_100k
from export.data.feedback_fold import FoldConfig, fold_events, user_last_ts
from feedback.config import FeedbackConfig
from feedback.events import Event, EventType
from feedback.store import FeedbackStore


def test_fold_events_appends_positives_and_new_users(tmp_path):
    ds = load_movielens_100k()
    store = FeedbackStore.open(FeedbackConfig(path=str(tmp_path / "fb"), map_size_mb=64))
    u0, i0 = ds.user_ids[0], ds.item_ids[0]
    already = ds.item_ids[ds.interactions.item[ds.interactions.user == 0][0]]
    fresh = next(x for x in ds.item_ids[::-1] if x != i0)
    store.append([
        Event(u0, fresh, EventType.CLICK, timestamp=2e9), Event(u0, fresh, EventType.CLICK, timestamp=2e9 + 1),
        Event(u0, already, EventType.RATING, 5.0, 2e9),          # the pair is in the data already
        Event("brand-new-user", i0, EventType.RATING, 4.0, 2e9 + 2),
        Event("brand-new-user", "no-such-item", EventType.CLICK, timestamp=2e9 + 3),
        Event(u0, i0, EventType.IMPRESSION, timestamp=2e9)])
    store.close()
    folded, report = fold_events(ds, FoldConfig(path=str(tmp_path / "fb")))
    assert {k: report[k] for k in ("events", "folded", "impressions", "unknown_items", "repeats", "new_users")} == \
        {"events": 6, "folded": 2, "impressions": 1, "unknown_items": 1, "repeats": 2, "new_users": 1}
    assert folded.n_users == ds.n_users + 1 and folded.user_ids[-1] == "brand-new-user"
    assert folded.user_cat.shape == (ds.n_users + 1, ds.user_cat.shape[1]) and not folded.user_cat[-1].any()
    inter = folded.interactions
    assert len(inter) == len(ds.interactions) + 2
    assert np.all(np.diff(inter.timestamp) >= 0)
    new = inter.user == ds.n_users
    assert inter.rating[new].tolist() == [4.0] and inter.timestamp[new].tolist() == [2_000_000_002]
    click = (inter.user == 0) & (inter.timestamp == 2_000_000_000)
    assert ds.item_ids[inter.item[click]].tolist() == [fresh] and inter.rating[click].tolist() == [3.0]
    last = user_last_ts(inter, folded.n_users)
    assert last[0] == 2_000_000_000 and last[-1] == 2_000_000_002


def test_fold_without_events_returns_the_dataset(tmp_path):
    ds = load_movielens_100k()
    same, report = fold_events(ds, FoldConfig(path=str(tmp_path / "empty")))
    assert same is ds and report["folded"] == 0
