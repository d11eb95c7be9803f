"""The ranker section of the export: choices on validation, then the published models (issue 11).

1. On the training cut's replay (``export.rank_replay``), train the MMoE teacher and record its validation
   curve (NDCG@10 of the click head ordering each validation user's recalled candidates); the epoch with
   the best validation NDCG is the teacher's epoch count. The same for the distilled student.
2. Fusion: every form of ``rank_server.fusion`` over a grid of task weights, scored by the NDCG@10 of the
   fused order on validation; the best is recorded in the manifest (``rank_fusion``) and served.
3. The distilled pre-rank, the int8 mode (the faster of dynamic / static whose validation NDCG@10 stays
   within ``max_ndcg_drop`` of fp32; calibration rows from the training cut), and the rerank defaults are
   chosen by the caller on the validation snapshot with these models.
4. The published teacher, student and pre-rank are retrained on the training and validation cuts together
   with the chosen epochs (``retrain_on_validation``), so they know everything before the test part.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.log import get_logger
from common.rank_features import RankSchema
from export.mmoe import TASKS, DistillConfig, MMoEConfig, export_mmoe_onnx, mmoe_logits, train_mmoe
from export.prerank import PrerankConfig, train_prerank
from export.quantize import onnx_predict, quantize_dynamic_int8, quantize_static_int8, session
from export.metrics import ndcg_at_k
from export.rank_replay import Replay
from rank_server.fusion import FORMS, fuse

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
    curve_users: int = 300               # validation users scored after every epoch (a seeded sample)
    fusion_forms: list[str] = field(default_factory=lambda: list(FORMS))

    def validate(self) -> None:
        for form in self.fusion_forms:
            if form not in FORMS:
                raise ValueError(f"ranker.fusion_forms: unknown form '{form}'; known: {', '.join(FORMS)}")
        if not self.fusion_forms:
            raise ValueError("ranker.fusion_forms must name at least one form")
        if self.max_ndcg_drop < 0 or self.calibration_rows < 1:
            raise ValueError("ranker.max_ndcg_drop must be >= 0 and calibration_rows >= 1")


def list_ndcg(rep: Replay, scores: np.ndarray, k: int = 10) -> float:
    """NDCG@k of every validation user's recalled candidates ordered by ``scores`` [R]."""
    return ndcg_at_k(rep.lists(scores, k), rep.truth_indptr, rep.truth_items, k)


def task_probs(model, rep: Replay) -> np.ndarray:
    """Task probabilities [R, T] of a torch model over every row of ``rep``."""
    return torch.sigmoid(mmoe_logits(model, rep.sparse, rep.bag, rep.dense)).numpy()


def fusion_search(probs: np.ndarray, rep: Replay, forms: list[str]) -> dict:
    """Best (form, weights) by validation NDCG@10 of the fused order; the whole grid is returned too."""
    grid = {}
    best = None
    for form, like, rating in itertools.product(forms, FUSION_GRID, FUSION_GRID):
        weights = {"click": 1.0, "like": like, "rating": rating}
        score = list_ndcg(rep, fuse(probs, TASKS, weights, form))
        grid[f"{form} like={like:g} rating={rating:g}"] = round(score, 4)
        if best is None or score > best[0] + 1e-9:
            best = (score, form, weights)
    return {"form": best[1], "weights": best[2], "validation_ndcg@10": round(best[0], 4), "grid": grid}


def train_with_curve(schema: RankSchema, cfg: MMoEConfig, train: tuple, dense: np.ndarray, valid: Replay,
                     teacher=None, distill: DistillConfig | None = None):
    """Train for ``cfg.epochs`` epochs, scoring the click head on ``valid`` after each; returns
    ``(model, log, curve)`` with ``curve[e-1]`` = validation NDCG@10 after epoch e."""
    curve: list[float] = []

    def on_epoch(model, epoch):
        curve.append(round(list_ndcg(valid, task_probs(model, valid)[:, 0]), 4))

    model, mlog = train_mmoe(None, None, cfg, schema, teacher=teacher, distill=distill, examples=train,
                             dense=dense, on_epoch=on_epoch)
    return model, mlog, curve


def best_epochs(curve: list[float]) -> int:
    """The 1-based epoch with the best validation score (the earliest on ties)."""
    return int(np.argmax(curve)) + 1 if curve else 1


def export_models(out_dir: Path, schema: RankSchema, teacher, student, prerank) -> None:
    """The three ONNX files (teacher for reference, student served, pre-rank served) under ``out_dir``."""
    for model, name in ((teacher, TEACHER_FILE), (student, STUDENT_FILE), (prerank, PRERANK_FILE)):
        export_mmoe_onnx(model, str(out_dir / name), schema.n_fields, schema.n_bag)


def choose_int8_mode(out_dir: Path, valid: Replay, calib: tuple, fusion: dict, max_drop: float) -> dict:
    """Dynamic and static int8 of the student in ``out_dir``, each scored by validation NDCG@10 of the fused
    order and timed on one user's 200 candidates; the faster one within ``max_drop`` of fp32 wins."""
    from export.quantize import latency_ms

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
                 distill: DistillConfig, train: tuple, dense: np.ndarray, valid: Replay | None = None) -> dict:
    """Teacher, student distilled from it, pre-rank distilled from it, on ``train`` / ``dense``.

    With ``valid``, the teacher and student record validation curves (choices); without, they train for
    their configured epochs (the published retrain, epochs already chosen)."""
    t0 = time.perf_counter()
    out: dict = {"training": {}}
    if valid is not None:
        teacher, t_log, t_curve = train_with_curve(schema, teacher_cfg, train, dense, valid)
        student, s_log, s_curve = train_with_curve(schema, student_cfg, train, dense, valid, teacher, distill)
        out["curve_users"] = int(valid.users.size)
        out["curves"] = {"teacher": t_curve, "student": s_curve}
    else:
        teacher, t_log = train_mmoe(None, None, teacher_cfg, schema, examples=train, dense=dense)
        student, s_log = train_mmoe(None, None, student_cfg, schema, teacher=teacher, distill=distill,
                                    examples=train, dense=dense)
    t_logits = mmoe_logits(teacher, train[0], train[1], dense)
    prerank, p_log = train_prerank(schema, prerank_cfg, train, t_logits, dense=dense)
    out.update(teacher=teacher, student=student, prerank=prerank)
    out["training"] = {"mmoe_teacher": t_log, "mmoe_student": s_log, "prerank": p_log,
                       "seconds": round(time.perf_counter() - t0, 2)}
    return out
