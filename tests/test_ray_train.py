"""The two-tower on Ray Train (engine = "ray", export.distributed.ray_train): 2 data-parallel workers on a local
Ray cluster train towers that load, export to ONNX and score like the one-process training.

The dataset is tests/test_models.py's taste groups (users mostly meet items of their own group). The item id
tables are made sparse (SparseEmbeddingConfig.min_rows), so the sparse gradients' all-reduce runs too, and the
items carry a dense content vector (the item tower's content input). Like
tests/test_ray_parity.py, the test fails where Ray is missing unless RECSYS_SKIP_RAY=1.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os

import numpy as np
import pytest
import torch

from export.config import RayConfig
from export.data.history import last_n
from export.models.fit import SparseEmbeddingConfig
from export.models.two_tower import export_user_tower_onnx, item_embeddings, train_two_tower, user_embeddings, user_inputs
from tests.test_models import N_GROUPS, TT_CFG, _synthetic_dataset

if importlib.util.find_spec("ray") is None or importlib.util.find_spec("pandas") is None:
    if os.environ.get("RECSYS_SKIP_RAY") == "1":
        pytest.skip("ray[train] is not installed and RECSYS_SKIP_RAY=1", allow_module_level=True)
    pytest.fail("ray[train] is not installed: install requirements/dev.txt (make install) or pip install -e "
                "'.[distributed]'; RECSYS_SKIP_RAY=1 skips the Ray tests instead", pytrace=False)

CFG = dataclasses.replace(TT_CFG, epochs=6, sparse=SparseEmbeddingConfig(min_rows=50))   # id tables: 41, 61 rows


def own_group_hits(ds, towers, k: int = 10) -> float:
    """Share of each user's top-k items (exact inner product) that are of the user's own taste group."""
    user_tower, item_tower, _ = towers
    u = user_embeddings(user_tower, user_inputs(ds, last_n(ds.interactions, ds.n_users, CFG.history_len)))
    v = item_embeddings(item_tower, ds)
    top = np.argsort(-(u @ v.T), axis=1)[:, :k]
    return float(((top % N_GROUPS) == (np.arange(ds.n_users) % N_GROUPS)[:, None]).mean())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from export.distributed.ray_i2i import shutdown
    from export.distributed.ray_train import train_two_tower_ray

    ds = _synthetic_dataset()
    # a dense content vector per item (the synthetic catalogue's Dataset.item_content), which the item tower
    # takes as an input: its group, plus noise
    rng = np.random.default_rng(3)
    ds = dataclasses.replace(ds, item_content=(np.eye(N_GROUPS)[np.arange(ds.n_items) % N_GROUPS]
                                               + 0.3 * rng.standard_normal((ds.n_items, N_GROUPS))).astype(np.float32))
    torch.set_num_threads(1)
    local = train_two_tower(ds, ds.interactions, CFG)
    storage = tmp_path_factory.mktemp("ray-train")
    try:
        ray = train_two_tower_ray(ds, ds.interactions, CFG, RayConfig(address="local", workers=2), storage)
    finally:
        shutdown()
    return ds, local, ray, storage


def test_ray_train_log_and_checkpoint_cleanup(trained):
    ds, _, (user_tower, item_tower, log), storage = trained
    assert log["engine"] == "ray" and log["workers"] == 2 and log["negatives"] == "in-batch per worker"
    assert len(log["epoch_loss"]) == CFG.epochs and np.isfinite(log["epoch_loss"]).all()
    assert log["epoch_loss"][-1] < log["epoch_loss"][0]
    assert log["rows_per_worker_per_epoch"] == len(ds.interactions) // 2
    assert log["steps_per_epoch"] == -(-(len(ds.interactions) // 2) // CFG.batch_size)
    assert len(log["cpu_s_per_worker"]) == len(log["peak_rss_mb_per_worker"]) == 2
    assert all(c > 0 for c in log["cpu_s_per_worker"]) and all(m > 0 for m in log["peak_rss_mb_per_worker"])
    assert 0.5 <= log["busiest_share"] < 1.0
    np.testing.assert_array_equal(item_tower.train_counts, np.bincount(ds.interactions.item, minlength=ds.n_items))
    assert not user_tower.training and not item_tower.training
    assert item_tower.content is not None and item_tower.content.in_features == N_GROUPS
    assert list(storage.iterdir()) == []   # the checkpoint went back to the driver and was removed


def test_ray_trained_towers_load_export_and_score_like_local(trained, tmp_path):
    ds, local, ray, _ = trained
    user_tower, item_tower, _ = ray
    v = item_embeddings(item_tower, ds)
    assert v.shape == (ds.n_items, CFG.dim) and np.isfinite(v).all()
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # the ONNX user tower the snapshot serves comes out of the Ray-trained weights as out of the local ones
    path = tmp_path / "user_tower.onnx"
    export_user_tower_onnx(user_tower, str(path), ds.user_cat.shape[1], CFG.history_len)
    import onnxruntime as ort

    inputs = user_inputs(ds, last_n(ds.interactions, ds.n_users, CFG.history_len))
    onnx_u = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
    np.testing.assert_allclose(onnx_u, user_embeddings(user_tower, inputs), atol=1e-5)
    # both learned the taste groups: far above chance (1 / N_GROUPS), and close to each other
    chance = 1.0 / N_GROUPS
    hits_local, hits_ray = own_group_hits(ds, local), own_group_hits(ds, ray)
    assert hits_local > 2 * chance and hits_ray > 2 * chance, (hits_local, hits_ray)
    assert abs(hits_ray - hits_local) < 0.15, (hits_local, hits_ray)
