"""kernels.rules: rule-aware NONE / MMR / DPP against the numpy references, rule semantics, relaxation."""
import numpy as np
import pytest

from kernels.dpp import dpp_select
from kernels.mmr import mmr_select
from kernels.rules import (RULE_NAMES, dpp_select_ruled, greedy_select_ruled, mmr_select_ruled, relaxed_names,
                           rule_items, rule_params)
from kernels.reference import ref_dpp_ruled, ref_greedy_ruled, ref_mmr_ruled, ref_rule_violations

ALL_RULES = rule_params(scatter_window=3, scatter_max=1, max_run=2, category_cap=3, promoted_min_position=2,
                        promoted_window=4, promoted_max=1, dedupe=True)


def random_case(rng, n=40, d=8, n_cat=4, n_group=30, p_promoted=0.2, p_blocked=0.1):
    rel = (rng.permutation(n).astype(np.float32) / n)
    emb = rng.standard_normal((n, d)).astype(np.float32)
    items = rule_items(n, category=rng.integers(-1, n_cat, n), kind=rng.integers(-1, 3, n),
                       group=rng.integers(-1, n_group, n), promoted=rng.random(n) < p_promoted,
                       blocked=rng.random(n) < p_blocked)
    return rel, emb, items


def check_list(got, items, params):
    """Every pick either passes all rules or only breaks rules it reports relaxed."""
    chosen, mask = got
    assert chosen.dtype == np.int32 and np.unique(chosen).size == chosen.size
    assert not items.blocked[chosen].any()
    seen = 0
    for p, i in enumerate(chosen.tolist()):
        seen |= ref_rule_violations(chosen[:p].tolist(), i, items, params)
    assert seen == mask


@pytest.mark.parametrize("seed", range(8))
def test_greedy_ruled_matches_reference(seed):
    rng = np.random.default_rng(seed)
    rel, _, items = random_case(rng)
    got = greedy_select_ruled(rel, 15, items, ALL_RULES)
    want = ref_greedy_ruled(rel, 15, items, ALL_RULES)
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1] == want[1]
    check_list(got, items, ALL_RULES)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("window", [0, 3])
def test_mmr_ruled_matches_reference(seed, window):
    rng = np.random.default_rng(10 + seed)
    rel, emb, items = random_case(rng)
    got = mmr_select_ruled(rel, emb, 15, 0.6, window, items, ALL_RULES)
    want = ref_mmr_ruled(rel, emb, 15, 0.6, window, items, ALL_RULES)
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1] == want[1]
    check_list(got, items, ALL_RULES)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("window", [0, 4])
def test_dpp_ruled_matches_reference(seed, window):
    rng = np.random.default_rng(20 + seed)
    rel, emb, items = random_case(rng, d=16)
    got = dpp_select_ruled(rel, emb, 12, 2.0, 1e-6, window, items, ALL_RULES)
    want = ref_dpp_ruled(rel, emb, 12, 2.0, 1e-6, window, items, ALL_RULES)
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1] == want[1]
    check_list(got, items, ALL_RULES)


def test_dpp_ruled_fills_by_relevance_when_gains_run_out():
    # Rank-4 embeddings: the DPP gains vanish after 4 picks; the list must still reach k.
    rng = np.random.default_rng(3)
    rel, emb, items = random_case(rng, n=30, d=4, p_blocked=0.0)
    got = dpp_select_ruled(rel, emb, 12, 1.0, 1e-6, 0, items, ALL_RULES)
    assert got[0].size == 12
    want = ref_dpp_ruled(rel, emb, 12, 1.0, 1e-6, 0, items, ALL_RULES)
    np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("seed", range(3))
def test_no_rules_equals_plain_kernels(seed):
    rng = np.random.default_rng(30 + seed)
    rel, emb, _ = random_case(rng, d=32)
    items = rule_items(rel.size)
    off = rule_params()
    np.testing.assert_array_equal(mmr_select_ruled(rel, emb, 10, 0.7, 0, items, off)[0], mmr_select(rel, emb, 10, 0.7))
    np.testing.assert_array_equal(dpp_select_ruled(rel, emb, 10, 3.0, 1e-6, 5, items, off)[0],
                                  dpp_select(rel, emb, 10, 3.0, window=5))
    np.testing.assert_array_equal(greedy_select_ruled(rel, 10, items, off)[0], np.argsort(-rel)[:10])


