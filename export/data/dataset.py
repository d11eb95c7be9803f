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


class Interactions:
    """Columnar interaction log; all columns have the same length.

    A subset (the split's parts, the training cut, a user sample) is a *view*: the index array of its rows
    in the log it was cut from, with each column gathered from that log the first time it is read, once.
    The split and the cuts then cost an index array each (4 bytes a row) instead of copies of all four
    columns (20 bytes a row), and a column a consumer never reads (often ``rating``) is never copied.
    """

    __slots__ = ("_base", "_index", "_columns")
    COLUMNS = ("user", "item", "rating", "timestamp")

    def __init__(self, user: np.ndarray, item: np.ndarray, rating: np.ndarray, timestamp: np.ndarray):
        self._base: Interactions | None = None
        self._index: np.ndarray | None = None
        self._columns = {"user": user,            # int32 dense user id
                         "item": item,            # int32 dense item id
                         "rating": rating,        # float32 (1.0 when the source has no explicit label)
                         "timestamp": timestamp}  # int64 seconds since epoch

    @classmethod
    def _view(cls, base: "Interactions", index: np.ndarray) -> "Interactions":
        view = cls.__new__(cls)
        view._base, view._index, view._columns = base, index, {}
        return view

    def _column(self, name: str) -> np.ndarray:
        col = self._columns.get(name)
        if col is None:
            col = self._columns[name] = self._base._column(name)[self._index]
        return col

    user = property(lambda self: self._column("user"))
    item = property(lambda self: self._column("item"))
    rating = property(lambda self: self._column("rating"))
    timestamp = property(lambda self: self._column("timestamp"))

    def __len__(self) -> int:
        return int(self._index.shape[0] if self._base is not None else self._columns["user"].shape[0])

    def subset(self, mask_or_index: np.ndarray) -> "Interactions":
        """Rows selected by a boolean mask or an index array, as a view (see the class docstring)."""
        sel = np.asarray(mask_or_index)
        index = np.flatnonzero(sel) if sel.dtype == bool else sel.astype(np.int64, copy=False)
        if self._base is not None:   # a view of a view indexes the original log directly
            base, index = self._base, self._index[index]
        else:
            base = self
        # int32 indices while the log allows: half the memory of int64
        return Interactions._view(base, index.astype(np.int32, copy=False) if len(base) < 2**31 else index)

    def __reduce__(self):
        # a pickled view is a plain log of its own rows, not the whole log it indexes
        return Interactions, tuple(self._column(name) for name in self.COLUMNS)

    def __repr__(self) -> str:
        return f"Interactions({len(self)} rows{', view' if self._base is not None else ''})"


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
    # float32 [n_items, D] dense content vector per item (a text or image embedding; the synthetic generator's
    # stands in for one), an input of the item tower and the content channel's space. None: the data has none
    # (ML-100K, atomic files), and the towers use the categorical fields and the bag only
    item_content: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_ids.shape[0])
