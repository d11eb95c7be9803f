"""The rerank stage as a plain function: pick k of n candidates with NONE, MMR, DPP or DPP_WINDOW."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels.dpp import dpp_select
from kernels.mmr import mmr_select
from kernels.rules import RuleItems, dpp_select_ruled, greedy_select_ruled, mmr_select_ruled, relaxed_names
from rerank_server.config import RerankConfig
from rerank_server.items import ItemAttributes


@dataclass(frozen=True)
class RerankParams:
    """Resolved parameters of one request."""

    method: str
    mmr_lambda: float
    dpp_alpha: float
    window: int
    epsilon: float


class ParamError(ValueError):
    """A rerank parameter is out of range; the message names it."""


def resolve_params(config: RerankConfig, method: str | None, mmr_lambda: float | None = None,
                   dpp_alpha: float | None = None, window: int | None = None,
                   epsilon: float | None = None) -> RerankParams:
    """Request values over config defaults, validated; ``ParamError`` names the parameter.

    The rerank server checks every request with it and the gateway every experiment arm at start-up.
    """
    method = method or config.method
    params = RerankParams(
        method=method,
        mmr_lambda=config.mmr_lambda if mmr_lambda is None else float(mmr_lambda),
        dpp_alpha=config.dpp_alpha if dpp_alpha is None else float(dpp_alpha),
        window=(config.dpp_window if method == "DPP_WINDOW" else config.window) if window is None else int(window),
        epsilon=config.epsilon if epsilon is None else float(epsilon),
    )
    if not 0.0 <= params.mmr_lambda <= 1.0:
        raise ParamError(f"params.mmr_lambda must be in [0, 1], got {params.mmr_lambda}")
    if not 0.0 <= params.dpp_alpha <= 50.0:
        raise ParamError(f"params.alpha must be in [0, 50], got {params.dpp_alpha}")
    if params.window < 0 or (method == "DPP_WINDOW" and params.window < 1) or params.window > config.max_candidates:
        raise ParamError(f"params.window must be in {1 if method == 'DPP_WINDOW' else 0}..{config.max_candidates}"
                         f" (max_candidates), got {params.window}")
    if not 0.0 < params.epsilon < 1.0:  # the DPP kernel divides by the gain it compares with epsilon
        raise ParamError(f"params.epsilon must be in (0, 1), got {params.epsilon}")
    return params


def normalise_relevance(scores: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] so λ and α mean the same whatever the ranker's score range."""
    # float64: the span of two large finite float32 scores (3e38 - -3e38) overflows float32
    scores = np.asarray(scores, dtype=np.float64)
    lo, hi = float(scores.min()), float(scores.max())
    if hi - lo < 1e-12:
        return np.ones(scores.shape, dtype=np.float32)
    return ((scores - lo) / (hi - lo)).astype(np.float32)


@dataclass(frozen=True)
class RerankResult:
    positions: np.ndarray     # int32 indices into the request's arrays, final order
    relaxed_rules: list[str]  # rules broken somewhere in the list to reach k (least important first)


def rerank_ruled(item_emb: np.ndarray, item_idx: np.ndarray, scores: np.ndarray, k: int, params: RerankParams,
                 items: ItemAttributes, rules: np.ndarray, promoted: np.ndarray | None = None,
                 exclude_idx: np.ndarray | None = None) -> RerankResult:
    """Rerank with the business rules inside the greedy loop (``kernels.rules``).

    ``items`` holds per-item arrays built once per snapshot; ``rules`` is ``RulesConfig.params()``;
    ``promoted`` (bool per candidate) feeds the slot rules; candidates whose id is in ``exclude_idx``
    or in the blocklist are never returned. The list has min(k, valid candidates) items.
    """
    n = item_idx.size
    blocked = items.blocked[item_idx]
    if exclude_idx is not None and exclude_idx.size:
        blocked = blocked | np.isin(item_idx, exclude_idx)
    category = items.category[item_idx]
    ruled = RuleItems(category, category, items.group[item_idx],
                      np.zeros(n, np.bool_) if promoted is None else np.asarray(promoted, np.bool_), blocked)
    if n == 0:
        return RerankResult(np.empty(0, np.int32), [])
    k = min(k, n)
    if params.method == "NONE":
        positions, mask = greedy_select_ruled(scores, k, ruled, rules)
    else:
        relevance = normalise_relevance(scores)
        emb = np.ascontiguousarray(item_emb[item_idx], dtype=np.float32)
        if params.method == "MMR":
            positions, mask = mmr_select_ruled(relevance, emb, k, params.mmr_lambda, params.window, ruled, rules)
        else:
            window = params.window if params.method == "DPP_WINDOW" else 0
            positions, mask = dpp_select_ruled(relevance, emb, k, params.dpp_alpha, params.epsilon, window,
                                               ruled, rules)
    return RerankResult(positions, relaxed_names(mask))


def rerank(item_emb: np.ndarray, item_idx: np.ndarray, scores: np.ndarray, k: int,
           params: RerankParams, items: ItemAttributes | None = None, rules: np.ndarray | None = None,
           promoted: np.ndarray | None = None, exclude_idx: np.ndarray | None = None) -> np.ndarray:
    """Positions (int32 indices into ``item_idx``) of the chosen items in final order, at most k.

    Without ``items`` and ``rules`` no business rule applies; with them see ``rerank_ruled``.
    """
    if items is not None and rules is not None:
        return rerank_ruled(item_emb, item_idx, scores, k, params, items, rules, promoted, exclude_idx).positions
    if item_idx.size == 0:
        return np.empty(0, np.int32)
    k = min(k, item_idx.size)
    if params.method == "NONE":
        return np.lexsort((np.arange(scores.size), -scores))[:k].astype(np.int32)
    relevance = normalise_relevance(scores)
    emb = np.ascontiguousarray(item_emb[item_idx], dtype=np.float32)
    if params.method == "MMR":
        return mmr_select(relevance, emb, k, params.mmr_lambda, params.window)
    window = params.window if params.method == "DPP_WINDOW" else 0
    chosen = dpp_select(relevance, emb, k, params.dpp_alpha, params.epsilon, window)
    if chosen.size < k:  # DPP stopped early (no diversity gain left): fill up by relevance
        order = np.lexsort((np.arange(scores.size), -scores))
        rest = order[~np.isin(order, chosen)]
        chosen = np.concatenate([chosen, rest[: k - chosen.size]]).astype(np.int32)
    return chosen
