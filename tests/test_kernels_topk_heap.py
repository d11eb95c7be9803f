"""kernels.topk_heap: the streaming top-k heap against a full lexsort."""
import numpy as np
import pytest

from kernels.topk_heap import heap_push, heap_sort_desc
from kernels.reference import rank_desc


def heap_topk(ids, scores, k):
    heap_scores = np.empty(k, np.float32)
    heap_ids = np.empty(k, np.int32)
    size = 0
    for i, s in zip(ids, scores):
        size = heap_push(heap_scores, heap_ids, size, np.float32(s), np.int32(i))
    heap_sort_desc(heap_scores, heap_ids, size)
    return heap_ids[:size], heap_scores[:size]


@pytest.mark.parametrize("k", [0, 1, 3, 10, 50, 200])
@pytest.mark.parametrize("seed", range(3))
def test_heap_matches_lexsort_with_many_ties(k, seed):
    rng = np.random.default_rng(seed)
    ids = rng.permutation(120).astype(np.int32)
    scores = rng.integers(0, 8, 120).astype(np.float32)  # heavy ties
    got_ids, got_scores = heap_topk(ids, scores, k)
    order = rank_desc(ids, scores)[:k]
    np.testing.assert_array_equal(got_ids, ids[order])
    np.testing.assert_array_equal(got_scores, scores[order])


def test_heap_all_equal_scores_keeps_smallest_ids():
    ids = np.arange(20, dtype=np.int32)[::-1].copy()
    got_ids, _ = heap_topk(ids, np.ones(20, np.float32), 5)
    np.testing.assert_array_equal(got_ids, [0, 1, 2, 3, 4])
