"""int8 quantization of the ranking ONNX models with onnxruntime.quantization.

Two candidates, both quantizing only MatMul/Gemm (the embedding Gather reads
int64 codes and stays fp32):

* dynamic: int8 weights, activations quantized per batch at run time (``quantize_dynamic``);
* static: int8 weights and activations with scales from a calibration pass over
  real feature batches (``quantize_static`` with a :class:`FeatureBatchReader`, QDQ format).

:func:`choose_int8` measures both for quality (AUC per task vs. fp32) and
latency (one batch of candidates, one thread) and keeps the faster among those
within ``max_auc_drop`` of fp32 on every task; none passing → fp32 is kept.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

OP_TYPES = ["MatMul", "Gemm"]
# the ranking models' inputs in order; a model without dense features takes the first two
INPUTS = (("sparse", np.int64), ("bag", np.float32), ("dense", np.float32))


def feeds(arrays: tuple[np.ndarray, ...], start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
    """``{"sparse", "bag"[, "dense"]}`` rows ``start:stop`` of the positional input arrays."""
    return {name: np.ascontiguousarray(a[start:stop], dtype) for (name, dtype), a in zip(INPUTS, arrays)}


class FeatureBatchReader(CalibrationDataReader):
    """Calibration batches ``{"sparse", "bag"[, "dense"]}`` cut from real assembled feature rows."""

    def __init__(self, *arrays: np.ndarray, batch_size: int = 100):
        self._batches = [feeds(arrays, s, s + batch_size) for s in range(0, arrays[0].shape[0], batch_size)]
        self._it = iter(self._batches)

    def get_next(self) -> dict | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization logs a pre-processing hint on the root logger at every call; it does not
    apply to these small MLPs (nothing to fuse) and would print three times per export."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_dynamic_int8(src: str | Path, dst: str | Path) -> None:
    """Dynamic int8 quantization of MatMul/Gemm weights."""
    with _quiet_root_logger():
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=OP_TYPES, weight_type=QuantType.QInt8)


def quantize_static_int8(src: str | Path, dst: str | Path, *arrays: np.ndarray) -> None:
    """Static int8 (QDQ) quantization of MatMul/Gemm, calibrated on ``sparse``/``bag``[/``dense``] rows."""
    with _quiet_root_logger():
        quantize_static(str(src), str(dst), FeatureBatchReader(*arrays), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=OP_TYPES, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, per_channel=False)


def session(path: str | Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads, sequential execution."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_predict(sess: ort.InferenceSession, *arrays: np.ndarray, batch_size: int = 16384) -> np.ndarray:
    """All outputs stacked as float32 [M, T] for the positional inputs (sparse, bag[, dense])."""
    outs = []
    for s in range(0, arrays[0].shape[0], batch_size):
        o = sess.run(None, feeds(arrays, s, s + batch_size))
        outs.append(np.stack([np.asarray(a, np.float32).reshape(-1) for a in o], axis=1))
    return np.concatenate(outs) if outs else np.zeros((0, len(sess.get_outputs())), np.float32)


def latency_ms(sess: ort.InferenceSession, *arrays: np.ndarray, repeats: int = 200,
               warmup: int = 20) -> dict[str, float]:
    """p50/p99 milliseconds of one ``run`` on the given batch (sparse, bag[, dense])."""
    feed = feeds(arrays)
    for _ in range(warmup):
        sess.run(None, feed)
    times = np.empty(repeats)
    for r in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times[r] = time.perf_counter() - t0
    return {"p50_ms": round(float(np.percentile(times, 50)) * 1e3, 4),
            "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 4)}


def choose_int8(
    fp32_path: str | Path, out_path: str | Path, calib: tuple[np.ndarray, ...],
    evaluate, bench_batch: tuple[np.ndarray, ...], max_auc_drop: float = 0.005,
) -> dict:
    """Quantize dynamic and static, keep the faster one of equal quality at ``out_path``.

    ``evaluate(session) -> {metric: value}`` scores a session on validation rows (higher is better: AUC
    per task, or a list metric such as NDCG@10); ``calib`` / ``bench_batch`` are (sparse, bag[, dense])
    rows: the calibration rows and the batch timed on one thread. Returns a
    record: per candidate metrics, latency and whether it passed; ``choice`` is
    "dynamic", "static" or "fp32" (no int8 candidate kept quality: ``out_path``
    then holds a copy of the fp32 model, so the file always exists).
    """
    out_path = Path(out_path)
    fp32 = session(fp32_path)
    base = evaluate(fp32)
    record: dict = {"fp32": {"auc": base, **latency_ms(fp32, *bench_batch)}, "max_auc_drop": max_auc_drop}
    tmp = {"dynamic": out_path.with_suffix(".dynamic.onnx"), "static": out_path.with_suffix(".static.onnx")}
    quantize_dynamic_int8(fp32_path, tmp["dynamic"])
    quantize_static_int8(fp32_path, tmp["static"], *calib)
    best, best_p50 = "fp32", float("inf")
    for name, path in tmp.items():
        sess = session(path)
        aucs = evaluate(sess)
        ok = all(np.isfinite(aucs[t]) and base[t] - aucs[t] <= max_auc_drop for t in base)
        lat = latency_ms(sess, *bench_batch)
        record[name] = {"auc": aucs, **lat, "within_quality": bool(ok)}
        if ok and lat["p50_ms"] < best_p50:
            best, best_p50 = name, lat["p50_ms"]
    if best == "fp32":
        out_path.write_bytes(Path(fp32_path).read_bytes())
    else:
        tmp[best].replace(out_path)
    for path in tmp.values():
        path.unlink(missing_ok=True)
    record["choice"] = best
    return record
