"""The ranker section of the export: choices on validation, then the published models (issue 11).

1. On the training cut's replay (``export.ranking.replay``), train the MMoE teacher with ``curve_seeds`` seeds and
   record each one's validation curve (NDCG@10 of the click head ordering each validation user's recalled
   candidates, per user, averaged over the seeds). The configured epoch count is the default; an earlier
   epoch replaces it only when its paired per-user gain over the last epoch exceeds ``min_gain_se``
   standard errors and it is better in every seed (early stopping on evidence of over-fitting, not on noise). The same for the distilled
   student, taught by the first seed's teacher at the chosen epoch. One seed on 300 users picked by
   differences of ~0.002 while test results moved by 0.01 (the student once got 1 epoch of 6, and the
   curves of two seeds disagree on the best epoch by as much): the rule keeps the choice off the noise.
2. Fusion: every form of ``rank_server.fusion`` over a grid of task weights, applied to the *student* (the
   served model), scored by the NDCG@10 of the fused order on validation. The click head alone is the
   default; a fused form replaces it only when its per-user gain over the click head exceeds
   ``min_gain_se`` standard errors (a paired comparison over the same users), because the best of
   64 noisy grid points beats the default by chance. The choice is recorded in the manifest
   (``rank_fusion``) and served.
3. The distilled pre-rank, the int8 mode (the faster of dynamic / static whose validation NDCG@10 stays
   within ``max_ndcg_drop`` of fp32; calibration rows from the training cut), and the rerank defaults are
   chosen by the caller on the validation snapshot with these models.
4. The published teacher, student and pre-rank are retrained on the training and validation cuts together
   with the chosen epochs (``retrain_on_validation``), so they know everything before the test part.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.log import get_logger
from common.rank_features import RankSchema
from export.models.mmoe import TASKS, DistillConfig, MMoEConfig, export_mmoe_onnx, mmoe_logits, train_mmoe
from export.models.prerank import (
    PrerankConfig,
    PrerankThreeTower,
    export_three_tower,
    remove_three_tower,
    train_prerank,
)
from export.models.quantize import onnx_predict, quantize_dynamic_int8, quantize_static_int8, session
from export.evaluation.metrics import ndcg_per_user
from export.ranking.replay import Replay
from rank_server.fusion import FORMS, fuse, fuse_ranks

log = get_logger("export")

STUDENT_FILE = "models/rank_mmoe.onnx"
INT8_FILE = "models/rank_mmoe.int8.onnx"
TEACHER_FILE = "models/rank_mmoe_teacher.onnx"
PRERANK_FILE = "models/prerank.onnx"
FUSION_GRID = (0.0, 0.25, 0.5, 1.0)      # like and rating weights tried with click = 1


@dataclass
class RankerConfig:
    """Choices of the ranker section (``[ranker]`` in the export config)."""

    retrain_on_validation: bool = True   # published models see the validation cut too (epochs chosen before)
    max_ndcg_drop: float = 0.005         # int8 kept when validation NDCG@10 drops at most this much vs fp32
    calibration_rows: int = 512          # static int8 calibration rows, drawn from the training cut
    curve_users: int = 2000              # validation users scored after every epoch (a seeded sample; ML-100K: all)
    curve_seeds: int = 2                 # training seeds whose validation curves are averaged to choose epochs
    # a choice leaves its default (all configured epochs; the click head alone) only when its paired per-user
    # validation gain exceeds this many standard errors
    min_gain_se: float = 2.0
    # serve the ranker only where it orders pre-rank's candidates at least as well as the pre-rank itself on
    # validation; else the snapshot serves the pre-rank order (manifest rank_order, rank_server order=auto)
    gate: bool = True
    fusion_forms: list[str] = field(default_factory=lambda: list(FORMS))

    def validate(self) -> None:
        for form in self.fusion_forms:
            if form not in FORMS:
                raise ValueError(f"ranker.fusion_forms: unknown form '{form}'; known: {', '.join(FORMS)}")
        if not self.fusion_forms:
            raise ValueError("ranker.fusion_forms must name at least one form")
        if self.max_ndcg_drop < 0 or self.calibration_rows < 1:
            raise ValueError("ranker.max_ndcg_drop must be >= 0 and calibration_rows >= 1")
        if self.curve_seeds < 1:
            raise ValueError(f"ranker.curve_seeds must be >= 1, got {self.curve_seeds}")
        if not self.min_gain_se >= 0:
            raise ValueError(f"ranker.min_gain_se must be >= 0, got {self.min_gain_se}")


RULE_KEYS = ("best_epoch", "gain_over_last", "se", "best_in_every_seed")   # the epoch choice, in the manifest
CLICK_ONLY = {"click": 1.0, "like": 0.0, "rating": 0.0}   # every fusion form orders by the click head alone


def user_ndcg(rep: Replay, scores: np.ndarray, k: int = 10) -> np.ndarray:
    """NDCG@k of each validation user's recalled candidates ordered by ``scores`` [R]: [U], NaN without truth."""
    return ndcg_per_user(rep.lists(scores, k), rep.truth_indptr, rep.truth_items, k)


