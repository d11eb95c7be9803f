"""Quota-based merge of several recall channels into one deduplicated list.

Channel scores are not comparable across channels (a cosine, a co-occurrence
count, a popularity...), so each kept candidate is scored by its rank r in its
channel, times a channel weight w_c, and an item found by several channels is
fused in one of two ways:

* ``fusion="max"``: the best of ``w_c * (1 - r / quota_c)`` (rank-normalised);
* ``fusion="rrf"``: the sum of ``w_c / (rrf_k + r)`` (weighted reciprocal-rank
  fusion), so items several channels agree on rise above single-channel ones. The inputs are flat arrays (one concatenated candidate
list plus channel offsets) because that is what njit code handles well.
"""
from __future__ import annotations

import numba
import numpy as np

from ._validate import (
    check_array,
    check_finite,
    check_int,
    check_offsets,
    check_real,
    check_same_length,
    check_sorted_desc_segments,
)
from .radix import radix_argsort
from .topk_heap import heap_push, heap_sort_desc

MAX_CHANNELS = 32  # one bit per channel in the uint32 mask


@numba.njit(cache=True, nogil=True)
def _merge_quota(ids, offsets, quotas, exclude, n, weights, rrf, rrf_k):
    n_channels = quotas.shape[0]
    excluded = np.sort(exclude)  # small; sorted once for binary searches
    total = 0
    for c in range(n_channels):
        total += min(quotas[c], offsets[c + 1] - offsets[c])
    cand = np.empty(total, np.int32)
    cand_score = np.empty(total, np.float64)
    cand_channel = np.empty(total, np.int64)
    k = 0
    for c in range(n_channels):
        quota = quotas[c]
        kept = 0
        for t in range(offsets[c], offsets[c + 1]):
            if kept >= quota:
                break
            x = ids[t]
            if x < 0:
                continue  # padding
            e = np.searchsorted(excluded, x)
            if e < excluded.shape[0] and excluded[e] == x:
                continue  # excluded items do not use up quota
            cand[k] = x
            if rrf:
                cand_score[k] = weights[c] / (rrf_k + kept)
            else:
                cand_score[k] = weights[c] * (1.0 - kept / quota)
            cand_channel[k] = c
            k += 1
            kept += 1

    # Dedupe by a stable radix sort on id: linear in the K kept candidates,
    # no O(n_items) scratch.
    order = radix_argsort(cand[:k])
    cap = min(n, k)
    heap_scores = np.empty(cap, np.float32)
    heap_ids = np.empty(cap, np.int32)
    heap_masks = np.zeros(k, np.int64)  # mask per unique id, looked up after the sort
    uniq_ids = np.empty(k, np.int32)
    n_uniq = 0
    size = 0
    t = 0
    while t < k:
        j = cand[order[t]]
        best = 0.0 if rrf else -np.inf
        mask = 0
        # The stable sort keeps one id's entries in channel order: sums are reproducible.
        while t < k and cand[order[t]] == j:
            if rrf:
                best += cand_score[order[t]]
            else:
                best = max(best, cand_score[order[t]])
            mask |= 1 << cand_channel[order[t]]
            t += 1
        uniq_ids[n_uniq] = j
        heap_masks[n_uniq] = mask
        n_uniq += 1
        size = heap_push(heap_scores, heap_ids, size, np.float32(best), j)
    heap_sort_desc(heap_scores, heap_ids, size)
    out_mask = np.empty(size, np.uint32)
    for r in range(size):
        # uniq_ids is ascending, so the mask of a selected id is a binary search away.
        out_mask[r] = heap_masks[np.searchsorted(uniq_ids[:n_uniq], heap_ids[r])]
    return heap_ids[:size].copy(), heap_scores[:size].copy(), out_mask


_SEGMENT_PROBLEMS = {1: "channel must equal c on offsets[c]:offsets[c+1] for every channel c",
                     2: "scores contains NaN or inf",
                     3: "scores must be sorted in descending order within each channel"}


@numba.njit(cache=True, nogil=True)
def _check_segments(channel, scores, offsets):
    """0, or the first problem's code (``_SEGMENT_PROBLEMS``) in the numpy checks' order: channel labels,
    then finite scores, then non-increasing scores within each channel."""
    for c in range(offsets.shape[0] - 1):
        for t in range(offsets[c], offsets[c + 1]):
            if channel[t] != c:
                return 1
    for t in range(scores.shape[0]):
        if not np.isfinite(scores[t]):
            return 2
    for c in range(offsets.shape[0] - 1):
        for t in range(offsets[c] + 1, offsets[c + 1]):
            if scores[t] > scores[t - 1]:
                return 3
    return 0


