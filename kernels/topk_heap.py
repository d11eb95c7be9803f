"""Fixed-capacity min-heap for streaming top-k selection inside njit code.

The heap keeps the best ``cap`` (score, id) pairs seen so far with the *worst*
kept pair at the root, so a new candidate is compared against one element and
rejected in O(1) in the common case. "Better" is the project-wide ranking
order: higher score first, then smaller id first. Using that total order
inside the heap (not only in the final sort) is what makes the kept set
deterministic when scores tie at the cut-off.

These are njit-only building blocks (no validation): callers own the arrays
``heap_scores``/``heap_ids`` (capacity = their length) and the current size.
Pass scores already rounded to the output dtype (float32) so that ties are
decided on exactly the values that are returned.
"""
from __future__ import annotations

import numba


@numba.njit(cache=True, inline="always")
def is_worse(score_a, id_a, score_b, id_b):
    """True when (score_a, id_a) ranks strictly after (score_b, id_b)."""
    return score_a < score_b or (score_a == score_b and id_a > id_b)


@numba.njit(cache=True)
def _sift_down(heap_scores, heap_ids, size, score, idx):
    # Place (score, idx) at the root of heap[:size] and restore the heap
    # property by moving the worse child up, i.e. hole-based sifting (one
    # write per level instead of a swap).
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        right = child + 1
        if right < size and is_worse(heap_scores[right], heap_ids[right],
                                     heap_scores[child], heap_ids[child]):
            child = right
        if is_worse(heap_scores[child], heap_ids[child], score, idx):
            heap_scores[pos] = heap_scores[child]
            heap_ids[pos] = heap_ids[child]
            pos = child
        else:
            break
    heap_scores[pos] = score
    heap_ids[pos] = idx


@numba.njit(cache=True)
def heap_push(heap_scores, heap_ids, size, score, idx):
    """Offer (score, idx) to a heap holding ``size`` items; return the new size.

    While below capacity the pair is always inserted; at capacity it replaces
    the root only if it ranks strictly better than the current worst.
    """
    cap = heap_scores.shape[0]
    if size < cap:
        pos = size
        while pos > 0:
            parent = (pos - 1) >> 1
            if is_worse(score, idx, heap_scores[parent], heap_ids[parent]):
                heap_scores[pos] = heap_scores[parent]
                heap_ids[pos] = heap_ids[parent]
                pos = parent
            else:
                break
        heap_scores[pos] = score
        heap_ids[pos] = idx
        return size + 1
    if cap == 0 or not is_worse(heap_scores[0], heap_ids[0], score, idx):
        return size
    _sift_down(heap_scores, heap_ids, size, score, idx)
    return size


@numba.njit(cache=True)
def heap_sort_desc(heap_scores, heap_ids, size):
    """Sort heap[:size] in place into ranking order (score desc, id asc).

    Heapsort with a min-heap: repeatedly moving the worst remaining pair to
    the end of the shrinking heap leaves the best pair at index 0.
    """
    for end in range(size - 1, 0, -1):
        worst_score = heap_scores[0]
        worst_id = heap_ids[0]
        _sift_down(heap_scores, heap_ids, end, heap_scores[end], heap_ids[end])
        heap_scores[end] = worst_score
        heap_ids[end] = worst_id
