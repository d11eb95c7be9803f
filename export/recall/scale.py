"""Recall quality of one recall build on the validation part, without the rest of the export:
``python -m export.recall.scale --build DIR --synthetic N_ITEMS``.

    python -m export.recall.scale --build DIR [--synthetic N_ITEMS] [--users 400] [--json PATH]

``DIR`` is a directory written by ``export.recall.build.build_recall`` from log rows before the validation
part: an export's ``.replay-*/cut-train`` or ``cut-valid`` (a published snapshot has seen the validation rows
and recall excludes them, so every row would read 0). Reports, on validation users:

* the ANN index against exact search over every item's vector (``export.recall.ann_index.choose_hnsw`` over the
  index the build holds, for its ``M`` and the default ``ef`` grid): recall@100 and single-query p50 / p99;
* the merge fitted as export fits it (``export.recall.merge_fit.fit_merge``): each channel alone, the start and the
  fitted merged list at K = 50, 200, 1,000;
* on synthetic data, the generator's oracle row (``export.data.synthetic.oracle_metrics``).

It exists because a whole 10^6-item export takes far longer than its recall stages on a loaded machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.recall.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--build", required=True, help="a recall build directory (see above)")
    parser.add_argument("--synthetic", type=int, metavar="N_ITEMS", help="the synthetic catalogue it was built from")
    parser.add_argument("--synthetic-users", type=int, metavar="U", help="as for python -m export")
    parser.add_argument("--users", type=int, default=400, help="validation users (seeded sample)")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)

    from common.config import load_config
    from common.snapshot import Snapshot
    from export.__main__ import synthetic_overrides
    from export.recall.ann_index import choose_hnsw, load_hnsw
    from export.config import ExportConfig
    from export.pipeline import load_dataset
    from export.recall.merge_fit import fit_merge
    from export.data.split import make_split
    from recall_server.channels.ann import user_vector
    from recall_server.config import RecallConfig
    from recall_server.recall import build_query
    from recall_server.state import load_state

    build = Path(args.build)
    if not (build / "manifest.json").exists():
        print(f"recall_scale: {build} has no manifest.json (not a recall build)", file=sys.stderr)
        return 2
    overrides = synthetic_overrides(args.synthetic, args.synthetic_users) if args.synthetic else []
    config = load_config(ExportConfig, None, overrides)
    t0 = time.perf_counter()
    ds = load_dataset(config)
    split = make_split(ds, config.holdout_frac, valid_frac=config.valid_frac)
    report: dict = {"build": str(build), "dataset": ds.name, "part": "validation"}

    snapshot = Snapshot.open(build, verify=False)
    try:
        rcfg = RecallConfig(snapshot=str(build), use_fitted=False)
        state = load_state(snapshot, rcfg)
        users = np.unique(split.valid.user)
        users = np.sort(np.random.default_rng(0).choice(users, min(args.users, users.size), replace=False))
        queries = np.stack([user_vector(state, build_query(state, rcfg, str(ds.user_ids[u]), None, [])[0])
                            for u in users.tolist()]).astype(np.float32)
        emb = snapshot.load_array("item_emb.npy")
        ann = snapshot.manifest.get("ann_index", {})
        M = int(ann.get("M", config.hnsw.M))
        index = load_hnsw(build / "items.hnsw", emb.shape[1], ds.n_items)
        h = config.hnsw
        # every item against the index the build holds (its routing nodes included), over the ef grid
        report["ann_index"], _ = choose_hnsw(emb, np.arange(ds.n_items, dtype=np.int32), queries, [M],
                                             list(h.ef_grid), h.ef_construction, h.target_recall, config.threads,
                                             built={M: index})
        report["ann_index"].update(items=int(ds.n_items), routing_nodes=int(ann.get("routing_nodes", 0)))
    finally:
        snapshot.close()
    report["merge"] = fit_merge(build, ds, split.valid, config.recall_n, ks=config.eval_k, max_users=args.users)
    if config.dataset == "synthetic":
        from export.data.synthetic import oracle_metrics

        sample = split.valid.subset(np.isin(split.valid.user, users))
        report["oracle"] = oracle_metrics(config.synthetic, sample, split.train, ds.n_users, config.eval_k)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    ann = report["ann_index"]
    print(f"ann index: {ann['items']} items, {ann['routing_nodes']} routing nodes, M {ann['M']}, chosen ef "
          f"{ann['ef']}; recall@100 vs exact / p50: " + "; ".join(
              f"ef {r['ef']}: {r['recall@100_vs_exact']} / {r['p50_ms']} ms" for r in ann["curve"]))
    merge = report["merge"]
    rows = {**merge["channels"], "merged (start)": merge["start"], "merged (fitted)": merge["validation"]}
    if "oracle" in report:
        rows["oracle"] = report["oracle"]
    cols = [f"recall@{k}" for k in config.eval_k]
    print(f"validation part, {merge['users']} users:")
    print(f"{'source':18}" + "".join(f"{c:>13}" for c in cols))
    for name, row in rows.items():
        print(f"{name:18}" + "".join(f"{row.get(c, float('nan')):>13.4f}" for c in cols))
    print(f"fitted weights {json.dumps(merge['weights'])} quotas {json.dumps(merge['quotas'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