def list_ndcg(rep: Replay, scores: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k over validation users with truth (see :func:`user_ndcg`)."""
    per_user = user_ndcg(rep, scores, k)
    return float(np.nanmean(per_user)) if np.isfinite(per_user).any() else float("nan")


def task_probs(model, rep: Replay) -> np.ndarray:
    """Task probabilities [R, T] of a torch model over every row of ``rep``."""
    with torch.inference_mode():   # no autograd graph over ~10^6 validation rows
        return torch.sigmoid(mmoe_logits(model, rep.sparse, rep.bag, rep.dense)).numpy()


def fuse_per_user(probs: np.ndarray, rep: Replay, weights: dict, form: str) -> np.ndarray:
    """``rank_server.fusion.fuse`` as the rank server applies it: per request, i.e. per user of ``rep``.

    Only the ``rank`` form depends on the other rows of the request; its ranks are taken within each user's
    candidates here (one lexsort over all rows), not across the whole replay."""
    if form != "rank":
        return fuse(probs, TASKS, weights, form)
    owner = np.repeat(np.arange(rep.users.size), np.diff(rep.offsets))
    ranks = np.empty(probs.shape, np.float64)
    for t in range(probs.shape[1]):
        order = np.lexsort((-probs[:, t], owner))            # by user, then descending task score
        ranks[order, t] = np.arange(order.size) - rep.offsets[owner[order]]
    return fuse_ranks(ranks, TASKS, weights)


def paired_gain(candidate: np.ndarray, base: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of ``candidate - base`` over users where both are defined."""
    diff = (candidate - base)[np.isfinite(candidate) & np.isfinite(base)]
    if diff.size < 2:
        return float(diff.mean()) if diff.size else 0.0, float("inf")
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(diff.size))


def fusion_search(probs: np.ndarray, rep: Replay, forms: list[str], min_gain_se: float = 2.0) -> dict:
    """The fusion to serve, chosen on validation: the click head alone unless the best (form, weights) of the
    grid beats it by more than ``min_gain_se`` standard errors of the paired per-user gain; the grid's mean
    NDCG@10 per point, the best point and its gain are returned too."""
    base = user_ndcg(rep, probs[:, 0])
    base_mean = float(np.nanmean(base))
    grid = {}
    best = None
    for form, like, rating in itertools.product(forms, FUSION_GRID, FUSION_GRID):
        weights = {"click": 1.0, "like": like, "rating": rating}
        per_user = user_ndcg(rep, fuse_per_user(probs, rep, weights, form))
        score = float(np.nanmean(per_user))
        grid[f"{form} like={like:g} rating={rating:g}"] = round(score, 4)
        if best is None or score > best[0] + 1e-9:
            best = (score, form, weights, per_user)
    gain, se = paired_gain(best[3], base)
    fused = gain > min_gain_se * se
    form, weights, score = (best[1], best[2], best[0]) if fused else ("product", dict(CLICK_ONLY), base_mean)
    return {"form": form, "weights": weights, "validation_ndcg@10": round(score, 4),
            "click_only_ndcg@10": round(base_mean, 4),
            "best_grid_point": {"form": best[1], "weights": best[2], "validation_ndcg@10": round(best[0], 4),
                                "gain": round(gain, 5), "se": round(se, 5)},
            "rule": f"fused only when gain > {min_gain_se:g} x se", "grid": grid}


