"""Recall under a request's attribute filter: the eligible set, computed once per distinct filter and cached,
and how a channel's answer is kept full when most items are ineligible.

Every channel returns only eligible items (``restrict``); a list channel is asked for ``fetch_size`` items so
that, after the ineligible ones go, its quota is still met (its cost is bounded by its own candidate pool).
The ANN channel does not over-fetch from HNSW under a selective filter (a 0.1% filter would need 1,000× the
results, and hnswlib's per-node Python ``filter=`` callback costs a Python call per visited node): at or below
``RecallConfig.ann_exact_max`` eligible items it scores exactly the eligible items' vectors (one matrix-vector
product over a cached contiguous copy), above it it over-fetches from HNSW and keeps the eligible results.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from common.item_filter import ItemFilter


@dataclass
class Eligible:
    """The items a filter keeps, over the snapshot's dense ids."""

    mask: np.ndarray               # bool [n_items]
    ids: np.ndarray                # int32 eligible dense ids, ascending
    vectors: np.ndarray | None = None   # float32 [len(ids), dim] item vectors (exact ANN), filled on first use
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def count(self) -> int:
        return int(self.ids.size)

    def fraction(self) -> float:
        return self.count / max(1, self.mask.size)

    def item_vectors(self, item_emb: np.ndarray) -> np.ndarray:
        """The eligible items' vectors, gathered once (later requests with the same filter reuse them)."""
        if self.vectors is None:
            with self._lock:
                if self.vectors is None:
                    self.vectors = np.ascontiguousarray(item_emb[self.ids], dtype=np.float32)
        return self.vectors


def eligible_items(item_filter: ItemFilter) -> Eligible:
    """The eligible set of a compiled filter (vectorised over every item)."""
    mask = item_filter.mask()
    return Eligible(mask, np.flatnonzero(mask).astype(np.int32))


class EligibleCache:
    """Least-recently-used eligible sets by filter key (the request's serialized conditions); thread-safe.

    Callers repeat the same few filters ("only Comedy"), so the mask, its ids and the exact-ANN vectors are
    computed once per snapshot and filter rather than per request.
    """

    def __init__(self, size: int):
        self.size = size
        self._entries: OrderedDict[bytes, Eligible] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes, make: Callable[[], Eligible]) -> Eligible:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        made = make()  # outside the lock: two threads may both compute a new key once, harmlessly
        if self.size > 0:
            with self._lock:
                self._entries[key] = made
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return made


def fetch_size(k: int, eligible: Eligible | None, overfetch: float, limit: int) -> int:
    """How many items to ask a channel for so about ``k`` eligible ones remain: ``k / fraction × overfetch``,
    at most ``limit`` (and at least ``k``)."""
    if eligible is None or k <= 0:
        return k
    fraction = eligible.fraction()
    if fraction <= 0.0:
        return 0
    return max(k, min(limit, math.ceil(k / fraction * overfetch)))


def restrict(ids: np.ndarray, scores: np.ndarray, eligible: Eligible | None) -> tuple[np.ndarray, np.ndarray]:
    """A channel's answer without its ineligible items (order kept)."""
    if eligible is None or ids.size == 0:
        return ids, scores
    keep = eligible.mask[ids]
    return ids[keep], scores[keep]


def exact_top(vectors: np.ndarray, ids: np.ndarray, user: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` of ``ids`` by inner product of their ``vectors`` with ``user``, best first (ties: lower id)."""
    if k <= 0 or ids.size == 0:
        return np.empty(0, np.int32), np.empty(0, np.float32)
    scores = vectors @ user.astype(np.float32)
    k = min(k, ids.size)
    top = np.argpartition(-scores, k - 1)[:k] if k < ids.size else np.arange(ids.size)
    order = top[np.lexsort((ids[top], -scores[top]))]
    return ids[order].astype(np.int32), scores[order].astype(np.float32)
