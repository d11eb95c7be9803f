"""Closing the loop offline: fold the feedback store's logged events into the dataset before the split.

Positive events (CLICK, LIKE, RATING) of items the dataset knows become interactions: a RATING keeps its
value, a LIKE and a CLICK get ``like_rating`` and ``click_rating`` (so the ranker's tasks read a click as an
interaction that is not a like). Impressions are not interactions. A user the dataset does not know (a
new real-time user) is added with unknown profile codes. An event repeating a (user, item) pair already in
the dataset, or earlier in the log, is skipped: the ML-100K convention is one interaction per pair, and a
retried or re-logged click must not count twice. Events of unknown items are counted and skipped.

The published snapshot stores each user's latest interaction time it holds (features array
``user_last_ts``), and the serving side ignores real-time history entries not newer than that, so an event
folded into the snapshot is never counted twice after the swap (whichever split part it fell into).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from export.data.dataset import Dataset, Interactions
from feedback.config import FeedbackConfig
from feedback.events import EventType
from feedback.store import FeedbackStore


@dataclass
class FoldConfig:
    """``[feedback]`` of the export config."""

    path: str = ""               # the feedback store (feedback.path of the cluster); "" folds nothing
    click_rating: float = 3.0    # rating given to a CLICK (ML-100K: an interaction, not a like)
    like_rating: float = 5.0


def fold_events(ds: Dataset, config: FoldConfig) -> tuple[Dataset, dict]:
    """``ds`` with the store's positive events appended as interactions, and a report for the manifest."""
    store = FeedbackStore.open(FeedbackConfig(path=config.path))
    try:
        upto = store.last_seq()
        users, items, ratings, stamps = [], [], [], []
        report = {"path": config.path, "upto_seq": upto, "events": 0, "folded": 0, "impressions": 0,
                  "unknown_items": 0, "repeats": 0, "new_users": 0}
        item_index = {x: i for i, x in enumerate(ds.item_ids.tolist())}
        user_index = {x: i for i, x in enumerate(ds.user_ids.tolist())}
        new_users: list[str] = []
        inter = ds.interactions
        pairs = set(zip(inter.user.tolist(), inter.item.tolist()))
        value = {EventType.CLICK: config.click_rating, EventType.LIKE: config.like_rating}
        for _, event in store.events(upto_seq=upto):
            report["events"] += 1
            if event.type == EventType.IMPRESSION:
                report["impressions"] += 1
                continue
            item = item_index.get(event.item_id)
            if item is None:
                report["unknown_items"] += 1
                continue
            user = user_index.get(event.user_id)
            if user is None:
                user = user_index[event.user_id] = len(user_index)
                new_users.append(event.user_id)
            if (user, item) in pairs:
                report["repeats"] += 1
                continue
            pairs.add((user, item))
            users.append(user)
            items.append(item)
            ratings.append(event.value if event.type == EventType.RATING else value[EventType(event.type)])
            stamps.append(int(event.timestamp))
    finally:
        store.close()
    report["folded"], report["new_users"] = len(users), len(new_users)
    if not users:
        return ds, report
    u = np.concatenate([inter.user, np.asarray(users, np.int32)])
    i = np.concatenate([inter.item, np.asarray(items, np.int32)])
    ts = np.concatenate([inter.timestamp, np.asarray(stamps, np.int64)])
    order = np.lexsort((i, u, ts))  # the loaders' order: timestamp, then user, then item
    interactions = Interactions(u[order], i[order],
                                np.concatenate([inter.rating, np.asarray(ratings, np.float32)])[order], ts[order])
    extra = len(new_users)
    return dataclasses.replace(
        ds, interactions=interactions,
        user_ids=np.concatenate([ds.user_ids.astype(str), np.asarray(new_users, str)]),
        user_cat=np.concatenate([ds.user_cat, np.zeros((extra, ds.user_cat.shape[1]), ds.user_cat.dtype)]),
    ), report


def user_last_ts(known: Interactions, n_users: int) -> np.ndarray:
    """int64 per user: the latest interaction time in ``known`` (-1 when none)."""
    out = np.full(n_users, -1, np.int64)
    np.maximum.at(out, known.user, known.timestamp)
    return out
