"""The export pipeline: dataset → models, tables, index, features → one published snapshot.

The honest protocol (issue 11, docs/ARCHITECTURE.md §9): per user, train | validation (10 %) | test (20 %) by time.

* **Training cut**: recall artifacts from the training part minus each user's latest ``label_frac`` rows;
  recall replayed for every user, labelled with those rows → the ranker's training examples.
* **Validation cut**: recall artifacts from the whole training part; labels = the validation part → every
  choice: epochs (validation curves), fusion form and weights, int8 mode, rerank defaults, ALS's
  hyper-parameters; and the validation funnel table, computed with the models trained on the training cut.
* **Published snapshot**: every artifact from train + validation (histories, seen sets, i2i tables, two-tower
  retrained); the ranker family retrained on both cuts' examples with the chosen epochs
  (``ranker.retrain_on_validation``), unless the rank gate serves recall's own order (then no ranker model
  orders a list and the training cut's family is published as it is).
* **Test**: read once, at the end, for the report: the funnel table through the serving functions, the
  peers, per-channel recall and the models' AUCs.
"""
from __future__ import annotations

import dataclasses
import json
import resource
import shutil
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort
import torch

from common.candidate_features import dense_names
from common.config import as_dict
from common.log import get_logger
from common.rank_features import RankSchema
from common.snapshot import ANN_IDS_FILE, Snapshot, SnapshotBuilder
from export.config import ExportConfig
from export.data.dataset import Dataset, Interactions
from export.data.atomic import load_atomic, load_movielens_100k
from export.models.deepfm import export_deepfm_onnx, make_rank_examples, predict, train_deepfm
from export.evaluation.recall import evaluate_recall
from export.evaluation.funnel import evaluate_funnel, format_funnel
from export.data.feedback_fold import fold_events
from export.evaluation.metrics import auc, gauc
from export.models.mmoe import TASKS as MMOE_TASKS
from export.models.mmoe import mmoe_logits
from export.evaluation.peers import evaluate_peers
from export.ranking.replay import Replay, concat_examples, examples, replay
from export.ranking.ranker import (
    INT8_FILE,
    PRERANK_FILE,
    STUDENT_FILE,
    choose_int8_mode,
    export_models,
    choose_rank_order,
    fusion_search,
    published_prerank,
    quantize_mode,
    task_probs,
    three_tower_parity,
    train_family,
)
from export.recall.ann_index import exact_topk, load_hnsw, search_profile, select_on_validation
from export.recall.build import (
    RecallBuild,
    add_to_manifest,
    build_recall,
    rebuild_ann,
    sample_users,
    user_vectors,
    write_manifest,
)
from export.recall.merge_fit import fit_merge
from export.ranking.sequence import add_sequence, publish_sequence
from export.data.split import Split, make_split, temporal_parts
from export.models.two_tower import user_inputs
from rank_server.config import RankConfig
from recall_server.config import RecallConfig
from rerank_server.config import RerankConfig
from rerank_server.rerank import resolve_params

log = get_logger("export")
RANK_TASKS = list(MMOE_TASKS)   # outputs of the served MMoE, in order


def load_dataset(config: ExportConfig) -> Dataset:
    """The configured dataset: ML-100K from its usual places, the synthetic generator, or a generic atomic dataset."""
    if config.dataset == "ml-100k":
        return load_movielens_100k(config.data_dir or None)
    if config.dataset == "synthetic":
        from export.data.synthetic import make_dataset

        return make_dataset(config.synthetic)
    if not config.data_dir:
        raise ValueError(f"dataset '{config.dataset}' needs data_dir (the folder with {config.dataset}.inter)")
    return load_atomic(config.data_dir, config.dataset)


def rank_schema(ds: Dataset) -> RankSchema:
    """The ranking models' feature schema: the sparse fields of the dataset and the candidate features of
    the default recall channels."""
    base = RankSchema.from_dataset_meta(ds.n_users, ds.n_items, ds.user_cat_names, ds.user_cat_vocab,
                                        ds.item_cat_names, ds.item_cat_vocab, ds.item_bag_names)
    return dataclasses.replace(base, dense_names=dense_names(list(RecallConfig().channels)))


def rank_manifest(schema: RankSchema, fusion: dict, rerank: dict, serving: str) -> dict:
    """The manifest keys the rank and rerank servers read."""
    return {"rank_serving_model": serving, "prerank_serving_model": PRERANK_FILE,
            "rank_fusion": {"form": fusion["form"], "weights": fusion["weights"]}, "rerank_params": rerank}


