"""Business rules inside the greedy re-rank loop (打散 and friends), and rule-aware NONE / MMR / DPP.

Large feeds apply their placement rules *inside* the greedy loop rather than
as a post-filter: each round, the remaining candidates are filtered by the
rules given the list built so far, and the method's argmax (relevance, MMR
score or DPP gain) is taken among those that pass. The rules, by bit, from
the least to the most important (the relaxation order):

====  ===============  ====================================================
bit   name             a candidate for position p violates it when
====  ===============  ====================================================
0     scatter          its category already occurs ``scatter_max`` times in
                       the last ``scatter_window - 1`` positions (so some
                       window of w positions would hold more than m)
1     max_run          the last ``max_run`` items all have its type
2     category_cap     its category already occurs ``category_cap`` times
3     promoted_slots   it is promoted and p < ``promoted_min_position``
                       (1-based), or the last ``promoted_window - 1``
                       positions already hold ``promoted_max`` promoted items
4     dedupe           an item with its group key (e.g. title) is in the list
====  ===============  ====================================================

Blocked (seen / blocklisted) items are a hard filter, never relaxed: they are
not valid items. A category, type or group of -1 means "none" (the item is
never constrained by that rule).

Relaxation, so the list never comes back shorter than k when k valid items
exist: each round, if no candidate passes every rule, the least important
rule is dropped for that round, then the next, until one passes. With a
candidate's violation bitmask v, dropping rules 0..L-1 admits exactly the
candidates with v < 2**L, so the round's admitted set is
``v < 2 ** bit_length(min v)``. Rules come back in force the next round.
The kernels return the OR of the picked items' masks: the rules that had to
be broken somewhere in the list (``relaxed_names`` turns it into names).

Every kernel keeps the rule state incrementally (window counts, run length,
per-category counts, taken groups), so a round costs O(N) for the rules.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np

from ._rerank_inputs import unit_columns, validate_rerank_inputs
from ._validate import check_real
from .dpp import condition_on
from .mmr import update_max_sim

SCATTER, MAX_RUN, CATEGORY_CAP, PROMOTED_SLOTS, DEDUPE = range(5)
RULE_NAMES = ("scatter", "max_run", "category_cap", "promoted_slots", "dedupe")

# Layout of the int64 rule-parameter vector the kernels take (see ``rule_params``).
(P_SCATTER_WINDOW, P_SCATTER_MAX, P_MAX_RUN, P_CATEGORY_CAP, P_PROMOTED_MIN_POSITION, P_PROMOTED_WINDOW,
 P_PROMOTED_MAX, P_DEDUPE) = range(8)
N_PARAMS = 8


class RuleItems(NamedTuple):
    """Per-candidate attributes the rules read (all of length N, aligned with the candidates)."""

    category: np.ndarray  # int32, -1 = none; scatter window and category cap
    kind: np.ndarray      # int32, -1 = none; the max-run rule
    group: np.ndarray     # int32, -1 = none; dedupe key
    promoted: np.ndarray  # bool; slot rules
    blocked: np.ndarray   # bool; never returned (seen / blocklisted)


def rule_items(n: int, category=None, kind=None, group=None, promoted=None, blocked=None) -> RuleItems:
    """``RuleItems`` for n candidates; a missing array means "none" (-1 / False) for every item.

    ``kind`` defaults to ``category``.
    """
    def ints(name, a):
        if a is None:
            return np.full(n, -1, np.int32)
        a = np.ascontiguousarray(a)
        if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must be an integer array of length {n}, got {a.dtype}{list(a.shape)}")
        if a.size and a.min() < -1:
            raise ValueError(f"{name} must hold ids >= -1 (-1 = none)")
        return a.astype(np.int32, copy=False)

    def flags(name, a):
        if a is None:
            return np.zeros(n, np.bool_)
        a = np.ascontiguousarray(a)
        if a.shape != (n,):
            raise ValueError(f"{name} must have length {n}, got {list(a.shape)}")
        return a.astype(np.bool_, copy=False)

    category = ints("category", category)
    return RuleItems(category, category if kind is None else ints("kind", kind), ints("group", group),
                     flags("promoted", promoted), flags("blocked", blocked))


def rule_params(scatter_window: int = 0, scatter_max: int = 1, max_run: int = 0, category_cap: int = 0,
                promoted_min_position: int = 1, promoted_window: int = 0, promoted_max: int = 1,
                dedupe: bool = False) -> np.ndarray:
    """The kernels' int64 rule vector; 0 turns a window / run / cap rule off. Raises ValueError naming a bad value."""
    values = dict(scatter_window=scatter_window, scatter_max=scatter_max, max_run=max_run,
                  category_cap=category_cap, promoted_min_position=promoted_min_position,
                  promoted_window=promoted_window, promoted_max=promoted_max)
    for name, value in values.items():
        if isinstance(value, bool) or int(value) != value or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    for name in ("scatter_max", "promoted_max", "promoted_min_position"):
        if values[name] < 1:
            raise ValueError(f"{name} must be >= 1, got {values[name]}")
    return np.array([scatter_window, scatter_max, max_run, category_cap, promoted_min_position,
                     promoted_window, promoted_max, int(bool(dedupe))], np.int64)


