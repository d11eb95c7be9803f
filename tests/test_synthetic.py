"""Synthetic snapshots (export.data.synthetic.make_dataset through the normal pipeline) and the content channel."""
from __future__ import annotations

import numpy as np
import pytest

from common.config import load_config
from common.snapshot import Snapshot
from export.recall.tables import content_table
from export.data.split import make_split
from export.data.synthetic import SyntheticConfig, make_dataset
from recall_server.config import RecallConfig
from recall_server.recall import recall
from recall_server.state import load_state

ONLY_CONTENT = {"ann": 0, "itemcf": 0, "swing": 0, "popular": 0, "segment_popular": 0, "content": 50}


def test_synthetic_dataset_shape_and_signal():
    ds = make_dataset(SyntheticConfig(n_items=3000, n_users=200, n_interactions=8000, seed=3))
    assert (ds.n_items, ds.n_users) == (3000, 200)
    inter = ds.interactions
    assert 7000 <= len(inter) <= 8000 and np.all(np.diff(inter.timestamp) > 0)  # unique pairs, time order
    assert np.unique(inter.user.astype(np.int64) * ds.n_items + inter.item).size == len(inter)
    assert ds.user_cat_names == ["age", "gender", "region"] and ds.user_cat.shape == (200, 3)
    assert ds.item_cat_names == ["category", "price_band"] and (ds.item_cat > 0).all()
    assert ds.item_bag.shape == (3000, 20) and (ds.item_bag.sum(1) >= 1).all()
    assert ds.item_titles[7] == "item 7" and ds.item_ids[7] == "i7" and ds.user_ids[0] == "u0"
    assert set(np.unique(inter.rating)) <= {1, 2, 3, 4, 5} and (inter.rating >= 4).mean() > 0.3
    counts = np.sort(np.bincount(inter.item, minlength=ds.n_items))[::-1]
    assert counts[:30].sum() > 0.1 * counts.sum()  # power-law popularity: the top 1% of items hold > 10%
    again = make_dataset(SyntheticConfig(n_items=3000, n_users=200, n_interactions=8000, seed=3))
    assert np.array_equal(again.interactions.item, inter.item)  # seeded


def test_synthetic_content_vectors():
    """Issue 28 step 4: every synthetic item has a content vector (its latent vector plus noise), seeded, and
    from its own random stream: the log and the other features are those of a catalogue without one."""
    from export.data.synthetic import make_world

    cfg = SyntheticConfig(n_items=3000, n_users=200, n_interactions=8000, seed=3)
    ds = make_dataset(cfg)
    content = ds.item_content
    assert content.shape == (3000, 32) and content.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(content, axis=1), 1.0, atol=1e-5)
    assert np.unique(content, axis=0).shape[0] == 3000          # every item its own vector
    np.testing.assert_array_equal(make_dataset(cfg).item_content, content)
    cluster = make_world(cfg).catalog.cluster                    # it says what the item is: its cluster
    sim = content @ content.T
    np.fill_diagonal(sim, -2)
    assert (cluster[sim.argmax(1)] == cluster).mean() > 0.9
    plain = make_dataset(SyntheticConfig(n_items=3000, n_users=200, n_interactions=8000, seed=3, content_dim=0))
    assert plain.item_content is None
    np.testing.assert_array_equal(plain.interactions.item, ds.interactions.item)
    np.testing.assert_array_equal(plain.item_cat, ds.item_cat)


def test_content_table_with_content_vectors():
    """With content vectors every item has its own row, and the HNSW path (past ``exact_pairs``) finds what
    exact search finds."""
    ds = make_dataset(SyntheticConfig(n_items=1500, n_users=100, n_interactions=3000, seed=1))
    split = make_split(ds)
    cold = np.flatnonzero(np.bincount(split.train.item, minlength=ds.n_items) == 0)
    assert cold.size > 20
    exact = content_table(ds.item_content, ds, split.train, top_m=10)
    approx = content_table(ds.item_content, ds, split.train, top_m=10, exact_pairs=0)
    np.testing.assert_array_equal(exact["row"], np.arange(ds.n_items))
    np.testing.assert_array_equal(approx["row"], exact["row"])
    np.testing.assert_array_equal(approx["indptr"], np.arange(ds.n_items + 1) * 10)
    assert np.isin(approx["indices"], cold).all()
    hits = [np.intersect1d(exact["indices"][i * 10:(i + 1) * 10], approx["indices"][i * 10:(i + 1) * 10]).size
            for i in range(ds.n_items)]
    assert np.mean(hits) >= 9.5
    ref = ds.item_content[cold] @ ds.item_content[5]
    np.testing.assert_allclose(exact["scores"][50:60], np.sort(ref)[::-1][:10], atol=1e-5)


