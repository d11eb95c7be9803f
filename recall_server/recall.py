"""The recall stage as a plain function: resolve the user, run the channels, merge with quotas."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels.i2i_score import recency_weights
from kernels.merge import merge_quota
from recall_server.channels import RecallQuery, channel_module
from recall_server.config import RecallConfig
from recall_server.state import RecallState


@dataclass
class RecallResult:
    """Merged candidates, best first, with the channels that produced each."""

    ids: np.ndarray            # int32 dense ids
    scores: np.ndarray         # float32 merged scores
    channel_masks: np.ndarray  # uint32, bit c = channel_names[c]
    channel_names: list[str]
    cold_start: bool


def build_query(state: RecallState, config: RecallConfig, user_id: str,
                history_override: list[str] | None, exclude_ids: list[str]) -> tuple[RecallQuery, bool]:
    """Resolve a request against the snapshot; returns the query and whether the user is unknown."""
    snapshot = state.snapshot
    record = snapshot.features.user(user_id)
    if history_override is not None:
        hist = snapshot.item_dense(history_override) + 1
    elif record is not None:
        hist = record.hist
    else:
        hist = np.empty(0, np.int32)
    hist = hist[-state.history_len:].astype(np.int32)
    exclude = [snapshot.item_dense(exclude_ids)] if exclude_ids else []
    if state.blocklist.size:
        exclude.append(state.blocklist)
    if record is not None:
        exclude.append(record.seen)
    excluded = np.unique(np.concatenate(exclude)).astype(np.int32) if exclude else np.empty(0, np.int32)
    query = RecallQuery(
        user_code=record.dense_id + 1 if record is not None else 0,
        user_cat=record.cat if record is not None else np.zeros(state.n_user_fields, np.int32),
        hist=hist,
        hist_weights=recency_weights(hist.size, config.recency_decay),
        exclude=excluded,
    )
    return query, record is None


def recall(state: RecallState, config: RecallConfig, user_id: str, n: int,
           history_override: list[str] | None = None, exclude_ids: list[str] = (),
           quotas: dict[str, int] | None = None) -> RecallResult:
    """Run every configured channel for ``user_id`` and merge up to ``n`` candidates."""
    query, cold = build_query(state, config, user_id, history_override, list(exclude_ids))
    quota = {**(state.quotas or config.quotas), **(quotas or {})}
    names = list(config.channels)
    ids, scores, channel, offsets = [], [], [], [0]
    for c, name in enumerate(names):
        got_ids, got_scores = channel_module(name).recall(state, query, quota.get(name, 0))
        ids.append(got_ids)
        scores.append(got_scores)
        channel.append(np.full(got_ids.size, c, np.int32))
        offsets.append(offsets[-1] + got_ids.size)
    merged_ids, merged_scores, masks = merge_quota(
        np.concatenate(ids).astype(np.int32), np.concatenate(scores).astype(np.float32),
        np.concatenate(channel), np.asarray(offsets, np.int64),
        np.asarray([quota.get(name, 0) for name in names], np.int32), query.exclude, n,
        np.asarray([(state.weights or config.weights).get(name, 1.0) for name in names], np.float32), config.fusion,
        config.rrf_k)
    return RecallResult(merged_ids, merged_scores, masks, names, cold)
