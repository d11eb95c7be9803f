"""The rank stage as a plain function: drop unknown ids, assemble features, score, fuse."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.rank_features import RankSchema
from common.snapshot import Snapshot
from rank_server.config import RankConfig
from rank_server.features import ItemFeatures, rank_inputs
from rank_server.fusion import weighted_product
from rank_server.model import RankModel


@dataclass
class RankState:
    """The rank server's view of one snapshot."""

    snapshot: Snapshot
    schema: RankSchema
    items: ItemFeatures
    model: RankModel
    n_user_fields: int


@dataclass
class RankResult:
    item_idx: np.ndarray     # int32 known candidates, request order
    fused: np.ndarray        # float32 [n]
    task_scores: np.ndarray  # float32 [n, T]
    task_names: list[str]
    dropped_unknown: int


def load_state(snapshot: Snapshot, config: RankConfig) -> RankState:
    """Load item features and the ONNX model of ``snapshot``."""
    schema = RankSchema.from_dict(snapshot.schema["rank"])
    model = RankModel(snapshot.file(config.model), schema, snapshot.schema["rank_tasks"], config.onnx_threads)
    return RankState(snapshot, schema, ItemFeatures.load(snapshot), model,
                     len(snapshot.schema["user_cat_names"]))


def rank(state: RankState, config: RankConfig, user_id: str, item_idx: np.ndarray, timestamp: int) -> RankResult:
    """Score ``item_idx`` for ``user_id``; unknown ids are dropped and counted, not fatal."""
    known = (item_idx >= 0) & (item_idx < state.items.n_items)
    kept = item_idx[known].astype(np.int32)
    tasks = state.model.task_names
    if kept.size == 0:
        return RankResult(kept, np.empty(0, np.float32), np.empty((0, len(tasks)), np.float32), tasks,
                          int(item_idx.size))
    user = state.snapshot.features.user(user_id)
    sparse, bag = rank_inputs(state.schema, state.items, user, state.n_user_fields, kept, timestamp)
    scores = state.model.predict(sparse, bag)
    return RankResult(kept, weighted_product(scores, tasks, config.fusion), scores, tasks,
                      int(item_idx.size - kept.size))
