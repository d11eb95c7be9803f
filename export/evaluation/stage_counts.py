"""How many candidates each stage needs: the validation curve behind the served counts and quality levels.

The funnel's cost grows with its candidate counts (``recall_n`` candidates through recall's merge, the
candidate features and the pre-rank; ``prerank_keep`` rows through the MMoE student; ``rank_n`` through
rerank), and its list barely moves once the counts pass what the held-out items need. So the counts are
chosen the way every other serving choice is, on the validation funnel:

* :func:`count_curve` scores the final list (NDCG@10, recall@10 against the validation part) at every point
  of a grid of ``(recall_n, prerank_keep, rank_n)``, through the serving functions, as the gateway would run
  them (recall with that ``recall_n``, rank with that pre-rank cut, the best ``rank_n`` reranked to k);
* :func:`choose_counts` takes the cheapest point whose final NDCG@10 is within ``max_cost`` (0.5%, issue 26)
  of the reference (the largest counts, the funnel the models were fitted for);
* :func:`quality_levels` lays out the steps the gateway's quality factor takes under load (issue 27): from the
  chosen point, fewer recall candidates first, then a smaller pre-rank cut and rank list, then the smallest
  counts of the grid, then those counts in the pre-rank's order without the ranker (the MMoE student over its
  rows), and last without the rank call at all (recall's order into rerank: the rank server's round trip,
  features and pre-rank are a third of a request's CPU, which no count removes), each with its validation
  NDCG@10, so an operator knows what a step costs before it is taken. Level 0 always runs the ranker.

"Cheapest" is by :func:`work`, candidates handled weighted by what each costs per row on the serving path
(``benches.stage_cost``: recall's merge, the candidate features and the pre-rank are linear in ``recall_n``;
the student runs on ``prerank_keep`` rows at about four times a pre-rank row's cost; rerank on ``rank_n``
rows, cheap per row): a fixed formula, so the same validation numbers always give the same choice, which a
CPU timing on a shared machine would not.
"""
from __future__ import annotations

import itertools
import time

import numpy as np

from common.snapshot import Snapshot
from export.data.dataset import Dataset, Interactions
from export.evaluation.funnel import _pad
from export.evaluation.metrics import ndcg_at_k, recall_at_k
from export.evaluation.recall import truth_subset, truth_users
from rank_server.config import RankConfig
from rank_server.rank import RecallInfo, rank
from rank_server.rank import load_state as load_rank_state
from recall_server.config import RecallConfig
from recall_server.recall import recall
from recall_server.state import load_state as load_recall_state
from rerank_server.config import RerankConfig
from rerank_server.items import load_item_attributes
from rerank_server.rerank import RerankParams, rerank_ruled

# per-row cost weights of :func:`work` (a pre-rank row = 1): see the module docstring
ROW_WEIGHTS = {"recall_n": 1.0, "prerank_keep": 4.0, "rank_n": 0.25}
DEFAULT_GRID = {"recall_n": [1000, 500, 250, 125], "prerank_keep": [200, 100, 50, 25], "rank_n": [200, 100, 50, 25]}


DEEPER_KEYS = ("prerank_order", "skip_rank")   # the flags of the points beyond the grid (quality levels only)


def deeper(point: dict) -> bool:
    """Whether ``point`` is one of the curve's points beyond the grid (a quality level, never level 0)."""
    return any(point.get(key) for key in DEEPER_KEYS)


def work(point: dict) -> float:
    """The weighted candidate count of a grid point: what :func:`choose_counts` minimises (in the pre-rank's
    order the ranker's rows cost nothing; with rank skipped, none of the rank server's rows do)."""
    skipped = ({"recall_n", "prerank_keep"} if point.get("skip_rank")   # the rank server's rows: none
               else {"prerank_keep"} if point.get("prerank_order") else set())
    return float(sum(ROW_WEIGHTS[key] * point[key] for key in ROW_WEIGHTS if key not in skipped))


