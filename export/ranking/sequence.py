"""The sequence score as a rank feature in the export (issue 30): train, choose on validation, publish.

1. :func:`add_sequence` (after the two cuts are replayed): an encoder (``export.models.sequence``) trains on the
   training cut's log and is written into the training cut's directory; another trains on the whole training
   part for the validation cut (as each cut's recall artifacts come from the log before it). Each replay gets
   the ``seq_score`` column (``common.sequence_features``: the served computation, through the ONNX encoder).
2. The gate, on validation (``sequence.gate``): the served student architecture trains on the training cut's
   examples with and without the column, ``ranker.curve_seeds`` seeds each, and orders every validation user's
   recalled candidates by its click head. The column stays only when the seed-averaged per-user NDCG@10 gain
   exceeds ``ranker.min_gain_se`` standard errors and it is better in every seed (the rule of the export's
   other choices, ``export.ranking.ranker.choose_epochs``); else the files are removed and the schema is as
   before. Phase 1 of issue 30 (``python -m export.ranking.sequence_ablation``, docs/results/
   2026-12-06-sequence-ranking.md) measured this gain on ML-100K: +0.0036 NDCG@10 at 2.5 SE (GRU).
3. :func:`publish_sequence`: the published encoder trains on train + validation, is exported into the snapshot
   and its ONNX states are compared with torch's (the manifest's parity).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from common.log import get_logger
from common.sequence_features import SEQ_COLUMN, SEQUENCE_FILE, SEQUENCE_ITEMS_FILE, SequenceScorer
from common.snapshot import Snapshot
from export.models.sequence import (
    SequenceConfig,
    export_sequence,
    next_item_ndcg,
    train_sequence,
    user_states,
)
from export.ranking.replay import Replay, examples

log = get_logger("export")


def _torch_threads(threads: int) -> None:
    """torch's thread count as configured: a Numba kernel on the OpenMP layer (the replays, the i2i tables) sets
    the process's OpenMP thread count to Numba's, so after one torch trains on every core whatever ``threads``
    says (measured: threads=1, 2 OpenMP threads afterwards; on a loaded 2-core machine a GRU epoch then took
    ~3x as long, the threads spinning at each region's barrier)."""
    import torch

    torch.set_num_threads(max(1, int(threads)))


def replay_column(rep: Replay, scorer: SequenceScorer, history: np.ndarray) -> np.ndarray:
    """float32 [R, 1]: every row's ``seq_score``, each user's state encoded once from ``history`` (the history the
    replay served: the cut's last ``history_len`` codes per user)."""
    states = scorer.states(history[rep.users].astype(np.int64)[:, -scorer.history_len:])
    owner = np.repeat(np.arange(rep.users.size), np.diff(rep.offsets))
    vecs = scorer.item_vecs[rep.item.astype(np.int64)]
    return np.einsum("rd,rd->r", states[owner], vecs).astype(np.float32)[:, None]


def with_column(rep: Replay, column: np.ndarray) -> Replay:
    """``rep`` with ``column`` appended to its dense matrix."""
    return dataclasses.replace(rep, dense=np.concatenate([rep.dense, column], axis=1))


def train_into(n_items: int, n_users: int, log_rows, cfg: SequenceConfig, path: Path, curve=None) -> tuple:
    """Train an encoder on ``log_rows`` and write it into the snapshot layout at ``path``; ``(model, log)``."""
    model, tlog = train_sequence(n_items, log_rows, n_users, cfg, on_epoch=curve)
    export_sequence(model, path)
    return model, tlog


def remove_sequence(path: Path) -> None:
    """Remove the encoder's files from a snapshot layout (the gate dropped the column)."""
    for name in (SEQUENCE_FILE, SEQUENCE_ITEMS_FILE):
        (Path(path) / name).unlink(missing_ok=True)


def gate(schema, cfg_student, rep_a: Replay, rep_b: Replay, col_a: np.ndarray, col_b: np.ndarray, rr,
         seeds: int, min_gain_se: float) -> dict:
    """The validation comparison of step 2 (module docstring): the student with and without the column."""
    from export.ranking.ranker import paired_gain, user_ndcg, task_probs
    from export.models.mmoe import train_mmoe

    rows = rep_a.sample(rr, rr.seed)
    (sparse, bag, labels), dense = examples(rep_a, rows)
    per_user = {"without": [], "with": []}
    for s in range(seeds):
        cfg = dataclasses.replace(cfg_student, seed=cfg_student.seed + s)
        for name, d_a, valid in (("without", dense, rep_b),
                                 ("with", np.concatenate([dense, col_a[rows]], 1), with_column(rep_b, col_b))):
            model, _ = train_mmoe(None, None, cfg, schema, examples=(sparse, bag, labels), dense=d_a)
            per_user[name].append(user_ndcg(valid, task_probs(model, valid)[:, 0]))
    mean = {k: np.mean(v, axis=0) for k, v in per_user.items()}
    gain, se = paired_gain(mean["with"], mean["without"])
    every = all(np.nanmean(w) > np.nanmean(o) for w, o in zip(per_user["with"], per_user["without"]))
    keep = bool(gain > min_gain_se * se and every)
    return {"rows": {k: round(float(np.nanmean(v)), 4) for k, v in mean.items()},
            "per_seed": {k: [round(float(np.nanmean(x)), 4) for x in v] for k, v in per_user.items()},
            "gain": round(gain, 5), "se": round(se, 5), "better_in_every_seed": every, "keep": keep,
            "users": int(rep_b.users.size),
            "rule": f"kept only when gain > {min_gain_se:g} x se and better in every seed",
            "measure": "student (labels only) click head over every recalled candidate, validation NDCG@10"}


def add_sequence(config, data, cuts, lap=lambda step: None):
    """Step 1 and 2 of the module docstring: ``(data, cuts, record)`` with the column (and the schema's
    ``seq_score``) where it pays, else unchanged; ``record`` goes into the manifest (None: sequence off)."""
    cfg: SequenceConfig = config.sequence
    if cfg.kind == "none":
        return data, cuts, None
    _torch_threads(cfg.threads)
    ds, split = data.ds, data.split
    curve: list[float] = []

    def on_epoch(model, epoch):   # the encoder alone on validation (next item, whole catalogue)
        curve.append(round(float(np.nanmean(next_item_ndcg(model, split.train, split.valid, ds.n_users,
                                                            cfg.history_len, max_users=config.eval_users))), 4))

    _, log_a = train_into(ds.n_items, ds.n_users, data.cut_train, cfg, cuts.build_a.path, on_epoch)
    _, log_b = train_into(ds.n_items, ds.n_users, split.train, cfg, cuts.build_b.path)
    _torch_threads(config.threads)   # the rankers below train on the export's threads
    lap("sequence_train")
    rep_b_small = cuts.rep_b.subset(config.ranker.curve_users, config.rank_replay.seed)   # the curves' users
    cols = []
    for build, reps in ((cuts.build_a, (cuts.rep_a,)), (cuts.build_b, (cuts.rep_b, rep_b_small))):
        snap = Snapshot.open(build.path, verify=False)
        try:   # the served computation: the ONNX encoder and the item vectors written above
            scorer = SequenceScorer.load(snap)
            cols.extend(replay_column(rep, scorer, build.history) for rep in reps)
        finally:
            snap.close()
    record = {"config": dataclasses.asdict(cfg), "validation_next_item_ndcg@10": curve,
              "training": {"training_cut": log_a, "validation_cut": log_b}}
    if cfg.gate:
        record["gate"] = gate(data.schema, config.mmoe, cuts.rep_a, rep_b_small, cols[0], cols[2],
                              config.rank_replay, config.ranker.curve_seeds, config.ranker.min_gain_se)
        log.info("sequence_gate", **{k: record["gate"][k] for k in ("rows", "gain", "se", "keep")})
    lap("sequence_gate")
    if cfg.gate and not record["gate"]["keep"]:
        for build in (cuts.build_a, cuts.build_b):
            remove_sequence(build.path)
        record["served"] = False
        return data, cuts, record
    record["served"] = True
    schema = dataclasses.replace(data.schema, dense_names=[*data.schema.dense_names, SEQ_COLUMN])
    cuts = cuts._replace(rep_a=with_column(cuts.rep_a, cols[0]), rep_b=with_column(cuts.rep_b, cols[1]))
    return dataclasses.replace(data, schema=schema), cuts, record


def publish_sequence(config, data, record: dict | None, path: Path, history: np.ndarray) -> dict | None:
    """Step 3: the published encoder (train + validation) in the snapshot at ``path``, with its ONNX parity
    over every user's served history; ``record`` completed (None when the sequence is off or not served)."""
    if record is None or not record.get("served"):
        return record
    ds = data.ds
    _torch_threads(config.sequence.threads)
    model, tlog = train_sequence(ds.n_items, data.split.known, ds.n_users, config.sequence)
    _torch_threads(config.threads)
    export_sequence(model, path)
    hist = np.asarray(history, np.int64)[:, -config.sequence.history_len:]
    torch_states = user_states(model, hist)
    snap = Snapshot.open(path, verify=False)
    try:
        scorer = SequenceScorer.load(snap)
        onnx_states = scorer.states(hist)
    finally:
        snap.close()
    # the served score of 200 items per user against torch's (states and item vectors both in play)
    rng = np.random.default_rng(0)
    cand = rng.integers(0, ds.n_items, size=(hist.shape[0], min(200, ds.n_items)))
    torch_vecs = model.item_vectors().detach().numpy()
    score_diff = max(float(np.abs(scorer.item_vecs[c] @ o - torch_vecs[c] @ t).max())
                     for c, o, t in zip(cand, onnx_states, torch_states)) if hist.shape[0] else 0.0
    record["training"]["published"] = tlog
    record["parity"] = {"sequence_state_max_abs_diff": float(np.abs(onnx_states - torch_states).max()),
                        "sequence_score_max_abs_diff": score_diff, "users": int(hist.shape[0])}
    return record