def choose_rerank(table: dict, max_cost: float) -> tuple[str, dict]:
    """The most diverse rerank variant (distinct genres@10) whose validation NDCG@10 is within ``max_cost``
    (relative) of the plain rank order (variant ``NONE``); ``NONE`` when none is."""
    rows = table["rows"]
    floor = rows["NONE"]["ndcg@10"] * (1.0 - max_cost)
    ok = [name for name in table["config"]["rerank"] if rows[name]["ndcg@10"] >= floor]
    name = max(ok, key=lambda n: (rows[n]["genres@10"], rows[n]["ndcg@10"])) if ok else "NONE"
    return name, table["config"]["rerank"][name]


def training_cut(split: Split, label_frac: float) -> tuple[Interactions, Interactions]:
    """The training cut: ``(before, labels)``, each user's latest ``label_frac`` training rows as labels."""
    before, _, labels = temporal_parts(split.train, label_frac, 0.0)
    return split.train.subset(before), split.train.subset(labels)


class Cuts(NamedTuple):
    """What :func:`replay_cuts` returns (a tuple, so it unpacks as before)."""

    build_a: RecallBuild          # training cut: recall artifacts
    build_b: RecallBuild          # validation cut: recall artifacts (the chosen ANN index)
    rep_a: Replay                 # serving replayed at the training cut: the ranker's training examples
    rep_b: Replay                 # serving replayed at the validation cut
    merge: dict | None            # recall merge weights and quotas fitted on validation
    ann: dict                     # the chosen ANN index parameters


def replay_cuts(ds: Dataset, split: Split, config: ExportConfig, schema: RankSchema, work: Path,
                lap=lambda step: None) -> Cuts:
    """Recall artifacts of the training and validation cuts under ``work``, the ANN index parameters chosen on
    validation (``export.recall.ann_index``), the recall merge weights and quotas fitted on validation
    (``export.recall.merge_fit``; None when ``recall_fit_users`` is 0), and serving replayed at each cut with them:
    ``(build_a, build_b, replay_a, replay_b, merge, ann)``. Reads only ``split.train`` and
    ``split.valid`` (the leak test holds it to that)."""
    rr = config.rank_replay
    cut_train, cut_labels = training_cut(split, rr.label_frac)
    # the training cut's index waits for the parameters chosen on validation below
    build_a = build_recall(ds, cut_train, config, work / "cut-train", lap=lambda s: lap(f"cut_train_{s}"),
                           build_index=False)
    towers = None if rr.retrain_two_tower else (build_a.user_tower, build_a.item_tower, build_a.two_tower_log)
    build_b = build_recall(ds, split.train, config, work / "cut-valid", towers=towers,
                           lap=lambda s: lap(f"cut_valid_{s}"))
    # HNSW M / ef on validation; the validation cut then serves the chosen index, as the published one will
    ann, index, ids = select_on_validation(build_b, ds, user_vectors(build_b, ds), split.valid, config,
                                          seed=rr.seed)
    index.save_index(str(build_b.path / "items.hnsw"))
    np.save(build_b.path / ANN_IDS_FILE, ids, allow_pickle=False)
    build_b.ann_ids = ids
    ann = {**json.loads((build_b.path / "manifest.json").read_text())["ann_index"], **ann}
    build_a.ann_ids = rebuild_ann(build_a, ds.n_items, ann["min_count"], ann["M"], config)   # it serves it too
    for build in (build_a, build_b):
        add_to_manifest(build.path, {"ann_index": {**ann, "items": int(build.ann_ids.size)}})
    log.info("ann_index_chosen", M=ann["M"], ef=ann["ef"], min_count=ann["min_count"], chosen=ann["chosen"],
             items=int(build_b.ann_ids.size))
    lap("hnsw_select")
    merge = None
    if config.recall_fit_users:   # merge weights and quotas on validation, then both replays recall with them
        merge = fit_merge(build_b.path, ds, split.valid, config.recall_n, ks=config.eval_k,
                          max_users=config.recall_fit_users, seed=rr.seed)
        for build in (build_a, build_b):
            add_to_manifest(build.path, {"recall_merge": merge})
        lap("recall_fit")
    rep_a = replay(build_a.path, ds, cut_labels, schema, config.recall_n, rr, seed=rr.seed, max_users=rr.max_users,
                   training_sample=True)   # only the rows training samples: memory bounded at 10^6 items
    rep_b = replay(build_b.path, ds, split.valid, schema, config.recall_n, rr, seed=rr.seed + 1,
                   max_users=config.eval_users)
    lap("replay")
    return Cuts(build_a, build_b, rep_a, rep_b, merge, ann)


