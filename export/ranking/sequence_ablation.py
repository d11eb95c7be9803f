"""``python -m export.ranking.sequence_ablation``: does a user-sequence signal pay as a rank feature (issue 30)?

On the export's two cuts (``export.ranking.cuts_cache``: built once, then loaded), for each sequence encoder
kind (``export.models.sequence``):

1. The encoder trains on the training cut's log (``cut_train``) for the training cut's features, and another on
   the whole training part for the validation cut's, as every recall artifact is built from the log before its
   cut (the published snapshot's encoder would know train + validation, so the ranker always meets an encoder
   it was not trained with). Its own next-item NDCG@10 on the validation part after every epoch is its curve.
2. The candidate's score against the user's state (``state · item_vec``, the state encoded once per user from
   the history the replay served: the last ``history_len`` items) becomes one more dense column,
   ``seq_score``.
3. The served student architecture (``mmoe``) trains on the training cut's examples with and without that
   column, for ``--seeds`` seeds (the same seeds for both), labels only (no teacher: the question is the
   feature, and the teacher would get it too). Each is scored on the validation cut after every epoch: NDCG@10
   of the click head ordering all of recall's candidates (the funnel's ``full_rank`` row); after the last
   epoch also the final list (the best ``rank_n`` reranked by MMR at the export's default lambda, with the
   business rules: the funnel's ``rerank`` row).
4. The rule the export's choices use (``export.ranking.ranker.choose_epochs``): the feature pays only when the
   seed-averaged per-user gain exceeds ``min_gain_se`` standard errors *and* it is better in every seed.

    python -m export.ranking.sequence_ablation --cache /tmp/cuts --seeds 3 --kinds gru,sasrec --out result.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np


def row_owner(rep) -> np.ndarray:
    """The dense user id of every row of a replay."""
    return np.repeat(rep.users, np.diff(rep.offsets))


def seq_column(rep, states: np.ndarray, item_vecs: np.ndarray) -> np.ndarray:
    """float32 [R, 1]: each row's ``state[user] · item_vec[item]``."""
    owner = row_owner(rep)
    return np.einsum("rd,rd->r", states[owner], item_vecs[rep.item]).astype(np.float32)[:, None]


def final_lists(rep, scores: np.ndarray, emb: np.ndarray, items, rules, params, rank_n: int, k: int) -> np.ndarray:
    """Per user, the best ``rank_n`` recalled rows by ``scores`` reranked to ``k`` (``rerank_ruled``): [U, k]."""
    from rerank_server.rerank import rerank_ruled

    top = rep.lists(scores, rank_n)
    out = np.full((top.shape[0], k), -1, np.int64)
    for u in range(top.shape[0]):
        cand = top[u][top[u] >= 0]
        if cand.size == 0:
            continue
        sc = np.arange(cand.size, 0, -1, dtype=np.float32)   # the rank order's scores: only the order matters
        picked = rerank_ruled(emb, cand.astype(np.int32), sc, min(k, cand.size), params, items, rules)
        out[u, :picked.positions.size] = cand[picked.positions]
    return out


