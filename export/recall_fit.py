"""Recall merge weights and quotas fitted on the validation part, per snapshot (issue 11: weights were
hand-set on the test rows; issue 16: quotas tuned on ML-100K made the 10^6 merged list worse than its best
channel).

The target is the one the report checks: the merged list at least as good as the best single channel at
every cut-off ``ks`` (50, 200, 1,000). So the objective of a (weights, quotas) point is, over ``ks``, the ratio
``merged recall@K / best channel's recall@K`` (each channel alone filling the list, as
``export.evaluate.evaluate_recall`` measures it), compared as ``(min over K, mean over K)``: the worst cut-off
first, then the average.

Search: coordinate ascent from the configured values. For each channel in turn its weight is multiplied by
each of :data:`WEIGHT_STEPS`, then its quota set to each of half, double (at most ``n``) and 0 (off; an off
channel tries :data:`QUOTA_RESTART`); a change is kept when it raises the objective; at most ``rounds``
passes, stopping after one that changed nothing.

Each validation user's channel lists are computed once, through the channel modules of the serving code at
quota ``n`` (a channel's top-q is a prefix of its top-n), and every point is scored by the serving merge
kernel (``kernels.merge.merge_quota``) over those lists, so a point costs a few milliseconds. The chosen point
is then re-scored through ``recall_server.recall.recall`` itself (``validation``). Validation users are a
seeded sample; the recall artifacts are the validation cut's (built from the training part only). The curve
of accepted steps goes to the manifest (``recall_merge``).
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
from kernels.merge import merge_quota
from recall_server.channels import channel_module
from recall_server.config import RecallConfig
from recall_server.recall import build_query, recall
from recall_server.state import load_state

WEIGHT_STEPS = (0.5, 0.7, 1.4, 2.0)
QUOTA_RESTART = 50


@dataclasses.dataclass
class ChannelLists:
    """Every sampled user's channel lists at quota ``n``: flat arrays as ``merge_quota`` takes them."""

    ids: list[np.ndarray]        # per user: int32 concatenated channel lists
    scores: list[np.ndarray]     # per user: float32
    channel: list[np.ndarray]    # per user: int32 channel index of each entry
    offsets: list[np.ndarray]    # per user: int64 [C + 1]
    exclude: list[np.ndarray]    # per user: int32 sorted excluded ids


def channel_lists(state, config: RecallConfig, user_ids: list[str], n: int) -> ChannelLists:
    """Run each configured channel once per user at quota ``n`` (the serving channel modules)."""
    out = ChannelLists([], [], [], [], [])
    for user_id in user_ids:   # offline: the channel functions are per request
        query, _ = build_query(state, config, user_id, None, [])
        ids, scores, chan, offsets = [], [], [], [0]
        for c, name in enumerate(config.channels):
            got_ids, got_scores = channel_module(name).recall(state, query, n)
            ids.append(got_ids.astype(np.int32))
            scores.append(got_scores.astype(np.float32))
            chan.append(np.full(got_ids.size, c, np.int32))
            offsets.append(offsets[-1] + got_ids.size)
        out.ids.append(np.concatenate(ids))
        out.scores.append(np.concatenate(scores))
        out.channel.append(np.concatenate(chan))
        out.offsets.append(np.asarray(offsets, np.int64))
        out.exclude.append(query.exclude)
    return out


def merged_predictions(lists: ChannelLists, channels: list[str], quotas: dict[str, int],
                       weights: dict[str, float], n: int, config: RecallConfig) -> np.ndarray:
    """The merged top-``n`` of every user [users, n] (-1 padded) at these quotas and weights."""
    q = np.asarray([quotas.get(c, 0) for c in channels], np.int32)
    w = np.asarray([weights.get(c, 1.0) for c in channels], np.float32)
    pred = np.full((len(lists.ids), n), -1, np.int64)
    for row in range(len(lists.ids)):
        got, _, _ = merge_quota(lists.ids[row], lists.scores[row], lists.channel[row], lists.offsets[row], q,
                                lists.exclude[row], n, w, config.fusion, config.rrf_k)
        pred[row, :got.size] = got
    return pred


