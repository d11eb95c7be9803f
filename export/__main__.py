"""``python -m export``: train, build and publish a snapshot. Errors print one line and exit 2."""
from __future__ import annotations

import argparse
import json
import sys

from common.config import ConfigError, add_config_flags, load_config
from common.snapshot import SnapshotError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export",
                                     description="Train the models and publish a versioned snapshot")
    add_config_flags(parser)
    parser.add_argument("--out", help="snapshot root (default: snapshots)")
    parser.add_argument("--data-dir", help="folder with the dataset files")
    parser.add_argument("--quick", action="store_true", help="few epochs: for tests and smoke checks")
    parser.add_argument("--synthetic", type=int, metavar="N_ITEMS",
                        help="generate a synthetic catalogue of N_ITEMS items (export.data.synthetic) instead of loading "
                             "data; training scales down with N (see synthetic_overrides); default --out "
                             "snapshots-synthetic-N_ITEMS")
    parser.add_argument("--synthetic-users", type=int, metavar="U", help="synthetic users (default N_ITEMS / 10)")
    parser.add_argument("--synthetic-interactions", type=int, metavar="M",
                        help="synthetic interactions (default 50 per user)")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.quick:
        overrides = ["two_tower.epochs=2", "deepfm.epochs=1", "mmoe.epochs=2", "mmoe_teacher.epochs=1", "prerank.epochs=1", *overrides]
    if args.synthetic is not None:
        overrides = [*synthetic_overrides(args.synthetic, args.synthetic_users, args.synthetic_interactions),
                     *overrides]
        if not args.out:
            args.out = synthetic_root(args.synthetic)
    if args.out:
        overrides.append(f"out={args.out}")
    if args.data_dir:
        overrides.append(f"data_dir={args.data_dir}")

    from export.config import ExportConfig
    from export.data.atomic import DataError
    from export.pipeline import run_export

    try:
        config = load_config(ExportConfig, args.config, overrides)
        path = run_export(config)
    except (ConfigError, DataError, SnapshotError, ValueError, OSError) as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 2
    manifest = json.loads((path / "manifest.json").read_text())
    print(f"snapshot {path}")
    print(summary(manifest))
    return 0


def summary(manifest: dict) -> str:
    """The funnel tables (validation, then test with the peers) and the choices behind them, as text."""
    from export.evaluation.funnel import format_funnel

    m = manifest["metrics"]
    sel = m["selection"]
    merge, ann = manifest.get("recall_merge", {}), manifest.get("ann_index", {})
    funnel = m["funnel"]
    lines = [f"validation part ({funnel['validation']['users']} users; models trained on the training cut):",
             format_funnel(funnel["validation"]), "",
             f"test part ({funnel['test']['users']} users; published models; read once):",
             format_funnel(funnel["test"], m["peers"].get("rows")), "",
             f"choices on validation: epochs {sel['epochs']}, fusion {sel['fusion']['form']} "
             f"{sel['fusion']['weights']}, int8 {sel['int8']['choice']}, rerank {sel['rerank']['choice']}, "
             f"rank order {sel.get('rank_order', {}).get('order', 'model')}",
             f"recall merge fitted on validation: weights {json.dumps(merge.get('weights'))}, quotas "
             f"{json.dumps(merge.get('quotas'))}; merged {json.dumps(merge.get('validation'))} vs channels "
             f"{json.dumps(merge.get('channels'))}",
             f"ann index: {json.dumps({k: ann.get(k) for k in ('items', 'M', 'ef', 'min_count')})}, "
             f"test query {json.dumps(m.get('ann_query'))}",
             "recall (test): " + "; ".join(f"{name} {json.dumps({k: v for k, v in row.items() if k.startswith('recall@')})}"
                                           for name, row in m["recall"].items()
                                           if name != "users" and isinstance(row, dict) and row
                                           and any(k.startswith("recall@") for k in row)),
             f"hnsw recall@100 vs exact: {m['hnsw_recall@100_vs_exact']}; export {manifest['timings_s']['total']:.0f} s"]
    return "\n".join(lines)


def synthetic_root(n_items: int) -> str:
    """The default snapshot root of a synthetic catalogue of ``n_items`` items."""
    return f"snapshots-synthetic-{n_items}"


def synthetic_overrides(n_items: int, users: int | None = None, interactions: int | None = None) -> list[str]:
    """Config overrides of ``--synthetic N_ITEMS``: the generator's sizes, and training scaled to what a
    2-core machine exports in minutes (later ``--set`` overrides win). Offline metrics always use 500
    held-out users. From 50,000 items every model trains one epoch with larger batches: the two-tower and
    DeepFM on at most 300,000 rows (sampled users; ``two_tower.max_train_rows`` trains the towers on more:
    10^6 rows took over 20 minutes of a loaded 2-core machine at 10^6 items), the MMoE family and the pre-rank
    on the replay of 5,000 sampled users (``rank_replay.max_users``: replaying all 10^5 users took ~7 ms each
    and, before the replay kept only its training sample, 24 GB). The ANN index holds every item, the ones the
    two-tower did not see by their features-only vector (``export.recall.ann_index``). The sequence encoder
    trains one epoch of 2,048-row batches. Id tables of 10^5 rows or more train with sparse gradients
    (``export.models.fit``).
    The recall merge is fitted on 1,000 validation users (``recall_fit_users``): 2,000 took 70 s of an
    11-minute 10^6 export on a slow day, and fits on 1,000 held on the other 1,000 (``export.recall.merge_fit``)."""
    out = ["dataset=synthetic", f"synthetic.n_items={n_items}", "eval_users=500"]
    if users:
        out.append(f"synthetic.n_users={users}")
    if interactions:
        out.append(f"synthetic.n_interactions={interactions}")
    if n_items >= 50_000:
        out += ["two_tower.epochs=1", "deepfm.epochs=1", "mmoe.epochs=1", "mmoe_teacher.epochs=1",
                "max_train_rows=300000", "two_tower.batch_size=2048", "deepfm.batch_size=8192",
                "mmoe.batch_size=8192", "mmoe_teacher.batch_size=8192", "prerank.epochs=1", "prerank.batch_size=8192",
                "rank_replay.max_users=5000", "recall_fit_users=1000",
                # the sequence encoder trains twice on the whole cut (3.1 M rows at 10^6 items): one epoch of
                # larger batches, as the other models (8 epochs of 256 were over 4 minutes an epoch there)
                "sequence.epochs=1", "sequence.batch_size=2048"]
    return out


def ensure_snapshot(root: str, quick: bool = False, synthetic: int | None = None) -> bool:
    """Export into ``root`` unless it already has a CURRENT snapshot; False if the export failed.

    ``synthetic``: export a synthetic catalogue of that many items instead of ML-100K.
    """
    from pathlib import Path

    if (Path(root) / "CURRENT").exists():
        return True
    # the full ML-100K export trains and chooses every model on validation: 5-6 minutes on 2 cores
    what = (f"a synthetic catalogue of {synthetic} items" if synthetic
            else "ML-100K (about a minute)" if quick else "ML-100K (about 6 minutes on 2 cores)")
    print(f"no snapshot in {root}: exporting one from {what}", file=sys.stderr, flush=True)
    extra = ["--synthetic", str(synthetic)] if synthetic else []
    return main(["--out", str(root), *extra] + (["--quick"] if quick else [])) == 0


if __name__ == "__main__":
    sys.exit(main())
