"""Per-item attributes the rerank rules read, built once per snapshot (never per request)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.snapshot import Snapshot


def primary_category(item_bag: np.ndarray) -> np.ndarray:
    """An item's category = its first genre: the lowest set index of its multi-hot bag; -1 without any."""
    bag = np.asarray(item_bag) != 0
    return np.where(bag.any(axis=1), bag.argmax(axis=1), -1).astype(np.int32)


def title_groups(titles: np.ndarray) -> np.ndarray:
    """Dense group id per item, equal for equal titles; -1 for an empty title (never deduplicated)."""
    titles = np.asarray(titles).astype(str)
    _, group = np.unique(titles, return_inverse=True)
    return np.where(titles == "", -1, group.reshape(-1)).astype(np.int32)


@dataclass(frozen=True)
class ItemAttributes:
    """Arrays over the snapshot's dense item ids."""

    category: np.ndarray  # int32 primary genre, -1 = none
    group: np.ndarray     # int32 title group, -1 = none
    blocked: np.ndarray   # bool, the configured blocklist
    bag: np.ndarray       # uint8 [n_items, n_genres] multi-hot genres (offline metrics)

    @property
    def n_categories(self) -> int:
        return int(self.bag.shape[1])


def load_item_attributes(snapshot: Snapshot, blocked_item_ids: list[str] = ()) -> ItemAttributes:
    """Category, title group and blocklist of every item of ``snapshot``.

    Unknown blocked ids are ignored (the blocklist may name items of other versions).
    """
    bag = snapshot.features.array("item_bag")
    titles = snapshot.features.array("item_titles")
    blocked = np.zeros(bag.shape[0], np.bool_)
    if blocked_item_ids:
        blocked[snapshot.item_dense(list(blocked_item_ids))] = True
    return ItemAttributes(primary_category(bag), title_groups(titles), blocked, bag)
