"""The two-tower trained locally against Ray Train: ``python -m benches.two_tower_ray``.

    python -m benches.two_tower_ray [--synthetic 20000] [--users N] [--interactions M] [--rows 30000]
                                    [--epochs 2] [--seeds 0,1,2] [--workers 1,2] [--json PATH]

Loads and splits the seeded synthetic catalogue as the export does (``export.pipeline.load_and_split``), then
for each seed trains the towers on the training part: once in this process (``train_two_tower``, on a
``--rows`` user sample) and once per worker count on a fresh local Ray cluster
(``export.distributed.ray_train``, on ``--rows`` x workers rows, as ``engine = "ray"`` samples). Each model is
scored on the validation part: every validation user's vector from the training history, exact inner product
over every item's tower vector, the training items removed; recall@50 and @200 of the validation items.
Reports the mean and standard deviation over seeds per engine, the training wall time, and (Ray) each
worker's CPU seconds and peak RSS.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time

import numpy as np
import torch

from benches.report import save_json
from common.config import load_config
from export.__main__ import synthetic_overrides
from export.config import ExportConfig
from export.data.history import last_n
from export.evaluation.metrics import recall_at_k
from export.evaluation.recall import truth_csr, truth_subset
from export.models.two_tower import item_embeddings, train_two_tower, user_embeddings, user_inputs
from export.pipeline import load_and_split
from export.recall.build import sample_users

KS = (50, 200)


def validation_recall(ds, split, towers, max_users: int = 2000) -> dict[str, float]:
    """Exact two-tower recall@K on the validation part (training items excluded)."""
    user_tower, item_tower, _ = towers
    users = np.unique(split.valid.user)[:max_users]
    hist = last_n(split.train, ds.n_users, user_tower.history_len)
    u = user_embeddings(user_tower, user_inputs(ds, hist))[users]
    v = item_embeddings(item_tower, ds)
    scores = u @ v.T
    seen_u, seen_i = split.train.user, split.train.item
    pos = np.full(ds.n_users, -1, np.int64)
    pos[users] = np.arange(users.size)
    keep = pos[seen_u] >= 0
    scores[pos[seen_u[keep]], seen_i[keep]] = -np.inf
    part = np.argpartition(-scores, max(KS) - 1, axis=1)[:, :max(KS)]
    top = np.take_along_axis(part, np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1), axis=1)
    indptr, items = truth_subset(*truth_csr(split.valid, ds.n_users), users)
    return {f"recall@{k}": round(recall_at_k(top, indptr, items, k), 4) for k in KS}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benches.two_tower_ray", description=__doc__.split("\n")[0])
    p.add_argument("--synthetic", type=int, default=20000, help="synthetic items")
    p.add_argument("--users", type=int, default=None)
    p.add_argument("--interactions", type=int, default=None)
    p.add_argument("--rows", type=int, default=30000, help="two-tower sampled rows (per worker on Ray)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.0, help="two_tower.lr (0: the config's)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the local training")
    p.add_argument("--same-total", action="store_true",
                   help="also train each worker count > 1 on the local build's --rows in all (fewer rows per worker)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from export.distributed.ray_i2i import shutdown
    from export.distributed.ray_train import train_two_tower_ray

    torch.set_num_threads(args.threads)
    config = load_config(ExportConfig, None, [*synthetic_overrides(args.synthetic, args.users, args.interactions),
                                              f"two_tower.epochs={args.epochs}",
                                              f"two_tower.batch_size={args.batch_size}",
                                              *([f"two_tower.lr={args.lr}"] if args.lr else [])])
    data = load_and_split(config)
    ds, split = data.ds, data.split
    seeds = [int(s) for s in args.seeds.split(",")]
    report = {"items": ds.n_items, "users": ds.n_users, "train_rows": len(split.train),
              "valid_rows": len(split.valid), "rows_per_worker": args.rows, "epochs": args.epochs,
              "batch_size": args.batch_size, "lr": config.two_tower.lr, "runs": []}
    print(f"{ds.n_items:,} items, {ds.n_users:,} users, {len(split.train):,} training rows", file=sys.stderr)

    def record(engine: str, workers: int, seed: int, towers, wall: float, rows: int) -> None:
        run = {"engine": engine, "workers": workers, "seed": seed, "rows": rows, "train_s": round(wall, 2),
               **validation_recall(ds, split, towers)}
        log = towers[2]
        for key in ("cpu_s_per_worker", "peak_rss_mb_per_worker", "busiest_share", "steps_per_epoch"):
            if key in log:
                run[key] = log[key]
        run["final_loss"] = round(log["epoch_loss"][-1], 4)
        report["runs"].append(run)
        print(run, file=sys.stderr)

    for seed in seeds:
        cfg = dataclasses.replace(config.two_tower, seed=seed)
        sample = sample_users(split.train, ds.n_users, max_rows=args.rows, seed=1)
        t = time.perf_counter()
        towers = train_two_tower(ds, sample, cfg)
        record("local", 1, seed, towers, time.perf_counter() - t, len(sample))
    for workers in [int(w) for w in args.workers.split(",") if w]:
        rc = dataclasses.replace(config.ray, address="local", workers=workers)
        try:
            for engine, rows in [("ray", args.rows * workers)] + (
                    [("ray-same-total", args.rows)] if args.same_total and workers > 1 else []):
                for seed in seeds:
                    cfg = dataclasses.replace(config.two_tower, seed=seed)
                    sample = sample_users(split.train, ds.n_users, max_rows=rows, seed=1)
                    t = time.perf_counter()
                    with tempfile.TemporaryDirectory() as storage:
                        towers = train_two_tower_ray(ds, sample, cfg, rc, storage)
                    record(engine, workers, seed, towers, time.perf_counter() - t, len(sample))
        finally:
            shutdown()
    summary = {}
    for run in report["runs"]:
        summary.setdefault(f"{run['engine']}-{run['workers']}", []).append(run)
    report["summary"] = {
        name: {**{f"{m}_mean": round(float(np.mean([r[m] for r in runs])), 4) for m in (f"recall@{k}" for k in KS)},
               **{f"{m}_std": round(float(np.std([r[m] for r in runs], ddof=1)), 4) if len(runs) > 1 else None
                  for m in (f"recall@{k}" for k in KS)},
               "train_s_mean": round(float(np.mean([r["train_s"] for r in runs])), 2), "seeds": len(runs)}
        for name, runs in summary.items()}
    for name, s in report["summary"].items():
        print(name, s)
    if args.json:
        save_json(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
