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
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.quick:
        overrides = ["two_tower.epochs=2", "deepfm.epochs=1", "mmoe.epochs=2", "mmoe_teacher.epochs=1", *overrides]
    if args.out:
        overrides.append(f"out={args.out}")
    if args.data_dir:
        overrides.append(f"data_dir={args.data_dir}")

    from export.config import ExportConfig
    from export.datasets import DataError
    from export.pipeline import run_export

    try:
        config = load_config(ExportConfig, args.config, overrides)
        path = run_export(config)
    except (ConfigError, DataError, SnapshotError, ValueError, OSError) as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 2
    metrics = json.loads((path / "manifest.json").read_text())["metrics"]
    print(f"snapshot {path}")
    print(json.dumps({k: metrics[k] for k in ("recall", "rank", "hnsw_recall@100_vs_exact", "parity")}, indent=2))
    return 0


def ensure_snapshot(root: str, quick: bool = False) -> bool:
    """Export into ``root`` unless it already has a CURRENT snapshot; False if the export failed."""
    from pathlib import Path

    if (Path(root) / "CURRENT").exists():
        return True
    print(f"no snapshot in {root}: exporting one from ML-100K (about a minute)", file=sys.stderr, flush=True)
    return main(["--out", str(root)] + (["--quick"] if quick else [])) == 0


if __name__ == "__main__":
    sys.exit(main())