# ---------------------------------------------------------------------------------------------------------------
# run_export, step by step. Each step below is one stretch of the pipeline; run_export calls them in order and
# laps the clock between them (the ``step_done`` log lines and the manifest's ``timings_s`` / ``peak_rss_mb``).


class StepClock:
    """The export's timings and peak-RSS bookkeeping: ``lap(name)`` adds the time since the previous lap to
    ``timings[name]``, records the process's peak RSS so far under ``name`` and logs ``step_done``."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(self.timings.get(name, 0.0) + now - self.last, 3)
        self.peak_rss_mb[name] = peak_rss()   # the process's peak so far: the step that raised it is the culprit
        log.info("step_done", step=name, seconds=round(now - self.last, 3), peak_rss_mb=self.peak_rss_mb[name])
        self.last = now

    def elapsed(self) -> float:
        """Seconds since the export started."""
        return time.perf_counter() - self.start


@dataclasses.dataclass
class ExportData:
    """The dataset (logged feedback folded in), its split, the training cut and the ranking models' schema."""

    ds: Dataset
    fold: dict | None             # what folding the feedback log did (None: no feedback log)
    split: Split
    cut_train: Interactions
    cut_labels: Interactions
    schema: RankSchema


@dataclasses.dataclass
class RankerFit:
    """The ranker family trained on the training cut, with its choices on validation."""

    ex_a: tuple                   # the training cut's examples (export.ranking.replay.examples)
    rep_b_small: Replay           # the validation users of the per-epoch curves and of the int8 choice
    fam: dict                     # teacher, student, pre-rank, curves, epochs (train_family)
    fusion: dict                  # the fusion form and weights (fusion_search)


@dataclasses.dataclass
class Int8Choice:
    """The int8 mode chosen on validation and the served rank model file."""

    calib: tuple                  # calibration rows (sparse, bag, dense) of the static quantisation
    int8: dict                    # choose_int8_mode's report; ``choice`` is the mode
    serving: str                  # the served rank model: INT8_FILE or STUDENT_FILE


@dataclasses.dataclass
class FunnelChoice:
    """The rank order (the gate) and the rerank default chosen on the validation funnel."""

    order: dict                   # choose_rank_order's report; ``order`` is served
    rerank_choice: str            # the chosen rerank variant's name
    rerank_params: dict           # its method and MMR lambda (the manifest's rerank_params)
    validation: dict              # the validation funnel table for the report


@dataclasses.dataclass
class DeepFMModel:
    """The published DeepFM ranker."""

    model: object
    log: dict                     # its training log
    path: Path                    # its ONNX file in the snapshot


@dataclasses.dataclass
class Published:
    """The published models, as the test part and the report read them."""

    build: RecallBuild            # the published recall artifacts
    final: dict                   # the published ranker family (publish_ranker)
    parity: dict                  # max |ONNX - torch| of the published student and pre-rank
    deepfm: DeepFMModel
    torch_users: np.ndarray       # every user's vector, torch user tower
    onnx_users: np.ndarray        # the same from the exported ONNX user tower


@dataclasses.dataclass
class TestResults:
    """What the test part (read once) measured."""

    funnel: dict                  # the test funnel table
    recall: dict                  # per-channel recall (and the synthetic oracle)
    peers: dict                   # the peer recommenders on the same users
    models: dict                  # evaluate_test_models: the ANN profile, DeepFM's test examples and predictions


def load_and_split(config: ExportConfig) -> ExportData:
    """Load the dataset, fold in the logged feedback (when configured), split it per user by time
    (train | validation | test) and cut the training part (before | labels)."""
    ds = load_dataset(config)
    fold = None
    if config.feedback.path:  # the cluster's logged events become interactions of this snapshot
        ds, fold = fold_events(ds, config.feedback)
        log.info("feedback_folded", **fold)
    split = make_split(ds, config.holdout_frac, valid_frac=config.valid_frac)
    cut_train, cut_labels = training_cut(split, config.rank_replay.label_frac)
    schema = rank_schema(ds)
    log.info("dataset", name=ds.name, users=ds.n_users, items=ds.n_items, train=len(split.train),
             valid=len(split.valid), test=len(split.test), cut_train=len(cut_train), cut_labels=len(cut_labels))
    return ExportData(ds, fold, split, cut_train, cut_labels, schema)