def train_with_curve(schema: RankSchema, cfg: MMoEConfig, train: tuple, dense: np.ndarray, valid: Replay,
                     teacher=None, distill: DistillConfig | None = None, keep: bool = False):
    """Train for ``cfg.epochs`` epochs, scoring the click head on ``valid`` after each; returns
    ``(model, log, curve, per_epoch)`` with ``curve[e-1]`` = every validation user's NDCG@10 after epoch e
    ([U], NaN without truth) and, with ``keep``, ``per_epoch[e-1]`` a frozen copy of the model after epoch e
    (else an empty list)."""
    curve: list[np.ndarray] = []
    per_epoch: list = []

    def on_epoch(model, epoch):
        curve.append(user_ndcg(valid, task_probs(model, valid)[:, 0]))
        if keep:
            per_epoch.append(copy.deepcopy(model).eval())

    model, mlog = train_mmoe(None, None, cfg, schema, teacher=teacher, distill=distill, examples=train,
                             dense=dense, on_epoch=on_epoch)
    return model, mlog, curve, per_epoch


def best_epochs(curve: list[float]) -> int:
    """The 1-based epoch with the best validation score (the earliest on ties)."""
    return int(np.argmax(curve)) + 1 if curve else 1


def choose_epochs(per_seed: list[np.ndarray], min_gain_se: float) -> dict:
    """The epoch count from every seed's per-user validation scores ``per_seed`` ([E, U] each): the last epoch
    unless the best earlier one (on the seed-averaged scores) gains more than ``min_gain_se`` standard errors
    over it, user by user, *and* beats it in every seed. One seed's lucky epoch moved the average past
    2 SE while the other seed preferred the last epoch; a departure from the default must hold for each."""
    per_user = np.mean(per_seed, axis=0)
    curve = [round(float(v), 4) for v in np.nanmean(per_user, axis=1)]
    last = len(curve)
    best = best_epochs(curve)
    gain, se = paired_gain(per_user[best - 1], per_user[last - 1])
    every_seed = all(np.nanmean(c[best - 1]) > np.nanmean(c[last - 1]) for c in per_seed)
    epochs = best if best != last and gain > min_gain_se * se and every_seed else last
    return {"curve": curve, "epochs": epochs, "best_epoch": best, "gain_over_last": round(gain, 5),
            "se": round(se, 5), "best_in_every_seed": bool(every_seed)}


def curve_family(schema: RankSchema, cfg: MMoEConfig, train: tuple, dense: np.ndarray, valid: Replay, seeds: int,
                 min_gain_se: float, teacher=None, distill: DistillConfig | None = None
                 ) -> tuple[object, dict, dict]:
    """Train ``cfg`` with ``seeds`` seeds (``cfg.seed``, ``cfg.seed + 1``, ...), each scored on ``valid`` after
    every epoch; returns the first seed's model at the epoch :func:`choose_epochs` picks from the
    seed-averaged per-user scores, its log and the choice (with every seed's curve). A one-epoch ``cfg``
    trains one seed."""
    per_seed, first, first_log = [], [], None
    if cfg.epochs <= 1:
        seeds = 1   # one epoch leaves nothing to choose: more seeds would repeat the training for no decision
    for s in range(seeds):
        _, mlog, curve, per_epoch = train_with_curve(schema, dataclasses.replace(cfg, seed=cfg.seed + s), train,
                                                     dense, valid, teacher, distill, keep=(s == 0))
        per_seed.append(np.stack(curve))
        if s == 0:
            first, first_log = per_epoch, mlog
    choice = choose_epochs(per_seed, min_gain_se)
    choice["per_seed"] = [[round(float(v), 4) for v in np.nanmean(c, axis=1)] for c in per_seed]
    return first[choice["epochs"] - 1], first_log, choice


