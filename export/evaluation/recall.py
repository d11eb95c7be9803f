"""Offline metrics on the held-out period, computed with the serving code itself.

Recall is evaluated by calling ``recall_server.recall.recall`` against the freshly built snapshot,
once per channel (the other quotas set to 0) and once merged, so the numbers describe what the
server will actually return.
"""
from __future__ import annotations

import numpy as np

from common.snapshot import Snapshot
from export.data.dataset import Dataset, Interactions
from export.evaluation.metrics import hit_rate_at_k, recall_at_k
from recall_server.config import RecallConfig
from recall_server.recall import recall
from recall_server.state import load_state


def truth_csr(test: Interactions, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out items per user as CSR (indptr over dense user ids, item ids)."""
    order = np.lexsort((test.item, test.user))
    indptr = np.zeros(n_users + 1, np.int64)
    np.add.at(indptr, test.user[order].astype(np.int64) + 1, 1)
    return np.cumsum(indptr), test.item[order].astype(np.int64)


def truth_users(truth: Interactions, n_users: int, max_users: int = 0, seed: int = 0):
    """The users a table is computed for and what it needs of them: ``(indptr, items, users, first_ts)``.

    ``indptr`` / ``items``: :func:`truth_csr`; ``users``: dense ids with held-out items (a seeded sample of
    ``max_users`` when > 0), ascending; ``first_ts`` [n_users]: each user's first held-out time, the
    request's context timestamp in every funnel evaluation (offline and through the gateway)."""
    indptr, items = truth_csr(truth, n_users)
    users = np.flatnonzero(np.diff(indptr) > 0)
    if max_users and users.size > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    first_ts = np.full(n_users, np.iinfo(np.int64).max)
    np.minimum.at(first_ts, truth.user, truth.timestamp.astype(np.int64))
    return indptr, items, users, first_ts


def truth_subset(indptr: np.ndarray, items: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The truth CSR restricted to ``users``, rows in their order."""
    sub_indptr = np.concatenate([[0], np.cumsum(np.diff(indptr)[users])]).astype(np.int64)
    sub_items = np.concatenate([items[indptr[u]:indptr[u + 1]] for u in users]) if users.size else items[:0]
    return sub_indptr, sub_items.astype(np.int64)


def evaluate_recall(snapshot: Snapshot, ds: Dataset, test: Interactions, ks: list[int],
                    config: RecallConfig | None = None) -> dict:
    """recall@K and hit-rate@K of each channel and of the merged list, over users with held-out items."""
    config = config or RecallConfig(snapshot=str(snapshot.path))
    state = load_state(snapshot, config)
    indptr, items, users, _ = truth_users(test, ds.n_users)
    sub_indptr, sub_items = truth_subset(indptr, items, users)
    kmax = max(ks)
    quotas_in_force = state.quotas or config.quotas   # the snapshot's fitted quotas (recall_merge) when set
    variants = {name: {c: 0 for c in config.channels} for name in config.channels}
    for name in variants:  # a single channel may fill the whole list on its own
        variants[name][name] = max(kmax, quotas_in_force.get(name, 0))
    variants["merged"] = dict(quotas_in_force)
    out: dict = {"users": int(users.size)}
    for name, quotas in variants.items():
        pred = np.full((users.size, kmax), -1, np.int64)
        for row, u in enumerate(users):
            result = recall(state, config, str(ds.user_ids[u]), kmax, quotas=quotas)
            pred[row, : result.ids.size] = result.ids
        out[name] = {f"recall@{k}": round(recall_at_k(pred, sub_indptr, sub_items, k), 4) for k in ks}
        out[name].update({f"hit_rate@{k}": round(hit_rate_at_k(pred, sub_indptr, sub_items, k), 4) for k in ks})
    return out
