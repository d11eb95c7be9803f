"""Offline metrics on the held-out period, computed with the serving code itself.

Recall is evaluated by calling ``recall_server.recall.recall`` against the freshly built snapshot,
once per channel (the other quotas set to 0) and once merged, so the numbers describe what the
server will actually return.
"""
from __future__ import annotations

import numpy as np

from common.candidate_features import ITEM_STATS_FILE
from common.snapshot import ANN_IDS_FILE, Snapshot
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


def channel_items(state, name: str) -> np.ndarray | None:
    """Dense ids (unique, int64) a channel can ever return from the loaded ``state``, whatever the user: the
    ANN index's items, the popular list, the segment lists, or the neighbours in an i2i / content table. None
    for a channel whose table this function does not know (left out of the reach rows, not guessed)."""
    if name == "ann":
        path = state.snapshot.path / ANN_IDS_FILE
        return np.unique(np.load(path)) if path.is_file() else np.arange(state.n_items)
    if name == "popular":
        return np.unique(state.popular)
    table = state.tables.get(name)
    if isinstance(table, dict) and "indices" in table:        # segment_popular
        return np.unique(table["indices"])
    if isinstance(table, tuple) and len(table) in (3, 4):     # i2i CSR (indptr, indices, scores) / content (row, ...)
        return np.unique(table[len(table) - 2])
    return None


def reachable(state, channels: list[str]) -> dict:
    """Issue 28: the share of the catalogue each channel, and their union, can return (``channel_items``)."""
    n = state.n_items
    union = np.zeros(n, bool)
    out: dict = {"items": int(n)}
    for name in channels:
        ids = channel_items(state, name)
        if ids is None:
            continue
        union[ids] = True
        out[name] = round(ids.size / max(n, 1), 4)
    out["union"] = round(float(union.mean()), 4)
    return out


def evaluate_recall(snapshot: Snapshot, ds: Dataset, test: Interactions, ks: list[int],
                    config: RecallConfig | None = None) -> dict:
    """recall@K and hit-rate@K of each channel and of the merged list, over users with held-out items; each row
    also has ``cold_recall@K``: recall restricted to held-out items with no interaction in what the snapshot
    knows (``item_stats.npz`` counts 0), over the users with such items (absent when none has). ``reach``: the
    share of the catalogue each channel and the union can return (:func:`reachable`)."""
    config = config or RecallConfig(snapshot=str(snapshot.path))
    state = load_state(snapshot, config)
    indptr, items, users, _ = truth_users(test, ds.n_users)
    sub_indptr, sub_items = truth_subset(indptr, items, users)
    cold_indptr = cold_items = None
    if snapshot.has_file(ITEM_STATS_FILE):
        known_count = snapshot.load_npz(ITEM_STATS_FILE)["count"]
        cold = known_count[sub_items] == 0
        if cold.any():   # the truth CSR cut to cold items (rows keep their users; empty rows are skipped)
            cold_items = sub_items[cold]
            cold_indptr = np.concatenate([[0], np.cumsum(np.add.reduceat(cold, sub_indptr[:-1]) * (np.diff(sub_indptr) > 0))]
                                         ).astype(np.int64)
    kmax = max(ks)
    quotas_in_force = state.quotas or config.quotas   # the snapshot's fitted quotas (recall_merge) when set
    variants = {name: {c: 0 for c in config.channels} for name in config.channels}
    for name in variants:  # a single channel may fill the whole list on its own
        variants[name][name] = max(kmax, quotas_in_force.get(name, 0))
    variants["merged"] = dict(quotas_in_force)
    out: dict = {"users": int(users.size), "reach": reachable(state, list(config.channels))}
    for name, quotas in variants.items():
        pred = np.full((users.size, kmax), -1, np.int64)
        for row, u in enumerate(users):
            result = recall(state, config, str(ds.user_ids[u]), kmax, quotas=quotas)
            pred[row, : result.ids.size] = result.ids
        out[name] = {f"recall@{k}": round(recall_at_k(pred, sub_indptr, sub_items, k), 4) for k in ks}
        out[name].update({f"hit_rate@{k}": round(hit_rate_at_k(pred, sub_indptr, sub_items, k), 4) for k in ks})
        if cold_items is not None:
            out[name].update({f"cold_recall@{k}": round(recall_at_k(pred, cold_indptr, cold_items, k), 4)
                              for k in ks})
    if cold_items is not None:
        out["cold_truth"] = {"items": int(cold_items.size), "users": int(np.count_nonzero(np.diff(cold_indptr)))}
    return out
