"""``python -m export.ranking.ablation``: what each ranking feature group adds, on the validation part.

Builds the two cuts exactly as the export does (``export.pipeline.replay_cuts``), then trains the served
student architecture on the training cut once per row below and scores it on the validation cut: NDCG@10
and recall@10 of the student's click head ordering all of recall's candidates (no pre-rank, no rerank), beside
recall's own order. A row removes one group of dense features (zeroed in training and validation) or flips
the id embeddings (``mmoe.use_ids``); "ids only" is the old ranker's input (ids and categories, no dense
features).

    python -m export.ranking.ablation                  # ML-100K, about 5 minutes on 2 cores
    python -m export.ranking.ablation --set mmoe.epochs=3
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

GROUPS = {
    "recall position, score, channels": ("recall_pos", "recall_score", "ch:"),
    "item-to-item vs history (itemcf, swing)": ("itemcf_hist", "swing_hist", "itemcf_last"),
    "next-item transitions": ("next_last",),
    "embedding similarity to history": ("emb_mean", "emb_max", "emb_last"),
    "popularity, recent popularity, activity": ("pop", "recent_pop", "user_activity"),
}


def main(argv: list[str] | None = None) -> int:
    from common.config import ConfigError, add_config_flags, load_config

    parser = argparse.ArgumentParser(prog="python -m export.ranking.ablation", description=__doc__.splitlines()[0])
    add_config_flags(parser)
    args = parser.parse_args(argv)
    import torch

    from export.config import ExportConfig
    from export.evaluation.metrics import recall_at_k
    from export.pipeline import load_dataset, rank_schema, replay_cuts
    from export.ranking.replay import examples
    from export.ranking.ranker import list_ndcg, task_probs
    from export.models.mmoe import train_mmoe
    from export.data.split import make_split

    try:
        config = load_config(ExportConfig, args.config, list(args.overrides))
    except ConfigError as exc:
        print(f"ablation: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(config.threads)
    ds = load_dataset(config)
    split = make_split(ds, config.holdout_frac, valid_frac=config.valid_frac)
    schema = rank_schema(ds)
    with tempfile.TemporaryDirectory() as work:
        _, _, rep_a, rep_b, _, _ = replay_cuts(ds, split, config, schema, Path(work))
    (sparse, bag, labels), dense = examples(rep_a, rep_a.sample(config.rank_replay, config.rank_replay.seed))
    names = schema.dense_names

    def score(order_scores):
        lists = rep_b.lists(order_scores, 10)
        return {"ndcg@10": round(list_ndcg(rep_b, order_scores), 4),
                "recall@10": round(recall_at_k(lists, rep_b.truth_indptr, rep_b.truth_items, 10), 4)}

    rows = {"recall order": score(-rep_b.dense[:, 0])}
    base = config.mmoe
    variants = {"all features": (None, base.use_ids), "ids only (no dense features)": ("all", True),
                ("with" if not base.use_ids else "without") + " id embeddings": (None, not base.use_ids)}
    variants.update({f"without {g}": (prefixes, base.use_ids) for g, prefixes in GROUPS.items()})
    for name, (drop, use_ids) in variants.items():
        keep = np.ones(len(names), bool)
        if drop == "all":
            keep[:] = False
        elif drop:
            keep = np.array([not n.startswith(drop) for n in names])
        cfg = dataclasses.replace(base, use_ids=use_ids)
        if drop == "all":
            model, _ = train_mmoe(None, None, cfg, schema, examples=(sparse, bag, labels))
            p = task_probs(model, dataclasses.replace(rep_b, dense=None))
        else:
            model, _ = train_mmoe(None, None, cfg, schema, examples=(sparse, bag, labels), dense=dense * keep)
            p = task_probs(model, dataclasses.replace(rep_b, dense=rep_b.dense * keep))
        rows[name] = score(p[:, 0])
        print(f"{name:48s} {rows[name]}", file=sys.stderr, flush=True)
    print(f"validation part, {rep_b.users.size} users, student ({config.mmoe.epochs} epochs) click head over "
          f"all of recall's candidates:")
    print("row".ljust(50) + "ndcg@10".rjust(10) + "recall@10".rjust(11))
    for name, m in rows.items():
        print(name.ljust(50) + f"{m['ndcg@10']:10.4f}{m['recall@10']:11.4f}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