def grid_points(grid: dict[str, list[int]], k: int) -> list[dict[str, int]]:
    """Every ``(recall_n, prerank_keep, rank_n)`` of ``grid`` with ``k <= rank_n <= prerank_keep <= recall_n``
    (a stage never gets more than the one before it kept), largest first."""
    points = [{"recall_n": r, "prerank_keep": p, "rank_n": n}
              for r, p, n in itertools.product(*(sorted(set(grid[key]), reverse=True)
                                                 for key in ("recall_n", "prerank_keep", "rank_n")))
              if k <= n <= p <= r]
    if not points:
        raise ValueError(f"the stage-count grid {grid} has no point with k={k} <= rank_n <= prerank_keep <= recall_n")
    return points


def count_curve(snapshot: Snapshot, ds: Dataset, truth: Interactions, rerank: RerankParams,
                grid: dict[str, list[int]] | None = None, k: int = 10, max_users: int = 0, seed: int = 0) -> dict:
    """The final list's validation metrics at every grid point (``grid_points``) of ``snapshot`` against
    ``truth``: ``{"users", "seconds", "reference", "points": [{recall_n, prerank_keep, rank_n, work, ndcg@10,
    recall@10}]}``. ``rerank``: the rerank the servers run (method and parameters). One recall per ``recall_n``
    and one rank per ``(recall_n, prerank_keep)`` per user (pre-rank cuts are not nested under every fusion
    form, so each is run, not sliced). Two more points at the grid's smallest counts, the quality factor's
    deepest levels: the pre-rank's order (``prerank_order``, where the snapshot serves the ranker's order), and
    no rank call (``skip_rank``: recall's first ``rank_n`` reranked in recall's order, as the gateway serves it)."""
    t0 = time.perf_counter()
    points = grid_points(grid or DEFAULT_GRID, k)
    smallest = points[-1]
    if snapshot.manifest.get("rank_order", "model") == "model":
        points.append({**smallest, "prerank_order": True})
    points.append({**smallest, "skip_rank": True})
    recall_cfg = RecallConfig(snapshot=str(snapshot.path))
    rank_cfg = RankConfig(snapshot=str(snapshot.path), prerank_keep=max(p["prerank_keep"] for p in points))
    rerank_cfg = RerankConfig(snapshot=str(snapshot.path)).for_snapshot(snapshot)
    recall_state = load_recall_state(snapshot, recall_cfg)
    rank_state = load_rank_state(snapshot, rank_cfg)
    items = load_item_attributes(snapshot, rerank_cfg.rules.blocked_item_ids)
    rules = rerank_cfg.rules.params()
    emb = snapshot.load_array("item_emb.npy")
    indptr, items_truth, users, first_ts = truth_users(truth, ds.n_users, max_users, seed)
    lists = np.full((len(points), users.size, k), -1, np.int64)
    for row, u in enumerate(users.tolist()):
        user_id, ts = str(ds.user_ids[u]), int(first_ts[u])
        recalled: dict[int, tuple] = {}
        ranked: dict[tuple[int, int], tuple] = {}
        for i, point in enumerate(points):
            r, p, n = point["recall_n"], point["prerank_keep"], point["rank_n"]
            if r not in recalled:
                rec = recall(recall_state, recall_cfg, user_id, r)
                recalled[r] = (rec.ids, RecallInfo(rec.channel_masks, rec.channel_names, rec.scores))
            ids, info = recalled[r]
            if ids.size == 0:
                continue
            pre = bool(point.get("prerank_order"))
            if point.get("skip_rank"):   # recall's order and scores, as the gateway's funnel passes them on
                ranked[(r, p, "skip")] = (ids, np.asarray(info.scores, np.float32))
                pre = "skip"
            elif (r, p, pre) not in ranked:
                res = rank(rank_state, rank_cfg, user_id, ids, ts, info, prerank_keep=p, prerank_order=pre)
                order = np.lexsort((np.arange(res.fused.size), -res.fused))
                ranked[(r, p, pre)] = (res.item_idx[order], res.fused[order])
            cand, scores = ranked[(r, p, pre)]
            cand, scores = cand[:n], scores[:n]
            picked = rerank_ruled(emb, cand, scores, min(k, cand.size), rerank, items, rules)
            lists[i, row] = _pad(cand[picked.positions], k)
    sub_indptr, sub_truth = truth_subset(indptr, items_truth, users)
    out = []
    for i, point in enumerate(points):
        out.append({**point, "work": work(point),
                    "ndcg@10": round(float(ndcg_at_k(lists[i], sub_indptr, sub_truth, k)), 4),
                    "recall@10": round(float(recall_at_k(lists[i], sub_indptr, sub_truth, k)), 4)})
    return {"users": int(users.size), "seconds": round(time.perf_counter() - t0, 2), "reference": points[0],
            "points": out}


