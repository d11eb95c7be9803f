"""Rank model latency, side by side: ``python -m benches.rank --snapshot DIR``.

One user against N candidates (default 200) assembled from the snapshot exactly
as the server does (sparse, bag and the dense candidate features), scored in one call on
one thread: torch eager teacher and student, ONNX fp32 (teacher and student), ONNX int8
student, and DeepFM; the pre-rank models on 1,000 candidates; the served student and pre-rank on one row (a
call's fixed cost: what micro-batching concurrent requests could save); and the whole rank stage
(``rank_server.rank.rank``: features, pre-rank 1,000 → 200, ranker, fusion) as the server runs it, in wall time
and in CPU-ms per call (issue 26's unit). A snapshot serving the sequence score (issue 30) adds the encoder's
rows: one history encoded (once per request), the score of 1,000 candidates, and the rank stage with that column
stubbed out (zeros, no encoding): the stage's cost without the sequence.

The snapshot holds ONNX files only, so the torch eager rows time freshly
initialised models of the exported architecture (the config in the manifest):
latency does not depend on the weights' values. Timings on a shared machine
are noisy: read p50, and compare rows of the same run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import numpy as np


def _percentiles(times: np.ndarray) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(times, 50)) * 1e3, 4),
            "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 4)}


def _time(fn, repeats: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    t = np.empty(repeats)
    for r in range(repeats):
        t0 = time.perf_counter()
        fn()
        t[r] = time.perf_counter() - t0
    return _percentiles(t)


def _cpu_ms(fn, repeats: int, warmup: int) -> float:
    """CPU-ms (this process, all threads) per call of ``fn``."""
    for _ in range(warmup):
        fn()
    t0 = time.process_time()
    for _ in range(repeats):
        fn()
    return round((time.process_time() - t0) / repeats * 1e3, 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", default="snapshots", help="snapshot root (CURRENT) or version directory")
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)

    import torch

    from common.rank_features import RankSchema
    from common.snapshot import Snapshot
    from export.config import ExportConfig
    from export.models.mmoe import MMoE
    from export.models.quantize import session
    from rank_server.config import RankConfig
    from rank_server.features import ItemFeatures, dense_features, load_dense, rank_inputs
    from rank_server.rank import load_state, rank

    torch.set_num_threads(1)
    snap = Snapshot.open(args.snapshot, verify=False)
    schema = RankSchema.from_dict(snap.schema["rank"])
    items = ItemFeatures.load(snap)
    n = min(args.candidates, items.n_items)
    item_idx = np.random.default_rng(0).choice(items.n_items, size=n, replace=False).astype(np.int32)
    user = snap.features.user(str(snap.features.array("user_ids")[0]))
    sparse, bag = rank_inputs(schema, items, user, len(snap.schema["user_cat_names"]), item_idx, 10**9)
    tables, sequence = load_dense(snap, schema, threads=1)

    def dense_of(idx):
        return dense_features(tables, sequence, user.hist, user.seen.size, idx) if tables is not None else None

    dense = dense_of(item_idx)

    cfg = ExportConfig()
    for key, value in snap.manifest.get("config", {}).get("mmoe", {}).items():
        setattr(cfg.mmoe, key, value)
    for key, value in snap.manifest.get("config", {}).get("mmoe_teacher", {}).items():
        setattr(cfg.mmoe_teacher, key, value)
    rows: dict[str, dict] = {}
    xs, xb = torch.from_numpy(sparse), torch.from_numpy(bag)
    xd = torch.from_numpy(dense) if dense is not None else None
    for name, mcfg in (("torch eager teacher", cfg.mmoe_teacher), ("torch eager student", cfg.mmoe)):
        model = MMoE(schema, mcfg, n_dense=len(schema.dense_names)).eval()

        def run(model=model):
            with torch.no_grad():
                model(xs, xb, xd)

        rows[name] = _time(run, args.repeats, 20)

    def feed_for(sess, sp, bg, de):
        names = {i.name for i in sess.get_inputs()}
        return {k: v for k, v in (("sparse", sp), ("bag", bg), ("dense", de)) if k in names}
    for name, file in (("onnx fp32 teacher", "models/rank_mmoe_teacher.onnx"),
                       ("onnx fp32 student", "models/rank_mmoe.onnx"),
                       ("onnx int8 student", "models/rank_mmoe.int8.onnx"),
                       ("onnx deepfm", "models/rank_deepfm.onnx")):
        try:
            sess = session(snap.file(file), threads=1)
        except Exception as exc:  # a snapshot without that model
            rows[name] = {"error": str(exc).splitlines()[0]}
            continue
        feed = feed_for(sess, sparse, bag, dense)
        rows[name] = _time(lambda sess=sess, feed=feed: sess.run(None, feed), args.repeats, 20)
    # pre-rank over 1,000 candidates (it keeps the top 200 for the MMoE)
    n_pre = min(1000, items.n_items)
    pre_idx = np.random.default_rng(1).choice(items.n_items, size=n_pre, replace=False).astype(np.int32)
    pre_sparse, pre_bag = rank_inputs(schema, items, user, len(snap.schema["user_cat_names"]), pre_idx, 10**9)
    pre_dense = dense_of(pre_idx)
    pre_serving = snap.manifest.get("prerank_serving_model")
    for name, file in (("prerank fp32", "models/prerank.onnx"),
                       ("prerank deepfm", "models/rank_deepfm.onnx")):
        label = f"{name} x{n_pre}" + (" *" if file == pre_serving else "")
        try:
            pre = session(snap.file(file), threads=1)
        except Exception as exc:
            rows[label] = {"error": str(exc).splitlines()[0]}
            continue
        feed = feed_for(pre, pre_sparse, pre_bag, pre_dense)
        rows[label] = _time(lambda pre=pre, feed=feed: pre.run(None, feed), args.repeats, 20)
    # one row: the fixed cost of a call, all that batching concurrent requests into one run could save
    served = snap.manifest.get("rank_serving_model", "models/rank_mmoe.int8.onnx")
    for name, file, sp, bg, de in ((f"served {served.split('/')[-1]}", served, sparse, bag, dense),
                                   (f"served {(pre_serving or 'models/prerank.onnx').split('/')[-1]}",
                                    pre_serving or "models/prerank.onnx", pre_sparse, pre_bag, pre_dense)):
        try:
            one = session(snap.file(file), threads=1)
        except Exception as exc:
            rows[f"{name} x1"] = {"error": str(exc).splitlines()[0]}
            continue
        feed = feed_for(one, sp[:1], bg[:1], de[:1] if de is not None else None)
        rows[f"{name} x1"] = _time(lambda one=one, feed=feed: one.run(None, feed), args.repeats, 20)
    state = load_state(snap, RankConfig(snapshot=str(snap.path), onnx_threads=1))
    user_id = str(snap.features.array("user_ids")[0])
    stage = f"rank stage x{n_pre} (features, pre-rank, ranker)"
    rows[stage] = _time(lambda: rank(state, RankConfig(), user_id, pre_idx, 10**9), args.repeats, 20)
    cpu = {stage: _cpu_ms(lambda: rank(state, RankConfig(), user_id, pre_idx, 10**9), args.repeats, 20)}
    if state.sequence is not None:
        seq, hist = state.sequence, snap.features.user(user_id).hist
        rows["sequence encode (1 history)"] = _time(lambda: seq.state(hist), args.repeats, 20)
        rows[f"sequence encode + score x{n_pre}"] = _time(lambda: seq.column(hist, pre_idx), args.repeats, 20)
        cpu["sequence encode + score"] = _cpu_ms(lambda: seq.column(hist, pre_idx), args.repeats, 20)

        class _Zeros:   # the same column width, no encoding: the stage's cost without the sequence
            @staticmethod
            def append(dense, hist, cand):
                return np.concatenate([dense, np.zeros((dense.shape[0], 1), np.float32)], axis=1)

        stubbed = dataclasses.replace(state, sequence=_Zeros())
        label = f"rank stage x{n_pre}, sequence stubbed"
        rows[label] = _time(lambda: rank(stubbed, RankConfig(), user_id, pre_idx, 10**9), args.repeats, 20)
        cpu[label] = _cpu_ms(lambda: rank(stubbed, RankConfig(), user_id, pre_idx, 10**9), args.repeats, 20)
    quant = snap.manifest.get("metrics", {}).get("selection", {}).get("int8", {}).get("choice")
    result = {"candidates": n, "prerank_candidates": n_pre, "threads": 1,
              "serving_model": snap.manifest.get("rank_serving_model"), "quantization": quant,
              "prerank_serving_model": pre_serving, "sequence": state.sequence is not None, "latency": rows,
              "cpu_ms_per_call": cpu}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"rank models, {n} candidates in one call, 1 thread (serving: {result['serving_model']}, "
          f"int8 choice: {quant}; pre-rank serving: {pre_serving}, marked *)")
    print(f"{'model':<26}{'p50 ms':>10}{'p99 ms':>10}")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:<26}  {r['error'][:60]}")
        else:
            print(f"{name:<26}{r['p50_ms']:>10.3f}{r['p99_ms']:>10.3f}")
    for name, ms in cpu.items():
        print(f"CPU-ms per call, {name}: {ms:.3f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