def merge_quota(
    ids: np.ndarray,
    scores: np.ndarray,
    channel: np.ndarray,
    offsets: np.ndarray,
    quotas: np.ndarray,
    exclude: np.ndarray,
    n: int,
    weights: np.ndarray | None = None,
    fusion: str = "max",
    rrf_k: float = 30.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge per-channel candidate lists under per-channel quotas.

    Channel c's candidates are ``ids[offsets[c]:offsets[c+1]]``, best first.
    From each channel the first ``quotas[c]`` candidates that are neither
    excluded nor padding (id < 0) are kept; the r-th kept one (0-based) scores
    ``weights[c] * (1 - r / quotas[c])`` (fusion "max") or
    ``weights[c] / (rrf_k + r)`` (fusion "rrf"). Items kept by several
    channels are merged into one entry with the maximum ("max") or the sum,
    in channel order ("rrf"), of those scores and a mask with bit c set for
    every channel that kept it. A channel is expected to list an id once; a
    repeat uses up another quota slot and, scoring lower, changes nothing else.

    Args:
        ids: int32[T] concatenated candidate ids.
        scores: float32[T] channel scores; only checked to be finite and
            non-increasing within each channel (the merge uses ranks).
        channel: int32[T] channel of each candidate; must equal c on
            ``offsets[c]:offsets[c+1]`` (checked, otherwise unused).
        offsets: int64[C+1] channel boundaries, 0 = offsets[0] <= ... = T.
        quotas: int32[C] candidates kept per channel (>= 0); C <= 32.
        exclude: int32[E] ids to drop (any order, duplicates fine).
        n: maximum number of results (>= 0).
        weights: float32[C] channel weights (finite, >= 0); None = all 1.
        fusion: "max" or "rrf" (see above).
        rrf_k: rank offset of the "rrf" fusion (> 0).

    Returns:
        ``(ids int32[n'], scores float32[n'], channel_mask uint32[n'])``
        ordered by merged score descending then id ascending.
    """
    ids = check_array("ids", ids, np.int32)
    scores = check_array("scores", scores, np.float32)
    channel = check_array("channel", channel, np.int32)
    offsets = check_array("offsets", offsets, np.int64)
    quotas = check_array("quotas", quotas, np.int32)
    exclude = check_array("exclude", exclude, np.int32)
    n = check_int("n", n, minimum=0)
    check_same_length("scores", scores, "ids", ids)
    check_same_length("channel", channel, "ids", ids)
    n_channels = quotas.shape[0]
    if n_channels > MAX_CHANNELS:
        raise ValueError(f"quotas: at most {MAX_CHANNELS} channels fit the uint32 mask, got {n_channels}")
    if offsets.shape[0] != n_channels + 1:
        raise ValueError(f"offsets must have len(quotas) + 1 = {n_channels + 1} elements, "
                         f"got {offsets.shape[0]}")
    check_offsets("offsets", offsets, ids.shape[0])
    # the per-candidate checks in one compiled pass: the recall server calls this on every request, where the
    # numpy form (repeat, array_equal, isfinite, diff) cost more than the merge itself
    problem = _check_segments(channel, scores, offsets)
    if problem:
        raise ValueError(_SEGMENT_PROBLEMS[problem])
    weights, rrf_k = _check_merge_params(quotas, weights, fusion, rrf_k)
    return _merge_quota(ids, offsets, quotas, exclude, n, weights, fusion == "rrf", rrf_k)


def _check_merge_params(quotas: np.ndarray, weights, fusion: str, rrf_k) -> tuple[np.ndarray, float]:
    """Check the merge parameters every request shares; ``(float64 weights, rrf_k)`` for the kernel."""
    n_channels = quotas.shape[0]
    if n_channels and int(quotas.min()) < 0:
        raise ValueError(f"quotas must be >= 0, got {int(quotas.min())}")
    if weights is None:
        weights = np.ones(n_channels, np.float32)
    weights = check_array("weights", weights, np.float32)
    if weights.shape[0] != n_channels:
        raise ValueError(f"weights must have len(quotas) = {n_channels} elements, got {weights.shape[0]}")
    check_finite("weights", weights)
    if n_channels and float(weights.min()) < 0:
        raise ValueError(f"weights must be >= 0, got {float(weights.min())}")
    if fusion not in ("max", "rrf"):
        raise ValueError(f"fusion must be 'max' or 'rrf', got {fusion!r}")
    rrf_k = check_real("rrf_k", rrf_k, minimum=0.0)
    if fusion == "rrf" and rrf_k <= 0:
        raise ValueError(f"rrf_k must be > 0, got {rrf_k}")
    return weights.astype(np.float64), float(rrf_k)


@numba.njit(cache=True, nogil=True, parallel=True)
def _merge_quota_rows(ids, offsets, quotas, exclude, exclude_ptr, n, weights, rrf, rrf_k):
    n_rows = offsets.shape[0]
    out = np.full((n_rows, n), -1, np.int32)
    for r in numba.prange(n_rows):
        start = offsets[r, 0]
        got, _, _ = _merge_quota(ids[start:offsets[r, -1]], offsets[r] - start, quotas,
                                 exclude[exclude_ptr[r]:exclude_ptr[r + 1]], n, weights, rrf, rrf_k)
        out[r, :got.shape[0]] = got
    return out


def merge_quota_rows(
    ids: np.ndarray,
    scores: np.ndarray,
    offsets: np.ndarray,
    quotas: np.ndarray,
    exclude: np.ndarray,
    exclude_ptr: np.ndarray,
    n: int,
    weights: np.ndarray | None = None,
    fusion: str = "max",
    rrf_k: float = 30.0,
) -> np.ndarray:
    """:func:`merge_quota` of many requests in one call: the merged ids only, ``int32[rows, n]``, -1 padded.

    Offline fitting scores one (quotas, weights) point over thousands of requests (``export.recall.merge_fit``);
    one call validates the inputs once and merges the rows in parallel, where a call per row would spend
    most of its time in Python and in re-checking the same lists.

    Args:
        ids: int32[T] every row's channel lists, rows one after another.
        scores: float32[T] their channel scores (non-increasing within each channel; checked only).
        offsets: int64[rows, C+1] absolute channel boundaries of each row: row r's channel c is
            ``ids[offsets[r, c]:offsets[r, c+1]]``; ``offsets[0, 0] == 0``, ``offsets[r, C] ==
            offsets[r+1, 0]`` and ``offsets[-1, C] == T``.
        quotas, weights, n, fusion, rrf_k: as :func:`merge_quota`, shared by every row.
        exclude: int32[E] every row's excluded ids, rows one after another.
        exclude_ptr: int64[rows+1] row r's excluded ids are ``exclude[exclude_ptr[r]:exclude_ptr[r+1]]``.
    """
    ids = check_array("ids", ids, np.int32)
    scores = check_array("scores", scores, np.float32)
    offsets = check_array("offsets", offsets, np.int64, ndim=2)
    quotas = check_array("quotas", quotas, np.int32)
    exclude = check_array("exclude", exclude, np.int32)
    exclude_ptr = check_array("exclude_ptr", exclude_ptr, np.int64)
    n = check_int("n", n, minimum=0)
    check_same_length("scores", scores, "ids", ids)
    rows, width = offsets.shape
    if width != quotas.shape[0] + 1:
        raise ValueError(f"offsets must have len(quotas) + 1 = {quotas.shape[0] + 1} columns, got {width}")
    if quotas.shape[0] > MAX_CHANNELS:
        raise ValueError(f"quotas: at most {MAX_CHANNELS} channels fit the uint32 mask, got {quotas.shape[0]}")
    if rows > 1 and not np.array_equal(offsets[1:, 0], offsets[:-1, -1]):
        raise ValueError("offsets: each row must start where the previous one ends (offsets[r+1, 0] == "
                         "offsets[r, -1])")
    flat = np.concatenate([offsets[:, :-1].ravel(), offsets[-1:, -1]]) if rows else np.zeros(1, np.int64)
    check_offsets("offsets", flat, ids.shape[0])
    check_offsets("exclude_ptr", exclude_ptr, exclude.shape[0])
    if exclude_ptr.shape[0] != rows + 1:
        raise ValueError(f"exclude_ptr must have rows + 1 = {rows + 1} elements, got {exclude_ptr.shape[0]}")
    check_finite("scores", scores)
    check_sorted_desc_segments("scores", scores, flat)
    weights, rrf_k = _check_merge_params(quotas, weights, fusion, rrf_k)
    return _merge_quota_rows(ids, offsets, quotas, exclude, exclude_ptr, n, weights, fusion == "rrf", rrf_k)