def fit_merge(snapshot_dir: Path, ds: Dataset, labels: Interactions, n: int, ks: list[int] = (50, 200, 1000),
              max_users: int = 400, rounds: int = 4, seed: int = 0) -> dict:
    """``{"weights", "quotas", "objective", "start", "validation", "channels", "curve", "users", "seconds"}``;
    see the module docstring. ``ks`` above ``n`` are dropped."""
    t0 = time.perf_counter()
    ks = sorted({int(k) for k in ks if 0 < k <= n}) or [n]
    snapshot = Snapshot.open(snapshot_dir, verify=False)
    try:
        base = RecallConfig(snapshot=str(snapshot_dir), use_fitted=False)
        state = load_state(snapshot, base)
        indptr, items, users, _ = truth_users(labels, ds.n_users, max_users, seed)
        sub_indptr, sub_items = truth_subset(indptr, items, users)
        ids = [str(ds.user_ids[u]) for u in users.tolist()]
        channels = list(base.channels)
        lists = channel_lists(state, base, ids, n)

        def recalls(pred: np.ndarray) -> dict[int, float]:
            return {k: recall_at_k(pred, sub_indptr, sub_items, k) for k in ks}

        alone = {c: recalls(merged_predictions(lists, channels, {c: n}, {c: 1.0}, n, base)) for c in channels}
        best = {k: max(alone[c][k] for c in channels) for k in ks}

        def score(quotas: dict[str, int], weights: dict[str, float]) -> tuple[tuple[float, float], dict]:
            r = recalls(merged_predictions(lists, channels, quotas, weights, n, base))
            ratio = [r[k] / best[k] if best[k] > 0 else 1.0 for k in ks]
            return (round(min(ratio), 4), round(float(np.mean(ratio)), 4)), r

        def row(quotas, weights, value, r) -> dict:
            return {"weights": {c: round(weights.get(c, 1.0), 6) for c in channels},
                    "quotas": {c: int(quotas.get(c, 0)) for c in channels},
                    "min_ratio": value[0], "mean_ratio": value[1],
                    **{f"recall@{k}": round(r[k], 4) for k in ks}}

        weights = {c: float(base.weights.get(c, 1.0)) for c in channels}
        quotas = {c: int(base.quotas.get(c, 0)) for c in channels}
        value, r = score(quotas, weights)
        start = row(quotas, weights, value, r)
        curve = [start]
        for _ in range(rounds):
            accepted = len(curve)
            for name in channels:
                trials = [({**weights, name: weights[name] * s}, quotas) for s in WEIGHT_STEPS]
                q = quotas[name]
                steps = {0, q // 2, min(2 * q, n)} if q else {QUOTA_RESTART}
                trials += [(weights, {**quotas, name: int(s)}) for s in sorted(steps - {q})]
                for trial_w, trial_q in trials:
                    if trial_q is quotas and trial_w is weights:
                        continue
                    if sum(trial_q.values()) < n and sum(quotas.values()) >= n:
                        continue   # the merged list must still be able to fill n
                    got, r = score(trial_q, trial_w)
                    if got > value:
                        weights, quotas, value = trial_w, trial_q, got
                        curve.append(row(quotas, weights, value, r))
            if len(curve) == accepted:
                break   # a whole pass changed nothing: a later one would not either
        cfg = dataclasses.replace(base, weights=weights, quotas=quotas)
        state.weights, state.quotas = weights, quotas
        pred = np.full((len(ids), n), -1, np.int64)
        for i, user_id in enumerate(ids):   # the chosen point once more, through the serving function
            got = recall(state, cfg, user_id, n).ids
            pred[i, :got.size] = got
        served = recalls(pred)
    finally:
        snapshot.close()
    return {"weights": {c: round(w, 6) for c, w in weights.items()}, "quotas": {c: int(v) for c, v in quotas.items()},
            "objective": f"(min, mean) over K in {ks} of merged recall@K / best single channel's recall@K",
            "start": curve[0], "chosen": curve[-1],
            "validation": {f"recall@{k}": round(served[k], 4) for k in ks},
            "channels": {c: {f"recall@{k}": round(alone[c][k], 4) for k in ks} for c in channels},
            "curve": curve, "users": len(ids), "seconds": round(time.perf_counter() - t0, 2)}
