"""rerank_server.rerank as a plain function: parameters, bad input, rules, real item attributes."""
import numpy as np
import pytest

from common.config import load_config
from rerank_server.config import RerankConfig, RulesConfig
from rerank_server.items import ItemAttributes, load_item_attributes, primary_category, title_groups
from rerank_server.rerank import ParamError, rerank, rerank_ruled, resolve_params

METHODS = ("NONE", "MMR", "DPP", "DPP_WINDOW")


def toy_items(n_items=60, n_cat=4, seed=0):
    rng = np.random.default_rng(seed)
    bag = np.zeros((n_items, n_cat), np.uint8)
    bag[np.arange(n_items), rng.integers(0, n_cat, n_items)] = 1
    titles = np.array([f"t{i}" for i in range(n_items)])
    titles[1] = titles[0]  # a duplicate title under two ids
    emb = rng.standard_normal((n_items, 16)).astype(np.float32)
    return ItemAttributes(primary_category(bag), title_groups(titles), np.zeros(n_items, bool), bag), emb


# ------------------------------------------------------------------ parameters
@pytest.mark.parametrize("kwargs, name", [
    ({"mmr_lambda": 1.5}, "params.mmr_lambda"), ({"mmr_lambda": -0.1}, "params.mmr_lambda"),
    ({"dpp_alpha": -1.0}, "params.alpha"), ({"dpp_alpha": 51.0}, "params.alpha"),
    ({"window": -1}, "params.window"), ({"epsilon": 1.0}, "params.epsilon"), ({"epsilon": -1e-3}, "params.epsilon"),
])
def test_out_of_range_params_name_the_parameter(kwargs, name):
    with pytest.raises(ParamError, match=name.replace(".", r"\.")):
        resolve_params(RerankConfig(), "MMR", **kwargs)


def test_dpp_window_needs_a_window():
    with pytest.raises(ParamError, match=r"params\.window"):
        resolve_params(RerankConfig(), "DPP_WINDOW", window=0)
    assert resolve_params(RerankConfig(), "DPP_WINDOW").window == RerankConfig().dpp_window


def test_rules_config_loads_from_toml(tmp_path):
    path = tmp_path / "rerank.toml"
    path.write_text("[rules]\nscatter_window = 3\nscatter_max = 1\ncategory_cap = 4\nblocked_item_ids = ['7']\n")
    config = load_config(RerankConfig, path)
    assert config.rules.scatter_window == 3 and config.rules.category_cap == 4
    assert config.rules.params().tolist()[:4] == [3, 1, 2, 4]
    config.rules.scatter_max = 0
    with pytest.raises(ValueError, match=r"rules\.scatter_max"):
        config.validate()
    off = RulesConfig(enabled=False).params()
    assert off[0] == off[2] == off[3] == off[5] == off[7] == 0  # windows, run, cap, dedupe all off


# ------------------------------------------------------------------ the function
@pytest.mark.parametrize("method", METHODS)
def test_k_beyond_candidates_returns_all_ordered(method):
    items, emb = toy_items()
    idx = np.arange(2, 12, dtype=np.int32)  # no duplicate titles among these
    scores = np.linspace(1.0, 0.0, idx.size).astype(np.float32)
    params = resolve_params(RerankConfig(), method)
    for got in (rerank(emb, idx, scores, 50, params),
                rerank(emb, idx, scores, 50, params, items, RulesConfig().params())):
        assert sorted(got.tolist()) == list(range(idx.size))
        assert got[0] == 0  # every method starts with the most relevant


@pytest.mark.parametrize("method", METHODS)
def test_rules_hold_in_every_method(method):
    items, emb = toy_items()
    rng = np.random.default_rng(1)
    idx = rng.permutation(60).astype(np.int32)
    scores = rng.random(60).astype(np.float32)
    rules = RulesConfig(scatter_window=3, scatter_max=1, category_cap=4)
    promoted = np.zeros(60, bool)
    promoted[np.argsort(-scores)[:3]] = True
    exclude = idx[np.argsort(-scores)[3:6]]
    result = rerank_ruled(emb, idx, scores, 12, resolve_params(RerankConfig(), method), items, rules.params(),
                          promoted, exclude)
    pos = result.positions
    assert pos.size == 12 and result.relaxed_rules == []
    chosen = idx[pos]
    cat = items.category[chosen]
    assert all(len(set(cat[i:i + 3])) == 3 for i in range(10))          # scatter 1 per 3
    assert np.bincount(cat).max() <= 4                                  # cap
    assert not promoted[pos[0]] and np.diff(np.flatnonzero(promoted[pos])).min(initial=9) >= 9
    assert not np.isin(chosen, exclude).any()                           # excluded never returned
    assert np.unique(items.group[chosen]).size == chosen.size           # deduped


def test_relaxation_is_reported():
    items, emb = toy_items()
    idx = np.flatnonzero(items.category == 0)[:6].astype(np.int32)      # one category only
    scores = np.linspace(1.0, 0.5, idx.size).astype(np.float32)
    result = rerank_ruled(emb, idx, scores, 6, resolve_params(RerankConfig(), "DPP"), items,
                          RulesConfig(scatter_window=3, scatter_max=1).params())
    assert result.positions.size == 6
    assert result.relaxed_rules == ["scatter", "max_run"]


# ------------------------------------------------------------------ real item attributes
def test_real_item_attributes(snapshot):
    items = load_item_attributes(snapshot, [str(snapshot.item_ids[0])])
    n = snapshot.schema["n_items"]
    assert items.category.shape == (n,) and items.blocked.sum() == 1
    assert items.category.min() >= 0 and items.category.max() < items.n_categories
    # ML-100K: 22 titles appear under more than one id.
    assert (np.bincount(items.group) > 1).sum() == 22
    emb = snapshot.load_array("item_emb.npy")
    dup = np.flatnonzero(np.bincount(items.group)[items.group] > 1)[:2].astype(np.int32)
    idx = np.concatenate([dup, np.arange(100, 140, dtype=np.int32)])
    scores = np.linspace(1.0, 0.0, idx.size).astype(np.float32)
    for method in METHODS:
        result = rerank_ruled(emb, idx, scores, 10, resolve_params(RerankConfig(), method), items,
                              RulesConfig().params())
        assert result.positions.size == 10
        assert np.unique(items.group[idx[result.positions]]).size == 10
