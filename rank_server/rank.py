"""The rank stage as a plain function: drop unknown ids, assemble features, score, fuse."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.candidate_features import CandidateTables
from common.rank_features import RankSchema
from common.snapshot import Snapshot, SnapshotError, check_stage_counts
from feedback.realtime import Realtime, SnapshotKeys, history_codes
from rank_server.config import RANK_ORDERS, RankConfig
from common.sequence_features import SequenceScorer
from rank_server.features import ItemFeatures, dense_features, load_dense, rank_inputs
from rank_server.fusion import DEFAULT_WEIGHTS, fuse
from rank_server.model import RankModel
from rank_server.prerank import SPEC_FILE, ThreeTowerPrerank, has_three_tower


@dataclass
class RankState:
    """The rank server's view of one snapshot."""

    snapshot: Snapshot
    schema: RankSchema
    items: ItemFeatures
    model: RankModel
    n_user_fields: int
    prerank: RankModel | ThreeTowerPrerank | None = None
    tables: CandidateTables | None = None    # dense candidate features, when the models take them
    keys: SnapshotKeys | None = None         # what the real-time history needs of the snapshot (feedback on)
    sequence: SequenceScorer | None = None   # the sequence encoder, when the dense columns end with seq_score


@dataclass
class RecallInfo:
    """What recall said about the candidates (request order), passed on by the gateway."""

    channel_masks: np.ndarray | None = None   # uint32 per candidate
    channel_names: list[str] | None = None
    scores: np.ndarray | None = None          # float32 merged recall score per candidate


@dataclass
class RankResult:
    item_idx: np.ndarray     # int32 known candidates, request order
    fused: np.ndarray        # float32 [n]
    task_scores: np.ndarray  # float32 [n, T]
    task_names: list[str]
    dropped_unknown: int
    prerank_dropped: int = 0  # known candidates cut by pre-rank (not in the reply)
    prerank_scores: np.ndarray | None = None  # float32 [n] pre-rank scores of the kept candidates (None: no cut)


def model_file(snapshot: Snapshot, config: RankConfig) -> str:
    """The model path inside the snapshot: ``config.model``, or for "auto" the export's serving choice."""
    if config.model != "auto":
        return config.model
    return snapshot.manifest.get("rank_serving_model", "models/rank_deepfm.onnx")


def prerank_file(snapshot: Snapshot, config: RankConfig) -> str:
    """The pre-rank path inside the snapshot: ``config.prerank_model``, or for "auto" the export's choice
    (the three-tower's spec, ``rank_server.prerank.SPEC_FILE``, where the snapshot's pre-rank is one)."""
    if config.prerank_model != "auto":
        return config.prerank_model
    served = snapshot.manifest.get("prerank_serving_model", "models/prerank.onnx")
    if served == "models/prerank.onnx" and has_three_tower(snapshot):
        return SPEC_FILE
    return served


def prerank_scores(prerank: RankModel | ThreeTowerPrerank, sparse: np.ndarray, bag: np.ndarray,
                   fusion: dict[str, float], dense: np.ndarray | None = None, form: str = "product",
                   item_idx: np.ndarray | None = None) -> np.ndarray:
    """One pre-rank score per row: a multi-task pre-rank's outputs fused like the ranker's (so it orders
    candidates by the same objective), a single-output model's output as is. A three-tower pre-rank reads
    the first row of ``sparse`` (the user tower, once) and the cached vectors of ``item_idx`` (the rows' items)."""
    if isinstance(prerank, ThreeTowerPrerank) and item_idx is not None:
        p = prerank.scores_for(sparse[:1], item_idx, dense)
    else:
        p = prerank.predict(sparse, bag, dense)
    if len(prerank.task_names) > 1:
        return fuse(p, prerank.task_names, fusion, form)
    return p[:, 0]


def prerank_top(scores: np.ndarray, keep: int) -> np.ndarray:
    """Row indices of the ``keep`` best scores in request order (ties: the earlier candidate)."""
    if keep < scores.size:  # only rows scoring at least the keep-th best can be kept: sort just those
        rows = np.flatnonzero(scores >= np.partition(scores, scores.size - keep)[scores.size - keep])
        if rows.size >= keep:  # else NaN scores upset the partition: the full sort orders them last
            order = np.lexsort((rows, -scores[rows]))[:keep]
            return np.sort(rows[order])
    return np.sort(np.lexsort((np.arange(scores.size), -scores))[:keep])


