"""Tests of export.evaluation.metrics against brute-force references."""
import math

import numpy as np
import pytest

from export.evaluation.metrics import auc, gauc, hit_rate_at_k, recall_at_k


def _brute_auc(labels, scores) -> float:
    """Fraction of (positive, negative) pairs ordered right; ties count 1/2."""
    pos = [s for y, s in zip(labels, scores) if y]
    neg = [s for y, s in zip(labels, scores) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(8))
def test_auc_matches_pair_counting_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 200))
    labels = rng.integers(0, 2, n)
    labels[0], labels[1] = 0, 1
    # Few distinct values: many ties, both within and across classes.
    scores = rng.integers(0, 6, n).astype(np.float32) / 5
    assert auc(labels, scores) == pytest.approx(_brute_auc(labels, scores), abs=1e-12)


def test_auc_edge_cases():
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert auc([0, 1, 1], [0.3, 0.3, 0.9]) == 0.75
    assert math.isnan(auc([1, 1], [0.2, 0.3]))
    assert math.isnan(auc([0, 0], [0.2, 0.3]))


def test_auc_known_value():
    # sklearn.metrics.roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


@pytest.mark.parametrize("seed", range(5))
def test_gauc_matches_per_group_reference(seed):
    rng = np.random.default_rng(seed)
    n = 300
    groups = rng.integers(0, 15, n) * 7 - 20       # non-contiguous, negative ids
    labels = rng.integers(0, 2, n)
    labels[groups == groups[0]] = 1                # one single-class group: excluded
    scores = rng.integers(0, 4, n).astype(np.float64)
    num = den = 0.0
    for g in np.unique(groups):
        m = groups == g
        a = _brute_auc(labels[m], scores[m])
        if not math.isnan(a):
            num += a * m.sum()
            den += m.sum()
    assert gauc(labels, scores, groups) == pytest.approx(num / den, abs=1e-12)


def test_gauc_no_valid_group_is_nan():
    assert math.isnan(gauc([1, 0], [0.1, 0.2], [0, 1]))


def test_recall_and_hit_rate_hand_example():
    pred = np.array([
        [3, 1, 4, -1],   # user 0: truth {1, 9} -> top2 hits {1}: 1/2 ; top4 still 1/2
        [5, 6, 7, 8],    # user 1: no truth -> skipped
        [2, -1, -1, -1], # user 2: truth {2} -> 1
        [0, 1, 2, 3],    # user 3: truth {9, 9} (duplicate) -> 0
    ], dtype=np.int32)
    indptr = np.array([0, 2, 2, 3, 5])
    items = np.array([9, 1, 2, 9, 9])
    assert recall_at_k(pred, indptr, items, 2) == pytest.approx((0.5 + 1 + 0) / 3)
    assert recall_at_k(pred, indptr, items, 1) == pytest.approx((0 + 1 + 0) / 3)
    assert hit_rate_at_k(pred, indptr, items, 2) == pytest.approx(2 / 3)
    assert hit_rate_at_k(pred, indptr, items, 1) == pytest.approx(1 / 3)
    # k larger than the prediction width uses every column.
    assert recall_at_k(pred, indptr, items, 100) == pytest.approx((0.5 + 1 + 0) / 3)


def test_recall_matches_reference_random():
    rng = np.random.default_rng(3)
    n_users, n_items, width = 40, 60, 25
    pred = np.stack([rng.permutation(n_items)[:width] for _ in range(n_users)]).astype(np.int32)
    pred[rng.random(pred.shape) < 0.1] = -1
    sizes = rng.integers(0, 6, n_users)
    indptr = np.concatenate([[0], np.cumsum(sizes)])
    items = rng.integers(0, n_items, indptr[-1])
    for k in (1, 5, 10, 25):
        rec, hit = [], []
        for u in range(n_users):
            truth = set(items[indptr[u]:indptr[u + 1]].tolist())
            if not truth:
                continue
            top = {int(x) for x in pred[u, :k] if x >= 0}
            rec.append(len(top & truth) / len(truth))
            hit.append(float(bool(top & truth)))
        assert recall_at_k(pred, indptr, items, k) == pytest.approx(np.mean(rec), abs=1e-12)
        assert hit_rate_at_k(pred, indptr, items, k) == pytest.approx(np.mean(hit), abs=1e-12)


def test_recall_shape_errors_and_empty_truth():
    with pytest.raises(ValueError):
        recall_at_k(np.zeros((2, 3), np.int32), np.array([0, 1]), np.array([1]), 2)
    assert math.isnan(recall_at_k(np.zeros((2, 3), np.int32), np.array([0, 0, 0]), np.array([], int), 2))


def test_concentration_counts_distinct_items_and_the_top_share():
    from export.evaluation.metrics import concentration

    lists = np.array([[3, 1, -1], [3, 2, 2], [4, -1, -1], [-1, -1, -1]])
    got = concentration(lists)
    assert got == {"lists": 3, "distinct": 4, "top_share": 2 / 3}   # item 3 in 2 of the 3 non-empty lists
    assert concentration(np.full((2, 3), -1)) == {"lists": 0, "distinct": 0, "top_share": 0.0}
