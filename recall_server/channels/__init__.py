"""Recall channels: one module per channel, named as in ``RecallConfig.channels``.

A channel module defines

* ``recall(state, query, k) -> (dense ids int32, scores float32)``, best first; it may return excluded
  items (the merge filters them once for all channels) and items outside the request's filter
  (``query.eligible``: recall asks it for more and drops them, ``recall_server.filtering``) unless it sets
  ``APPLIES_FILTER = True`` and returns only eligible items itself (the ANN channel);
* optionally ``load(snapshot, config) -> data``: its own snapshot files, read and validated once per
  snapshot version (a bad file raises ``SnapshotError`` naming it); ``recall`` finds the result in
  ``state.tables[<name>]``.

Adding a channel is one file here plus its name and quota in the recall config.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RecallQuery:
    """One user's request, resolved against the snapshot."""

    user_code: int                # dense id + 1; 0 for an unknown user
    user_cat: np.ndarray          # int32 [n_user_fields] profile codes (zeros when unknown)
    hist: np.ndarray              # int32 item codes, oldest first, at most history_len
    hist_weights: np.ndarray      # float32 recency weights aligned with hist (latest = 1)
    exclude: np.ndarray           # int32 dense ids never to return (seen + request + blocklist), sorted
    eligible: Any = None          # recall_server.filtering.Eligible of the request's filter; None: every item


@functools.cache
def known_channels() -> tuple[str, ...]:
    """Names of the channel modules in this package (modules starting with ``_`` are helpers)."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


@functools.cache
def channel_module(name: str) -> ModuleType:
    """The module of channel ``name``; ValueError naming the known ones when there is none.

    Cached: the request path resolves every channel on every call.
    """
    known = known_channels()
    if name not in known:
        raise ValueError(f"unknown channel '{name}'; known: {', '.join(known)}")
    module = importlib.import_module(f"{__name__}.{name}")
    if not callable(getattr(module, "recall", None)):
        raise ValueError(f"channel module {module.__name__} defines no recall(state, query, k)")
    return module


def empty() -> tuple[np.ndarray, np.ndarray]:
    """A channel's answer when it has nothing to say."""
    return np.empty(0, np.int32), np.empty(0, np.float32)


def ranked(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``ids`` (already best first) with scores falling linearly from 1: for list-only channels (the merge
    reads ranks only). ``1 - i/n`` directly: ``np.linspace``'s Python checks cost more than the arithmetic."""
    n = ids.size
    return ids, (1.0 - np.arange(n, dtype=np.float64) / max(n, 1)).astype(np.float32)
