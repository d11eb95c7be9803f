"""The MMoE section of the export: teacher, distilled student, ONNX fp32 + int8, metrics and parity;
and the pre-rank distilled from the same teacher (export.prerank), ONNX fp32 + int8."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from common.log import get_logger
from common.rank_features import RankSchema
from export.dataset import Dataset, Interactions
from export.metrics import auc, gauc
from export.mmoe import (
    TASKS,
    DistillConfig,
    MMoEConfig,
    export_mmoe_onnx,
    make_mmoe_examples,
    mmoe_logits,
    predict_mmoe,
    train_mmoe,
)
from export.prerank import PrerankConfig, train_prerank
from export.quantize import choose_int8, onnx_predict, session

log = get_logger("export")

STUDENT_FILE = "models/rank_mmoe.onnx"
INT8_FILE = "models/rank_mmoe.int8.onnx"
TEACHER_FILE = "models/rank_mmoe_teacher.onnx"
PRERANK_FILE = "models/prerank.onnx"
PRERANK_INT8_FILE = "models/prerank.int8.onnx"
PRERANK_INT8_MIN_GAIN = 0.05   # the int8 pre-rank serves only when its p50 is >= 5% below fp32's


def task_metrics(p: np.ndarray, labels: dict[str, np.ndarray], users: np.ndarray) -> dict:
    """AUC and GAUC (per user) per task: click on all rows; like and rating on clicked rows.

    The rating task is scored against the like label (rating >= threshold) for AUC/GAUC
    and also reports RMSE in stars (output x 5 vs. the rating).
    """
    m = labels["mask"] > 0
    out = {"click": {"auc": round(auc(labels["click"], p[:, 0]), 4),
                     "gauc": round(gauc(labels["click"], p[:, 0], users), 4), "examples": int(p.shape[0])}}
    for t, name in ((1, "like"), (2, "rating")):
        out[name] = {"auc": round(auc(labels["like"][m], p[m, t]), 4),
                     "gauc": round(gauc(labels["like"][m], p[m, t], users[m]), 4), "examples": int(m.sum())}
    out["rating"]["rmse_stars"] = round(float(np.sqrt(np.mean((p[m, 2] * 5 - labels["rating"][m] * 5) ** 2))), 4)
    return out


def build_mmoe(ds: Dataset, train: Interactions, test: Interactions, schema: RankSchema, student_cfg: MMoEConfig,
               teacher_cfg: MMoEConfig, distill: DistillConfig, snapshot_dir: Path,
               prerank_cfg: PrerankConfig | None = None) -> dict:
    """Train teacher, distilled student (and, for comparison, the student on labels alone) and the
    pre-rank distilled from the teacher; export ONNX fp32 and int8, and measure everything.

    Returns ``{"metrics", "parity", "training", "quantization", "serving_model", "prerank_serving_model"}``;
    ``serving_model`` is the int8 file when a quantized model kept quality, else the fp32 one;
    ``prerank_serving_model`` is the int8 pre-rank when it kept quality and was faster than fp32
    (by :data:`PRERANK_INT8_MIN_GAIN`), else the fp32 one.
    """
    prerank_cfg = prerank_cfg or PrerankConfig()
    t0 = time.perf_counter()
    examples = make_mmoe_examples(ds, train, schema, student_cfg.neg_per_pos, student_cfg.seed,
                                  student_cfg.like_threshold, student_cfg.max_rating)
    teacher, t_log = train_mmoe(ds, train, teacher_cfg, schema, examples=examples)
    student, s_log = train_mmoe(ds, train, student_cfg, schema, teacher=teacher, distill=distill,
                                examples=examples)
    plain, plain_log = train_mmoe(ds, train, student_cfg, schema, examples=examples)  # distillation's effect
    prerank, pre_log = train_prerank(schema, prerank_cfg, examples, mmoe_logits(teacher, examples[0], examples[1]))
    export_mmoe_onnx(prerank, str(snapshot_dir / PRERANK_FILE), schema.n_fields, schema.n_bag)
    export_mmoe_onnx(student, str(snapshot_dir / STUDENT_FILE), schema.n_fields, schema.n_bag)
    export_mmoe_onnx(teacher, str(snapshot_dir / TEACHER_FILE), schema.n_fields, schema.n_bag)

    sparse, bag, labels = make_mmoe_examples(ds, test, schema, student_cfg.neg_per_pos, student_cfg.seed + 1,
                                             student_cfg.like_threshold, student_cfg.max_rating)
    users = sparse[:, 0]
    p_teacher = predict_mmoe(teacher, sparse, bag)
    p_student = predict_mmoe(student, sparse, bag)
    p_plain = predict_mmoe(plain, sparse, bag)
    p_prerank = predict_mmoe(prerank, sparse, bag)
    p_prerank_onnx = onnx_predict(session(snapshot_dir / PRERANK_FILE, threads=2), sparse, bag)
    p_onnx = onnx_predict(session(snapshot_dir / STUDENT_FILE, threads=2), sparse, bag)
    p_teacher_onnx = onnx_predict(session(snapshot_dir / TEACHER_FILE, threads=2), sparse, bag)

    def evaluate(sess) -> dict[str, float]:
        p = onnx_predict(sess, sparse, bag)
        m = task_metrics(p, labels, users)
        return {t: m[t]["auc"] for t in TASKS}

    rng = np.random.default_rng(student_cfg.seed)
    calib = rng.choice(sparse.shape[0], size=min(512, sparse.shape[0]), replace=False)
    # the serving batch shape: one user against 200 candidates
    pick = rng.choice(sparse.shape[0], size=min(200, sparse.shape[0]), replace=False)
    bench_sparse, bench_bag = sparse[pick].copy(), bag[pick]
    bench_sparse[:, 0] = sparse[0, 0]
    quant = choose_int8(snapshot_dir / STUDENT_FILE, snapshot_dir / INT8_FILE, (sparse[calib], bag[calib]),
                        evaluate, (bench_sparse, bench_bag))
    p_int8 = onnx_predict(session(snapshot_dir / INT8_FILE, threads=2), sparse, bag)
    serving = INT8_FILE if quant["choice"] != "fp32" else STUDENT_FILE
    # pre-rank: the serving batch is one user against 1,000 candidates; int8 only if faster than fp32
    pick = rng.choice(sparse.shape[0], size=min(1000, sparse.shape[0]), replace=False)
    pre_sparse, pre_bag = sparse[pick].copy(), bag[pick]
    pre_sparse[:, 0] = sparse[0, 0]
    pre_quant = choose_int8(snapshot_dir / PRERANK_FILE, snapshot_dir / PRERANK_INT8_FILE,
                            (sparse[calib], bag[calib]), evaluate, (pre_sparse, pre_bag))
    p_prerank_int8 = onnx_predict(session(snapshot_dir / PRERANK_INT8_FILE, threads=2), sparse, bag)
    pre_choice = pre_quant["choice"]
    # "faster" beyond timing noise: at least PRERANK_INT8_MIN_GAIN less p50 than fp32 in the same run
    pre_faster = (pre_choice != "fp32" and pre_quant[pre_choice]["p50_ms"]
                  < (1.0 - PRERANK_INT8_MIN_GAIN) * pre_quant["fp32"]["p50_ms"])
    pre_quant["int8_min_gain"] = PRERANK_INT8_MIN_GAIN
    pre_quant["serving"] = PRERANK_INT8_FILE if pre_faster else PRERANK_FILE
    prerank_serving = pre_quant["serving"]
    log.info("mmoe_done", seconds=round(time.perf_counter() - t0, 2), quantization=quant["choice"])
    return {
        "metrics": {"mmoe_teacher": task_metrics(p_teacher, labels, users),
                    "mmoe_student": task_metrics(p_student, labels, users),
                    "mmoe_student_onnx_fp32": task_metrics(p_onnx, labels, users),
                    "mmoe_student_onnx_int8": task_metrics(p_int8, labels, users),
                    "mmoe_student_no_distill": task_metrics(p_plain, labels, users),
                    "prerank": task_metrics(p_prerank_onnx, labels, users),
                    "prerank_onnx_int8": task_metrics(p_prerank_int8, labels, users)},
        "parity": {"mmoe_student_max_abs_diff": float(np.abs(p_onnx - p_student).max()),
                   "prerank_max_abs_diff": float(np.abs(p_prerank_onnx - p_prerank).max()),
                   "mmoe_teacher_max_abs_diff": float(np.abs(p_teacher_onnx - p_teacher).max()),
                   "mmoe_int8_vs_fp32_mean_abs_diff": float(np.abs(p_int8 - p_onnx).mean())},
        "training": {"mmoe_teacher": t_log, "mmoe_student": s_log, "mmoe_student_no_distill": plain_log,
                     "prerank": pre_log},
        "quantization": quant,
        "prerank_quantization": pre_quant,
        "serving_model": serving,
        "prerank_serving_model": prerank_serving,
    }
