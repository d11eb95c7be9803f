"""Straightforward numpy reference implementations of the ``kernels`` package.

One function per kernel, written for clarity rather than speed (dense
matrices, Python loops), so the njit kernels can be checked against them in
tests and timed against them in ``benches.kernel_timings``. They follow the same
conventions as the kernels: ids are int32, ties in any ranking are broken by
smaller id, and rankings are decided on the float32 scores that are returned
(``np.lexsort((ids, -scores32))``).
"""
from __future__ import annotations

import numpy as np


# --------------------------------------------------------------- helpers
def rank_desc(ids: np.ndarray, scores32: np.ndarray) -> np.ndarray:
    """Order that sorts by float32 score descending, then id ascending."""
    return np.lexsort((ids, -scores32.astype(np.float32)))


def topm_table(sim: np.ndarray, top_m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR top-M table from a dense similarity matrix (diagonal and sim <= 0 dropped)."""
    n = sim.shape[0]
    indptr = np.zeros(n + 1, np.int64)
    ids, scores = [], []
    for i in range(n):
        s32 = sim[i].astype(np.float32)
        cand = np.flatnonzero(s32 > 0)
        cand = cand[cand != i]
        order = rank_desc(cand, s32[cand])[:top_m]
        ids.append(cand[order].astype(np.int32))
        scores.append(s32[cand[order]])
        indptr[i + 1] = indptr[i] + len(order)
    return (indptr, np.concatenate(ids + [np.empty(0, np.int32)]),
            np.concatenate(scores + [np.empty(0, np.float32)]))


def dense_from_csr(indptr: np.ndarray, indices: np.ndarray, n_cols: int) -> np.ndarray:
    """Dense 0/1 float64 matrix with the CSR's sparsity pattern."""
    n_rows = indptr.shape[0] - 1
    a = np.zeros((n_rows, n_cols), np.float64)
    a[np.repeat(np.arange(n_rows), np.diff(indptr)), indices] = 1.0
    return a


def unit_rows(emb: np.ndarray) -> np.ndarray:
    """float64 rows scaled to unit norm; zero rows stay zero."""
    e = emb.astype(np.float64)
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    return np.divide(e, norms, out=np.zeros_like(e), where=norms > 0)


def random_log(rng: np.random.Generator, n_users: int, n_items: int, n: int,
               skew: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Random (user, item) log with Zipf-like popularity and repeated pairs."""
    pu = 1.0 / np.arange(1, n_users + 1) ** skew
    pi = 1.0 / np.arange(1, n_items + 1) ** skew
    users = rng.choice(n_users, size=n, p=pu / pu.sum())
    items = rng.choice(n_items, size=n, p=pi / pi.sum())
    # Shuffle ids so popularity is not sorted by id.
    users = rng.permutation(n_users)[users]
    items = rng.permutation(n_items)[items]
    return users.astype(np.int32), items.astype(np.int32)


# --------------------------------------------------------------- csr
def ref_build_csr(rows, cols, n_rows, values=None):
    """CSR from COO via lexsort; duplicate pairs kept once with the max value."""
    if values is None:
        values = np.ones(rows.shape[0], np.float32)
    order = np.lexsort((cols, rows))
    r, c, v = rows[order], cols[order], values[order]
    if r.size == 0:
        return np.zeros(n_rows + 1, np.int64), np.empty(0, np.int32), np.empty(0, np.float32)
    new = np.r_[True, (r[1:] != r[:-1]) | (c[1:] != c[:-1])]
    starts = np.flatnonzero(new)
    data = np.maximum.reduceat(v, starts).astype(np.float32)
    indptr = np.r_[0, np.cumsum(np.bincount(r[starts], minlength=n_rows))].astype(np.int64)
    return indptr, c[starts].astype(np.int32), data


def ref_transpose_csr(indptr, indices, data, n_cols):
    """Transpose via a stable lexsort on (column, row)."""
    n_rows = indptr.shape[0] - 1
    row_of = np.repeat(np.arange(n_rows), np.diff(indptr))
    order = np.lexsort((row_of, indices))
    t_indptr = np.r_[0, np.cumsum(np.bincount(indices, minlength=n_cols))].astype(np.int64)
    return t_indptr, row_of[order].astype(np.int32), data[order].astype(np.float32)


# --------------------------------------------------------------- itemcf
def csr_rows(table, lo, hi=None):
    """Rows ``lo..hi-1`` of a CSR table ``(indptr, indices, scores)``, re-based to start at 0: what an
    i2i kernel's range ``[lo, hi)`` must return."""
    indptr, indices, scores = table
    hi = indptr.shape[0] - 1 if hi is None else hi
    a, b = indptr[lo], indptr[hi]
    return (indptr[lo:hi + 1] - a).astype(np.int64), indices[a:b], scores[a:b]


def ref_itemcf(user_indptr, user_items, n_items, top_m, popularity_damping=0.5, iuf=True, lo=0, hi=None):
    """ItemCF top-M from a dense weighted co-occurrence matrix; rows ``lo..hi-1`` (default all)."""
    a = dense_from_csr(user_indptr, user_items, n_items)
    deg_u = a.sum(axis=1)
    if iuf:
        w = np.divide(1.0, np.log1p(deg_u), out=np.zeros_like(deg_u), where=deg_u > 0)
    else:
        w = np.ones_like(deg_u)
    co = a.T @ (w[:, None] * a)
    pop = a.sum(axis=0)
    denom = np.outer(pop, pop) ** popularity_damping
    sim = np.divide(co, denom, out=np.zeros_like(co), where=denom > 0)
    return csr_rows(topm_table(sim, top_m), lo, hi)


# --------------------------------------------------------------- swing
def ref_swing(user_indptr, user_items, item_indptr, item_users, n_items, top_m,
              alpha=1.0, user_damping=0.5, max_users_per_item=1000, lo=0, hi=None):
    """Swing top-M: per item, a dense user-pair overlap/weight matrix; rows ``lo..hi-1`` (default all).

    sim(i, j) = sum_{a < b} W[a, b] * A[u_a, j] * A[u_b, j] with
    W[a, b] = w_a w_b / (alpha + |I(u_a) & I(u_b)|) over i's (capped) users.
    """
    a = dense_from_csr(user_indptr, user_items, n_items)
    deg_u = a.sum(axis=1)
    w = np.divide(1.0, deg_u ** user_damping, out=np.zeros_like(deg_u), where=deg_u > 0)
    sim = np.zeros((n_items, n_items))
    cap = max_users_per_item or None
    for i in range(n_items):
        users = item_users[item_indptr[i]:item_indptr[i + 1]][:cap]
        sub = a[users]
        overlap = sub @ sub.T
        pair_w = np.triu(np.outer(w[users], w[users]) / (alpha + overlap), k=1)
        sim[i] = ((pair_w @ sub) * sub).sum(axis=0)
    return csr_rows(topm_table(sim, top_m), lo, hi)


# --------------------------------------------------------------- next-item transitions
def ref_next_item(user, item, timestamp, n_items, top_m, span=3, lo=0, hi=None):
    """Next-item transitions, vectorised over the whole log (the export's build before the range kernel).

    Per user, items in time order (ties: row order); every ordered pair (a at t, b at t + d), 1 <= d <=
    ``span``, b != a, adds 1/d to a -> b; row a keeps its ``top_m`` heaviest targets (ties: smaller id),
    scored weight / row total. Rows ``lo..hi-1`` (default all).
    """
    order = np.lexsort((timestamp, user))
    users = user[order].astype(np.int64)
    items = item[order].astype(np.int64)
    src, dst, wts = [], [], []
    for d in range(1, span + 1):
        same = users[d:] == users[:-d]
        src.append(items[:-d][same])
        dst.append(items[d:][same])
        wts.append(np.full(int(same.sum()), 1.0 / d))
    src, dst, wts = np.concatenate(src), np.concatenate(dst), np.concatenate(wts)
    keep = src != dst
    key = src[keep] * n_items + dst[keep]
    uniq, inv = np.unique(key, return_inverse=True)
    weight = np.bincount(inv.reshape(-1), weights=wts[keep])   # sequential: d = 1 terms, then d = 2, ...
    a, b = uniq // n_items, uniq % n_items
    total = np.bincount(a, weights=weight, minlength=n_items)   # by ascending target within a row
    rank_order = np.lexsort((b, -weight, a))
    a, b, weight = a[rank_order], b[rank_order], weight[rank_order]
    starts = np.searchsorted(a, np.arange(n_items + 1))
    top = np.arange(a.size) - starts[a] < top_m
    a, b, weight = a[top], b[top], weight[top]
    indptr = np.searchsorted(a, np.arange(n_items + 1)).astype(np.int64)
    table = (indptr, b.astype(np.int32), (weight / np.maximum(total[a], 1e-12)).astype(np.float32))
    return csr_rows(table, lo, hi)


# --------------------------------------------------------------- i2i
def ref_i2i_score(history, history_weights, nbr_indptr, nbr_indices, nbr_scores, n, exclude):
    """Weighted neighbour sums via np.unique + np.add.at (sums in history order)."""
    js, vs = [np.empty(0, np.int64)], [np.empty(0, np.float64)]
    for h, w in zip(history, history_weights):
        if h < 0 or w == 0:
            continue
        s, e = nbr_indptr[h], nbr_indptr[h + 1]
        js.append(nbr_indices[s:e].astype(np.int64))
        vs.append(np.float64(w) * nbr_scores[s:e].astype(np.float64))
    j, v = np.concatenate(js), np.concatenate(vs)
    uniq, inverse = np.unique(j, return_inverse=True)
    total = np.zeros(uniq.shape[0])
    np.add.at(total, inverse, v)
    keep = ~np.isin(uniq, exclude)
    uniq, s32 = uniq[keep], total[keep].astype(np.float32)
    order = rank_desc(uniq, s32)[:n]
    return uniq[order].astype(np.int32), s32[order]


def ref_recency_weights(n, decay):
    """w[t] = decay ** (n - 1 - t), one element at a time."""
    return np.array([float(decay) ** (n - 1 - t) for t in range(n)], dtype=np.float32)


# --------------------------------------------------------------- merge
def ref_merge_quota(ids, scores, channel, offsets, quotas, exclude, n, weights=None, fusion="max", rrf_k=30.0):
    """Per-channel quota walk with Python dicts for the dedupe (max or weighted reciprocal-rank sum)."""
    excluded = set(int(x) for x in exclude)
    w = np.ones(quotas.shape[0]) if weights is None else np.asarray(weights, np.float32).astype(np.float64)
    best, mask = {}, {}
    for c in range(quotas.shape[0]):
        kept = 0
        for x in ids[offsets[c]:offsets[c + 1]]:
            x = int(x)
            if kept >= quotas[c]:
                break
            if x < 0 or x in excluded:
                continue
            if fusion == "rrf":
                best[x] = best.get(x, 0.0) + w[c] / (rrf_k + kept)
            else:
                best[x] = max(best.get(x, -np.inf), w[c] * (1.0 - kept / quotas[c]))
            mask[x] = mask.get(x, 0) | (1 << c)
            kept += 1
    out_ids = np.array(sorted(best), dtype=np.int32)
    out_scores = np.array([best[x] for x in out_ids], dtype=np.float32)
    out_mask = np.array([mask[x] for x in out_ids], dtype=np.uint32)
    order = rank_desc(out_ids, out_scores)[:n]
    return out_ids[order], out_scores[order], out_mask[order]


# --------------------------------------------------------------- mmr
def ref_mmr(relevance, emb, k, lam, window=0):
    """Greedy MMR recomputing the penalty from a dense cosine matrix each step."""
    n = relevance.shape[0]
    e = unit_rows(emb)
    cos = e @ e.T
    rel = relevance.astype(np.float64)
    selected: list[int] = []
    for step in range(min(k, n)):
        if step == 0:
            pick = int(np.argmax(rel))
        else:
            recent = selected if window == 0 else selected[max(0, len(selected) - window):]
            val = lam * rel - (1.0 - lam) * cos[:, recent].max(axis=1)
            val[selected] = -np.inf
            pick = int(np.argmax(val))
        selected.append(pick)
    return np.array(selected, dtype=np.int32)


# --------------------------------------------------------------- dpp
def ref_dpp(relevance, emb, k, alpha, epsilon=1e-6, window=0):
    """Greedy DPP MAP the slow way: a log-determinant per candidate per step.

    The conditioning set is every pick (window = 0) or the last window - 1
    picks; the walk stops when the best det ratio det(L_{W+i}) / det(L_W)
    is below epsilon.
    """
    n = relevance.shape[0]
    e = unit_rows(emb)
    sim = e @ e.T
    np.fill_diagonal(sim, 1.0)  # S_ii = 1, also for zero embedding rows
    q = np.exp(alpha * relevance.astype(np.float64))
    big_l = q[:, None] * sim * q[None, :]

    def logdet(idx):
        if not idx:
            return 0.0
        sign, ld = np.linalg.slogdet(big_l[np.ix_(idx, idx)])
        return ld if sign > 0 else -np.inf

    selected: list[int] = []
    while len(selected) < min(k, n):
        cond = selected if window == 0 else selected[max(0, len(selected) - (window - 1)):]
        base = logdet(cond)
        best, best_ld = -1, -np.inf
        for i in range(n):
            if i in selected:
                continue
            ld = logdet(cond + [i])
            if ld > best_ld:
                best, best_ld = i, ld
        if best < 0 or np.exp(best_ld - base) < epsilon:
            break
        selected.append(best)
    return np.array(selected, dtype=np.int32)


# --------------------------------------------------------------- rerank rules
def ref_rule_violations(chosen, i, items, params):
    """Bitmask of the rules candidate i breaks after ``chosen``, by re-scanning the list (kernels.rules)."""
    sw, sm, mr, cap, pmin, pw, pm, dedupe = (int(x) for x in params)
    cat, kind, group, promoted = items.category, items.kind, items.group, items.promoted
    p, v = len(chosen), 0
    c = cat[i]
    if sw > 0 and c >= 0 and sum(cat[j] == c for j in chosen[max(0, p - (sw - 1)):p]) >= sm:
        v |= 1
    if mr > 0 and kind[i] >= 0 and p >= mr and all(kind[j] == kind[i] for j in chosen[p - mr:]):
        v |= 2
    if cap > 0 and c >= 0 and sum(cat[j] == c for j in chosen) >= cap:
        v |= 4
    if promoted[i] and (p < pmin - 1 or (pw > 0 and sum(bool(promoted[j]) for j in chosen[max(0, p - (pw - 1)):p])
                                          >= pm)):
        v |= 8
    if dedupe and group[i] >= 0 and any(group[j] == group[i] for j in chosen):
        v |= 16
    return v


def ref_ruled_greedy(n, k, items, params, pick):
    """Generic rule-aware greedy loop: ``pick(chosen, admitted) -> item`` is the method's argmax.

    Each round the rules are dropped least-important-first (bit 0 first) until a candidate passes.
    Returns (positions, OR of the picked items' violation masks).
    """
    chosen: list[int] = []
    relaxed = 0
    valid = [i for i in range(n) if not items.blocked[i]]
    for _ in range(min(k, len(valid))):
        rest = [i for i in valid if i not in chosen]
        viol = {i: ref_rule_violations(chosen, i, items, params) for i in rest}
        for dropped in range(6):  # rules 0..dropped-1 are off this round
            admitted = [i for i in rest if viol[i] >> dropped == 0]
            if admitted:
                break
        best = pick(chosen, admitted)
        chosen.append(best)
        relaxed |= viol[best]
    return np.array(chosen, dtype=np.int32), relaxed


def _argmax_first(values, candidates):
    """The candidate with the largest value, lowest index on ties."""
    best = None
    for i in sorted(candidates):
        if best is None or values[i] > values[best]:
            best = i
    return best


def ref_greedy_ruled(scores, k, items, params):
    """NONE under rules: highest float32 score among the admitted items."""
    s = scores.astype(np.float32)
    return ref_ruled_greedy(s.size, k, items, params, lambda chosen, adm: _argmax_first(s, adm))


def ref_mmr_ruled(relevance, emb, k, lam, window, items, params):
    """MMR under rules, the penalty recomputed from a dense cosine matrix each round."""
    e = unit_rows(emb)
    cos = e @ e.T
    rel = relevance.astype(np.float64)

    def pick(chosen, admitted):
        if not chosen:
            return _argmax_first(rel, admitted)
        recent = chosen if window == 0 else chosen[max(0, len(chosen) - window):]
        return _argmax_first(lam * rel - (1.0 - lam) * cos[:, recent].max(axis=1), admitted)

    return ref_ruled_greedy(rel.size, k, items, params, pick)


def ref_dpp_ruled(relevance, emb, k, alpha, epsilon, window, items, params):
    """DPP under rules by log-determinants; once the best admitted gain < epsilon, fill by relevance."""
    e = unit_rows(emb)
    sim = e @ e.T
    np.fill_diagonal(sim, 1.0)
    q = np.exp(alpha * relevance.astype(np.float64))
    big_l = q[:, None] * sim * q[None, :]
    rel = relevance.astype(np.float32)
    state = {"fill": False}

    def logdet(idx):
        if not idx:
            return 0.0
        sign, ld = np.linalg.slogdet(big_l[np.ix_(idx, idx)])
        return ld if sign > 0 else -np.inf

    def pick(chosen, admitted):
        if not state["fill"]:
            cond = chosen if window == 0 else chosen[max(0, len(chosen) - (window - 1)):]
            base = logdet(cond)
            gains = {i: logdet(cond + [i]) for i in admitted}
            best = _argmax_first(gains, admitted)
            if np.exp(gains[best] - base) >= epsilon:
                return best
            state["fill"] = True
        return _argmax_first(rel, admitted)

    return ref_ruled_greedy(rel.size, k, items, params, pick)


# --------------------------------------------------------------- feedback: string hash and Bloom filter
def ref_string_hash(s: str) -> int:
    """FNV-1a 64 over UTF-8 then splitmix64's finaliser, in plain Python integers."""
    mask = (1 << 64) - 1
    h = 0xCBF29CE484222325
    for b in s.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & mask
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & mask
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & mask
    return h ^ (h >> 31)


def ref_bloom_positions(h: int, k: int, m_bits: int) -> list[int]:
    """Double-hashing bit positions of one key."""
    h1, h2 = h & 0xFFFFFFFF, (h >> 32) | 1
    return [((h1 + i * h2) & ((1 << 64) - 1)) % m_bits for i in range(k)]


def ref_bloom_add(bits: np.ndarray, hashes, k: int) -> None:
    for h in hashes:
        for p in ref_bloom_positions(int(h), k, bits.shape[0] * 8):
            bits[p // 8] |= np.uint8(1 << (p % 8))


def ref_bloom_contains(bits: np.ndarray, hashes, k: int) -> np.ndarray:
    return np.array([all(bits[p // 8] >> (p % 8) & 1 for p in ref_bloom_positions(int(h), k, bits.shape[0] * 8))
                     for h in hashes], bool)
