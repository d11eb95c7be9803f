"""Snapshot round trip, verification, atomic CURRENT, and the LMDB feature store."""
import json

import numpy as np
import pytest

from common.feature_store import bytes_array, pack_user, unpack_user, write_feature_store
from common.snapshot import Snapshot, SnapshotBuilder, SnapshotError, current_version, flip_current


def _build(root, version, users=None):
    builder = SnapshotBuilder(root, version)
    builder.save_array("popular.npy", np.arange(5, dtype=np.int32))
    builder.save_npz("i2i_itemcf.npz", indptr=np.array([0, 1], np.int64), indices=np.array([3], np.int32),
                     scores=np.array([0.5], np.float32))
    write_feature_store(builder.path / "features.lmdb",
                        {"item_ids": np.array(["a", "b", "c"]), "item_cat": np.eye(3, dtype=np.int32)},
                        users or {"u1": pack_user(0, np.array([1, 2]), np.array([3, 1]), np.array([0, 2]))})
    return builder.publish({"schema": {"n_items": 3}, "metrics": {}})


def test_round_trip(tmp_path):
    _build(tmp_path, "v1")
    snap = Snapshot.open(tmp_path)
    assert snap.version == "v1" and current_version(tmp_path) == "v1"
    assert set(snap.manifest["files"]) >= {"popular.npy", "i2i_itemcf.npz", "features.lmdb/data.mdb"}
    np.testing.assert_array_equal(snap.load_array("popular.npy"), np.arange(5))
    assert snap.load_npz("i2i_itemcf.npz")["indices"].tolist() == [3]
    assert snap.item_ids.tolist() == ["a", "b", "c"] and snap.item_index["c"] == 2
    assert snap.item_dense(["c", "zzz", "a"]).tolist() == [2, 0]
    user = snap.features.user("u1")
    assert user.dense_id == 0 and user.cat.tolist() == [1, 2] and user.hist.tolist() == [3, 1]
    assert user.seen.tolist() == [0, 2]
    assert snap.features.user("nobody") is None
    np.testing.assert_array_equal(snap.features.array("item_cat"), np.eye(3))


def test_has_file_reads_the_hashed_list_once_published_and_the_disk_before(tmp_path):
    """The export evaluates a snapshot under construction (an unhashed manifest without ``files``): its
    optional tables must count as present there, or the content channel read as empty in every export-time
    metric (recall_merge's fit, metrics.recall: 0 at every K at 10^6, 0.59 cold recall@200 once published)."""
    from export.recall.build import write_manifest
    from recall_server.channels import content

    builder = SnapshotBuilder(tmp_path, "v1")
    builder.save_npz(content.FILE, row=np.zeros(3, np.int32), indptr=np.array([0, 1], np.int64),
                     indices=np.array([2], np.int32), scores=np.array([0.5], np.float32))
    write_manifest(builder.path, {"schema": {"n_items": 3}})
    building = Snapshot.open(builder.path, verify=False)
    assert building.has_file(content.FILE) and not building.has_file("popular.npy")
    assert content.load(building, None)[2].tolist() == [2]
    published = Snapshot.open(builder.publish({"schema": {"n_items": 3}}), verify=False)
    assert published.has_file(content.FILE) and content.load(published, None)[2].tolist() == [2]
    (published.path / "stray.npy").write_bytes(b"")
    assert not published.has_file("stray.npy")          # published: only what the manifest hashed


def test_current_flips_to_new_version_and_rejects_missing(tmp_path):
    _build(tmp_path, "v1")
    _build(tmp_path, "v2")
    assert Snapshot.open(tmp_path).version == "v2"
    flip_current(tmp_path, "v1")
    assert Snapshot.open(tmp_path).version == "v1"
    with pytest.raises(SnapshotError, match="v9"):
        flip_current(tmp_path, "v9")
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob(".CURRENT*"))


def test_corrupted_or_missing_file_is_named(tmp_path):
    path = _build(tmp_path, "v1")
    (path / "popular.npy").write_bytes(b"garbage")
    with pytest.raises(SnapshotError, match="popular.npy.*corrupted"):
        Snapshot.open(tmp_path)
    (path / "popular.npy").unlink()
    with pytest.raises(SnapshotError, match="popular.npy.*missing"):
        Snapshot.open(tmp_path)


def test_no_snapshot_says_what_to_do(tmp_path):
    with pytest.raises(SnapshotError, match="neither"):
        Snapshot.open(tmp_path)
    (tmp_path / "CURRENT").write_text("../etc\n")
    with pytest.raises(SnapshotError, match="invalid version"):
        Snapshot.open(tmp_path)


def test_manifest_format_is_checked(tmp_path):
    path = _build(tmp_path, "v1")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SnapshotError, match="format"):
        Snapshot.open(tmp_path)


def test_user_record_rejects_bad_lengths_and_pickle():
    data = pack_user(7, np.array([1]), np.array([5, 6]), np.array([4]))
    assert unpack_user(data).hist.tolist() == [5, 6]
    with pytest.raises(ValueError):
        unpack_user(data[:-4])
    import io
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        bytes_array(buf.getvalue())
