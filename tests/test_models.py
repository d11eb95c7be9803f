"""Tests of the two-tower and DeepFM models: ONNX parity, shapes, training."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from common.rank_features import RankSchema, context_codes
from export.data.dataset import Dataset, Interactions
from export.models.deepfm import DeepFM, DeepFMConfig, export_deepfm_onnx, make_rank_examples, predict, train_deepfm
from export.data.history import last_n
from export.models.two_tower import (
    TwoTowerConfig,
    export_user_tower_onnx,
    item_embeddings,
    train_two_tower,
    user_embeddings,
    user_inputs,
)

torch.set_num_threads(2)

N_USERS, N_ITEMS, N_GROUPS = 40, 60, 4
TT_CFG = TwoTowerConfig(dim=16, hidden=32, history_len=6, epochs=4, batch_size=128, lr=1e-2)
FM_CFG = DeepFMConfig(embed_dim=8, hidden=(32, 16), epochs=4, batch_size=128, lr=1e-2, neg_per_pos=2)


def _synthetic_dataset(seed: int = 0) -> Dataset:
    """Users and items fall in N_GROUPS taste groups, visible in their features.

    Users mostly interact with items of their own group and rate them high,
    so both models have a learnable signal.
    """
    rng = np.random.default_rng(seed)
    user_group = np.arange(N_USERS) % N_GROUPS
    item_group = np.arange(N_ITEMS) % N_GROUPS
    n_rows = 1200
    u = rng.integers(0, N_USERS, n_rows)
    own = rng.random(n_rows) < 0.8
    group = np.where(own, user_group[u], rng.integers(0, N_GROUPS, n_rows))
    i = group + N_GROUPS * rng.integers(0, N_ITEMS // N_GROUPS, n_rows)
    rating = np.where(group == user_group[u], rng.integers(3, 6, n_rows), rng.integers(1, 4, n_rows))
    ts = np.sort(rng.integers(9 * 10**8, 10**9, n_rows))
    inter = Interactions(
        user=u.astype(np.int32), item=i.astype(np.int32),
        rating=rating.astype(np.float32), timestamp=ts.astype(np.int64),
    )
    user_cat = np.stack([user_group + 1, rng.integers(1, 3, N_USERS)], axis=1).astype(np.int32)
    item_cat = (item_group + 1).reshape(-1, 1).astype(np.int32)
    item_bag = np.zeros((N_ITEMS, 5), dtype=np.uint8)
    item_bag[np.arange(N_ITEMS), item_group] = 1
    item_bag[rng.random(N_ITEMS) < 0.3, 4] = 1
    item_bag[::7] = 0  # some items without any genre
    return Dataset(
        name="synthetic",
        user_ids=np.array([f"u{k}" for k in range(N_USERS)]),
        item_ids=np.array([f"i{k}" for k in range(N_ITEMS)]),
        interactions=inter,
        user_cat=user_cat, user_cat_names=["group", "gender"], user_cat_vocab=[N_GROUPS + 1, 3],
        item_cat=item_cat, item_cat_names=["group"], item_cat_vocab=[N_GROUPS + 1],
        item_bag=item_bag, item_bag_names=["g0", "g1", "g2", "g3", "extra"],
        item_titles=np.array([""] * N_ITEMS),
    )


def _schema(ds: Dataset) -> RankSchema:
    return RankSchema.from_dataset_meta(
        ds.n_users, ds.n_items, ds.user_cat_names, ds.user_cat_vocab,
        ds.item_cat_names, ds.item_cat_vocab, ds.item_bag_names,
    )


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return _synthetic_dataset()


@pytest.fixture(scope="module")
def towers(ds):
    return train_two_tower(ds, ds.interactions, TT_CFG)


@pytest.fixture(scope="module")
def deepfm(ds):
    return train_deepfm(ds, ds.interactions, FM_CFG, _schema(ds))


def _user_batch(ds: Dataset, b: int, seed: int) -> dict[str, np.ndarray]:
    """Random valid user-tower inputs with unknown codes and empty histories."""
    rng = np.random.default_rng(seed)
    n = TT_CFG.history_len
    code = rng.integers(0, ds.n_users + 1, b)
    cat = np.stack([rng.integers(0, v, b) for v in ds.user_cat_vocab], axis=1)
    hist = rng.integers(0, ds.n_items + 1, (b, n))
    hist[:, : n // 2] = 0                         # left padding
    code[0] = 0
    cat[0] = 0
    hist[0] = 0                                   # fully unknown user, all-padding history
    if b > 2:
        hist[2] = 0
    return {"user_code": code.astype(np.int64), "user_cat": cat.astype(np.int64), "hist": hist.astype(np.int64)}


def _rank_batch(ds: Dataset, schema: RankSchema, b: int, seed: int) -> dict[str, np.ndarray]:
    """Random valid DeepFM inputs with unknown codes and empty bags."""
    rng = np.random.default_rng(seed)
    sparse = np.stack([rng.integers(0, v, b) for v in schema.field_vocab], axis=1).astype(np.int64)
    bag = (rng.random((b, schema.n_bag)) < 0.3).astype(np.float32)
    sparse[0] = 0
    bag[0] = 0
    if b > 2:
        sparse[2, :2] = 0  # unknown user and item, known context
        bag[2] = 0
    return {"sparse": sparse, "bag": bag}


# ----------------------------------------------------------------- two-tower


def test_two_tower_training_reduces_loss(towers):
    _, _, log = towers
    assert len(log["epoch_loss"]) == TT_CFG.epochs
    assert log["epoch_loss"][-1] < log["epoch_loss"][0]
    assert np.isfinite(log["epoch_loss"]).all()


def test_tower_outputs_are_unit_norm(ds, towers):
    user_tower, item_tower, _ = towers
    u = user_embeddings(user_tower, _user_batch(ds, 37, seed=1))
    v = item_embeddings(item_tower, ds)
    assert u.shape == (37, TT_CFG.dim) and u.dtype == np.float32
    assert v.shape == (ds.n_items, TT_CFG.dim) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # Unknown item id (cold start) and items without any bag entry also work.
    with torch.no_grad():
        cold = item_tower(
            torch.zeros(3, dtype=torch.int64),
            torch.tensor([[1], [0], [99]]),
            torch.zeros(3, ds.item_bag.shape[1]),
        )
    np.testing.assert_allclose(cold.norm(dim=1).numpy(), 1.0, atol=1e-5)


def test_item_content_is_a_tower_input(ds):
    """A dataset with dense item content vectors (issue 28 step 4): the item tower takes them, so the
    features-only vectors (id code 0) of items with equal categorical features differ, and they still train."""
    from dataclasses import replace

    rng = np.random.default_rng(3)
    group = np.arange(N_ITEMS) % N_GROUPS
    content = (np.eye(N_GROUPS, 8)[group] + 0.3 * rng.standard_normal((N_ITEMS, 8))).astype(np.float32)
    with_content = replace(ds, item_content=content)
    user_tower, item_tower, log = train_two_tower(with_content, with_content.interactions, TT_CFG)
    assert item_tower.content_dim == 8 and log["epoch_loss"][-1] < log["epoch_loss"][0]
    plain = item_embeddings(item_tower, with_content, drop_ids=True)
    np.testing.assert_allclose(np.linalg.norm(plain, axis=1), 1.0, atol=1e-5)
    same = np.flatnonzero((ds.item_cat[:, 0] == ds.item_cat[0, 0])
                          & (ds.item_bag == ds.item_bag[0]).all(axis=1))
    assert same.size > 2 and np.unique(plain[same].round(5), axis=0).shape[0] == same.size
    # without content vectors the tower has no content input, as before
    _, no_content, _ = train_two_tower(ds, ds.interactions, replace(TT_CFG, epochs=1))
    assert no_content.content is None and no_content.content_dim == 0


def test_history_padding_is_excluded_from_mean(ds, towers):
    user_tower, _, _ = towers
    code = torch.tensor([3, 3], dtype=torch.int64)
    cat = torch.tensor([[1, 1], [1, 1]], dtype=torch.int64)
    n = TT_CFG.history_len
    padded = torch.zeros(n, dtype=torch.int64)
    padded[-1] = 5
    full = torch.full((n,), 5, dtype=torch.int64)
    with torch.no_grad():
        out = user_tower(code, cat, torch.stack([padded, full]))
    torch.testing.assert_close(out[0], out[1])


def test_out_of_range_codes_read_as_unknown(ds, towers):
    user_tower, _, _ = towers
    n = TT_CFG.history_len
    with torch.no_grad():
        bad = user_tower(
            torch.tensor([ds.n_users + 1, -4]), torch.tensor([[99, -1], [99, 7]]),
            torch.tensor([[ds.n_items + 1] * n, [-2] * n]),
        )
        unknown = user_tower(torch.tensor([0, 0]), torch.zeros(2, 2, dtype=torch.int64), torch.zeros(2, n, dtype=torch.int64))
    torch.testing.assert_close(bad, unknown)


def test_user_inputs_layout(ds):
    hist = last_n(ds.interactions, ds.n_users, TT_CFG.history_len)
    inp = user_inputs(ds, hist)
    assert set(inp) == {"user_code", "user_cat", "hist"}
    assert all(a.dtype == np.int64 for a in inp.values())
    np.testing.assert_array_equal(inp["user_code"], np.arange(1, ds.n_users + 1))
    np.testing.assert_array_equal(inp["user_cat"], ds.user_cat)
    np.testing.assert_array_equal(inp["hist"], hist)


def test_user_tower_onnx_parity(ds, towers, tmp_path):
    user_tower, _, _ = towers
    path = str(tmp_path / "user_tower.onnx")
    export_user_tower_onnx(user_tower, path, n_user_fields=len(ds.user_cat_names), history_len=TT_CFG.history_len)
    assert onnx.load(path).opset_import[0].version == 17
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["user_code", "user_cat", "hist"]
    assert all(i.type == "tensor(int64)" for i in sess.get_inputs())
    assert [o.name for o in sess.get_outputs()] == ["user_emb"]
    for b in (1, 37):
        feed = _user_batch(ds, b, seed=b)
        (got,) = sess.run(["user_emb"], feed)
        want = user_embeddings(user_tower, feed)
        assert got.shape == (b, TT_CFG.dim)
        assert np.abs(got - want).max() <= 1e-5


# ----------------------------------------------------------------- DeepFM


def test_make_rank_examples_labels_and_negatives(ds):
    schema = _schema(ds)
    inter = ds.interactions.subset(np.arange(0, len(ds.interactions), 2))
    k = 3
    sparse, bag, label = make_rank_examples(ds, inter, schema, neg_per_pos=k, seed=7, known=ds.interactions)
    n = len(inter)
    is_pos = inter.rating >= 4
    assert sparse.dtype == np.int64 and bag.dtype == np.float32 and label.dtype == np.float32
    assert sparse.shape == (n + k * int(is_pos.sum()), schema.n_fields)
    assert bag.shape == (sparse.shape[0], schema.n_bag)
    # Logged rows first, in order, labelled by rating.
    np.testing.assert_array_equal(label[:n], is_pos.astype(np.float32))
    np.testing.assert_array_equal(sparse[:n, 0], inter.user + 1)
    np.testing.assert_array_equal(sparse[:n, 1], inter.item + 1)
    hour, weekday = context_codes(inter.timestamp)
    np.testing.assert_array_equal(sparse[:n, -2], hour)
    np.testing.assert_array_equal(sparse[:n, -1], weekday)
    np.testing.assert_array_equal(bag[:n], ds.item_bag[inter.item])
    # Sampled negatives: label 0, items the user never touched anywhere in
    # the dataset, k per positive row sharing its user and context.
    neg_u, neg_i = sparse[n:, 0] - 1, sparse[n:, 1] - 1
    np.testing.assert_array_equal(label[n:], 0)
    seen = set(zip(ds.interactions.user.tolist(), ds.interactions.item.tolist()))
    assert not any((u, i) in seen for u, i in zip(neg_u.tolist(), neg_i.tolist()))
    src = np.repeat(np.flatnonzero(is_pos), k)
    np.testing.assert_array_equal(sparse[n:, 0], sparse[src, 0])
    np.testing.assert_array_equal(sparse[n:, 2:4], ds.user_cat[neg_u])
    np.testing.assert_array_equal(sparse[n:, 4], ds.item_cat[neg_i, 0])
    np.testing.assert_array_equal(sparse[n:, -2:], sparse[src, -2:])
    np.testing.assert_array_equal(bag[n:], ds.item_bag[neg_i])


def test_make_rank_examples_deterministic_by_seed(ds):
    schema = _schema(ds)
    a = make_rank_examples(ds, ds.interactions, schema, neg_per_pos=2, seed=5)
    b = make_rank_examples(ds, ds.interactions, schema, neg_per_pos=2, seed=5)
    c = make_rank_examples(ds, ds.interactions, schema, neg_per_pos=2, seed=6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_make_rank_examples_skips_users_who_saw_everything(ds):
    """A user with no unseen item gets no sampled negatives (and no endless loop)."""
    from dataclasses import replace

    extra = ds.interactions
    all_items = np.arange(ds.n_items, dtype=np.int32)
    full = Interactions(
        user=np.concatenate([extra.user, np.zeros(ds.n_items, np.int32)]),
        item=np.concatenate([extra.item, all_items]),
        rating=np.concatenate([extra.rating, np.full(ds.n_items, 5.0, np.float32)]),
        timestamp=np.concatenate([extra.timestamp, np.full(ds.n_items, 10**9, np.int64)]),
    )
    ds_full = replace(ds, interactions=full)
    sparse, _, label = make_rank_examples(ds_full, full, _schema(ds), neg_per_pos=2, seed=1)
    n = len(full)
    assert not (sparse[n:, 0] == 1).any()          # user 0 (code 1): no negatives
    assert (label[n:] == 0).all() and sparse.shape[0] > n


def test_deepfm_training_reduces_loss(deepfm):
    _, log = deepfm
    assert len(log["epoch_loss"]) == FM_CFG.epochs
    assert log["epoch_loss"][-1] < log["epoch_loss"][0]


def test_deepfm_outputs_probabilities_and_clamps_codes(ds, deepfm):
    model, _ = deepfm
    schema = _schema(ds)
    batch = _rank_batch(ds, schema, 37, seed=3)
    p = predict(model, batch["sparse"], batch["bag"])
    assert p.shape == (37,) and p.dtype == np.float32
    assert ((p > 0) & (p < 1)).all()
    bad = batch["sparse"].copy()
    bad[:, 0] = ds.n_users + 1
    bad[:, 1] = -3
    unknown = batch["sparse"].copy()
    unknown[:, :2] = 0
    np.testing.assert_array_equal(predict(model, bad, batch["bag"]), predict(model, unknown, batch["bag"]))


def test_deepfm_empty_bag_is_a_zero_field(ds):
    schema = _schema(ds)
    model = DeepFM(schema, FM_CFG).eval()
    sparse = torch.from_numpy(_rank_batch(ds, schema, 4, seed=0)["sparse"])
    with torch.no_grad():
        model.bag_embed.fill_(1.0)
        model.bag_linear.fill_(1.0)
        a = model(sparse, torch.zeros(4, schema.n_bag))
        model.bag_embed.fill_(-3.0)
        model.bag_linear.fill_(-3.0)
        b = model(sparse, torch.zeros(4, schema.n_bag))
    torch.testing.assert_close(a, b)


def test_deepfm_learns_signal(ds, deepfm):
    """Held-in AUC well above chance on the synthetic taste groups."""
    from export.evaluation.metrics import auc

    model, _ = deepfm
    sparse, bag, label = make_rank_examples(ds, ds.interactions, _schema(ds), neg_per_pos=1, seed=99)
    assert auc(label, predict(model, sparse, bag)) > 0.7


def test_deepfm_onnx_parity(ds, deepfm, tmp_path):
    model, _ = deepfm
    schema = _schema(ds)
    path = str(tmp_path / "deepfm.onnx")
    export_deepfm_onnx(model, path, schema.n_fields, schema.n_bag)
    assert onnx.load(path).opset_import[0].version == 17
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    ins = {i.name: i.type for i in sess.get_inputs()}
    assert ins == {"sparse": "tensor(int64)", "bag": "tensor(float)"}
    assert [o.name for o in sess.get_outputs()] == ["prob"]
    for b in (1, 37):
        feed = _rank_batch(ds, schema, b, seed=10 + b)
        (got,) = sess.run(["prob"], feed)
        want = predict(model, feed["sparse"], feed["bag"])
        assert got.shape == (b,)
        assert np.abs(got - want).max() <= 1e-5