def choose_rank_order(rows: dict, gate: bool = True) -> dict:
    """The order the rank stage serves, from the validation funnel's ``rows``: with ``gate``, the best by
    NDCG@10 of "model" (the ranker, row ``rank``), "prerank" and "recall" (recall's own merged order), the
    later stage on ties; without, "model".

    Each stage must improve the list it is given: at 10^6 synthetic items a ranker trained on 5,000 replayed
    users ordered worse than the pre-rank (validation 0.0467 against 0.0542), and in a later export the
    pre-rank ordered worse than recall itself (0.0511 against 0.0548); serving either would hand callers a
    worse list than the stage before produced."""
    score = {"model": float(rows["rank"]["ndcg@10"]), "prerank": float(rows["prerank"]["ndcg@10"])}
    if "recall" in rows:
        score["recall"] = float(rows["recall"]["ndcg@10"])
    later_first = ["model", "prerank", "recall"]   # max() keeps the first of equals: the later stage
    order = max((o for o in later_first if o in score), key=lambda o: score[o]) if gate else "model"
    return {"order": order, "validation_ndcg@10": {("rank" if o == "model" else o): round(v, 4)
                                                    for o, v in score.items()},
            "gate": gate}


def export_models(out_dir: Path, schema: RankSchema, teacher, student, prerank) -> None:
    """The three ONNX files (teacher for reference, student served, pre-rank served) under ``out_dir``.

    A three-tower pre-rank is written twice: as one graph in ``PRERANK_FILE`` (same inputs as every ranking
    model: benches, the recall order's task outputs, old readers) and as the served split
    (``export.models.prerank.export_three_tower``), its item vectors from ``out_dir``'s ``features.lmdb``."""
    for model, name in ((teacher, TEACHER_FILE), (student, STUDENT_FILE), (prerank, PRERANK_FILE)):
        export_mmoe_onnx(model, str(out_dir / name), schema.n_fields, schema.n_bag)
    if isinstance(prerank, PrerankThreeTower):
        from common.feature_store import FeatureStore

        store = FeatureStore(out_dir / "features.lmdb")
        try:
            item_cat, item_bag = store.array("item_cat"), store.array("item_bag")
        finally:
            store.close()
        export_three_tower(prerank, out_dir, schema, item_cat, item_bag)
    else:
        remove_three_tower(out_dir)


def three_tower_parity(path: Path, model, sparse: np.ndarray, bag: np.ndarray, dense: np.ndarray) -> dict:
    """Max |served - torch| of a three-tower pre-rank in ``path`` over the given rows: the user tower ONNX, the
    item vectors saved by export gathered by item code, the cross ONNX; {} for any other pre-rank."""
    if not isinstance(model, PrerankThreeTower):
        return {}
    from rank_server.prerank import CROSS_FILE, ITEMS_FILE, USER_FILE

    torch_p = torch.sigmoid(mmoe_logits(model, sparse, bag, dense)).numpy()
    u = session(path / USER_FILE).run(None, {"sparse": np.ascontiguousarray(sparse, np.int64)})[0]
    v = np.load(path / ITEMS_FILE)[np.asarray(sparse[:, 1], np.int64) - 1]
    feed = {"u": u, "v": v}
    if model.n_dense:
        feed["dense"] = np.ascontiguousarray(dense, np.float32)
    served = np.stack([np.asarray(o).reshape(-1) for o in session(path / CROSS_FILE).run(list(TASKS), feed)], 1)
    with torch.inference_mode():
        v_torch = model.item_vec(torch.as_tensor(np.ascontiguousarray(sparse, np.int64)),
                                 torch.as_tensor(np.ascontiguousarray(bag, np.float32))).numpy()
    return {"prerank_three_tower_max_abs_diff": float(np.abs(served - torch_p).max()),
            "prerank_item_vectors_max_abs_diff": float(np.abs(v - v_torch).max())}