def load_state(snapshot: Snapshot, config: RankConfig) -> RankState:
    """Load item features and the ONNX model of ``snapshot``."""
    # more pre-rank survivors than the export chose its rank order at is a configuration nobody measured
    check_stage_counts(snapshot.manifest, {"prerank_keep": ("rank.prerank_keep", config.prerank_keep)})
    schema = RankSchema.from_dict(snapshot.schema["rank"])
    model = RankModel(snapshot.file(model_file(snapshot, config)), schema, snapshot.schema["rank_tasks"],
                      config.onnx_threads)
    items = None   # read after the models are checked (a mismatched model is refused before any features)
    prerank = None
    if config.prerank_model:
        tasks = list(snapshot.schema["rank_tasks"])
        pre_path = prerank_file(snapshot, config)
        if pre_path == SPEC_FILE:
            items = ItemFeatures.load(snapshot)
            prerank = ThreeTowerPrerank(snapshot, schema, tasks, config.onnx_threads, items.n_items)
        else:
            prerank = RankModel(snapshot.file(pre_path), schema, tasks, config.onnx_threads)
        if not set(tasks) <= set(prerank.outputs):  # a single-score model (e.g. the label-trained DeepFM)
            prerank.task_names = ["prerank"]
    tables, sequence = load_dense(snapshot, schema, config.onnx_threads)
    order = rank_order(snapshot, config)
    if order not in RANK_ORDERS[1:]:
        raise SnapshotError(f"{snapshot.path}: manifest rank_order {order!r} is none of "
                            f"{', '.join(RANK_ORDERS[1:])}; re-run export, or set order in the rank config")
    if order == "prerank" and (prerank is None or prerank.task_names != model.task_names):
        raise SnapshotError(f"{snapshot.path}: rank order 'prerank' needs a pre-rank model with the ranker's tasks "
                            f"({', '.join(model.task_names)}); set prerank_model, or order=model")
    return RankState(snapshot, schema, items if items is not None else ItemFeatures.load(snapshot), model,
                     len(snapshot.schema["user_cat_names"]), prerank, tables,
                     SnapshotKeys.of(snapshot) if config.feedback.path else None, sequence)


def fusion_of(snapshot: Snapshot, config: RankConfig) -> tuple[str, dict[str, float]]:
    """The fusion form and weights in force: the config's where set, else what export fitted on validation
    (manifest ``rank_fusion``), else the product of click, like and (1 + rating)^0.5."""
    fitted = snapshot.manifest.get("rank_fusion") or {}
    form = config.fusion_form if config.fusion_form != "auto" else fitted.get("form", "product")
    weights = dict(fitted.get("weights", DEFAULT_WEIGHTS)) if config.fusion_form == "auto" else {}
    return form, {**weights, **config.fusion}


def rank_order(snapshot: Snapshot, config: RankConfig) -> str:
    """"model", "prerank" or "recall": the config's choice where set, else the export's (manifest
    ``rank_order``)."""
    if config.order != "auto":
        return config.order
    return snapshot.manifest.get("rank_order", "model")


def _first_of_recall(recall: RecallInfo | None, known: np.ndarray, keep: int) -> tuple[RecallInfo | None, int]:
    """Recall's arrays for the first ``keep`` known candidates (the "recall" order serves those), and how
    many known candidates that leaves out."""
    n_known = int(known.sum())
    cut = max(0, n_known - keep)
    if recall is None:
        return None, cut

    def first(a):
        return None if a is None else np.asarray(a)[known][:keep]

    return RecallInfo(first(recall.channel_masks), recall.channel_names, first(recall.scores)), cut


