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
    prerank: RankModel | None = None


@dataclass
class RankResult:
    item_idx: np.ndarray     # int32 known candidates, request order
    fused: np.ndarray        # float32 [n]
    task_scores: np.ndarray  # float32 [n, T]
    task_names: list[str]
    dropped_unknown: int
    prerank_dropped: int = 0  # known candidates cut by pre-rank (not in the reply)


def model_file(snapshot: Snapshot, config: RankConfig) -> str:
    """The model path inside the snapshot: ``config.model``, or for "auto" the export's serving choice."""
    if config.model != "auto":
        return config.model
    return snapshot.manifest.get("rank_serving_model", "models/rank_deepfm.onnx")


def prerank_file(snapshot: Snapshot, config: RankConfig) -> str:
    """The pre-rank path inside the snapshot: ``config.prerank_model``, or for "auto" the export's choice."""
    if config.prerank_model != "auto":
        return config.prerank_model
    return snapshot.manifest.get("prerank_serving_model", "models/prerank.onnx")


def prerank_scores(prerank: RankModel, sparse: np.ndarray, bag: np.ndarray, fusion: dict[str, float]) -> np.ndarray:
    """One pre-rank score per row: a multi-task pre-rank's outputs fused with the ranker's ``fusion`` weights
    (so it orders candidates by the same objective), a single-output model's output as is."""
    p = prerank.predict(sparse, bag)
    if len(prerank.task_names) > 1:
        return weighted_product(p, prerank.task_names, fusion)
    return p[:, 0]


def prerank_top(scores: np.ndarray, keep: int) -> np.ndarray:
    """Row indices of the ``keep`` best scores in request order (ties: the earlier candidate)."""
    return np.sort(np.lexsort((np.arange(scores.size), -scores))[:keep])


def load_state(snapshot: Snapshot, config: RankConfig) -> RankState:
    """Load item features and the ONNX model of ``snapshot``."""
    schema = RankSchema.from_dict(snapshot.schema["rank"])
    model = RankModel(snapshot.file(model_file(snapshot, config)), schema, snapshot.schema["rank_tasks"],
                      config.onnx_threads)
    prerank = None
    if config.prerank_model:
        tasks = list(snapshot.schema["rank_tasks"])
        prerank = RankModel(snapshot.file(prerank_file(snapshot, config)), schema, tasks, config.onnx_threads)
        if not set(tasks) <= set(prerank.outputs):  # a single-score model (e.g. the label-trained DeepFM)
            prerank.task_names = ["prerank"]
    return RankState(snapshot, schema, ItemFeatures.load(snapshot), model,
                     len(snapshot.schema["user_cat_names"]), prerank)


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
    cut = 0
    if state.prerank is not None and kept.size > config.prerank_keep:
        top = prerank_top(prerank_scores(state.prerank, sparse, bag, config.fusion), config.prerank_keep)
        cut = int(kept.size - top.size)
        kept, sparse, bag = kept[top], sparse[top], bag[top]
    scores = state.model.predict(sparse, bag)
    return RankResult(kept, weighted_product(scores, tasks, config.fusion), scores, tasks,
                      int(item_idx.size - kept.size - cut), cut)