def prerank_rows(rep: Replay, pre_probs: np.ndarray, student_probs: np.ndarray, keep: int,
                 weights: dict | None = None, form: str = "product") -> dict:
    """Per-user validation NDCG@10 of a pre-rank as the rank stage uses it: ``prerank`` (its own fused order of
    the recalled candidates) and ``rank`` (its best ``keep`` per user, ordered by the student): [U] each."""
    weights = weights or CLICK_ONLY
    pre = np.where(rep.recalled, fuse_per_user(pre_probs, rep, weights, form), -np.inf)
    stu = fuse_per_user(student_probs, rep, weights, form)
    owner = np.repeat(np.arange(rep.users.size), np.diff(rep.offsets))
    order = np.lexsort((np.arange(pre.size), -pre, owner))   # per user: best pre-rank score first, then request order
    pos = np.empty(pre.size, np.int64)
    pos[order] = np.arange(order.size) - rep.offsets[owner[order]]
    cut = dataclasses.replace(rep, recalled=rep.recalled & (pos < keep))   # the cut rows leave the lists
    return {"prerank": user_ndcg(rep, pre), "rank": user_ndcg(cut, stu)}


def choose_prerank(rep: Replay, student, models: dict, keep: int, max_cost: float) -> dict:
    """The pre-rank kind to serve, on validation: "three_tower" (cheaper per request) when its ``rank`` row (its
    cut ordered by the student, the list the rank stage returns) costs at most ``max_cost`` (relative) of the
    DeepFM's, else "deepfm". Both kinds' rows, and the paired per-user difference, are returned."""
    stu = task_probs(student, rep)
    rows, per_user = {}, {}
    for kind, model in models.items():
        per_user[kind] = prerank_rows(rep, task_probs(model, rep), stu, keep)
        rows[kind] = {stage: round(float(np.nanmean(v)), 4) for stage, v in per_user[kind].items()}
    out: dict = {"rows": rows, "keep": keep, "max_cost": max_cost, "users": int(rep.users.size),
                 "rule": "three_tower when its rank row >= (1 - max_cost) x deepfm's"}
    if set(models) == {"deepfm", "three_tower"}:
        gain, se = paired_gain(per_user["three_tower"]["rank"], per_user["deepfm"]["rank"])
        out["three_tower_minus_deepfm"] = {"rank": round(gain, 5), "se": round(se, 5)}
        base = float(np.nanmean(per_user["deepfm"]["rank"]))
        ok = float(np.nanmean(per_user["three_tower"]["rank"])) >= (1.0 - max_cost) * base
        out["kind"] = "three_tower" if ok else "deepfm"
    else:
        out["kind"] = next(iter(models))
    return out


def published_prerank(cfg: PrerankConfig, fam: dict) -> PrerankConfig:
    """The pre-rank configuration of the published retrain: the kind chosen on validation (``fam``'s)."""
    choice = fam.get("training", {}).get("prerank_choice")
    return dataclasses.replace(cfg, kind=choice["kind"]) if choice else cfg


def choose_int8_mode(out_dir: Path, valid: Replay, calib: tuple, fusion: dict, max_drop: float) -> dict:
    """Dynamic and static int8 of the student in ``out_dir``, each scored by validation NDCG@10 of the fused
    order and timed on one user's 200 candidates; the faster one within ``max_drop`` of fp32 wins."""
    from export.models.quantize import latency_ms

    fp32 = out_dir / STUDENT_FILE
    arrays = (valid.sparse, valid.bag, valid.dense)
    first = slice(int(valid.offsets[0]), int(valid.offsets[0]) + min(200, int(valid.offsets[1] - valid.offsets[0])))
    bench = tuple(a[first] for a in arrays)

    def score(path) -> tuple[float, dict]:
        sess = session(path)
        p = onnx_predict(sess, *arrays)
        return list_ndcg(valid, fuse(p, TASKS, fusion["weights"], fusion["form"])), latency_ms(session(path), *bench)

    base, base_lat = score(fp32)
    record: dict = {"fp32": {"validation_ndcg@10": round(base, 4), **base_lat}, "max_ndcg_drop": max_drop}
    choice, best_p50 = "fp32", base_lat["p50_ms"]
    for mode in ("dynamic", "static"):
        tmp = out_dir / f"models/rank_mmoe.{mode}.onnx"
        quantize_mode(fp32, tmp, mode, calib)
        ndcg, lat = score(tmp)
        ok = base - ndcg <= max_drop
        record[mode] = {"validation_ndcg@10": round(ndcg, 4), **lat, "within_quality": bool(ok)}
        if ok and lat["p50_ms"] < best_p50:
            choice, best_p50 = mode, lat["p50_ms"]
        tmp.unlink(missing_ok=True)
    record["choice"] = choice
    return record


