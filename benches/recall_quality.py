"""Recall quality benchmark: our channels and merged list against implicit's ALS on the same time split.

    python -m benches.recall_quality [--snapshot snapshots] [--factors 64] [--json out.json]

Reads the snapshot's dataset and holdout fraction from its manifest, rebuilds the same per-user temporal
split (``export.data.split.make_split``), evaluates every recall channel and the merged list with the serving
code (``export.evaluation.recall.evaluate_recall``), trains ALS (64 factors) on the training part over a small grid
of regularization / confidence scaling and reports the best grid point (tuned on the held-out split, the
same advantage the merge weights had). Needs the optional ``bench`` extra (``implicit``); not part of export.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit warns (and slows down) otherwise

import numpy as np  # noqa: E402


def als_predictions(train, n_users: int, n_items: int, users: np.ndarray, k: int, factors: int,
                    regularization: float, alpha: float, iterations: int, threads: int) -> np.ndarray:
    """Top-k ALS recommendations [len(users), k] (seen items filtered), -1 padded."""
    import scipy.sparse as sp
    from implicit.als import AlternatingLeastSquares

    pairs = np.unique(train.user.astype(np.int64) * n_items + train.item.astype(np.int64))
    matrix = sp.csr_matrix((np.ones(pairs.size, np.float32), (pairs // n_items, pairs % n_items)),
                           shape=(n_users, n_items))
    model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha,
                                    iterations=iterations, random_state=0, num_threads=threads)
    model.fit(matrix, show_progress=False)
    ids, _ = model.recommend(users, matrix[users], N=k, filter_already_liked_items=True)
    pred = np.full((users.size, k), -1, np.int64)
    pred[:, : ids.shape[1]] = ids
    return pred


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benches.recall_quality", description=__doc__.split("\n")[0])
    parser.add_argument("--snapshot", default="snapshots", help="snapshot root or version directory")
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the table as JSON here")
    args = parser.parse_args(argv)
    try:
        import implicit  # noqa: F401
    except ImportError:
        print("bench_quality: needs implicit (pip install -e '.[bench]')", file=sys.stderr)
        return 2

    from common.snapshot import Snapshot
    from export.config import ExportConfig
    from export.evaluation.recall import evaluate_recall, truth_csr
    from export.evaluation.metrics import hit_rate_at_k, recall_at_k
    from export.pipeline import load_dataset
    from export.data.split import make_split

    snapshot = Snapshot.open(args.snapshot)
    saved = snapshot.manifest["config"]
    config = ExportConfig(dataset=saved["dataset"], data_dir=saved["data_dir"], holdout_frac=saved["holdout_frac"])
    ks = list(saved.get("eval_k") or [50, 200, 1000])
    ds = load_dataset(config)
    split = make_split(ds, config.holdout_frac)

    t0 = time.perf_counter()
    ours = evaluate_recall(snapshot, ds, split.test, ks)
    t_ours = time.perf_counter() - t0
    indptr, items = truth_csr(split.test, ds.n_users)
    users = np.flatnonzero(np.diff(indptr) > 0)
    sub_indptr = np.concatenate([[0], np.cumsum(np.diff(indptr)[users])])
    sub_items = np.concatenate([items[indptr[u]:indptr[u + 1]] for u in users])

    grid = []
    for reg in (0.01, 0.1, 1.0):
        for alpha in (1.0, 10.0, 40.0):
            t0 = time.perf_counter()
            pred = als_predictions(split.train, ds.n_users, ds.n_items, users, max(ks), args.factors, reg, alpha,
                                   args.iterations, args.threads)
            row = {f"recall@{k}": round(recall_at_k(pred, sub_indptr, sub_items, k), 4) for k in ks}
            row.update({f"hit_rate@{k}": round(hit_rate_at_k(pred, sub_indptr, sub_items, k), 4) for k in ks})
            grid.append(({"regularization": reg, "alpha": alpha, "seconds": round(time.perf_counter() - t0, 2)},
                         row))
    best_params, best = max(grid, key=lambda g: g[1][f"recall@{ks[0]}"] + g[1][f"recall@{ks[min(1, len(ks) - 1)]}"])

    # channel rows only ("users", "reach" and "cold_truth" describe the evaluation)
    table = {name: row for name, row in ours.items() if isinstance(row, dict) and f"recall@{ks[0]}" in row}
    table[f"als{args.factors}"] = best
    print(f"snapshot {snapshot.version}: {ours['users']} users with held-out items, "
          f"split: {snapshot.manifest['dataset']['split']}")
    print(f"ALS best of {len(grid)} grid points: {best_params} (all: "
          + ", ".join(f"reg={p['regularization']} alpha={p['alpha']} r@{ks[0]}={r[f'recall@{ks[0]}']}"
                      for p, r in grid) + ")")
    cols = [f"recall@{k}" for k in ks] + [f"hit_rate@{k}" for k in ks]
    print(f"{'':18}" + "".join(f"{c:>15}" for c in cols))
    for name, row in table.items():
        print(f"{name:18}" + "".join(f"{row[c]:>15.4f}" for c in cols))
    print(f"catalogue share each channel can return: {json.dumps(ours['reach'])}")
    print(f"(our channels evaluated in {t_ours:.1f} s through recall_server.recall; "
          f"'popular' is the popularity baseline)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"table": table, "reach": ours["reach"], "als_grid": grid, "als_best": best_params}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
