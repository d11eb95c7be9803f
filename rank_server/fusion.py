"""Score fusion: one number per item from several task probabilities.

Forms (``RankConfig.fusion_form``; export fits one with its weights on the validation split and records it
in the manifest's ``rank_fusion``):

* ``product``  ``prod_t f_t ** w_t``, ``f_t = p_t`` (or ``1 + p_t`` for :data:`PLUS_ONE_TASKS`)
* ``sum``      ``sum_t w_t * p_t``
* ``one_plus`` ``prod_t (1 + w_t * p_t)``: every task boosts, none vetoes
* ``rank``     ``sum_t w_t / (rank_t + RANK_BETA)``, ``rank_t`` the item's 0-based rank by task t in the
  request: insensitive to each head's calibration

Tasks missing from the weights get weight 0.
"""
from __future__ import annotations

import numpy as np

from common.client_text import clip

MAX_FUSION_WEIGHT = 100.0  # exp(w log p) of a larger exponent underflows float32 for ordinary probabilities

# Tasks whose score enters the product as (1 + s) ** w instead of s ** w: a regression output
# (rating / 5, in [0, 1]) that should boost, never veto, an item (docs/ARCHITECTURE.md §1, issue 3).
PLUS_ONE_TASKS = frozenset({"rating"})
FORMS = ("product", "sum", "one_plus", "rank")
DEFAULT_WEIGHTS = {"click": 1.0, "like": 1.0, "rating": 0.5}   # a snapshot without fitted fusion (older exports)
RANK_BETA = 10.0


def weighted_product(task_scores: np.ndarray, task_names: list[str], weights: dict[str, float],
                     plus_one: frozenset[str] | set[str] = PLUS_ONE_TASKS) -> np.ndarray:
    """``prod_t f_t ** w_t`` computed as ``exp(sum_t w_t log f_t)``; [n, T] → [n] float32.

    ``f_t`` is the task probability ``p_t``, or ``1 + p_t`` for tasks in ``plus_one``
    (the rating task, kept in [0, 1] = rating / 5), so with the default weights the
    fused score is ``p_click^a · p_like^b · (1 + rating)^c``. Tasks missing from
    ``weights`` get exponent 0. Probabilities are clipped away from 0 so a single
    zero does not erase the other tasks.
    """
    w = np.array([weights.get(name, 0.0) for name in task_names], dtype=np.float32)
    shift = np.array([1.0 if name in plus_one else 0.0 for name in task_names], dtype=np.float32)
    logp = np.log(np.clip(task_scores, 1e-7, 1.0) + shift)
    return np.exp(logp @ w).astype(np.float32)


def fuse_ranks(ranks: np.ndarray, task_names: list[str], weights: dict[str, float]) -> np.ndarray:
    """The ``rank`` form from each row's 0-based rank per task [n, T] (ranks taken by the caller, e.g. within
    each request of a batch of requests): ``sum_t w_t / (rank_t + RANK_BETA)``; float32 [n]."""
    w = np.array([weights.get(name, 0.0) for name in task_names], dtype=np.float64)
    return (w / (np.asarray(ranks, np.float64) + RANK_BETA)).sum(axis=1).astype(np.float32)


def fuse(task_scores: np.ndarray, task_names: list[str], weights: dict[str, float],
         form: str = "product") -> np.ndarray:
    """One score per row of ``task_scores`` [n, T] by ``form`` (see the module docstring); float32 [n]."""
    if form == "product":
        return weighted_product(task_scores, task_names, weights)
    w = np.array([weights.get(name, 0.0) for name in task_names], dtype=np.float64)
    p = np.asarray(task_scores, np.float64)
    if form == "sum":
        out = p @ w
    elif form == "one_plus":
        out = np.exp(np.log1p(np.clip(p, 0.0, 1.0) * w).sum(axis=1))
    elif form == "rank":
        ranks = np.empty_like(p)
        order = np.argsort(-p, axis=0, kind="stable")
        np.put_along_axis(ranks, order, np.arange(p.shape[0], dtype=np.float64)[:, None].repeat(p.shape[1], 1), 0)
        return fuse_ranks(ranks, task_names, weights)
    else:
        raise ValueError(f"fusion form must be one of {', '.join(FORMS)}, got {form!r}")
    return out.astype(np.float32)


def check_fusion(fusion: dict[str, float], task_names: list[str] | None, echo_chars: int = 200) -> str | None:
    """The first problem with a fusion override (naming the task), or None.

    Rank checks each request's override; the gateway checks experiment arms with it at start-up
    (``task_names`` None: names are checked once the snapshot's tasks are known).
    """
    for task, weight in fusion.items():
        if task_names is not None and task not in task_names:
            return f"fusion: unknown task '{clip(task, echo_chars)}'; the model's tasks: {', '.join(task_names)}"
        if not 0.0 <= weight <= MAX_FUSION_WEIGHT:  # NaN fails too
            return f"fusion.{clip(task, echo_chars)} must be in 0..{MAX_FUSION_WEIGHT:g}, got {weight}"
    return None