def fit_ranker(config: ExportConfig, data: ExportData, cuts: Cuts) -> RankerFit:
    """Train the ranker family (teacher, student, pre-rank) on the training cut's examples, the epochs
    chosen on validation curves, then search the fusion form and weights on the validation replay."""
    rr = config.rank_replay
    ex_a = examples(cuts.rep_a, cuts.rep_a.sample(rr, rr.seed))
    rep_b_small = cuts.rep_b.subset(config.ranker.curve_users, rr.seed)   # per-epoch curves, int8 scoring
    fam = train_family(data.schema, config.mmoe_teacher, config.mmoe, config.prerank, config.distill, *ex_a,
                       valid=rep_b_small, seeds=config.ranker.curve_seeds,
                       min_gain_se=config.ranker.min_gain_se)
    fusion = fusion_search(task_probs(fam["student"], cuts.rep_b), cuts.rep_b, config.ranker.fusion_forms,
                           config.ranker.min_gain_se)
    return RankerFit(ex_a, rep_b_small, fam, fusion)


def choose_int8(config: ExportConfig, data: ExportData, cuts: Cuts, ranker: RankerFit) -> Int8Choice:
    """Export the family into the validation cut, choose the int8 mode on validation (calibration rows
    drawn from the training cut's examples) and write the rank keys into the validation cut's manifest."""
    rr = config.rank_replay
    ex_a, build_b, schema = ranker.ex_a, cuts.build_b, data.schema
    rng = np.random.default_rng(rr.seed)
    calib_rows = rng.choice(ex_a[0][0].shape[0], min(config.ranker.calibration_rows, ex_a[0][0].shape[0]),
                            replace=False)
    calib = (ex_a[0][0][calib_rows], ex_a[0][1][calib_rows], ex_a[1][calib_rows])
    export_models(build_b.path, schema, ranker.fam["teacher"], ranker.fam["student"], ranker.fam["prerank"])
    int8 = choose_int8_mode(build_b.path, ranker.rep_b_small, calib, ranker.fusion, config.ranker.max_ndcg_drop)
    quantize_mode(build_b.path / STUDENT_FILE, build_b.path / INT8_FILE, int8["choice"], calib)
    serving = INT8_FILE if int8["choice"] != "fp32" else STUDENT_FILE
    valid_schema = json.loads((build_b.path / "manifest.json").read_text())["schema"]
    add_to_manifest(build_b.path, {"schema": {**valid_schema, "rank": schema.to_dict(), "rank_tasks": RANK_TASKS},
                                   **rank_manifest(schema, ranker.fusion, {}, serving)})
    return Int8Choice(calib, int8, serving)


def validation_funnel(config: ExportConfig, data: ExportData, cuts: Cuts, variants: dict) -> dict:
    """The funnel table of the validation cut against the validation part, one row per rerank variant."""
    valid_snapshot = Snapshot.open(cuts.build_b.path, verify=False)
    try:
        return evaluate_funnel(valid_snapshot, data.ds, data.split.valid, config.recall_n, config.rank_n, config.k,
                               rerank_variants=variants, max_users=config.eval_users)
    finally:
        valid_snapshot.close()


def choose_order_and_rerank(config: ExportConfig, data: ExportData, cuts: Cuts) -> FunnelChoice:
    """On the validation funnel, the rank gate (model, pre-rank or recall order) and then, on the lists
    the gate serves, the rerank default (the most diverse MMR lambda within ``rerank_max_cost``)."""
    rerank_cfg = RerankConfig(use_fitted=False)
    variants = {"NONE": resolve_params(rerank_cfg, "NONE")}
    for lam in config.rerank_lambdas:
        variants[f"MMR lambda={lam:g}"] = resolve_params(rerank_cfg, "MMR", mmr_lambda=lam)
    grid = validation_funnel(config, data, cuts, variants)
    order = choose_rank_order(grid["rows"], config.ranker.gate)
    if order["order"] != "model":   # the rerank default is chosen on the lists the gate serves
        add_to_manifest(cuts.build_b.path, {"rank_order": order["order"]})
        order["model_rows"] = {k: grid["rows"][k] for k in ("prerank", "rank", "full_rank")}
        grid = validation_funnel(config, data, cuts, variants)
    chosen, params = choose_rerank(grid, config.rerank_max_cost)
    rerank_params = {"method": params["method"], "mmr_lambda": params["mmr_lambda"]}
    validation = {"users": grid["users"], "config": {**grid["config"], "rerank": {chosen: params}},
                  "rows": {**{k: v for k, v in grid["rows"].items() if k not in variants},
                           "rerank": grid["rows"][chosen]},
                  "rerank_grid": {k: grid["rows"][k] for k in variants}, "rerank_choice": chosen}
    return FunnelChoice(order, chosen, rerank_params, validation)


