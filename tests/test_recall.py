"""recall_server.recall.recall against the session snapshot: channels, merge, filters, bad snapshots."""
from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from common.snapshot import Snapshot, SnapshotError
from recall_server.channels import channel_module
from recall_server.config import RecallConfig
from recall_server.recall import build_query, recall
from recall_server.state import load_state

UNKNOWN = "\x00no-such-user"


@pytest.fixture(scope="module")
def config(snapshot) -> RecallConfig:
    return RecallConfig(snapshot=str(snapshot.path))


@pytest.fixture(scope="module")
def state(snapshot, config):
    return load_state(snapshot, config)


@pytest.fixture(scope="module")
def users(snapshot) -> list[str]:
    return [str(u) for u in snapshot.features.array("user_ids")[:25]]


def bit(result, name: str) -> int:
    return 1 << result.channel_names.index(name)


def test_default_channels_and_quotas(config):
    assert config.channels[:4] == ["ann", "itemcf", "swing", "popular"]
    assert "segment_popular" in config.channels
    config.validate()


def test_no_seen_no_duplicates_exclude_respected(snapshot, state, config, users):
    item_ids = snapshot.item_ids
    for user_id in users:
        record = snapshot.features.user(user_id)
        first = recall(state, config, user_id, 300)
        assert first.ids.size == 300 and not first.cold_start
        assert np.unique(first.ids).size == first.ids.size
        assert not np.isin(first.ids, record.seen).any()
        assert np.all(np.diff(first.scores) <= 0)
        exclude = [str(item_ids[i]) for i in first.ids[:10]]
        again = recall(state, config, user_id, 300, exclude_ids=exclude)
        assert not np.isin(again.ids, first.ids[:10]).any()
        assert not np.isin(again.ids, record.seen).any()


def test_blocklist_filtered_like_seen(state, config, users):
    first = recall(state, config, users[0], 100)
    blocked = dataclasses.replace(state, blocklist=np.sort(first.ids[:5]).astype(np.int32))
    again = recall(blocked, config, users[0], 100)
    assert again.ids.size == 100 and not np.isin(again.ids, first.ids[:5]).any()
    cold = recall(blocked, config, UNKNOWN, 100)
    assert not np.isin(cold.ids, first.ids[:5]).any()


def test_unknown_user_is_cold_start_with_candidates(state, config):
    result = recall(state, config, UNKNOWN, 200)
    assert result.cold_start and result.ids.size == 200
    assert np.unique(result.ids).size == result.ids.size
    i2i = bit(result, "itemcf") | bit(result, "swing")
    assert not np.any(result.channel_masks & i2i)  # no history, no item-to-item
    assert np.any(result.channel_masks & bit(result, "ann"))
    assert np.any(result.channel_masks & bit(result, "popular"))


def test_fitted_merge_applies_to_users_with_a_history_only(state, config, users):
    """A fitted merge that turns off every channel a cold user can use (as the 10^6 fit does: ann, popular and
    segment_popular at 0) still leaves the cold user the configured merge; known users get the fitted one."""
    n = 200
    fitted = dataclasses.replace(state, quotas={**config.quotas, "ann": 0, "popular": 0, "segment_popular": 0,
                                                "itemcf": n, "swing": n},
                                 weights={**config.weights, "swing": 2.0})
    cold = recall(fitted, config, UNKNOWN, n)
    plain = recall(state, dataclasses.replace(config, quotas=config.quotas, weights=config.weights), UNKNOWN, n)
    assert cold.cold_start and cold.ids.size == n
    np.testing.assert_array_equal(cold.ids, plain.ids)
    warm = recall(fitted, config, users[0], n)
    assert not warm.cold_start and warm.ids.size > 0
    off = bit(warm, "ann") | bit(warm, "popular") | bit(warm, "segment_popular")
    assert not np.any(warm.channel_masks & np.uint32(off))   # channels at quota 0 found nothing


def test_empty_history_override_is_ann_on_profile_only(state, config, users):
    result = recall(state, config, users[0], 200, history_override=[])
    assert not result.cold_start and result.ids.size == 200
    assert not np.any(result.channel_masks & (bit(result, "itemcf") | bit(result, "swing")))
    query, _ = build_query(state, config, users[0], [], [])
    assert query.hist.size == 0
    assert channel_module("swing").recall(state, query, 50)[0].size == 0


def test_quota_override_respected(state, config, users):
    only_ann = {name: 0 for name in config.channels} | {"ann": 7}
    result = recall(state, config, users[1], 100, quotas=only_ann)
    assert result.ids.size == 7
    assert np.all(result.channel_masks == bit(result, "ann"))
    mixed = {name: 0 for name in config.channels} | {"itemcf": 5, "swing": 5}
    result = recall(state, config, users[1], 100, quotas=mixed)
    assert 5 <= result.ids.size <= 10
    allowed = bit(result, "itemcf") | bit(result, "swing")
    assert np.all((result.channel_masks & ~np.uint32(allowed)) == 0)


