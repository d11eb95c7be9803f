"""Offline diversity and relevance cost of each rerank method, computed with the serving code (DESIGN §8).

For every user with held-out items: recall (``recall_server.recall.recall``) → rank
(``rank_server.rank.rank``) → the top ``n_candidates`` by rank score → rerank to ``k`` with NONE, MMR,
DPP and DPP_WINDOW, each without and with the configured business rules. Per method, averaged over users:

* ``ils``               intra-list similarity: mean pairwise cosine of the items' ``item_emb`` (lower = more diverse)
* ``genre_coverage``    genres covered by the union of the items' genre bags / all genres
* ``distinct_primary``  distinct primary categories (first genre, see ``rerank_server.items``) in the list
* ``mean_rank_score``   mean rank (fused) score of the list: the relevance it keeps
* ``ndcg_vs_rank``      NDCG@k of the list with gain = rank score, ideal = the rank order's top k
* ``hit_rate@k``, ``recall@k`` against the held-out items
* ``relaxed_share``     (ruled variants) share of lists where some rule had to be relaxed
"""
from __future__ import annotations

import time

import numpy as np

from common.snapshot import Snapshot
from export.dataset import Dataset, Interactions
from export.evaluate import truth_csr
from export.metrics import hit_rate_at_k, recall_at_k
from rank_server.config import RankConfig
from rank_server.rank import load_state as load_rank_state
from rank_server.rank import rank
from recall_server.config import RecallConfig
from recall_server.recall import recall
from recall_server.state import load_state as load_recall_state
from rerank_server.config import RerankConfig, RulesConfig
from rerank_server.items import load_item_attributes
from rerank_server.rerank import rerank_ruled, resolve_params

METHODS = ("NONE", "MMR", "DPP", "DPP_WINDOW")


def list_metrics(pred: np.ndarray, pred_scores: np.ndarray, ideal_scores: np.ndarray, emb: np.ndarray,
                 bag: np.ndarray, category: np.ndarray) -> dict[str, float]:
    """Diversity and relevance-cost metrics of lists ``pred`` [U, k] (all rows full), averaged over rows."""
    k = pred.shape[1]
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    vec = unit[pred]                                            # [U, k, D]
    gram = np.einsum("ukd,ujd->ukj", vec, vec)
    ils = (gram.sum(axis=(1, 2)) - np.trace(gram, axis1=1, axis2=2)) / (k * (k - 1))
    coverage = (bag[pred] != 0).any(axis=1).sum(axis=1) / bag.shape[1]
    cats = np.sort(category[pred], axis=1)
    distinct = 1 + (np.diff(cats, axis=1) != 0).sum(axis=1) - (cats[:, 0] < 0)  # -1 (no genre) is not a category
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    ndcg = (pred_scores @ discount) / np.maximum(ideal_scores @ discount, 1e-12)
    return {"ils": float(ils.mean()), "genre_coverage": float(coverage.mean()),
            "distinct_primary": float(distinct.mean()), "mean_rank_score": float(pred_scores.mean()),
            "ndcg_vs_rank": float(ndcg.mean())}