def choose_stage_counts(config: ExportConfig, data: ExportData, cuts: Cuts, funnel: FunnelChoice) -> dict:
    """On the validation funnel with the chosen rank order and rerank: the final list at fractions of the
    exported candidate counts, the cheapest counts within ``stage_count_max_cost`` (level 0, served by
    default) and the quality factor's levels (``export.evaluation.stage_counts``)."""
    from export.evaluation.stage_counts import choose_counts, count_curve, quality_levels

    exported = stage_counts(config, funnel)
    grid = {key: sorted({max(config.k, round(exported[key] * f)) for f in config.stage_count_fractions}, reverse=True)
            for key in exported}
    rerank = resolve_params(RerankConfig(use_fitted=False), funnel.rerank_params["method"],
                            mmr_lambda=funnel.rerank_params["mmr_lambda"])
    valid_snapshot = Snapshot.open(cuts.build_b.path, verify=False)
    try:
        curve = count_curve(valid_snapshot, data.ds, data.split.valid, rerank, grid, config.k, config.eval_users)
    finally:
        valid_snapshot.close()
    chosen = choose_counts(curve, config.stage_count_max_cost)
    levels = quality_levels(curve, chosen)
    log.info("stage_counts_chosen", **{key: chosen[key] for key in exported}, ndcg=chosen["ndcg@10"],
             reference_ndcg=curve["points"][0]["ndcg@10"], levels=len(levels), seconds=curve["seconds"])
    return {"max_cost": config.stage_count_max_cost, "chosen": chosen, "levels": levels, "curve": curve}


def publish_recall(config: ExportConfig, data: ExportData, cuts: Cuts, path: Path, lap) -> RecallBuild:
    """The published recall artifacts from everything before the test part (train + validation), with
    the ANN index parameters chosen on validation."""
    ann = cuts.ann
    return build_recall(data.ds, data.split.known, dataclasses.replace(
        config, hnsw=dataclasses.replace(config.hnsw, min_count=ann["min_count"])), path,
        lap=lambda s: lap(f"publish_{s}"), hnsw_M=ann["M"])


def publish_ranker(config: ExportConfig, data: ExportData, cuts: Cuts, ranker: RankerFit, int8: Int8Choice,
                   order: dict, path: Path) -> tuple[dict, dict]:
    """The published ranker family, retrained on both cuts' examples with the chosen epochs (unless the
    recall order is served), exported and quantised in the chosen int8 mode; ``(family, onnx parity)``."""
    rr, fam, schema = config.rank_replay, ranker.fam, data.schema
    # under the recall order no ranker model orders the lists (the pre-rank only supplies task outputs):
    # the retrain on train + validation would cost a minute at 10^6 items for models nobody serves
    if config.ranker.retrain_on_validation and order["order"] != "recall":
        best_t, best_s = fam["epochs"]["teacher"], fam["epochs"]["student"]
        ex_ab = concat_examples(ranker.ex_a, examples(cuts.rep_b, cuts.rep_b.sample(rr, rr.seed + 1)))
        final = train_family(schema, dataclasses.replace(config.mmoe_teacher, epochs=best_t),
                             dataclasses.replace(config.mmoe, epochs=best_s), published_prerank(config.prerank, fam),
                             config.distill, *ex_ab, prerank_choice=fam["training"].get("prerank_choice"))
        final["curves"] = fam["curves"]
        final["epochs"] = {"teacher": best_t, "student": best_s}
    else:
        final = fam
    export_models(path, schema, final["teacher"], final["student"], final["prerank"])
    quantize_mode(path / STUDENT_FILE, path / INT8_FILE, int8.int8["choice"], int8.calib)
    parity = onnx_parity(path, final, cuts.rep_b)
    return final, parity


def publish_deepfm(config: ExportConfig, data: ExportData, path: Path) -> DeepFMModel:
    """DeepFM, the label-trained, ids-only ranker (random negatives from what the snapshot knows)."""
    ds, split = data.ds, data.split
    model_train = sample_users(split.known, ds.n_users, max_rows=config.max_train_rows, seed=1)
    deepfm, dfm_log = train_deepfm(ds, model_train, config.deepfm, data.schema, known=split.known)
    rank_path = path / "models/rank_deepfm.onnx"
    export_deepfm_onnx(deepfm, str(rank_path), data.schema.n_fields, data.schema.n_bag)
    return DeepFMModel(deepfm, dfm_log, rank_path)