def relaxed_names(mask: int) -> list[str]:
    """Names of the rules set in a relaxed-rules bitmask, least important first."""
    return [name for bit, name in enumerate(RULE_NAMES) if mask >> bit & 1]


# ----------------------------------------------------------------- njit rule state
@numba.njit(cache=True, nogil=True)
def new_rule_state(items_cat, items_kind, items_group):
    """Empty-list state: (window counts per category, list counts per category, taken groups, scalars).

    scalars = [run type, run length, promoted items in the promoted window].
    """
    n_cat = 1
    for i in range(items_cat.shape[0]):
        if items_cat[i] + 1 > n_cat:
            n_cat = items_cat[i] + 1
    n_group = 1
    for i in range(items_group.shape[0]):
        if items_group[i] + 1 > n_group:
            n_group = items_group[i] + 1
    scalars = np.zeros(3, np.int64)
    scalars[0] = -1
    return (np.zeros(n_cat, np.int64), np.zeros(n_cat, np.int64), np.zeros(n_group, np.bool_), scalars)


@numba.njit(cache=True, nogil=True)
def rule_violations(state, params, cat, kind, group, promoted, step, out):
    """out[i] = bitmask of the rules candidate i breaks at position ``step`` (0-based)."""
    win, count, taken, scalars = state
    sw, sm, mr, cap = params[P_SCATTER_WINDOW], params[P_SCATTER_MAX], params[P_MAX_RUN], params[P_CATEGORY_CAP]
    promo_blocked = step < params[P_PROMOTED_MIN_POSITION] - 1 or (
        params[P_PROMOTED_WINDOW] > 0 and scalars[2] >= params[P_PROMOTED_MAX])
    run_full = mr > 0 and scalars[1] >= mr
    dedupe = params[P_DEDUPE] != 0
    for i in range(cat.shape[0]):
        v = 0
        c = cat[i]
        if c >= 0:
            if sw > 0 and win[c] >= sm:
                v |= 1
            if cap > 0 and count[c] >= cap:
                v |= 4
        if run_full and kind[i] >= 0 and kind[i] == scalars[0]:
            v |= 2
        if promoted[i] and promo_blocked:
            v |= 8
        if dedupe and group[i] >= 0 and taken[group[i]]:
            v |= 16
        out[i] = v


@numba.njit(cache=True, nogil=True)
def rule_push(state, params, cat, kind, group, promoted, out, step):
    """Update the state after ``out[step]`` was placed at position ``step``."""
    win, count, taken, scalars = state
    i = out[step]
    c = cat[i]
    if c >= 0:
        count[c] += 1
        win[c] += 1
    if kind[i] >= 0 and kind[i] == scalars[0]:
        scalars[1] += 1
    else:
        scalars[0] = kind[i]
        scalars[1] = 1
    if promoted[i]:
        scalars[2] += 1
    if group[i] >= 0:
        taken[group[i]] = True
    # Slide the windows: position step+1 sees positions step+2-w .. step, so
    # position step+1-w leaves.
    sw = params[P_SCATTER_WINDOW]
    if sw > 0 and step + 1 - sw >= 0:
        c_old = cat[out[step + 1 - sw]]
        if c_old >= 0:
            win[c_old] -= 1
    pw = params[P_PROMOTED_WINDOW]
    if pw > 0 and step + 1 - pw >= 0 and promoted[out[step + 1 - pw]]:
        scalars[2] -= 1