def test_ties_and_duplicate_embeddings():
    n = 12
    rel = np.full(n, 0.5, np.float32)          # all tied
    emb = np.tile(np.eye(3, 8, dtype=np.float32), (4, 1))  # every vector appears 4 times
    items = rule_items(n, category=np.arange(n) % 3, group=np.arange(n) // 2)
    params = rule_params(scatter_window=2, scatter_max=1, dedupe=True)
    for got, want in [
        (greedy_select_ruled(rel, 8, items, params), ref_greedy_ruled(rel, 8, items, params)),
        (mmr_select_ruled(rel, emb, 8, 0.5, 0, items, params), ref_mmr_ruled(rel, emb, 8, 0.5, 0, items, params)),
        (dpp_select_ruled(rel, emb, 8, 1.0, 1e-6, 0, items, params),
         ref_dpp_ruled(rel, emb, 8, 1.0, 1e-6, 0, items, params)),
    ]:
        np.testing.assert_array_equal(got[0], want[0])
        assert got[1] == want[1]
        assert got[0].size == 8


# ------------------------------------------------------------------ semantics
def test_scatter_window():
    # Relevance order is A A A B B B C C C: with at most 1 per window of 3, it must interleave.
    cat = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    rel = np.linspace(1.0, 0.1, 9).astype(np.float32)
    got, mask = greedy_select_ruled(rel, 9, rule_items(9, category=cat), rule_params(scatter_window=3))
    assert cat[got].tolist() == [0, 1, 2] * 3
    assert mask == 0


def test_max_run_and_cap():
    cat = np.zeros(10, np.int32)
    cat[7:] = 1
    rel = np.linspace(1.0, 0.1, 10).astype(np.float32)
    got, mask = greedy_select_ruled(rel, 6, rule_items(10, category=cat), rule_params(max_run=2))
    assert cat[got].tolist() == [0, 0, 1, 0, 0, 1]
    assert mask == 0
    got, mask = greedy_select_ruled(rel, 5, rule_items(10, category=cat), rule_params(category_cap=2))
    # Both categories are at their cap after 4: the cap is relaxed and relevance decides.
    assert cat[got].tolist() == [0, 0, 1, 1, 0]
    assert relaxed_names(mask) == ["category_cap"]


def test_kind_is_separate_from_category():
    kind = np.array([0, 0, 0, 1])
    rel = np.linspace(1.0, 0.1, 4).astype(np.float32)
    got, _ = greedy_select_ruled(rel, 4, rule_items(4, category=np.arange(4), kind=kind), rule_params(max_run=2))
    assert got.tolist() == [0, 1, 3, 2]


def test_promoted_slots():
    n = 20
    promoted = np.zeros(n, bool)
    promoted[[0, 1, 2]] = True  # the three most relevant are promoted
    rel = np.linspace(1.0, 0.1, n).astype(np.float32)
    params = rule_params(promoted_min_position=2, promoted_window=9, promoted_max=1)
    got, mask = greedy_select_ruled(rel, 20, rule_items(n, promoted=promoted), params)
    pos = np.flatnonzero(promoted[got])
    assert pos.tolist() == [1, 10, 19]  # never first, one per 9 positions
    assert mask == 0


def test_blocked_and_dedupe():
    group = np.array([5, 5, 6, -1, -1])
    blocked = np.array([False, False, True, False, False])
    rel = np.linspace(1.0, 0.1, 5).astype(np.float32)
    got, mask = greedy_select_ruled(rel, 3, rule_items(5, group=group, blocked=blocked), rule_params(dedupe=True))
    assert got.tolist() == [0, 3, 4]
    # Only 4 valid items: k beyond them returns all valid ones; dedupe is relaxed to get there.
    got, mask = greedy_select_ruled(rel, 10, rule_items(5, group=group, blocked=blocked), rule_params(dedupe=True))
    assert got.tolist() == [0, 3, 4, 1]
    assert relaxed_names(mask) == ["dedupe"]


def test_relaxation_drops_least_important_first():
    # Two categories, 4 items each, all in one dedupe group pair; k = 8 cannot satisfy scatter (1 per 3)
    # nor the cap of 3: scatter goes first, then the cap; dedupe (more important) must hold while it can.
    cat = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    rel = np.linspace(1.0, 0.1, 8).astype(np.float32)
    params = rule_params(scatter_window=3, scatter_max=1, category_cap=3)
    items = rule_items(8, category=cat)
    got, mask = greedy_select_ruled(rel, 8, items, params)
    assert got.size == 8
    assert relaxed_names(mask) == ["scatter", "category_cap"]
    want = ref_greedy_ruled(rel, 8, items, params)
    np.testing.assert_array_equal(got, want[0])
    # With only scatter impossible (cap loose), the cap is never broken.
    got, mask = greedy_select_ruled(rel, 8, items, rule_params(scatter_window=3, scatter_max=1, category_cap=4))
    assert relaxed_names(mask) == ["scatter"]
    assert RULE_NAMES[-1] == "dedupe"


def test_bad_inputs():
    with pytest.raises(ValueError, match="scatter_max"):
        rule_params(scatter_window=3, scatter_max=0)
    with pytest.raises(ValueError, match="category_cap"):
        rule_params(category_cap=-1)
    with pytest.raises(ValueError, match="category"):
        rule_items(3, category=np.array([0, 1]))
    with pytest.raises(ValueError, match="items.group"):
        greedy_select_ruled(np.ones(3, np.float32), 2, rule_items(3)._replace(group=np.zeros(2, np.int32)),
                            rule_params())
    rel = np.ones(3, np.float32)
    rel[1] = np.nan
    with pytest.raises(ValueError):
        mmr_select_ruled(rel, np.ones((3, 4), np.float32), 2, 0.5, 0, rule_items(3), rule_params())
    # Zero-norm embeddings are orthogonal to everything, never a crash.
    got, _ = dpp_select_ruled(np.ones(3, np.float32), np.zeros((3, 4), np.float32), 3, 1.0, 1e-6, 0,
                              rule_items(3), rule_params())
    assert sorted(got.tolist()) == [0, 1, 2]
