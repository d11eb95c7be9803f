"""The recall stage as a plain function: resolve the user, run the channels, merge with quotas."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from common.feature_store import UserRecord
from feedback.realtime import Realtime, UserView, history_codes
from kernels.i2i_score import recency_weights
from kernels.merge import merge_quota
from recall_server.channels import RecallQuery, channel_module
from recall_server.config import RecallConfig
from recall_server.filtering import Eligible, fetch_size, restrict
from recall_server.state import RecallState


@dataclass
class RecallResult:
    """Merged candidates, best first, with the channels that produced each."""

    ids: np.ndarray            # int32 dense ids
    scores: np.ndarray         # float32 merged scores
    channel_masks: np.ndarray  # uint32, bit c = channel_names[c]
    channel_names: list[str]
    cold_start: bool
    eligible_items: int = 0    # with a filter: how many items satisfy it


def build_query(state: RecallState, config: RecallConfig, user_id: str,
                history_override: list[str] | None, exclude_ids: list[str],
                view: UserView | None = None, record: UserRecord | None | bool = False) -> tuple[RecallQuery, bool]:
    """Resolve a request against the snapshot; returns the query and whether the user is cold (unknown to
    the snapshot and without real-time history). ``view``: the user's real-time state (``user_view``);
    ``record``: the user's snapshot record when the caller already read it (False: read it here)."""
    snapshot = state.snapshot
    if record is False:
        record = snapshot.features.user(user_id)
    if history_override is not None:
        hist = snapshot.item_dense(history_override) + 1
    else:
        hist = record.hist if record is not None else np.empty(0, np.int32)
        if view is not None:  # clicks since the snapshot: the newest history, seen like the snapshot's own
            hist = history_codes(hist, view, state.history_len)
    hist = hist[-state.history_len:].astype(np.int32)
    exclude = [snapshot.item_dense(exclude_ids)] if exclude_ids else []
    if state.blocklist.size:
        exclude.append(state.blocklist)
    if record is not None:
        exclude.append(record.seen)
    if view is not None and view.recent_dense.size:
        exclude.append(view.recent_dense)
    excluded = np.unique(np.concatenate(exclude)).astype(np.int32) if exclude else np.empty(0, np.int32)
    query = RecallQuery(
        user_code=record.dense_id + 1 if record is not None else 0,
        user_cat=record.cat if record is not None else np.zeros(state.n_user_fields, np.int32),
        hist=hist,
        hist_weights=recency_weights(hist.size, config.recency_decay),
        exclude=excluded,
    )
    return query, record is None and hist.size == 0


def user_view(state: RecallState, realtime: Realtime | None, user_id: str,
              record: UserRecord | None) -> UserView | None:
    """The user's real-time state from the feedback store (``record``: the user's snapshot record, None for
    a user the snapshot does not know), or None when feedback is off."""
    if realtime is None or realtime.store is None or state.keys is None:
        return None
    return realtime.view(state.snapshot, state.keys, user_id, record.dense_id if record is not None else None)


def recall(state: RecallState, config: RecallConfig, user_id: str, n: int,
           history_override: list[str] | None = None, exclude_ids: list[str] = (),
           quotas: dict[str, int] | None = None, eligible: Eligible | None = None,
           realtime: Realtime | None = None, exposure_filter: bool = True) -> RecallResult:
    """Run every configured channel for ``user_id`` and merge up to ``n`` candidates; with ``eligible``
    (a request's filter, ``recall_server.filtering``) every channel returns only eligible items.

    ``realtime``: the worker's reader of the feedback store (None or off: the snapshot alone); with it the
    user's recent clicks join the history, and items impressed within the window are dropped before the
    quotas are filled (``exposure_filter`` False: kept, e.g. for a "watch again" row)."""
    record = state.snapshot.features.user(user_id)  # read once: the real-time view and the query both use it
    view = user_view(state, realtime, user_id, record)
    query, cold = build_query(state, config, user_id, history_override, list(exclude_ids), view, record)
    if eligible is not None:
        query = replace(query, eligible=eligible)
    # the merge fitted on validation (state.quotas / weights) is fitted on users with a history; a cold user
    # keeps the configured merge, whose popular and segment channels serve him (at 10^6 items the fit turns
    # every channel a cold user can use to 0)
    fitted_quotas, fitted_weights = (None, None) if cold else (state.quotas, state.weights)
    quota = {**(fitted_quotas or config.quotas), **(quotas or {})}
    names = list(config.channels)
    ids, scores, channel, offsets = [], [], [], [0]
    for c, name in enumerate(names):
        module, k = channel_module(name), quota.get(name, 0)
        if eligible is not None and not getattr(module, "APPLIES_FILTER", False):
            k = fetch_size(k, eligible, config.filter_overfetch, state.n_items)
        got_ids, got_scores = restrict(*module.recall(state, query, k), eligible)
        ids.append(got_ids)
        scores.append(got_scores)
        channel.append(np.full(got_ids.size, c, np.int32))
        offsets.append(offsets[-1] + got_ids.size)
    all_ids = np.concatenate(ids).astype(np.int32)
    exclude = query.exclude
    if view is not None and view.state is not None and exposure_filter:
        # the filter is a Bloom filter (membership only): test what the channels found, drop before quotas
        exposed = realtime.exposed(view, state.keys, np.unique(all_ids))
        if exposed.size:
            exclude = np.union1d(exclude, exposed).astype(np.int32)
    merged_ids, merged_scores, masks = merge_quota(
        all_ids, np.concatenate(scores).astype(np.float32),
        np.concatenate(channel), np.asarray(offsets, np.int64),
        np.asarray([quota.get(name, 0) for name in names], np.int32), exclude, n,
        np.asarray([(fitted_weights or config.weights).get(name, 1.0) for name in names], np.float32), config.fusion,
        config.rrf_k)
    return RecallResult(merged_ids, merged_scores, masks, names, cold, 0 if eligible is None else eligible.count)