@numba.njit(cache=True, nogil=True)
def admit_limit(viol, picked):
    """Candidates with viol < the returned limit pass after the least-important-first relaxation; 0 if none left."""
    best = -1
    for i in range(viol.shape[0]):
        if not picked[i] and (best < 0 or viol[i] < best):
            best = viol[i]
    if best < 0:
        return 0
    limit = 1
    while limit <= best:  # 2 ** bit_length(best)
        limit <<= 1
    return limit


# ----------------------------------------------------------------- ruled selectors
@numba.njit(cache=True, nogil=True)
def record_pick(state, params, cat, kind, group, promoted, out, picked, viol, best, step):
    """Place ``best`` at ``step``, update the rule state; return the rules it broke (bitmask)."""
    out[step] = best
    picked[best] = True
    rule_push(state, params, cat, kind, group, promoted, out, step)
    return viol[best]


@numba.njit(cache=True, nogil=True)
def _greedy_select_ruled(scores, k, cat, kind, group, promoted, blocked, params):
    n = scores.shape[0]
    picked = blocked.copy()
    k = min(k, n - int(blocked.sum()))
    out = np.empty(max(k, 0), np.int32)
    viol = np.empty(n, np.int64)
    state = new_rule_state(cat, kind, group)
    relaxed = 0
    for step in range(k):
        rule_violations(state, params, cat, kind, group, promoted, step, viol)
        limit = admit_limit(viol, picked)
        best = -1
        for i in range(n):
            if not picked[i] and viol[i] < limit and (best < 0 or scores[i] > scores[best]):
                best = i
        relaxed |= record_pick(state, params, cat, kind, group, promoted, out, picked, viol, best, step)
    return out, relaxed


@numba.njit(cache=True, nogil=True)
def _mmr_select_ruled(relevance, emb, k, lam, window, cat, kind, group, promoted, blocked, params):
    n = emb.shape[0]
    picked = blocked.copy()
    k = min(k, n - int(blocked.sum()))
    out = np.empty(max(k, 0), np.int32)
    viol = np.empty(n, np.int64)
    state = new_rule_state(cat, kind, group)
    relaxed = 0
    unit_t = unit_columns(emb)
    max_sim = np.full(n, -np.inf)
    sims = np.empty((k if window > 0 else 1, n), np.float64)
    for step in range(k):
        rule_violations(state, params, cat, kind, group, promoted, step, viol)
        limit = admit_limit(viol, picked)
        best = -1
        best_val = -np.inf
        for i in range(n):
            if picked[i] or viol[i] >= limit:
                continue
            # First pick: most relevant (nothing to be diverse from yet).
            val = np.float64(relevance[i]) if step == 0 else \
                lam * np.float64(relevance[i]) - (1.0 - lam) * max_sim[i]
            if best < 0 or val > best_val:  # strict: ties keep the lowest index
                best = i
                best_val = val
        relaxed |= record_pick(state, params, cat, kind, group, promoted, out, picked, viol, best, step)
        if step == k - 1:
            break
        update_max_sim(unit_t, best, step, window, sims, max_sim)
    return out, relaxed


@numba.njit(cache=True, nogil=True)
def _dpp_select_ruled(relevance, emb, k, alpha, epsilon, window, cat, kind, group, promoted, blocked, params):
    n = emb.shape[0]
    picked = blocked.copy()
    k = min(k, n - int(blocked.sum()))
    out = np.empty(max(k, 0), np.int32)
    viol = np.empty(n, np.int64)
    state = new_rule_state(cat, kind, group)
    relaxed = 0
    unit_t = unit_columns(emb)
    q = np.empty(n, np.float64)
    for i in range(n):
        q[i] = math.exp(alpha * np.float64(relevance[i]))
    d2 = q * q
    no_skip = np.zeros(n, np.bool_)
    dot = np.empty(n, np.float64)
    sims = np.empty((max(k, 1), n), np.float64)
    width = k if window == 0 else max(0, min(k, window - 1))
    chol = np.zeros((max(width, 1), n), np.float64)
    fill = False  # the admitted gains ran out: the rest is filled by relevance, rules still on
    for step in range(k):
        rule_violations(state, params, cat, kind, group, promoted, step, viol)
        limit = admit_limit(viol, picked)
        best = -1
        if not fill:
            best_d2 = 0.0
            for i in range(n):
                if not picked[i] and viol[i] < limit and (best < 0 or d2[i] > best_d2):
                    best = i
                    best_d2 = d2[i]
            if best_d2 < epsilon or best_d2 <= 0.0:
                fill = True
        if fill:
            best = -1
            for i in range(n):
                if not picked[i] and viol[i] < limit and (best < 0 or relevance[i] > relevance[best]):
                    best = i
        relaxed |= record_pick(state, params, cat, kind, group, promoted, out, picked, viol, best, step)
        n_picked = step + 1
        if fill or n_picked == k:
            continue
        condition_on(unit_t, best, n_picked, width, out, q, sims, chol, d2, picked, no_skip, dot)
    return out, relaxed