def evaluate_rerank(snapshot: Snapshot, ds: Dataset, test: Interactions, k: int = 10, n_candidates: int = 200,
                    recall_n: int = 500, dpp_window: int = 5, rerank_config: RerankConfig | None = None,
                    max_users: int | None = None) -> dict:
    """Diversity / relevance of NONE, MMR, DPP, DPP_WINDOW (plain and ``+rules``) over held-out users.

    ``recall_n`` candidates are recalled and ranked per user, the best ``n_candidates`` by rank score
    are reranked to ``k``. DPP_WINDOW runs with ``dpp_window`` (a window >= k would equal plain DPP
    on a k-long list); the other parameters come from ``rerank_config``. Users whose funnel yields
    fewer than ``k`` candidates are skipped (counted).
    """
    t0 = time.perf_counter()
    rcfg = rerank_config or RerankConfig(snapshot=str(snapshot.path))
    recall_cfg = RecallConfig(snapshot=str(snapshot.path))
    rank_cfg = RankConfig(snapshot=str(snapshot.path))
    recall_state = load_recall_state(snapshot, recall_cfg)
    rank_state = load_rank_state(snapshot, rank_cfg)
    emb = snapshot.load_array("item_emb.npy")
    items = load_item_attributes(snapshot, rcfg.rules.blocked_item_ids)
    variants = {}
    for method in METHODS:
        params = resolve_params(rcfg, method, window=dpp_window if method == "DPP_WINDOW" else None)
        variants[method] = (params, RulesConfig(enabled=False).params())
        variants[f"{method}+rules"] = (params, rcfg.rules.params())

    indptr, truth = truth_csr(test, ds.n_users)
    users = np.flatnonzero(np.diff(indptr) > 0)
    if max_users is not None:
        users = users[:max_users]
    first_ts = np.full(ds.n_users, np.iinfo(np.int64).max)
    np.minimum.at(first_ts, test.user, test.timestamp.astype(np.int64))

    pred = {name: np.full((users.size, k), -1, np.int64) for name in variants}
    pred_scores = {name: np.zeros((users.size, k)) for name in variants}
    relaxed = {name: 0 for name in variants}
    ideal = np.zeros((users.size, k))
    kept = np.zeros(users.size, bool)
    for row, u in enumerate(users):  # offline, once per user: the serving functions are per request
        user_id = str(ds.user_ids[u])
        cands = recall(recall_state, recall_cfg, user_id, recall_n).ids
        ranked = rank(rank_state, rank_cfg, user_id, cands, int(first_ts[u]))
        top = np.lexsort((np.arange(ranked.fused.size), -ranked.fused))[:n_candidates]
        idx, scores = ranked.item_idx[top], ranked.fused[top]
        if idx.size < k:
            continue
        kept[row] = True
        ideal[row] = scores[:k]
        for name, (params, rules) in variants.items():
            result = rerank_ruled(emb, idx, scores, k, params, items, rules)
            if result.positions.size < k:
                kept[row] = False
                break
            pred[name][row] = idx[result.positions]
            pred_scores[name][row] = scores[result.positions]
            relaxed[name] += bool(result.relaxed_rules)

    sub = users[kept]
    sub_indptr = np.concatenate([[0], np.cumsum(np.diff(indptr)[sub])])
    sub_truth = np.concatenate([truth[indptr[u]:indptr[u + 1]] for u in sub]) if sub.size else truth[:0]
    out: dict = {"users": int(sub.size), "skipped_users": int(users.size - sub.size), "k": k,
                 "candidates": n_candidates, "recall_n": recall_n, "mmr_lambda": rcfg.mmr_lambda,
                 "dpp_alpha": rcfg.dpp_alpha, "dpp_window": dpp_window,
                 "category": "first genre of the item's bag", "methods": {}}
    for name in variants:
        p = pred[name][kept]
        m = list_metrics(p, pred_scores[name][kept], ideal[kept], emb, items.bag, items.category)
        m[f"hit_rate@{k}"] = hit_rate_at_k(p, sub_indptr, sub_truth, k)
        m[f"recall@{k}"] = recall_at_k(p, sub_indptr, sub_truth, k)
        if name.endswith("+rules"):
            m["relaxed_share"] = relaxed[name] / max(sub.size, 1)
        out["methods"][name] = {key: round(float(v), 4) for key, v in m.items()}
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def format_table(report: dict) -> str:
    """The report as a fixed-width text table, one row per method."""
    methods = report["methods"]
    cols = list(dict.fromkeys(c for m in methods.values() for c in m))
    lines = ["method".ljust(16) + "".join(c.rjust(17) for c in cols)]
    for name in sorted(methods, key=lambda x: (x.endswith("+rules"), METHODS.index(x.split("+")[0]))):
        m = methods[name]
        lines.append(name.ljust(16) + "".join(f"{m.get(c, float('nan')):17.4f}" for c in cols))
    return "\n".join(lines)