def rank(state: RankState, config: RankConfig, user_id: str, item_idx: np.ndarray, timestamp: int,
         recall: RecallInfo | None = None, fusion: dict[str, float] | None = None,
         realtime: Realtime | None = None, prerank_keep: int = 0, prerank_order: bool = False) -> RankResult:
    """Score ``item_idx`` (recall's order) for ``user_id``; unknown ids are dropped and counted, not fatal.

    ``recall``: recall's channel bits and scores per candidate (the dense features' recall columns);
    ``fusion``: per-task weights over the ones in force (experiments); ``realtime``: the worker's reader of
    the feedback store (the history then ends with the user's clicks since the snapshot); ``prerank_keep``:
    the request's pre-rank cut (the gateway's quality factor lowers it under load), 0 or above the
    configured ``config.prerank_keep``: the configured one; ``prerank_order``: serve the pre-rank's order instead
    of the ranker's (another quality level), where the ranker's order is in force and the pre-rank can."""
    keep = min(prerank_keep, config.prerank_keep) if prerank_keep > 0 else config.prerank_keep
    known = (item_idx >= 0) & (item_idx < state.items.n_items)
    kept = item_idx[known].astype(np.int32)
    tasks = state.model.task_names
    if kept.size == 0:
        return RankResult(kept, np.empty(0, np.float32), np.empty((0, len(tasks)), np.float32), tasks,
                          int(item_idx.size))
    form, weights = fusion_of(state.snapshot, config)
    weights = {**weights, **(fusion or {})}
    order = rank_order(state.snapshot, config)
    if prerank_order and order == "model" and state.prerank is not None and state.prerank.task_names == tasks:
        order = "prerank"
    recall_cut = 0
    if order == "recall":   # recall's own order: only the candidates served need features and task outputs
        recall, recall_cut = _first_of_recall(recall, known, keep)
        kept = kept[:keep]
        known = None   # the recall arrays above are aligned with kept already
    user = state.snapshot.features.user(user_id)
    # one assembly for every candidate: its cost is nearly all per call (0.13 ms for 1 row, 0.14 ms for 1,000),
    # so the three-tower's user row is its first row rather than a second call
    sparse, bag = rank_inputs(state.schema, state.items, user, state.n_user_fields, kept, timestamp)
    dense = None
    if state.tables is not None:
        recall = recall or RecallInfo()
        aligned = known is None or known.all()  # recall arrays follow the request; drop unknown ids' rows too
        masks = recall.channel_masks if recall.channel_masks is None or aligned else recall.channel_masks[known]
        scores = recall.scores if recall.scores is None or aligned else recall.scores[known]
        hist = user.hist if user is not None else np.empty(0, np.int32)
        n_seen = user.seen.size if user is not None else 0
        if realtime is not None and realtime.store is not None and state.keys is not None:
            view = realtime.view(state.snapshot, state.keys, user_id, user.dense_id if user is not None else None)
            hist = history_codes(hist, view, int(state.snapshot.schema["history_len"]))
            n_seen += int(view.recent_dense.size)
        dense = dense_features(state.tables, state.sequence, hist, n_seen, kept, masks, recall.channel_names,
                               scores)
    if order == "recall":
        # task outputs from the pre-rank where it has the ranker's tasks (cheaper), else from the ranker
        model = state.prerank if state.prerank is not None and state.prerank.task_names == tasks else state.model
        p = model.predict(sparse, bag, dense)
        fused = (np.asarray(recall.scores, np.float32) if recall is not None and recall.scores is not None
                 else 1.0 / (1.0 + np.arange(kept.size, dtype=np.float32)))
        return RankResult(kept, fused, p, tasks, int(item_idx.size - kept.size - recall_cut), recall_cut)
    if order == "prerank":   # load_state checked the pre-rank has the tasks
        p = state.prerank.predict(sparse, bag, dense)
        pre_all = fuse(p, state.prerank.task_names, weights, form)
        top = prerank_top(pre_all, keep) if kept.size > keep else np.arange(kept.size)
        return RankResult(kept[top], pre_all[top], p[top], state.prerank.task_names,
                          int(item_idx.size - kept.size), int(kept.size - top.size), pre_all[top])
    cut = 0
    pre = None
    if state.prerank is not None and kept.size > keep:
        pre_all = prerank_scores(state.prerank, sparse, bag, weights, dense, form, kept)
        top = prerank_top(pre_all, keep)
        cut = int(kept.size - top.size)
        kept, sparse, bag, pre = kept[top], sparse[top], bag[top], pre_all[top]
        dense = dense[top] if dense is not None else None
    scores = state.model.predict(sparse, bag, dense)
    return RankResult(kept, fuse(scores, tasks, weights, form), scores, tasks,
                      int(item_idx.size - kept.size - cut), cut, pre)
