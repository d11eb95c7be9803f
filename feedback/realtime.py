"""Serving's view of the feedback store: a user's history made current, and the exposure filter.

Every recall and rank worker holds one ``Realtime`` (its reader of the store) and, per snapshot, the
``SnapshotKeys``: every item's stable hash (the exposure filter's key) and every user's latest interaction
time the snapshot holds. Per request: one LMDB read of the user's state, then

* ``history_codes``: the snapshot's last-N history codes followed by the real-time positive items the
  snapshot does not hold yet (newer than its ``user_last_ts``), the newest N kept; a click is visible to the
  next request of any worker as soon as the Feedback call returned (LMDB readers see every committed write);
* ``exposed``: which candidates were impressed within the window (Bloom filter), to drop before quotas.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from common.snapshot import Snapshot
from feedback.config import FeedbackConfig
from feedback.store import FeedbackStore
from kernels.bloom import bloom_contains
from feedback.user_state import UserState
from kernels.string_hash import hash_strings


@dataclass
class SnapshotKeys:
    """What the real-time view needs of one snapshot, computed once at load."""

    item_hash: np.ndarray      # uint64 per dense item id: hash of its external id
    user_last_ts: np.ndarray   # int64 per dense user id (-1: none; all -1 for snapshots written before it)

    @classmethod
    def of(cls, snapshot: Snapshot) -> "SnapshotKeys":
        try:
            last = snapshot.features.array("user_last_ts").astype(np.int64)
        except KeyError:  # a snapshot exported before feedback: it holds no logged events
            last = np.full(len(snapshot.features.array("user_ids")), -1, np.int64)
        return cls(hash_strings(snapshot.item_ids), last)


@dataclass
class UserView:
    """One request's real-time state of one user (``state`` None: no feedback stored for the user)."""

    state: UserState | None
    recent_dense: np.ndarray   # int32 dense ids of positive items the snapshot does not hold, oldest first
    now: float


class Realtime:
    """A worker's reader of the feedback store (``config.path`` empty: feedback off, every view empty)."""

    def __init__(self, config: FeedbackConfig):
        self.config = config
        self.store = FeedbackStore.open(config) if config.path else None
        if self.store is not None:  # load (or compile) the exposure test now, not in the first request that
            # needs it: that took ~30 ms from Numba's cache (0.7 s cold) and degraded that request
            bloom_contains(np.zeros(8, np.uint8), np.zeros(1, np.uint64), 1)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def view(self, snapshot: Snapshot, keys: SnapshotKeys, user_id: str, user_dense: int | None) -> UserView:
        """Read ``user_id``'s state; ``user_dense``: the snapshot's dense id of the user, None when unknown."""
        now = time.time()
        state = self.store.user_state(user_id) if self.store is not None else None
        if state is None or not state.hist_items:
            return UserView(state, np.empty(0, np.int32), now)
        after = float(keys.user_last_ts[user_dense]) if user_dense is not None else -np.inf
        return UserView(state, snapshot.item_dense(state.recent_items(after)), now)

    def exposed(self, view: UserView, keys: SnapshotKeys, dense_ids: np.ndarray) -> np.ndarray:
        """The subset of ``dense_ids`` (int32) impressed to the user within the exposure window."""
        if view.state is None or dense_ids.size == 0:
            return np.empty(0, np.int32)
        hit = view.state.exposed(keys.item_hash[dense_ids], view.now, self.config.exposure_window_s)
        return dense_ids[hit].astype(np.int32)


def history_codes(base_codes: np.ndarray, view: UserView, history_len: int) -> np.ndarray:
    """The snapshot's history codes (dense id + 1, oldest first) followed by the real-time items, the
    newest ``history_len`` kept (int32)."""
    codes = np.concatenate([np.asarray(base_codes, np.int32), view.recent_dense.astype(np.int32) + 1])
    return codes[-history_len:] if history_len > 0 else codes[:0]
