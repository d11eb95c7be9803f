"""Request-time attribute filters: schema, validation (field named), vectorised evaluation against a per-item
reference, and recall applying them in every channel (exact ANN over the eligible items)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from common.item_filter import FilterError, FilterLimits, build_attribute_table, compile_filters, pack_bits
from recall_server.filtering import EligibleCache, eligible_items, exact_top, fetch_size
from recsys.stage.v1 import recall_service_pb2 as recall_pb2
from recsys.v2 import recommend_service_pb2 as pb

GENRES = ["Action", "Comedy", "Drama", "Horror"] + [f"g{i}" for i in range(66)]  # 70: two uint64 words


def make_table(n=500, seed=0):
    rng = np.random.default_rng(seed)
    bag = (rng.random((n, len(GENRES))) < 0.08).astype(np.uint8)
    years = [str(y) for y in range(1950, 2000)]
    item_cat = np.stack([rng.integers(0, len(years) + 1, n), rng.integers(0, 4, n)], axis=1).astype(np.int32)
    schema = {"bag_names": GENRES, "item_cat_names": ["release_year", "band"],
              "item_cat_values": [years, ["low", "mid", "high"]]}
    return build_attribute_table(schema, item_cat, bag), bag, item_cat, years


def reference(f, bag, item_cat, years, i) -> bool:
    """One condition on one item, the slow obvious way."""
    op = f.WhichOneof("condition")
    if f.attribute == "genre":
        have = {GENRES[j] for j in np.flatnonzero(bag[i])}
    elif f.attribute == "band":
        code = item_cat[i, 1]
        have = {["low", "mid", "high"][code - 1]} if code else set()
    else:
        code = item_cat[i, 0]
        year = float(years[code - 1]) if code else math.nan
        lo = f.range.min if f.range.HasField("min") else -math.inf
        hi = f.range.max if f.range.HasField("max") else math.inf
        return lo <= year <= hi
    hit = bool(have & set(getattr(f, op).values))
    return hit if op == "any_of" else not hit


FILTERS = [
    [pb.AttributeFilter(attribute="genre", any_of=pb.ValueSet(values=["Comedy", "g65"]))],
    [pb.AttributeFilter(attribute="genre", none_of=pb.ValueSet(values=["Drama", "Horror", "g64"]))],
    [pb.AttributeFilter(attribute="release_year", range=pb.Range(min=1990))],
    [pb.AttributeFilter(attribute="band", any_of=pb.ValueSet(values=["low"]))],
    [pb.AttributeFilter(attribute="band", none_of=pb.ValueSet(values=["high"])),
     pb.AttributeFilter(attribute="genre", any_of=pb.ValueSet(values=["Comedy"]))],
    [pb.AttributeFilter(attribute="release_year", range=pb.Range(min=1960, max=1970)),
     pb.AttributeFilter(attribute="band", any_of=pb.ValueSet(values=["mid", "high"])),
     pb.AttributeFilter(attribute="genre", none_of=pb.ValueSet(values=["Action"]))],
]


@pytest.mark.parametrize("filters", FILTERS)
def test_mask_and_matches_agree_with_a_per_item_reference(filters):
    table, bag, item_cat, years = make_table()
    compiled = compile_filters(filters, table, FilterLimits())
    expect = np.array([all(reference(f, bag, item_cat, years, i) for f in filters) for i in range(table.n_items)])
    np.testing.assert_array_equal(compiled.mask(), expect)
    ids = np.array([3, 0, 499, 3, 250])
    np.testing.assert_array_equal(compiled.matches(ids), expect[ids])
    assert 0 < expect.sum() < table.n_items  # the cases are not trivial


def test_pack_bits_matches_columns():
    bag = (np.random.default_rng(1).random((50, 130)) < 0.3).astype(np.uint8)
    words = pack_bits(bag)
    assert words.shape == (50, 3)
    for j in (0, 63, 64, 127, 129):
        np.testing.assert_array_equal((words[:, j // 64] >> np.uint64(j % 64)) & np.uint64(1), bag[:, j])


def test_stage_and_public_filters_compile_alike():
    table, *_ = make_table()
    public = FILTERS[3]
    stage = [recall_pb2.AttributeFilter.FromString(f.SerializeToString()) for f in public]
    a = compile_filters(public, table, FilterLimits()).mask()
    np.testing.assert_array_equal(a, compile_filters(stage, table, FilterLimits()).mask())


BAD = [
    ([pb.AttributeFilter(attribute="colour", any_of=pb.ValueSet(values=["red"]))], "filters[0].attribute", "colour"),
    ([pb.AttributeFilter(attribute="", any_of=pb.ValueSet(values=["x"]))], "filters[0].attribute", "empty"),
    ([pb.AttributeFilter(attribute="genre")], "filters[0]", "set one of"),
    ([pb.AttributeFilter(attribute="genre", range=pb.Range(min=1))], "filters[0].range", "categorical"),
    ([pb.AttributeFilter(attribute="release_year", any_of=pb.ValueSet(values=["1995"]))], "filters[0].any_of", "numeric"),
    ([pb.AttributeFilter(attribute="genre", any_of=pb.ValueSet())], "filters[0].any_of.values", "empty"),
    ([pb.AttributeFilter(attribute="genre", none_of=pb.ValueSet(values=["Comedy", "Comdy"]))],
     "filters[0].none_of.values[1]", "Comdy"),
    ([pb.AttributeFilter(attribute="genre", any_of=pb.ValueSet(values=["Comedy"] * 10_000))],
     "filters[0].any_of.values", "limit"),
    ([pb.AttributeFilter(attribute="release_year", range=pb.Range())], "filters[0].range", "set min"),
    ([pb.AttributeFilter(attribute="release_year", range=pb.Range(min=math.nan))], "filters[0].range.min", "NaN"),
    ([pb.AttributeFilter(attribute="release_year", range=pb.Range(min=1, max=math.nan))], "filters[0].range.max", "NaN"),
    ([pb.AttributeFilter(attribute="release_year", range=pb.Range(min=2000, max=1990))], "filters[0].range", "min"),
    ([pb.AttributeFilter(attribute="genre", any_of=pb.ValueSet(values=["Comedy"]))] * 17, "filters", "limit"),
]


@pytest.mark.parametrize("filters,field,word", BAD)
def test_bad_filters_name_the_field(filters, field, word):
    table, *_ = make_table()
    with pytest.raises(FilterError) as exc:
        compile_filters(filters, table, FilterLimits())
    assert str(exc.value).startswith(field) and word in str(exc.value)


def test_a_mostly_numeric_field_is_numeric_and_its_odd_values_have_none():
    years = [str(y) for y in range(1950, 1990)] + ["unkonwn", "V"]  # as in ML-100K
    item_cat = np.array([[1], [41], [42], [0], [40]], np.int32)
    table = build_attribute_table({"item_cat_names": ["release_year"], "item_cat_values": [years]}, item_cat,
                                  np.zeros((5, 0), np.uint8))
    attr = table.attributes["release_year"]
    assert attr.kind == "numeric"
    np.testing.assert_array_equal(attr.numbers, [1950, np.nan, np.nan, np.nan, 1989])
    f = compile_filters([pb.AttributeFilter(attribute="release_year", range=pb.Range(max=3000))], table, FilterLimits())
    np.testing.assert_array_equal(f.mask(), [True, False, False, False, True])
    bands = build_attribute_table({"item_cat_names": ["band"], "item_cat_values": [["1", "x", "y"]]}, item_cat[:, :1] % 4,
                                  np.zeros((5, 0), np.uint8))
    assert bands.attributes["band"].kind == "categorical"


def test_no_filters_compile_to_none():
    table, *_ = make_table()
    assert compile_filters([], table, FilterLimits()) is None


def test_exact_top_matches_brute_force():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(300, 8)).astype(np.float32)
    ids = np.sort(rng.choice(300, 40, replace=False)).astype(np.int32)
    user = rng.normal(size=8).astype(np.float32)
    got_ids, got_scores = exact_top(emb[ids], ids, user, 10)
    scores = emb[ids] @ user
    expect = ids[np.argsort(-scores, kind="stable")][:10]
    np.testing.assert_array_equal(got_ids, expect)
    np.testing.assert_allclose(got_scores, np.sort(scores)[::-1][:10], rtol=1e-6)
    assert exact_top(emb[ids], ids, user, 100)[0].size == 40


def test_fetch_size_scales_with_selectivity():
    table, *_ = make_table()
    eligible = eligible_items(compile_filters(FILTERS[0], table, FilterLimits()))
    frac = eligible.count / table.n_items
    assert fetch_size(10, eligible, 1.5, 10_000) == math.ceil(10 / frac * 1.5)
    assert fetch_size(10, eligible, 1.5, 20) == 20 and fetch_size(10, None, 1.5, 20) == 10


def test_eligible_cache_reuses_and_evicts():
    calls = []
    cache = EligibleCache(2)
    make = lambda key: (lambda: calls.append(key) or key)  # noqa: E731
    assert cache.get(b"a", make(b"a")) == b"a" and cache.get(b"a", make(b"a")) == b"a"
    cache.get(b"b", make(b"b"))
    cache.get(b"c", make(b"c"))  # evicts a
    cache.get(b"a", make(b"a"))
    assert calls == [b"a", b"b", b"c", b"a"]


# ---------------------------------------------------------------- recall over the session snapshot

@pytest.fixture(scope="module")
def recall_state(snapshot):
    from recall_server.config import RecallConfig
    from recall_server.state import load_state

    config = RecallConfig(snapshot=str(snapshot.path))
    return config, load_state(snapshot, config)


def genre_filter(state, share: float):
    """A genre any_of filter keeping about ``share`` of the catalogue (the rarest genres first)."""
    attr = state.attributes.attributes["genre"]
    bits = np.unpackbits(attr.words.view(np.uint8), axis=1, bitorder="little")[:, :len(attr.values)]
    counts = bits.sum(axis=0)
    chosen, covered = [], np.zeros(bits.shape[0], bool)
    for j in np.argsort(counts):
        if counts[j] == 0:
            continue
        chosen.append(attr.values[j])
        covered |= bits[:, j].astype(bool)
        if covered.mean() >= share:
            break
    return [recall_pb2.AttributeFilter(attribute="genre", any_of=recall_pb2.ValueSet(values=chosen))], covered


@pytest.mark.parametrize("share", [0.02, 0.3])
def test_recall_returns_only_eligible_items_from_every_channel(recall_state, share):
    from recall_server.recall import recall

    config, state = recall_state
    filters, covered = genre_filter(state, share)
    eligible = eligible_items(compile_filters(filters, state.attributes, config.filters))
    np.testing.assert_array_equal(eligible.mask, covered)
    users = [str(u) for u in state.snapshot.features.array("user_ids")[:20]] + ["\x00unknown"]
    channels_seen = set()
    for user in users:
        result = recall(state, config, user, 200, eligible=eligible)
        assert result.eligible_items == eligible.count
        assert covered[result.ids].all(), "an ineligible item came out of recall"
        # a selective filter still fills the list: at least what the user has not seen (or n)
        record = state.snapshot.features.user(user)
        seen = record.seen if record is not None else np.empty(0, np.int32)
        available = np.setdiff1d(eligible.ids, np.concatenate([seen, state.blocklist]))
        assert result.ids.size >= min(200, available.size) * (0.9 if share > 0.1 else 1.0)
        for c, name in enumerate(result.channel_names):
            if (result.channel_masks >> c & 1).any():
                channels_seen.add(name)
    assert {"ann", "popular"} <= channels_seen


def test_filtered_ann_equals_exact_search_over_eligible_items(recall_state):
    from recall_server.channels import ann
    from recall_server.recall import build_query

    config, state = recall_state
    filters, covered = genre_filter(state, 0.05)
    eligible = eligible_items(compile_filters(filters, state.attributes, config.filters))
    user = str(state.snapshot.features.array("user_ids")[0])
    query, _ = build_query(state, config, user, None, [])
    import dataclasses
    query = dataclasses.replace(query, eligible=eligible)
    ids, scores = ann.recall(state, query, 30)
    vector = ann.user_vector(state, query)
    emb = np.asarray(state.item_emb, np.float32)
    ref = emb[eligible.ids] @ vector
    order = np.argsort(-ref, kind="stable")
    want = min(30 + min(query.exclude.size, state.ann_max_overfetch), eligible.count)
    np.testing.assert_array_equal(ids, eligible.ids[order][:want])
    np.testing.assert_allclose(scores, ref[order][:want], rtol=1e-5, atol=1e-6)


def test_filtered_ann_falls_back_to_exact_when_hnsw_cannot_return_the_over_fetch(recall_state):
    """hnswlib raises when it finds fewer neighbours than asked (a huge over-fetch); the channel then searches
    exactly instead of failing the request."""
    import dataclasses

    from recall_server.channels import ann
    from recall_server.recall import build_query

    config, state = recall_state
    filters, _ = genre_filter(state, 0.3)
    eligible = eligible_items(compile_filters(filters, state.attributes, config.filters))

    class Refusing:
        def knn_query(self, *args, **kwargs):
            raise RuntimeError("Cannot return the results in a contiguous 2D array. Probably ef or M is too small")

    hnsw_state = dataclasses.replace(state, index=Refusing(), ann_exact_max=0)  # force the HNSW path
    exact_state = dataclasses.replace(state, ann_exact_max=10**9)
    query, _ = build_query(state, config, str(state.snapshot.features.array("user_ids")[0]), None, [])
    query = dataclasses.replace(query, eligible=eligible)
    got, want = ann.recall(hnsw_state, query, 40), ann.recall(exact_state, query, 40)
    np.testing.assert_array_equal(got[0], want[0])


def test_bench_picks_the_filter_closest_to_the_target_share():
    from benches.filters import pick_filter

    table, *_ = make_table(n=2000)
    for share in (0.3, 0.05, 0.005):
        filters, mask, label = pick_filter(table, share)
        np.testing.assert_array_equal(compile_filters(filters, table, FilterLimits()).mask(), mask)
        assert 0.5 < mask.mean() / share < 2.0, (share, label, mask.mean())