def main(argv: list[str] | None = None) -> int:
    from common.config import add_config_flags

    parser = argparse.ArgumentParser(prog="python -m export.ranking.sequence_ablation",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, help="export.ranking.cuts_cache folder (built when missing)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--kinds", default="gru", help="encoder kinds, comma separated (gru, sasrec)")
    parser.add_argument("--seq", action="append", default=[], metavar="KEY=VALUE",
                        help="a SequenceConfig field (e.g. epochs=10, dim=32); repeatable")
    parser.add_argument("--reuse-encoder", action="store_true",
                        help="the training cut's encoder also serves the validation cut (as the two-tower does)")
    parser.add_argument("--din", action="store_true",
                        help="also candidate (b): target attention inside the MMoE over the history "
                             "(export.models.din), reading each kind's item vectors")
    parser.add_argument("--no-score", action="store_true", help="skip candidate (a), the seq_score column")
    parser.add_argument("--mmr-lambda", type=float, default=0.7, help="the final list's MMR lambda")
    parser.add_argument("--out", help="write the result as JSON here")
    add_config_flags(parser)
    args = parser.parse_args(argv)

    import torch

    from common.snapshot import Snapshot
    from export.evaluation.metrics import ndcg_per_user, recall_at_k
    from export.models.din import din_probs, train_din
    from export.models.sequence import SequenceConfig, item_vectors, next_item_ndcg, train_sequence, user_states
    from export.ranking.cuts_cache import build_or_load
    from export.ranking.ranker import paired_gain, task_probs, train_with_curve
    from export.ranking.replay import examples
    from rerank_server.config import RerankConfig
    from rerank_server.items import load_item_attributes
    from rerank_server.rerank import resolve_params

    config, data, cuts = build_or_load(Path(args.cache), args.overrides, args.config)
    torch.set_num_threads(config.threads)
    ds, split, rr = data.ds, data.split, config.rank_replay
    rep_a, rep_b = cuts.rep_a, cuts.rep_b
    (sparse, bag, labels), dense = examples(rep_a, rep_a.sample(rr, rr.seed))
    rows_a = rep_a.sample(rr, rr.seed)
    snap = Snapshot.open(cuts.build_b.path, verify=False)
    try:
        items = load_item_attributes(snap, RerankConfig().rules.blocked_item_ids)
        emb = snap.load_array("item_emb.npy")
    finally:
        snap.close()
    rules = RerankConfig().rules.params()
    mmr = resolve_params(RerankConfig(use_fitted=False), "MMR", mmr_lambda=args.mmr_lambda)
    seq_over = {}
    for kv in args.seq:
        key, value = kv.split("=", 1)
        seq_over[key] = type(getattr(SequenceConfig(), key))(value)
    result: dict = {"users": int(rep_b.users.size), "seeds": args.seeds, "student": dataclasses.asdict(config.mmoe),
                    "protocol": "student (labels only) on the training cut's examples; validation cut: click head "
                                "over all recall candidates (full_rank) and the final MMR list",
                    "encoders": {}, "rows": {}}

    def evaluate(name: str, dense_a: np.ndarray, dense_b: np.ndarray, din: tuple | None = None) -> dict:
        """``din``: (item vectors of the training cut, of the validation cut) for the target-attention MMoE."""
        per_seed, finals, curves = [], [], []
        valid = dataclasses.replace(rep_b, dense=dense_b)
        for s in range(args.seeds):
            cfg = dataclasses.replace(config.mmoe, seed=config.mmoe.seed + s)
            t0 = time.perf_counter()
            if din is None:
                model, _, curve, _ = train_with_curve(data.schema, cfg, (sparse, bag, labels), dense_a, valid)
                click = task_probs(model, valid)[:, 0]
            else:
                curve = []

                def score_valid(model):
                    model.set_item_vectors(din[1])
                    p = din_probs(model, valid.sparse, valid.bag, valid.dense, hist_b)[:, 0]
                    model.set_item_vectors(din[0])
                    return p

                def din_epoch(model, epoch):
                    curve.append(ndcg_per_user(valid.lists(score_valid(model), 10), valid.truth_indptr,
                                               valid.truth_items, 10))

                model, _ = train_din(data.schema, cfg, (sparse, bag, labels), dense_a, hist_a, din[0], din_epoch)
                click = score_valid(model)
            fin = final_lists(valid, click, emb, items, rules, mmr, config.rank_n, config.k)
            finals.append(ndcg_per_user(fin, valid.truth_indptr, valid.truth_items, 10))
            per_seed.append(curve[-1])
            curves.append([round(float(np.nanmean(c)), 4) for c in curve])
            rec10 = recall_at_k(valid.lists(click, 10), valid.truth_indptr, valid.truth_items, 10)
            print(f"{name:28s} seed {s}: full_rank ndcg@10 {np.nanmean(curve[-1]):.4f} recall@10 {rec10:.4f} "
                  f"final ndcg@10 {np.nanmean(finals[-1]):.4f} curve {curves[-1]} "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        return {"per_user": np.mean(per_seed, axis=0), "per_user_final": np.mean(finals, axis=0),
                "seed_rank": [float(np.nanmean(c)) for c in per_seed],
                "seed_final": [float(np.nanmean(c)) for c in finals], "curves": curves}

    def compare(ev: dict, base: dict) -> dict:
        row = summary(ev)
        for key, per_user, seeds in (("rank", "per_user", "seed_rank"), ("final", "per_user_final", "seed_final")):
            gain, se = paired_gain(ev[per_user], base[per_user])
            every = all(a > b for a, b in zip(ev[seeds], base[seeds]))
            row[f"{key}_gain"] = {"gain": round(gain, 5), "se": round(se, 5), "better_in_every_seed": every,
                                  "pays": bool(gain > config.ranker.min_gain_se * se and every)}
        return row

    owner_a = row_owner(rep_a)[rows_a]
    hist_a = cuts.build_a.history[owner_a]
    hist_b = cuts.build_b.history[row_owner(rep_b)]
    recall_order = ndcg_per_user(rep_b.lists(-rep_b.dense[:, 0], 10), rep_b.truth_indptr, rep_b.truth_items, 10)
    result["rows"]["recall order"] = {"ndcg@10": round(float(np.nanmean(recall_order)), 4)}
    base = evaluate("without", dense[:, :], rep_b.dense)
    result["rows"]["without"] = summary(base)
    for kind in [k.strip() for k in args.kinds.split(",") if k.strip()]:
        scfg = dataclasses.replace(SequenceConfig(kind=kind), **seq_over)
        curve_a: list[float] = []

        def on_epoch(model, epoch):
            curve_a.append(round(float(np.nanmean(next_item_ndcg(model, split.train, split.valid, ds.n_users,
                                                                  scfg.history_len))), 4))
            print(f"encoder {kind} epoch {epoch}: validation next-item ndcg@10 {curve_a[-1]}", file=sys.stderr,
                  flush=True)

        enc_a, log_a = train_sequence(ds.n_items, data.cut_train, ds.n_users, scfg, on_epoch)
        enc_b, log_b = (enc_a, log_a) if args.reuse_encoder else train_sequence(ds.n_items, split.train,
                                                                                  ds.n_users, scfg)
        result["encoders"][kind] = {"config": dataclasses.asdict(scfg), "validation_next_item_ndcg@10": curve_a,
                                    "log_training_cut": log_a, "log_validation_cut": log_b,
                                    "reuse": bool(args.reuse_encoder)}
        col_a = seq_column(rep_a, user_states(enc_a, cuts.build_a.history), item_vectors(enc_a))[rows_a]
        col_b = seq_column(rep_b, user_states(enc_b, cuts.build_b.history), item_vectors(enc_b))
        # the feature alone, ordering each user's recalled candidates
        if args.din:
            vec_a, vec_b = item_vectors(enc_a), item_vectors(enc_b)
            with_din = evaluate(f"with {kind} DIN", dense, rep_b.dense, (vec_a, vec_b))
            result["rows"][f"with {kind} target attention"] = compare(with_din, base)
        if args.no_score:
            continue
        alone = ndcg_per_user(rep_b.lists(col_b[:, 0], 10), rep_b.truth_indptr, rep_b.truth_items, 10)
        result["rows"][f"{kind} score alone"] = {"ndcg@10": round(float(np.nanmean(alone)), 4)}
        with_seq = evaluate(f"with {kind}", np.concatenate([dense, col_a], 1), np.concatenate([rep_b.dense, col_b], 1))
        result["rows"][f"with {kind}"] = compare(with_seq, base)
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


def summary(ev: dict) -> dict:
    """Mean rank / final NDCG@10 over users (seed-averaged), per seed, and the per-epoch curves."""
    return {"rank_ndcg@10": round(float(np.nanmean(ev["per_user"])), 4),
            "final_ndcg@10": round(float(np.nanmean(ev["per_user_final"])), 4),
            "per_seed_rank": [round(v, 4) for v in ev["seed_rank"]],
            "per_seed_final": [round(v, 4) for v in ev["seed_final"]], "curves": ev["curves"]}


if __name__ == "__main__":
    sys.exit(main())
