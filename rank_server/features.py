"""Feature assembly for the ranking models: one batch per request from the snapshot's arrays."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from common.feature_store import UserRecord
from common.rank_features import RankSchema, assemble, context_codes
from common.snapshot import Snapshot


@dataclass
class ItemFeatures:
    """Item feature matrices indexed by dense id, held in memory."""

    cat: np.ndarray   # int32 [n_items, F_item]
    bag: np.ndarray   # uint8 [n_items, G]

    @classmethod
    def load(cls, snapshot: Snapshot) -> "ItemFeatures":
        return cls(snapshot.features.array("item_cat").astype(np.int32),
                   snapshot.features.array("item_bag").astype(np.uint8))

    @property
    def n_items(self) -> int:
        return int(self.cat.shape[0])


def rank_inputs(schema: RankSchema, items: ItemFeatures, user: UserRecord | None, n_user_fields: int,
                item_idx: np.ndarray, timestamp: int) -> tuple[np.ndarray, np.ndarray]:
    """The model inputs ``(sparse, bag)`` for one user against ``item_idx`` (all known ids)."""
    hour, weekday = context_codes(int(timestamp) if timestamp > 0 else int(time.time()))
    user_code = user.dense_id + 1 if user is not None else 0
    user_cat = user.cat if user is not None else np.zeros(n_user_fields, np.int32)
    return assemble(schema, user_code, user_cat, item_idx.astype(np.int64) + 1, items.cat[item_idx],
                    items.bag[item_idx], hour, weekday)
