"""The list through the funnel, computed with the serving functions on a snapshot (issue 11, docs/ARCHITECTURE.md §10).

For every user with held-out items, exactly what the gateway does with its configuration: recall
(``recall_n`` candidates) → rank (pre-rank keeps ``prerank_keep``, the ranker orders them) → the best
``rank_n`` by rank score → rerank to ``k``. Each stage's list is scored against the held-out items:

* ``recall``       recall's merged order
* ``prerank``      the candidates pre-rank kept, in pre-rank order
* ``rank``         the same candidates in rank order
* ``full_rank``    the ranker over all of recall's candidates, no pre-rank (what the cut costs)
* ``rerank``       the final list (the rerank method and parameters the servers use by default)
* ``rank (<name>)`` optional: the ``rank`` list with another ranking model of the snapshot (int8 vs fp32)

Metrics per list (:func:`list_row`): recall@10, NDCG@10, recall@50, distinct genres@10 (genres covered by
the first 10 items' genre bags) and ILS@10 (mean pairwise cosine of their item vectors; lower = more diverse).
The rerank row's recall@50 comes from a second request with k = 50: its counts raised to 50 as the gateway
raises them, then reranked to 50.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from common.snapshot import Snapshot
from export.data.dataset import Dataset, Interactions
from export.evaluation.recall import truth_subset, truth_users
from export.evaluation.metrics import ndcg_at_k, recall_at_k
from rank_server.config import RankConfig
from rank_server.model import RankModel
from rank_server.rank import RecallInfo, rank
from rank_server.rank import load_state as load_rank_state
from recall_server.config import RecallConfig
from recall_server.recall import recall
from recall_server.state import load_state as load_recall_state
from rerank_server.config import RerankConfig
from rerank_server.items import load_item_attributes
from rerank_server.rerank import RerankParams, rerank_ruled, resolve_params

STAGES = ("recall", "prerank", "rank", "full_rank", "rerank")


def list_row(pred: np.ndarray, truth_indptr: np.ndarray, truth_items: np.ndarray, bag: np.ndarray,
             unit: np.ndarray, pred50: np.ndarray | None = None) -> dict[str, float]:
    """recall@10, NDCG@10, recall@50, genres@10 and ILS@10 of lists ``pred`` [U, >=10] (-1 padded).

    ``pred50`` supplies the recall@50 lists when ``pred`` is shorter than 50 (the final list)."""
    top = pred[:, :10]
    valid = top >= 0
    safe = np.where(valid, top, 0)
    genres = ((bag[safe] != 0) & valid[:, :, None]).any(axis=1).sum(axis=1)
    vec = unit[safe] * valid[:, :, None]
    gram = np.einsum("ukd,ujd->ukj", vec, vec)
    n = valid.sum(axis=1)
    pairs = np.maximum(n * (n - 1), 1)
    ils = (gram.sum(axis=(1, 2)) - np.trace(gram, axis1=1, axis2=2)) / pairs
    p50 = pred if pred50 is None else pred50
    return {"recall@10": recall_at_k(pred, truth_indptr, truth_items, 10),
            "ndcg@10": ndcg_at_k(pred, truth_indptr, truth_items, 10),
            "recall@50": recall_at_k(p50, truth_indptr, truth_items, 50) if p50.shape[1] >= 50 else float("nan"),
            "genres@10": float(genres.mean()) if genres.size else float("nan"),
            "ils@10": float(ils.mean()) if ils.size else float("nan")}


def rounded(table: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {row: {k: round(float(v), 4) for k, v in m.items()} for row, m in table.items()}


def _pad(ids: np.ndarray, width: int) -> np.ndarray:
    out = np.full(width, -1, np.int64)
    out[: min(width, ids.size)] = ids[:width]
    return out


def evaluate_funnel(snapshot: Snapshot, ds: Dataset, truth: Interactions, recall_n: int = 1000, rank_n: int = 200,
                    k: int = 10, rerank_variants: dict[str, RerankParams] | None = None,
                    rank_config: RankConfig | None = None, max_users: int = 0, seed: int = 0,
                    rank_variants: dict[str, str] | None = None) -> dict:
    """The funnel table of ``snapshot`` against ``truth`` (see the module docstring).

    ``rerank_variants``: name → parameters of each rerank to score (default: the rerank server's own
    configuration for this snapshot, named ``rerank``); every variant gets a row. ``max_users`` > 0
    evaluates a seeded sample of users. ``rank_variants``: row name → model file of the snapshot, each scored
    as the ``rank`` row with that model in place of the served one. Returns ``{"users", "seconds", "config", "rows": {stage: metrics}}``.
    """
    t0 = time.perf_counter()
    recall_cfg = RecallConfig(snapshot=str(snapshot.path))
    rank_cfg = rank_config or RankConfig(snapshot=str(snapshot.path))
    full_cfg = dataclasses.replace(rank_cfg, prerank_keep=10 ** 9)
    rerank_cfg = RerankConfig(snapshot=str(snapshot.path)).for_snapshot(snapshot)
    variants = rerank_variants or {"rerank": resolve_params(rerank_cfg, None)}
    recall_state = load_recall_state(snapshot, recall_cfg)
    rank_state = load_rank_state(snapshot, rank_cfg)
    # each variant swaps the model only: item features and candidate tables are shared (at 10^6 items a
    # load_state of its own held ~2 GB more per variant; the test funnel peaked at 11.9 GB)
    alt_states = {name: dataclasses.replace(rank_state, model=RankModel(
                      snapshot.file(path), rank_state.schema, snapshot.schema["rank_tasks"], rank_cfg.onnx_threads))
                  for name, path in (rank_variants or {}).items()}
    items = load_item_attributes(snapshot, rerank_cfg.rules.blocked_item_ids)
    rules = rerank_cfg.rules.params()
    emb = snapshot.load_array("item_emb.npy")
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    # the gateway raises every count to the request's k (gateway.funnel.recommend), so the k = 50 request behind
    # the final row's recall@50 runs on at least 50 candidates at each stage even when the counts are smaller
    recall_50, rank_n_50 = max(recall_n, 50), max(rank_n, 50)
    cfg_50 = dataclasses.replace(rank_cfg, prerank_keep=max(rank_cfg.prerank_keep, 50))
    raise_50 = (recall_50, rank_n_50, cfg_50.prerank_keep) != (recall_n, rank_n, rank_cfg.prerank_keep)
    indptr, items_truth, users, first_ts = truth_users(truth, ds.n_users, max_users, seed)
    width = max(50, k)
    lists = {name: np.full((users.size, width), -1, np.int64)
             for name in ("recall", "prerank", "rank", "full_rank", *alt_states)}
    final = {name: np.full((users.size, k), -1, np.int64) for name in variants}
    final50 = {name: np.full((users.size, 50), -1, np.int64) for name in variants}
    for row, u in enumerate(users.tolist()):   # offline, once per user: the serving functions are per request
        user_id = str(ds.user_ids[u])
        ts = int(first_ts[u])
        rec = recall(recall_state, recall_cfg, user_id, recall_n)
        info = RecallInfo(rec.channel_masks, rec.channel_names, rec.scores)
        lists["recall"][row] = _pad(rec.ids, width)
        if rec.ids.size == 0:
            continue
        full = rank(rank_state, full_cfg, user_id, rec.ids, ts, info)
        lists["full_rank"][row] = _pad(full.item_idx[np.lexsort((np.arange(full.fused.size), -full.fused))], width)
        res = rank(rank_state, rank_cfg, user_id, rec.ids, ts, info)
        if res.prerank_scores is not None:
            pre = np.lexsort((np.arange(res.item_idx.size), -res.prerank_scores))
            lists["prerank"][row] = _pad(res.item_idx[pre], width)
        else:
            lists["prerank"][row] = _pad(res.item_idx, width)
        top = np.lexsort((np.arange(res.fused.size), -res.fused))[:rank_n]   # the gateway's rank_n cut
        cand, scores = res.item_idx[top], res.fused[top]
        lists["rank"][row] = _pad(cand, width)
        for name, state in alt_states.items():
            alt = rank(state, rank_cfg, user_id, rec.ids, ts, info)
            lists[name][row] = _pad(alt.item_idx[np.lexsort((np.arange(alt.fused.size), -alt.fused))], width)
        cand50, scores50 = cand, scores
        if raise_50:
            rec50 = rec if recall_50 == recall_n else recall(recall_state, recall_cfg, user_id, recall_50)
            res50 = rank(rank_state, cfg_50, user_id, rec50.ids, ts,
                         RecallInfo(rec50.channel_masks, rec50.channel_names, rec50.scores))
            top50 = np.lexsort((np.arange(res50.fused.size), -res50.fused))[:rank_n_50]
            cand50, scores50 = res50.item_idx[top50], res50.fused[top50]
        for name, params in variants.items():
            for kk, out, c, sc in ((k, final[name], cand, scores), (50, final50[name], cand50, scores50)):
                picked = rerank_ruled(emb, c, sc, min(kk, c.size), params, items, rules)
                out[row] = _pad(c[picked.positions], out.shape[1])
    sub_indptr, sub_truth = truth_subset(indptr, items_truth, users)
    table = {name: list_row(lists[name], sub_indptr, sub_truth, items.bag, unit) for name in lists}
    for name in variants:
        table[name] = list_row(final[name], sub_indptr, sub_truth, items.bag, unit, final50[name])
    return {"users": int(users.size), "seconds": round(time.perf_counter() - t0, 2),
            "config": {"recall_n": recall_n, "prerank_keep": rank_cfg.prerank_keep, "rank_n": rank_n, "k": k,
                       "rerank": {name: dataclasses.asdict(p) for name, p in variants.items()}},
            "rows": rounded(table)}


def format_funnel(report: dict, peers: dict | None = None) -> str:
    """The funnel rows (and peers) as a fixed-width table."""
    cols = ("recall@10", "ndcg@10", "recall@50", "genres@10", "ils@10")
    lines = ["list".ljust(22) + "".join(c.rjust(11) for c in cols)]
    rows = {**report["rows"], **{f"peer: {k}": v for k, v in (peers or {}).items()}}
    for name, m in rows.items():
        lines.append(name.ljust(22) + "".join(f"{m.get(c, float('nan')):11.4f}" for c in cols))
    return "\n".join(lines)