def tower_vectors(data: ExportData, build: RecallBuild, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every user's vector from the torch user tower and from its ONNX export: ``(torch, onnx)``."""
    torch_users = user_vectors(build, data.ds)
    onnx_users = ort.InferenceSession(str(path / "models/user_tower.onnx"),
                                      providers=["CPUExecutionProvider"]).run(
        None, user_inputs(data.ds, build.history))[0]
    return torch_users, onnx_users


def stage_counts(config: ExportConfig, funnel: FunnelChoice) -> dict[str, int]:
    """The funnel's candidate counts the snapshot was exported for: recall replayed ``recall_n`` candidates for
    the ranker's examples (its ``recall_pos`` feature never saw a later position) and the recall merge was fitted
    at it; the validation funnel (rank gate, rerank default) ran with the rank server's ``prerank_keep`` and the
    gateway's ``rank_n``. The gateway checks its own settings against them (``common.snapshot.check_stage_counts``)."""
    return {"recall_n": config.recall_n, "prerank_keep": funnel.validation["config"]["prerank_keep"],
            "rank_n": config.rank_n}


def serving_manifest(config: ExportConfig, data: ExportData, cuts: Cuts, ranker: RankerFit, int8: Int8Choice,
                     funnel: FunnelChoice, build: RecallBuild, path: Path) -> dict:
    """The published manifest the servers read (dataset, schema, rank and rerank keys, rank order, recall
    merge, ANN index, stage counts, the export config); :func:`write_manifest` writes it before the test part."""
    ds, split, schema, ann = data.ds, data.split, data.schema, cuts.ann
    return {
        "dataset": {"name": ds.name, "users": ds.n_users, "items": ds.n_items,
                    "interactions": len(ds.interactions), "train": len(split.train),
                    "validation": len(split.valid), "test": len(split.test),
                    "cut_train": len(data.cut_train), "cut_labels": len(data.cut_labels),
                    "split": f"per-user temporal: train, validation {config.valid_frac:.0%}, "
                             f"test last {config.holdout_frac:.0%}",
                    "published_knows": "train + validation (histories, seen sets, tables, all models)",
                    "feedback": data.fold},
        "schema": {**json.loads((path / "manifest.json").read_text())["schema"],
                   "rank": schema.to_dict(), "rank_tasks": RANK_TASKS},
        **rank_manifest(schema, ranker.fusion, funnel.rerank_params, int8.serving),
        "rank_order": funnel.order["order"],
        **({"recall_merge": cuts.merge} if cuts.merge else {}),
        "ann_index": {**ann, "items": int(build.ann_ids.size)},
        "stage_counts": stage_counts(config, funnel),
        "config": as_dict(config),
    }


def evaluate_test_funnel(config: ExportConfig, data: ExportData, path: Path, work: Path,
                         calib: tuple, served: dict) -> tuple[Interactions, dict, dict]:
    """Test (read once): the funnel table of the published snapshot through the serving functions at the
    ``served`` candidate counts (quality level 0, what the gateway asks for by default; with the int8
    candidates as extra rank rows) and per-channel recall; ``(eval_test, funnel, recall metrics)``."""
    ds, split = data.ds, data.split
    eval_test = sample_users(split.test, ds.n_users, max_users=config.eval_users, seed=2)
    preview = Snapshot.open(path, verify=False)
    try:
        # the int8 candidates on test too, served or not (outside the snapshot, in the work directory)
        variants = {"rank (fp32 student)": STUDENT_FILE}
        for mode in ("dynamic", "static"):
            quantize_mode(path / STUDENT_FILE, work / f"rank_mmoe.{mode}.onnx", mode, calib)
            variants[f"rank (int8 {mode})"] = str(work / f"rank_mmoe.{mode}.onnx")
        test_funnel = evaluate_funnel(preview, ds, eval_test, served["recall_n"], served["rank_n"], config.k,
                                      rank_config=RankConfig(snapshot=str(path), prerank_keep=served["prerank_keep"]),
                                      rank_variants=variants)
        recall_metrics = evaluate_recall(preview, ds, eval_test, config.eval_k)
    finally:
        preview.close()
    if config.dataset == "synthetic":   # the ceiling: the generator's own P(item | user) (export.data.synthetic)
        from export.data.synthetic import oracle_metrics

        recall_metrics["oracle"] = oracle_metrics(config.synthetic, eval_test, split.known, ds.n_users,
                                                  config.eval_k)
    return eval_test, test_funnel, recall_metrics


def evaluate_test_models(config: ExportConfig, data: ExportData, build: RecallBuild, ann: dict, deepfm: DeepFMModel,
                         path: Path, eval_test: Interactions, torch_users: np.ndarray) -> dict:
    """Test: the served HNSW index against exact search on the test users' vectors, and DeepFM's
    ONNX predictions on test examples; the raw results :func:`report_metrics` turns into metrics."""
    ds, dcfg = data.ds, config.deepfm
    eval_users = np.unique(eval_test.user)
    served = load_hnsw(path / "items.hnsw", build.item_emb.shape[1], ds.n_items)
    ann_test = search_profile(served, torch_users[eval_users],
                              exact_topk(build.item_emb, build.ann_ids, torch_users[eval_users], 100), 100, ann["ef"])
    sparse, bag, label = make_rank_examples(ds, eval_test, data.schema, dcfg.neg_per_pos, dcfg.seed + 1,
                                            dcfg.min_positive_rating, known=data.split.known)
    onnx_prob = ort.InferenceSession(str(deepfm.path), providers=["CPUExecutionProvider"]).run(
        None, {"sparse": sparse, "bag": bag})[0].reshape(-1)
    return {"ann_test": ann_test, "sparse": sparse, "bag": bag, "label": label, "onnx_prob": onnx_prob}


def report_metrics(config: ExportConfig, cuts: Cuts, ranker: RankerFit, int8: Int8Choice, funnel: FunnelChoice,
                   published: Published, test: TestResults) -> dict:
    """The manifest's ``metrics``: the funnel tables (test and validation), peers, recall, the ANN
    index on test, the choices made on validation, DeepFM's AUCs, ONNX parity and the training logs."""
    ann, fam, build, deepfm = cuts.ann, ranker.fam, published.build, published.deepfm
    m = test.models
    sparse, bag, label, onnx_prob, ann_test = m["sparse"], m["bag"], m["label"], m["onnx_prob"], m["ann_test"]
    return {
        "parts": "funnel.test, peers, recall, rank.deepfm: test part (read once); funnel.validation, "
                 "selection: validation part",
        "funnel": {"test": test.funnel, "validation": funnel.validation},
        "peers": test.peers,
        "recall": test.recall,
        "hnsw_recall@100_vs_exact": round(ann_test["recall@100_vs_exact"], 4),
        "ann_query": {**ann_test, "M": ann["M"], "items": int(build.ann_ids.size), "part": "test users' vectors"},
        "selection": {"curves": fam["curves"], "curve_users": fam.get("curve_users"),
                      "epochs": fam["epochs"], "fusion": ranker.fusion,
                      "int8": int8.int8, "rerank": {"choice": funnel.rerank_choice, "max_cost": config.rerank_max_cost},
                      "rank_order": funnel.order},
        "rank": {"deepfm": {"like": {"auc": round(auc(label, onnx_prob), 4),
                                     "gauc": round(gauc(label, onnx_prob, sparse[:, 0]), 4),
                                     "negatives": "uniform random unseen items", "part": "test",
                                     "examples": int(label.size), "positives": int(label.sum())}}},
        "parity": {"user_tower_max_abs_diff": float(np.abs(published.onnx_users - published.torch_users).max()),
                   "deepfm_max_abs_diff": float(np.abs(onnx_prob - predict(deepfm.model, sparse, bag)).max()),
                   **published.parity},
        "training": {"two_tower": build.two_tower_log, "deepfm": deepfm.log, **published.final["training"]},
    }


def run_export(config: ExportConfig) -> Path:
    """Run the whole pipeline and publish the snapshot; returns its directory.

    The steps, in order (each lap of the clock is a ``step_done`` line and a key of the manifest's timings):
    load and split → the two cuts (recall builds, ANN choice, recall merge fit, replays) → the ranker family on
    the training cut → the int8 mode, rank gate and rerank default on validation → the published recall
    artifacts → the published ranker → DeepFM → the manifest → the test funnel → peers → test metrics → publish.
    """
    torch.set_num_threads(config.threads)
    clock = StepClock()
    data = load_and_split(config)
    clock.lap("load_and_split")
    if config.engine == "ray":
        from export.distributed.ray_i2i import phases

        phases(reset=True)   # this export's phases only

    builder = SnapshotBuilder(config.out)
    work = Path(config.out).resolve() / f".replay-{builder.version}"   # absolute: model paths below name it
    try:
        # ---- the two cuts: recall artifacts from the log before each cut, then serving replayed
        cuts = replay_cuts(data.ds, data.split, config, data.schema, work, clock.lap)
        # the seq_score column where it pays on validation (the schema then ends with it; issue 30)
        data, cuts, sequence = add_sequence(config, data, cuts, clock.lap)

        # ---- choices on validation: epochs, fusion, int8 mode, rank gate, rerank defaults
        ranker = fit_ranker(config, data, cuts)
        clock.lap("ranker_validation")
        int8 = choose_int8(config, data, cuts, ranker)
        funnel = choose_order_and_rerank(config, data, cuts)
        clock.lap("validation_funnel")
        counts = choose_stage_counts(config, data, cuts, funnel)
        clock.lap("stage_counts")

        # ---- the published snapshot: everything before the test part
        build = publish_recall(config, data, cuts, builder.path, clock.lap)
        sequence = publish_sequence(config, data, sequence, builder.path, build.history)
        clock.lap("sequence_publish")
        final, parity = publish_ranker(config, data, cuts, ranker, int8, funnel.order, builder.path)
        clock.lap("ranker_publish")
        deepfm = publish_deepfm(config, data, builder.path)
        clock.lap("deepfm")
        torch_users, onnx_users = tower_vectors(data, build, builder.path)
        manifest = {**serving_manifest(config, data, cuts, ranker, int8, funnel, build, builder.path),
                    "quality_levels": counts["levels"]}
        write_manifest(builder.path, manifest)
        clock.lap("features")

        # ---- test: read once, for the report
        eval_test, test_funnel, recall_metrics = evaluate_test_funnel(config, data, builder.path, work, int8.calib,
                                                                        counts["chosen"])
        clock.lap("test_funnel")
        peers = evaluate_peers(data.split.known, eval_test, data.ds.n_users, data.ds.n_items,
                               np.load(builder.path / "popular.npy"), data.split.train, data.split.valid)
        clock.lap("peers")
        models = evaluate_test_models(config, data, build, cuts.ann, deepfm, builder.path, eval_test, torch_users)
        clock.lap("test_metrics")
        published = Published(build, final, parity, deepfm, torch_users, onnx_users)
        test = TestResults(test_funnel, recall_metrics, peers, models)
        manifest["metrics"] = {**report_metrics(config, cuts, ranker, int8, funnel, published, test),
                               "stage_counts": counts, "sequence": sequence}
        manifest["timings_s"] = {**clock.timings, "total": round(clock.elapsed(), 3)}
        manifest["peak_rss_mb"] = {**clock.peak_rss_mb, "total": peak_rss()}   # this process's
        if config.engine == "ray":   # the Ray workers': CPU seconds and peak RSS of each distributed phase
            from export.distributed.ray_i2i import phases

            manifest["ray"] = {"address": config.ray.address, "workers": config.ray.workers,
                               "phases": phases(reset=True)}
        log.info("funnel", part="test", table="\n" + format_funnel(test_funnel, peers.get("rows")))
        final_path = builder.publish(manifest, make_current=config.make_current)
    except BaseException:
        builder.abort()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("snapshot_published", path=str(final_path), current=config.make_current,
             seconds=round(clock.elapsed(), 2))
    return final_path


def peak_rss() -> float:
    """This process's peak resident memory so far, in MB (``getrusage``; kilobytes on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def onnx_parity(path: Path, family: dict, rep) -> dict:
    """Max |ONNX - torch| of the served student and pre-rank on validation rows (the first 2,000)."""
    from export.models.quantize import onnx_predict, session

    rows = slice(0, min(2000, rep.n_rows))
    arrays = (rep.sparse[rows], rep.bag[rows], rep.dense[rows])
    out = {}
    for name, model, file in (("mmoe_student", family["student"], STUDENT_FILE),
                              ("prerank", family["prerank"], PRERANK_FILE)):
        torch_p = torch.sigmoid(mmoe_logits(model, *arrays)).numpy()
        out[f"{name}_max_abs_diff"] = float(np.abs(onnx_predict(session(path / file), *arrays) - torch_p).max())
    out.update(three_tower_parity(path, family["prerank"], *arrays))   # the served split, when three-tower
    out["int8_vs_fp32_mean_abs_diff"] = float(np.abs(
        onnx_predict(session(path / INT8_FILE), *arrays) - onnx_predict(session(path / STUDENT_FILE), *arrays)).mean())
    return out