def choose_counts(curve: dict, max_cost: float = 0.005) -> dict:
    """The cheapest point (least :func:`work`; ties: the better NDCG@10) whose final NDCG@10 is at least
    ``(1 - max_cost)`` of the reference point's (the grid's largest counts), the ranker running (the
    ``prerank_order`` and ``skip_rank`` points are quality levels, never the default). Returns the point."""
    points = [p for p in curve["points"] if not deeper(p)]
    ref = next(p for p in points if all(p[key] == curve["reference"][key] for key in ROW_WEIGHTS))
    floor = (1.0 - max_cost) * ref["ndcg@10"]
    ok = [p for p in points if p["ndcg@10"] >= floor]
    return min(ok, key=lambda p: (p["work"], -p["ndcg@10"]))


def quality_levels(curve: dict, chosen: dict) -> list[dict]:
    """The quality factor's levels, level 0 the ``chosen`` point: 1 = the next smaller ``recall_n`` of the grid
    (same cuts), 2 = the next smaller value of every count, 3 = the grid's smallest counts; steps that are not
    cheaper than the level before are left out; last, the smallest counts in the pre-rank's order where the
    curve measured it, and then without the rank call. A level that scores no better than a deeper one is left
    out too: the deeper one costs less for at least the same list (on ML-100K's short quick export the
    pre-rank's order scored 0.182 against 0.187 without the rank call). Each level carries its validation
    NDCG@10 and its cost against level 0."""
    points = [p for p in curve["points"] if not deeper(p)]
    skip_ranker = [p for p in curve["points"] if p.get("prerank_order")]
    skip_rank = [p for p in curve["points"] if p.get("skip_rank")]
    by_key = {tuple(p[key] for key in ROW_WEIGHTS): p for p in points}
    values = {key: sorted({p[key] for p in points}, reverse=True) for key in ROW_WEIGHTS}

    def smaller(key: str, value: int) -> int:
        below = [v for v in values[key] if v < value]
        return below[0] if below else value

    def find(r: int, p: int, n: int) -> dict | None:
        # keep the grid's order constraint (rank_n <= prerank_keep <= recall_n) by clipping downward
        p = min(p, r)
        n = min(n, p)
        return by_key.get((r, p, n))

    c = chosen
    steps = [find(c["recall_n"], c["prerank_keep"], c["rank_n"]),
             find(smaller("recall_n", c["recall_n"]), c["prerank_keep"], c["rank_n"]),
             find(smaller("recall_n", c["recall_n"]), smaller("prerank_keep", c["prerank_keep"]),
                  smaller("rank_n", c["rank_n"])),
             find(values["recall_n"][-1], values["prerank_keep"][-1], values["rank_n"][-1]), *skip_ranker,
             *skip_rank]
    kept: list[dict] = []
    for step in steps:
        if step is not None and not (kept and step["work"] >= kept[-1]["work"]):
            kept.append(step)
    best_deeper = float("-inf")
    for i in range(len(kept) - 1, 0, -1):       # level 0 stays: it is the chosen counts
        score = kept[i]["ndcg@10"]
        if score <= best_deeper:
            del kept[i]
        best_deeper = max(best_deeper, score)
    base = kept[0]["ndcg@10"] if kept else 0.0
    return [{"level": i, **{key: step[key] for key in ROW_WEIGHTS},
             **{key: bool(step.get(key)) for key in DEEPER_KEYS},
             "ndcg@10": step["ndcg@10"], "recall@10": step["recall@10"],
             "ndcg_cost": round(1.0 - step["ndcg@10"] / base, 4) if base > 0 else 0.0,
             "work": step["work"]} for i, step in enumerate(kept)]
