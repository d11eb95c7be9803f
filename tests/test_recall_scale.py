"""Issue 16: the ANN index over informative vectors, HNSW parameters chosen on validation queries, merge quotas
from the manifest, and the synthetic generator's oracle ranking."""
from __future__ import annotations

import numpy as np
import pytest

from common.snapshot import SnapshotError
from export.recall.ann_index import choose_hnsw, exact_topk, informative_items, overlap
from export.evaluation.recall import truth_csr
from export.data.split import make_split
from export.data.synthetic import HEAD_SKEW, SyntheticConfig, make_dataset, make_world, oracle_topk
from recall_server.config import RecallConfig
from recall_server.state import ann_params, merge_quotas


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_informative_items_keeps_trained_ones():
    counts = np.array([0, 3, 1, 0, 2])
    assert informative_items(counts, 1).tolist() == [1, 2, 4]
    assert informative_items(counts, 2).tolist() == [1, 4]
    assert informative_items(counts, 0).tolist() == [0, 1, 2, 3, 4]


def test_exact_topk_matches_brute_force():
    rng = np.random.default_rng(0)
    emb, queries = _unit(rng.standard_normal((500, 8))), _unit(rng.standard_normal((20, 8)))
    ids = np.sort(rng.choice(500, 300, replace=False)).astype(np.int32)
    got = exact_topk(emb, ids, queries, 10)
    for q, row in zip(queries, got):
        ref = ids[np.argsort(-(emb[ids] @ q))[:10]]
        assert set(row.tolist()) == set(ref.tolist())
    assert overlap(got, got) == 1.0 and overlap(got[:, :5], got) == 0.5


def test_choose_hnsw_reaches_the_target_on_spread_vectors():
    rng = np.random.default_rng(1)
    emb, queries = _unit(rng.standard_normal((3000, 16))), _unit(rng.standard_normal((50, 16)))
    ids = np.arange(0, 3000, 2, dtype=np.int32)   # half the catalogue is indexed
    chosen, index = choose_hnsw(emb, ids, queries, [8, 16], [20, 200], 100, 0.95, threads=1, k=20)
    assert len(chosen["curve"]) == 4 and chosen["chosen"]["recall@20_vs_exact"] >= 0.95
    assert chosen["ef"] in (20, 200) and chosen["M"] in (8, 16)
    assert index.get_current_count() == ids.size
    labels, _ = index.knn_query(queries, k=20)
    assert np.isin(labels, ids).all()              # labels are dense ids of indexed items only
    # an unreachable target: the most accurate point is chosen
    best, _ = choose_hnsw(emb, ids, queries, [8], [5, 200], 100, 1.01 - 1e-9, threads=1, k=20)
    assert best["ef"] == 200


def _brute_oracle(world, user: int, seen: set[int], k: int) -> list[int]:
    cat, p_home = world.catalog, world.config.p_home
    bounds = np.searchsorted(cat.cluster, np.arange(cat.centers.shape[0] + 1))
    lo, hi = bounds[world.home[user]], bounds[world.home[user] + 1]
    p = (1 - p_home) * cat.popularity.copy()
    j = np.arange(hi - lo, dtype=np.float64)
    s = hi - lo
    p[lo:hi] += p_home * (((j + 1) / s) ** (1 / HEAD_SKEW) - (j / s) ** (1 / HEAD_SKEW))
    order = [i for i in np.lexsort((np.arange(p.size), -p)).tolist() if i not in seen]
    return order[:k]


def test_oracle_topk_matches_brute_force_and_the_draws():
    cfg = SyntheticConfig(n_items=4000, n_users=300, n_interactions=15000, seed=4)
    world = make_world(cfg)
    ds = make_dataset(cfg)
    split = make_split(ds)
    indptr, items = truth_csr(split.known, ds.n_users)
    users = np.arange(0, 300, 37)
    got = oracle_topk(world, users, indptr, items, 30)
    for row, u in enumerate(users.tolist()):
        seen = set(items[indptr[u]:indptr[u + 1]].tolist())
        assert got[row].tolist() == _brute_oracle(world, u, seen, 30)
    # the generator's probabilities explain its own draws: home-cluster items dominate
    in_home = world.catalog.cluster[ds.interactions.item] == world.home[ds.interactions.user]
    assert abs(in_home.mean() - cfg.p_home) < 0.1


def _snap(manifest):
    return type("S", (), {"manifest": manifest, "path": "/x", "schema": {"n_items": 100}})()


def test_merge_quotas_and_ann_params_from_the_manifest():
    config = RecallConfig()
    fitted = _snap({"recall_merge": {"quotas": {"ann": 300, "itemcf": 1000}}, "ann_index": {"items": 40, "ef": 64}})
    assert merge_quotas(fitted, config) == {**config.quotas, "ann": 300, "itemcf": 1000}
    assert ann_params(fitted, config) == (40, 64)
    own = RecallConfig(quotas={**config.quotas, "ann": 10}, hnsw_ef=123)
    assert merge_quotas(fitted, own)["ann"] == 10 and ann_params(fitted, own) == (40, 123)
    assert merge_quotas(_snap({}), config) == config.quotas and ann_params(_snap({}), config) == (100, config.hnsw_ef)
    with pytest.raises(SnapshotError, match="recall_merge.quotas"):
        merge_quotas(_snap({"recall_merge": {"quotas": {"ann": -1}}}), config)
    with pytest.raises(SnapshotError, match="ann_index"):
        ann_params(_snap({"ann_index": {"items": 101}}), config)


def test_served_vectors_take_the_features_only_vector_below_min_count():
    from export.recall.ann_index import served_vectors

    tower, content = np.ones((4, 3), np.float32), np.zeros((4, 3), np.float32)
    got = served_vectors(tower, content, np.array([0, 1, 2, 5]), 2)
    assert got[:, 0].tolist() == [0, 0, 1, 1] and got.dtype == np.float32
    assert served_vectors(tower, content, None, 2).min() == 1.0   # no counts: the tower's everywhere


def test_routing_nodes_are_walked_but_never_returned(tmp_path):
    """Issue 28: training users' vectors join the graph as routing nodes marked deleted; a search returns items
    only, even when every routing node is nearer to the query than any item, and the saved index keeps them."""
    from export.recall.ann_index import build_hnsw, build_routing, load_hnsw, routing_count

    rng = np.random.default_rng(3)
    items = _unit(rng.standard_normal((1500, 16)) + 3.0)        # items in a cone, users on its far side
    users = _unit(rng.standard_normal((400, 16)) - 1.0)
    history = np.zeros((400, 5), np.int32)
    history[:300, 0] = 1                                        # 300 users with a history
    routing = build_routing(users, history, n=200)
    assert routing.shape == (200, 16)
    assert build_routing(users, history, n=350).shape[0] == 350   # topped up from users without a history
    index = build_hnsw(items, np.arange(1500, dtype=np.int32), 16, 100, 1, tmp_path / "i.hnsw", routing=routing)
    assert index.get_current_count() == 1700 and routing_count(index, 1500) == 200
    index.set_ef(300)
    labels, _ = index.knn_query(users[300:], k=100)
    assert labels.max() < 1500
    loaded = load_hnsw(tmp_path / "i.hnsw", 16, 1500)
    assert loaded.get_current_count() == 1700 and loaded.knn_query(users[:5], k=100)[0].max() < 1500
    exact = exact_topk(items, np.arange(1500, dtype=np.int32), users[300:], 100)
    assert overlap(labels, exact) > 0.9
