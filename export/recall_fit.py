"""Recall merge weights fitted on the validation part, per snapshot (issue 11: they were hand-set on the
test rows).

Coordinate ascent over the channels' reciprocal-rank-fusion weights (``RecallConfig.weights``): starting
from the configured weights, each channel's weight is multiplied by each of :data:`STEPS` in turn and a
change is kept when it raises the validation objective, recall@``k`` of the merged list (default 200: what
the ranker can reach after the pre-rank cut); ``rounds`` passes over the channels. Recall runs through the
serving function against the validation cut's artifacts (built from the training part only), for a seeded
sample of validation users. The curve of accepted steps goes to the manifest (``recall_merge``).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from common.snapshot import Snapshot
from export.dataset import Dataset, Interactions
from export.evaluate import truth_subset, truth_users
from export.metrics import recall_at_k
from recall_server.config import RecallConfig
from recall_server.recall import recall
from recall_server.state import load_state

STEPS = (0.5, 2.0)


def fit_merge_weights(snapshot_dir: Path, ds: Dataset, labels: Interactions, n: int, k: int = 200,
                      max_users: int = 400, rounds: int = 1, seed: int = 0) -> dict:
    """``{"weights", "objective", "start", "curve", "users", "seconds"}``; see the module docstring."""
    t0 = time.perf_counter()
    snapshot = Snapshot.open(snapshot_dir, verify=False)
    try:
        base = RecallConfig(snapshot=str(snapshot_dir), use_fitted=False)
        state = load_state(snapshot, base)
        indptr, items, users, _ = truth_users(labels, ds.n_users, max_users, seed)
        sub_indptr, sub_items = truth_subset(indptr, items, users)
        ids = [str(ds.user_ids[u]) for u in users.tolist()]

        def score(weights: dict[str, float]) -> float:
            cfg = dataclasses.replace(base, weights=weights)
            state.weights = weights
            pred = np.full((len(ids), k), -1, np.int64)
            for row, user_id in enumerate(ids):   # offline: the serving function is per request
                got = recall(state, cfg, user_id, n).ids[:k]
                pred[row, :got.size] = got
            return recall_at_k(pred, sub_indptr, sub_items, k)

        weights = dict(base.weights)
        best = score(weights)
        start = best
        curve = [{"weights": dict(weights), f"recall@{k}": round(best, 4)}]
        for _ in range(rounds):
            for name in base.channels:
                for step in STEPS:
                    trial = {**weights, name: weights.get(name, 1.0) * step}
                    value = score(trial)
                    if value > best + 1e-6:
                        weights, best = trial, value
                        curve.append({"weights": dict(weights), f"recall@{k}": round(best, 4)})
    finally:
        snapshot.close()
    return {"weights": {name: round(w, 6) for name, w in weights.items()}, "objective": f"recall@{k}",
            "start": round(start, 4), "validation": round(best, 4), "curve": curve, "users": len(ids),
            "seconds": round(time.perf_counter() - t0, 2)}
