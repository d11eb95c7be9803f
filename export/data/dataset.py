"""The in-memory dataset every offline step works on.

Conventions used across the project:

* Dense ids are 0-based int32 indices into ``user_ids`` / ``item_ids``.
* Model inputs use *codes* where 0 means unknown or padding: an id's code is
  ``dense_id + 1``; a categorical feature's code is its vocabulary index + 1.
* Interactions are sorted by timestamp (stable), then by user.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Interactions:
    """Columnar interaction log; all arrays have the same length."""

    user: np.ndarray       # int32 dense user id
    item: np.ndarray       # int32 dense item id
    rating: np.ndarray     # float32 (1.0 when the source has no explicit label)
    timestamp: np.ndarray  # int64 seconds since epoch

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def subset(self, mask_or_index: np.ndarray) -> "Interactions":
        """Rows selected by a boolean mask or an index array."""
        return Interactions(
            user=self.user[mask_or_index],
            item=self.item[mask_or_index],
            rating=self.rating[mask_or_index],
            timestamp=self.timestamp[mask_or_index],
        )


@dataclass
class Dataset:
    """Users, items, their categorical features and the interaction log."""

    name: str
    user_ids: np.ndarray            # str array, external user ids, index = dense id
    item_ids: np.ndarray            # str array, external item ids, index = dense id
    interactions: Interactions
    user_cat: np.ndarray            # int32 [n_users, n_user_fields] codes (0 = unknown)
    user_cat_names: list[str]
    user_cat_vocab: list[int]       # per field: number of codes including 0
    item_cat: np.ndarray            # int32 [n_items, n_item_fields] codes (0 = unknown)
    item_cat_names: list[str]
    item_cat_vocab: list[int]
    item_bag: np.ndarray            # uint8 [n_items, n_bag] multi-hot (e.g. genres)
    item_bag_names: list[str]
    item_titles: np.ndarray         # str array, display titles ("" when unknown)
    user_cat_values: list[list[str]] = field(default_factory=list)  # per field: raw value of code c at [c-1]
    item_cat_values: list[list[str]] = field(default_factory=list)

    @property
    def n_users(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_ids.shape[0])