def test_content_table_matches_brute_force():
    ds = make_dataset(SyntheticConfig(n_items=600, n_users=60, n_interactions=1500, n_categories=8, n_tags=5,
                                      content_dim=0))   # categorical features only: items share rows
    split = make_split(ds)
    emb = np.random.default_rng(0).standard_normal((ds.n_items, 8)).astype(np.float32)
    # equal features must give equal vectors (as the item tower without ids does)
    feats = np.concatenate([ds.item_cat, ds.item_bag], axis=1)
    _, first, inverse = np.unique(feats, axis=0, return_index=True, return_inverse=True)
    emb = emb[first][inverse.reshape(-1)]
    table = content_table(emb, ds, split.train, top_m=7)
    cold = np.flatnonzero(np.bincount(split.train.item, minlength=ds.n_items) == 0)
    assert cold.size > 7
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for item in range(0, ds.n_items, 7):
        r = table["row"][item]
        ids = table["indices"][table["indptr"][r]:table["indptr"][r + 1]]
        scores = table["scores"][table["indptr"][r]:table["indptr"][r + 1]]
        assert np.isin(ids, cold).all() and np.unique(ids).size == ids.size == 7
        ref = np.sort(unit[cold] @ unit[item])[::-1][:7]
        np.testing.assert_allclose(scores, ref, atol=1e-5)
        np.testing.assert_allclose(scores, unit[ids] @ unit[item], atol=1e-5)


def _cold_item_via_content(state, config, snapshot):
    """A (history item, cold item) pair where recalling with that history and only the content channel
    returns the cold item; asserts the cold item had no training interaction."""
    row, indptr, indices, _ = state.tables["content"]
    assert indices.size, "the snapshot has no cold items in its content table"
    hist_item = int(np.flatnonzero(np.diff(indptr)[row] > 0)[0])
    cold_item = int(indices[indptr[row[hist_item]]])
    item_ids = snapshot.item_ids
    got = recall(state, config, "\x00new-visitor", 50, history_override=[str(item_ids[hist_item])],
                 quotas=ONLY_CONTENT)
    return cold_item, got


def test_content_channel_recalls_cold_items(snapshot):
    config = RecallConfig(snapshot=str(snapshot.path))
    state = load_state(snapshot, config)
    cold_item, got = _cold_item_via_content(state, config, snapshot)
    assert cold_item in got.ids.tolist()
    assert all(m == 1 << got.channel_names.index("content") for m in got.channel_masks.tolist())
    trained = {int(i) for r in range(10) for i in snapshot.features.user(str(snapshot.features.array("user_ids")[r])).seen}
    assert cold_item not in trained
    # no history: nothing from this channel, and no error
    empty = recall(state, config, "\x00new-visitor", 50, quotas=ONLY_CONTENT)
    assert empty.ids.size == 0


@pytest.fixture(scope="module")
def synthetic_snapshot(tmp_path_factory) -> Snapshot:
    """A small synthetic snapshot exported through the normal pipeline (short training)."""
    from export.__main__ import synthetic_overrides
    from export.config import ExportConfig
    from export.pipeline import run_export

    root = tmp_path_factory.mktemp("synthetic")
    config = load_config(ExportConfig, None, [
        *synthetic_overrides(2000, users=300), f"out={root}", "eval_users=60", "max_train_rows=3000",
        "two_tower.epochs=1", "deepfm.epochs=1", "mmoe.epochs=1", "mmoe_teacher.epochs=1", "eval_k=[50,200]"])
    return Snapshot.open(run_export(config))


def test_synthetic_snapshot_serves_recall(synthetic_snapshot):
    snap = synthetic_snapshot
    manifest = snap.manifest
    assert manifest["dataset"]["name"] == "synthetic-2000" and manifest["dataset"]["items"] == 2000
    assert manifest["dataset"]["users"] == 300 and manifest["dataset"]["validation"] > 0
    assert manifest["metrics"]["recall"]["users"] <= 60
    assert manifest["metrics"]["hnsw_recall@100_vs_exact"] > 0.9
    assert "i2i_content.npz" in manifest["files"]
    # issue 28: the index holds every item and the routing nodes, with M / ef chosen on validation
    ann = manifest["ann_index"]
    assert ann["items"] == 2000 and (ann["M"], ann["ef"]) in [(r["M"], r["ef"]) for r in ann["curve"]]
    assert ann["routing_nodes"] == 300
    assert np.load(snap.path / "ann_items.npy").size == ann["items"]
    # merge weights and quotas fitted on validation, served; the oracle ceiling beside the channels
    merge = manifest["recall_merge"]
    assert set(merge["quotas"]) == set(RecallConfig().channels) and merge["users"] > 0 and merge["curve"]
    recall_rows = manifest["metrics"]["recall"]
    assert recall_rows["oracle"]["recall@200"] >= recall_rows["merged"]["recall@200"]
    config = RecallConfig(snapshot=str(snap.path))
    state = load_state(snap, config)
    assert state.quotas == {**config.quotas, **merge["quotas"]} and state.index.get_current_count() == ann["items"] + 300
    user_id = str(snap.features.array("user_ids")[0])
    result = recall(state, config, user_id, 500)
    assert result.ids.size == 500 and np.unique(result.ids).size == 500 and not result.cold_start
    assert not np.isin(result.ids, snap.features.user(user_id).seen).any()
    assert snap.features.array("item_titles")[5] == "item 5"
    cold = recall(state, config, "\x00nobody", 100)
    assert cold.cold_start and cold.ids.size == 100
    cold_item, got = _cold_item_via_content(state, config, snap)
    assert cold_item in got.ids.tolist()
