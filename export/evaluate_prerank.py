"""Does pre-rank keep what rank would have liked? Measured with the serving code on the built snapshot.

For a sample of held-out users: the recall server's ~1,000 candidates (``recall_server.recall.recall``),
the rank server's feature assembly, the served ranker's fused score (``rank_server``'s sessions and fusion)
and each pre-rank model's score as the rank server computes it (:func:`rank_server.rank.prerank_scores`).
The metric is the fraction of the ranker's top ``k`` among all candidates that survive the pre-rank cut to
``keep`` (:func:`topk_survival`); also reported: the fraction of the user's held-out items among the
candidates that survive the cut.
"""
from __future__ import annotations

import numpy as np

from common.rank_features import RankSchema
from common.snapshot import Snapshot
from export.dataset import Dataset, Interactions
from export.evaluate import truth_csr
from rank_server.features import ItemFeatures, rank_inputs
from rank_server.fusion import weighted_product
from rank_server.model import RankModel
from rank_server.rank import prerank_scores, prerank_top
from recall_server.config import RecallConfig
from recall_server.recall import recall
from recall_server.state import load_state


def topk_survival(rank_scores: np.ndarray, prerank_scores: np.ndarray, k: int = 50, keep: int = 200) -> float:
    """Fraction of the ``k`` best candidates by ``rank_scores`` that are among the ``keep`` best by
    ``prerank_scores`` (ties: the earlier candidate, as in the rank server). 1.0 when nothing is cut
    (``n <= keep``); NaN for no candidates."""
    n = int(rank_scores.shape[0])
    if n == 0:
        return float("nan")
    if n <= keep:
        return 1.0
    k = min(k, n)
    top_rank = np.lexsort((np.arange(n), -rank_scores))[:k]
    kept = np.zeros(n, bool)
    kept[prerank_top(prerank_scores, keep)] = True
    return float(kept[top_rank].mean())


def evaluate_prerank(snapshot: Snapshot, ds: Dataset, test: Interactions, rank_file: str,
                     prerank_files: dict[str, str], fusion: dict[str, float], n_users: int = 300,
                     n_candidates: int = 1000, k: int = 50, keep: int = 200, seed: int = 0) -> dict:
    """Top-``k`` survival of each pre-rank model (name → file in the snapshot) over sampled held-out users."""
    state = load_state(snapshot, RecallConfig(snapshot=str(snapshot.path)))
    rconfig = RecallConfig(snapshot=str(snapshot.path))
    schema = RankSchema.from_dict(snapshot.schema["rank"])
    tasks = list(snapshot.schema["rank_tasks"])
    items = ItemFeatures.load(snapshot)
    n_user_fields = len(snapshot.schema["user_cat_names"])
    ranker = RankModel(snapshot.file(rank_file), schema, tasks, 1)
    pre = {}
    for name, file in prerank_files.items():
        model = RankModel(snapshot.file(file), schema, tasks, 1)
        if not set(tasks) <= set(model.outputs):
            model.task_names = ["prerank"]
        pre[name] = model
    indptr, truth = truth_csr(test, ds.n_users)
    users = np.flatnonzero(np.diff(indptr) > 0)
    rng = np.random.default_rng(seed)
    users = np.sort(rng.choice(users, size=min(n_users, users.size), replace=False))
    first_ts = np.full(ds.n_users, 0, np.int64)
    order = np.lexsort((test.timestamp, test.user))
    first = np.flatnonzero(np.r_[True, np.diff(test.user[order]) != 0])
    first_ts[test.user[order][first]] = test.timestamp[order][first]
    surv: dict[str, list[float]] = {name: [] for name in pre}
    held: dict[str, list[float]] = {name: [] for name in pre}
    n_cand = []
    for u in users:
        user_id = str(ds.user_ids[u])
        cand = recall(state, rconfig, user_id, n_candidates).ids.astype(np.int32)
        cand = cand[(cand >= 0) & (cand < items.n_items)]
        n_cand.append(cand.size)
        if cand.size == 0:
            continue
        sparse, bag = rank_inputs(schema, items, snapshot.features.user(user_id), n_user_fields, cand,
                                  int(first_ts[u]))
        fused = weighted_product(ranker.predict(sparse, bag), tasks, fusion)
        is_truth = np.isin(cand, truth[indptr[u]:indptr[u + 1]])
        for name, model in pre.items():
            s = prerank_scores(model, sparse, bag, fusion)
            surv[name].append(topk_survival(fused, s, k, keep))
            if is_truth.any():
                kept = np.zeros(cand.size, bool)
                kept[prerank_top(s, keep)] = True
                held[name].append(float(kept[is_truth].mean()))
    out: dict = {"users": int(users.size), "k": k, "keep": keep, "rank_model": rank_file,
                 "mean_candidates": round(float(np.mean(n_cand)), 1) if n_cand else 0.0,
                 # what a random cut would keep of rank's top k
                 "random_expected": round(float(np.mean([min(1.0, keep / c) for c in n_cand if c])), 4)
                 if any(n_cand) else None}
    for name in pre:
        out[name] = {"model": prerank_files[name],
                     f"rank_top{k}_survival": round(float(np.nanmean(surv[name])), 4) if surv[name] else None,
                     "heldout_survival": round(float(np.mean(held[name])), 4) if held[name] else None}
    return out