def test_channel_masks_match_each_channels_top_quota(state, config, users):
    quotas = state.quotas or config.quotas  # the snapshot's fitted quotas when export fitted them
    for user_id in users[:10]:
        result = recall(state, config, user_id, 5000)
        query, _ = build_query(state, config, user_id, None, [])
        for c, name in enumerate(result.channel_names):
            ids, _ = channel_module(name).recall(state, query, quotas[name])
            kept = ids[~np.isin(ids, query.exclude)][: quotas[name]]
            tagged = result.ids[(result.channel_masks >> np.uint32(c)) & np.uint32(1) == 1]
            np.testing.assert_array_equal(np.sort(tagged), np.sort(kept))


def test_swing_and_segment_channels_fire_for_known_users(state, config, users):
    for user_id in users:
        query, cold = build_query(state, config, user_id, None, [])
        assert not cold and query.hist.size > 0
        ids, scores = channel_module("swing").recall(state, query, 50)
        assert ids.size > 0 and np.all(np.diff(scores) <= 0)
        assert not np.isin(ids, query.exclude).any()
        seg, _ = channel_module("segment_popular").recall(state, query, 50)
        assert seg.size > 0
    # the fitted merge may turn swing off (ML-100K's does): give it a quota, as a request can
    quotas = {**(state.quotas or config.quotas), "swing": 200}
    result = recall(state, config, users[0], 1000, quotas=quotas)
    assert np.any(result.channel_masks & bit(result, "swing"))


def test_manifest_reports_every_channel_and_merged(snapshot, config):
    metrics = snapshot.manifest["metrics"]["recall"]
    for name in [*config.channels, "merged"]:
        assert {"recall@50", "recall@200", "recall@1000", "hit_rate@50"} <= set(metrics[name])


@pytest.fixture
def snapshot_copy(snapshot, tmp_path):
    path = tmp_path / "copy"
    shutil.copytree(snapshot.path, path)
    return path


