"""The two cuts of the export (``export.pipeline.replay_cuts``) built once and kept on disk for experiments.

Building the cuts costs the export's two-tower training, the ANN choice, the merge fit and both replays
(~10 minutes on a shared 2-core machine for ML-100K). Experiments that only change what is learned from the
replays (a ranking feature, a model) load them from ``DIR`` instead:

    python -m export.ranking.cuts_cache /tmp/cuts            # builds DIR/cuts.pkl and DIR/work/ once

The work directory keeps the recall artifacts of both cuts (``cut-train``, ``cut-valid``: snapshot layouts).
"""
from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

CUTS_FILE = "cuts.pkl"


def build_or_load(root: Path, overrides: list[str] | None = None, config_path: str | None = None):
    """``(config, data, cuts)``: the export config, its :class:`export.pipeline.ExportData` and
    :class:`export.pipeline.Cuts`, from ``root/cuts.pkl`` when it exists (the recall builds' torch towers are
    dropped from the pickle), else built under ``root/work`` and saved."""
    import torch

    from common.config import load_config
    from export.config import ExportConfig
    from export.pipeline import load_and_split, replay_cuts

    config = load_config(ExportConfig, config_path, list(overrides or []))
    torch.set_num_threads(config.threads)
    data = load_and_split(config)
    root = Path(root)
    if (root / CUTS_FILE).exists():
        with open(root / CUTS_FILE, "rb") as f:
            cuts = pickle.load(f)
        return config, data, cuts
    root.mkdir(parents=True, exist_ok=True)
    cuts = replay_cuts(data.ds, data.split, config, data.schema, (root / "work").resolve())
    for build in (cuts.build_a, cuts.build_b):   # torch modules stay out of the pickle
        build.user_tower = build.item_tower = None
    with open(root / CUTS_FILE, "wb") as f:
        pickle.dump(cuts, f, protocol=pickle.HIGHEST_PROTOCOL)
    return config, data, cuts


def main(argv: list[str] | None = None) -> int:
    from common.config import add_config_flags

    parser = argparse.ArgumentParser(prog="python -m export.ranking.cuts_cache", description=__doc__.splitlines()[0])
    parser.add_argument("root", help="folder for cuts.pkl and work/")
    add_config_flags(parser)
    args = parser.parse_args(argv)
    _, data, cuts = build_or_load(Path(args.root), args.overrides, args.config)
    print(f"cuts in {args.root}: training cut {cuts.rep_a.users.size} users {cuts.rep_a.n_rows} rows, "
          f"validation cut {cuts.rep_b.users.size} users {cuts.rep_b.n_rows} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