def quantize_mode(src: Path, dst: Path, mode: str, calib: tuple) -> None:
    """Write ``src`` quantized by ``mode`` ("dynamic", "static") to ``dst``; "fp32" copies it."""
    if mode == "dynamic":
        quantize_dynamic_int8(src, dst)
    elif mode == "static":
        quantize_static_int8(src, dst, *calib)
    else:
        Path(dst).write_bytes(Path(src).read_bytes())


def train_family(schema: RankSchema, teacher_cfg: MMoEConfig, student_cfg: MMoEConfig, prerank_cfg: PrerankConfig,
                 distill: DistillConfig, train: tuple, dense: np.ndarray, valid: Replay | None = None,
                 seeds: int = 1, min_gain_se: float = 2.0, prerank_choice: dict | None = None) -> dict:
    """Teacher, student distilled from it, pre-rank distilled from it, on ``train`` / ``dense``.

    With ``valid``, the teacher and student are chosen by seed-averaged validation curves
    (:func:`curve_family`): the returned models are the first seed's at the chosen epochs, and ``epochs``
    holds the choice; without, they train for their configured epochs (the published retrain).

    The pre-rank kind: ``prerank_cfg.kind`` where it names one; "auto" with ``valid`` trains both and picks
    by :func:`choose_prerank`; "auto" without ``valid`` trains the DeepFM. ``prerank_choice`` (the validation
    family's choice, for the published retrain) is recorded in ``training`` as is."""
    t0 = time.perf_counter()
    out: dict = {"training": {}}
    if valid is not None:
        teacher, t_log, t_sel = curve_family(schema, teacher_cfg, train, dense, valid, seeds, min_gain_se)
        student, s_log, s_sel = curve_family(schema, student_cfg, train, dense, valid, seeds, min_gain_se,
                                             teacher, distill)
        out["curve_users"] = int(valid.users.size)
        out["curves"] = {"teacher": t_sel["curve"], "student": s_sel["curve"],
                         "per_seed": {"teacher": t_sel["per_seed"], "student": s_sel["per_seed"]},
                         "rule": {"teacher": {k: t_sel[k] for k in RULE_KEYS},
                                  "student": {k: s_sel[k] for k in RULE_KEYS},
                                  "min_gain_se": min_gain_se}}
        out["epochs"] = {"teacher": t_sel["epochs"], "student": s_sel["epochs"]}
    else:
        teacher, t_log = train_mmoe(None, None, teacher_cfg, schema, examples=train, dense=dense)
        student, s_log = train_mmoe(None, None, student_cfg, schema, teacher=teacher, distill=distill,
                                    examples=train, dense=dense)
    t_logits = mmoe_logits(teacher, train[0], train[1], dense)
    extra: dict = {}
    if prerank_cfg.kind == "auto" and valid is not None:
        from rank_server.config import RankConfig

        trained = {kind: train_prerank(schema, prerank_cfg, train, t_logits, dense=dense, kind=kind)
                   for kind in ("deepfm", "three_tower")}
        choice = choose_prerank(valid, student, {k: m for k, (m, _) in trained.items()},
                                RankConfig().prerank_keep, prerank_cfg.max_cost)
        prerank, p_log = trained[choice["kind"]]
        extra["prerank_choice"] = choice
        extra["prerank_candidates"] = {k: lg for k, (_, lg) in trained.items()}
        log.info("prerank_choice", kind=choice["kind"], rows=choice["rows"])
    else:
        prerank, p_log = train_prerank(schema, prerank_cfg, train, t_logits, dense=dense)
        if prerank_choice is not None:
            extra["prerank_choice"] = prerank_choice
    out.update(teacher=teacher, student=student, prerank=prerank)
    out["training"] = {"mmoe_teacher": t_log, "mmoe_student": s_log, "prerank": p_log, **extra,
                       "seconds": round(time.perf_counter() - t0, 2)}
    return out