# ----------------------------------------------------------------- public wrappers
def _check_rules(n: int, items: RuleItems, params: np.ndarray) -> tuple:
    if not isinstance(items, RuleItems):
        raise TypeError("items must be a RuleItems (see rule_items)")
    for name, a in zip(items._fields, items):
        if a.shape != (n,):
            raise ValueError(f"items.{name} must have length {n}, got {list(a.shape)}")
    params = np.ascontiguousarray(params, np.int64)
    if params.shape != (N_PARAMS,):
        raise ValueError(f"params must be int64[{N_PARAMS}] (see rule_params)")
    return (np.ascontiguousarray(items.category, np.int32), np.ascontiguousarray(items.kind, np.int32),
            np.ascontiguousarray(items.group, np.int32), np.ascontiguousarray(items.promoted, np.bool_),
            np.ascontiguousarray(items.blocked, np.bool_), params)


def greedy_select_ruled(scores: np.ndarray, k: int, items: RuleItems, params: np.ndarray) -> tuple[np.ndarray, int]:
    """Method NONE under rules: each round the highest score among the admitted items (ties: lowest index).

    Returns (int32[min(k, N - blocked)] positions in pick order, relaxed-rules bitmask).
    """
    scores = np.ascontiguousarray(scores, np.float32)
    if scores.ndim != 1 or not np.isfinite(scores).all():
        raise ValueError("scores must be a finite float32[N]")
    k = int(k)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    out, relaxed = _greedy_select_ruled(scores, k, *_check_rules(scores.size, items, params))
    return out, int(relaxed)


def mmr_select_ruled(relevance: np.ndarray, emb: np.ndarray, k: int, lam: float, window: int,
                     items: RuleItems, params: np.ndarray) -> tuple[np.ndarray, int]:
    """``kernels.mmr.mmr_select`` with the rules applied each round (argmax among the admitted items).

    Same arguments as ``mmr_select`` plus ``items`` / ``params`` (``rule_items``, ``rule_params``).
    Returns (int32[min(k, N - blocked)] positions in pick order, relaxed-rules bitmask).
    """
    relevance, emb, k, window = validate_rerank_inputs(relevance, emb, k, window)
    lam = check_real("lam", lam, minimum=0.0, maximum=1.0)
    out, relaxed = _mmr_select_ruled(relevance, emb, k, lam, window, *_check_rules(relevance.size, items, params))
    return out, int(relaxed)


def dpp_select_ruled(relevance: np.ndarray, emb: np.ndarray, k: int, alpha: float, epsilon: float, window: int,
                     items: RuleItems, params: np.ndarray) -> tuple[np.ndarray, int]:
    """``kernels.dpp.dpp_select`` with the rules applied each round (argmax gain among the admitted items).

    Unlike ``dpp_select`` the list is always min(k, N - blocked) long: once the best admitted gain is
    below ``epsilon`` the rest of the list is filled by relevance, under the same rules.
    Returns (int32 positions in pick order, relaxed-rules bitmask).
    """
    relevance, emb, k, window = validate_rerank_inputs(relevance, emb, k, window)
    alpha = check_real("alpha", alpha)
    epsilon = check_real("epsilon", epsilon, minimum=0.0, strict_minimum=True)
    if relevance.size and float(np.max(np.abs(relevance), initial=0.0)) * abs(alpha) > 350.0:
        raise ValueError("alpha * relevance must stay within +-350 so that q^2 = exp(2 alpha rel) is finite")
    out, relaxed = _dpp_select_ruled(relevance, emb, k, alpha, epsilon, window,
                                     *_check_rules(relevance.size, items, params))
    return out, int(relaxed)