@pytest.mark.parametrize("name", ["items.hnsw", "i2i_swing.npz"])
def test_server_refuses_corrupted_file_naming_it(snapshot_copy, name, capsys):
    from recall_server.server import main

    data = bytearray((snapshot_copy / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (snapshot_copy / name).write_bytes(bytes(data))
    assert main(["--snapshot", str(snapshot_copy), "--port", "0"]) == 2
    assert name in capsys.readouterr().err


def test_server_refuses_missing_table(snapshot_copy, capsys):
    from recall_server.server import main

    (snapshot_copy / "i2i_swing.npz").unlink()
    assert main(["--snapshot", str(snapshot_copy), "--port", "0"]) == 2
    assert "i2i_swing.npz" in capsys.readouterr().err


def test_structurally_invalid_tables_are_refused(snapshot_copy, config):
    """Even with matching hashes (a bad export), out-of-range neighbour ids never get served."""
    original = (snapshot_copy / "i2i_swing.npz").read_bytes()
    swing = dict(np.load(snapshot_copy / "i2i_swing.npz"))
    swing["indices"] = swing["indices"].copy()
    swing["indices"][0] = 10**6
    np.savez(snapshot_copy / "i2i_swing.npz", **swing)
    with pytest.raises(SnapshotError, match="i2i_swing.npz"):
        load_state(Snapshot.open(snapshot_copy, verify=False), config)
    (snapshot_copy / "i2i_swing.npz").write_bytes(original)
    np.save(snapshot_copy / "blocklist.npy", np.array([-1], np.int32))
    with pytest.raises(SnapshotError, match="blocklist.npy"):
        load_state(Snapshot.open(snapshot_copy, verify=False), config)


NEW_CHANNEL = '''"""A channel written for the test: the user's own history, latest first, from a table load() builds."""
import numpy as np

from recall_server.channels import ranked


def load(snapshot, config):
    return {"loaded_from": str(snapshot.path)}


def recall(state, query, k):
    assert "loaded_from" in state.tables["recent_history"]
    return ranked((query.hist[::-1] - 1)[:k].astype(np.int32))
'''


def test_a_new_channel_is_one_file_and_one_config_line(tmp_path, monkeypatch, snapshot, users):
    """Drop a module next to the channels (here: on the package path) and name it in the config."""
    import recall_server.channels as channels

    (tmp_path / "recent_history.py").write_text(NEW_CHANNEL)
    monkeypatch.setattr(channels, "__path__", [*channels.__path__, str(tmp_path)])
    channels.known_channels.cache_clear()
    channels.channel_module.cache_clear()
    try:
        from common.config import load_config

        config = load_config(RecallConfig, None, [f"snapshot={snapshot.path}",
                                                  "channels=ann,itemcf,recent_history", "quotas.recent_history=5"])
        state = load_state(snapshot, config)
        assert state.tables["recent_history"] == {"loaded_from": str(snapshot.path)}
        user_id = users[0]
        history = [str(i) for i in snapshot.item_ids[[3, 1, 4, 1, 5]]]
        got = recall(state, config, user_id, 50, history_override=history, exclude_ids=[])
        tagged = got.ids[(got.channel_masks & bit(got, "recent_history")) != 0]
        assert set(tagged.tolist()) <= {3, 1, 4, 5} and tagged.size > 0
        with pytest.raises(ValueError, match="unknown channel 'nope'; known: .*recent_history"):
            load_config(RecallConfig, None, ["channels=ann,nope"])
    finally:
        channels.known_channels.cache_clear()
        channels.channel_module.cache_clear()


def test_ann_search_never_changes_the_shared_index(state, config, users, snapshot):
    """Issue 12: a long exclude list (or a large quota) used to raise the index's ef for every later request."""
    ef = state.index.ef
    many = [str(i) for i in snapshot.item_ids[: config.max_exclude].tolist()]
    recall(state, config, users[0], 50, exclude_ids=many)
    recall(state, config, users[1], 50, quotas={"ann": config.max_quota})
    assert state.index.ef == ef == state.hnsw_ef


def test_ann_over_fetch_is_bounded(state, config, users, monkeypatch):
    asked = []
    real = state.index.knn_query
    monkeypatch.setattr(state, "ann_exact", None)  # the HNSW path (a small index is searched exactly)
    monkeypatch.setattr(state, "index", type("Spy", (), {
        "ef": state.index.ef, "knn_query": lambda self, v, k: asked.append(k) or real(v, k=k)})())
    query, _ = build_query(state, config, users[0], None, [str(i) for i in range(1, 1500)])
    assert query.exclude.size > config.ann_max_overfetch
    channel_module("ann").recall(state, query, 100)
    assert asked == [100 + config.ann_max_overfetch]


def test_small_index_is_searched_exactly(state, config, users, monkeypatch):
    """At most ann_exact_items indexed items: the ANN channel is a brute-force top-k over the index's items
    (numpy reference here), and HNSW is not asked."""
    from recall_server.channels import ann

    assert state.ann_exact is not None and state.ann_exact[0].size == state.ann_items <= config.ann_exact_items
    monkeypatch.setattr(state, "index", type("Refusing", (), {"knn_query": lambda self, v, k: 1 / 0})())
    ids = np.load(state.snapshot.path / "ann_items.npy")
    for user_id in users[:5]:
        query, _ = build_query(state, config, user_id, None, [])
        got_ids, got_scores = channel_module("ann").recall(state, query, 50)
        scores = state.item_emb[ids].astype(np.float64) @ ann.user_vector(state, query).astype(np.float64)
        k = min(50 + min(query.exclude.size, config.ann_max_overfetch), ids.size)
        want = ids[np.lexsort((ids, -scores))][:k]
        assert got_ids.size == k
        np.testing.assert_allclose(got_scores, np.sort(scores)[::-1][:k], rtol=1e-5, atol=1e-5)
        # the same items up to float ties at the boundary
        assert np.intersect1d(got_ids, want).size >= k - 2


def test_request_quotas_are_capped(config):
    from recall_server.config import check_quotas

    assert "quotas.ann must be in 0..5000" in check_quotas({"ann": 2**31 - 1}, config.channels, config.max_quota)
    assert check_quotas({"ann": config.max_quota}, config.channels, config.max_quota) is None


def test_fitted_merge_weights_apply_only_where_the_config_left_the_defaults(snapshot):
    from recall_server.state import merge_weights

    fitted = {"recall_merge": {"weights": {"ann": 2.0, "itemcf": 0.5}}}
    snap = type("S", (), {"manifest": fitted, "path": snapshot.path})()
    got = merge_weights(snap, RecallConfig())
    assert got["ann"] == 2.0 and got["itemcf"] == 0.5 and got["swing"] == RecallConfig().weights["swing"]
    own = {**RecallConfig().weights, "ann": 3.0}
    assert merge_weights(snap, RecallConfig(weights=own)) == own             # an explicit setting wins
    assert merge_weights(snap, RecallConfig(use_fitted=False)) == RecallConfig().weights
    bad = type("S", (), {"manifest": {"recall_merge": {"weights": {"ann": -1}}}, "path": snapshot.path})()
    with pytest.raises(SnapshotError, match="recall_merge"):
        merge_weights(bad, RecallConfig())
