"""Tests of the MMoE ranker: examples, masked/distilled loss, ONNX parity, int8, fusion, schema check."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from common.snapshot import SnapshotError
from export.evaluation.metrics import auc
from export.models.mmoe import (
    TASKS,
    DistillConfig,
    MMoEConfig,
    export_mmoe_onnx,
    make_mmoe_examples,
    mmoe_loss,
    predict_mmoe,
    train_mmoe,
)
from export.models.quantize import choose_int8, onnx_predict, quantize_dynamic_int8, quantize_static_int8, session
from rank_server.fusion import weighted_product
from rank_server.model import RankModel
from tests.test_models import _schema, _synthetic_dataset

torch.set_num_threads(2)

STUDENT = MMoEConfig(embed_dim=8, n_experts=3, expert_hidden=32, tower_hidden=16, epochs=6, batch_size=128,
                     lr=1e-2, neg_per_pos=2)
TEACHER = MMoEConfig(embed_dim=16, n_experts=4, expert_hidden=64, tower_hidden=16, epochs=6, batch_size=128,
                     lr=1e-2, neg_per_pos=2)


@pytest.fixture(scope="module")
def ds():
    return _synthetic_dataset()


@pytest.fixture(scope="module")
def examples(ds):
    return make_mmoe_examples(ds, ds.interactions, _schema(ds), 2, seed=0)


@pytest.fixture(scope="module")
def teacher(ds, examples):
    return train_mmoe(ds, ds.interactions, TEACHER, _schema(ds), examples=examples)


@pytest.fixture(scope="module")
def student(ds, examples, teacher):
    return train_mmoe(ds, ds.interactions, STUDENT, _schema(ds), teacher=teacher[0],
                      distill=DistillConfig(temperature=2.0, weight=0.5), examples=examples)


def test_examples_labels_and_masks(ds, examples):
    sparse, bag, y = examples
    n = len(ds.interactions)
    assert sparse.shape[0] == bag.shape[0] == y["click"].shape[0]
    assert (y["click"][:n] == 1).all() and (y["click"][n:] == 0).all()
    assert np.array_equal(y["mask"], y["click"])
    assert np.array_equal(y["like"][:n], (ds.interactions.rating >= 4).astype(np.float32))
    np.testing.assert_allclose(y["rating"][:n], ds.interactions.rating / 5)
    assert (y["like"][n:] == 0).all() and (y["rating"][n:] == 0).all()
    again = make_mmoe_examples(ds, ds.interactions, _schema(ds), 2, seed=0)
    assert np.array_equal(again[0], sparse)


def test_like_and_rating_loss_ignore_unclicked_rows():
    torch.manual_seed(0)
    logits = torch.randn(8, 3)
    labels = {"click": torch.tensor([1, 1, 1, 1, 0, 0, 0, 0.]), "like": torch.tensor([1, 0, 1, 0, 0, 0, 0, 0.]),
              "rating": torch.tensor([.8, .4, 1, .2, 0, 0, 0, 0])}
    labels["mask"] = labels["click"].clone()
    base = mmoe_loss(logits, labels)
    changed = {k: v.clone() for k, v in labels.items()}
    changed["like"][4:] = 1.0       # garbage on unclicked rows must not matter
    changed["rating"][4:] = 0.9
    assert torch.allclose(base, mmoe_loss(logits, changed))
    changed["like"][0] = 0.0        # ... but clicked rows do
    assert not torch.allclose(base, mmoe_loss(logits, changed))


def test_distillation_term_changes_loss():
    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    labels = {"click": torch.ones(6), "like": torch.ones(6), "rating": torch.full((6,), .8), "mask": torch.ones(6)}
    plain = mmoe_loss(logits, labels)
    d = DistillConfig(temperature=3.0, weight=0.7)
    t1 = mmoe_loss(logits, labels, torch.randn(6, 3), d)
    t2 = mmoe_loss(logits, labels, torch.randn(6, 3) * 5, d)
    assert not torch.allclose(plain, t1) and not torch.allclose(t1, t2)
    # weight 0 is the label loss alone
    assert torch.allclose(plain, mmoe_loss(logits, labels, torch.randn(6, 3), DistillConfig(2.0, 0.0)))


def test_training_reduces_loss_and_learns(ds, examples, teacher, student):
    for _, log in (teacher, student):
        assert log["epoch_loss"][-1] < log["epoch_loss"][0]
    assert student[1]["distilled"] and not teacher[1]["distilled"]
    sparse, bag, y = examples
    p = predict_mmoe(student[0], sparse, bag)
    assert p.shape == (sparse.shape[0], 3) and ((p >= 0) & (p <= 1)).all()
    assert auc(y["click"], p[:, 0]) > 0.6
    m = y["mask"] > 0
    assert auc(y["like"][m], p[m, 1]) > 0.6


def test_forward_is_tuple_of_task_probabilities(ds, student):
    model, _ = student
    s = _schema(ds)
    out = model(torch.zeros((5, s.n_fields), dtype=torch.int64), torch.zeros((5, s.n_bag)))
    assert isinstance(out, tuple) and len(out) == len(TASKS) and all(o.shape == (5,) for o in out)


def _held_out(ds):
    return make_mmoe_examples(ds, ds.interactions, _schema(ds), 1, seed=7)


def test_onnx_parity_and_outputs(ds, student, tmp_path):
    model, _ = student
    s = _schema(ds)
    path = str(tmp_path / "mmoe.onnx")
    export_mmoe_onnx(model, path, s.n_fields, s.n_bag)
    m = onnx.load(path)
    assert [o.name for o in m.graph.output] == TASKS
    assert [i.name for i in m.graph.input] == ["sparse", "bag"]
    sparse, bag, _ = _held_out(ds)
    got = onnx_predict(session(path), sparse, bag)
    want = predict_mmoe(model, sparse, bag)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5


def test_int8_runs_and_is_close_to_fp32(ds, student, tmp_path):
    model, _ = student
    s = _schema(ds)
    path = tmp_path / "mmoe.onnx"
    export_mmoe_onnx(model, str(path), s.n_fields, s.n_bag)
    sparse, bag, y = _held_out(ds)
    fp32 = onnx_predict(session(path), sparse, bag)
    quantize_dynamic_int8(path, tmp_path / "dyn.onnx")
    quantize_static_int8(path, tmp_path / "st.onnx", sparse[:300], bag[:300])
    for name in ("dyn.onnx", "st.onnx"):
        onnx_model = onnx.load(str(tmp_path / name))
        ops = {n.op_type for n in onnx_model.graph.node}
        assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "QuantizeLinear", "QLinearMatMul"}, ops
        got = onnx_predict(session(tmp_path / name), sparse, bag)
        assert got.shape == fp32.shape and np.isfinite(got).all()
        assert np.abs(got - fp32).mean() < 0.02, name

    def evaluate(sess):
        p = onnx_predict(sess, sparse, bag)
        return {"click": auc(y["click"], p[:, 0])}

    rec = choose_int8(path, tmp_path / "int8.onnx", (sparse[:300], bag[:300]), evaluate,
                      (sparse[:200], bag[:200]), max_auc_drop=0.05)
    assert rec["choice"] in ("dynamic", "static", "fp32")
    assert (tmp_path / "int8.onnx").exists()
    assert not (tmp_path / "int8.dynamic.onnx").exists()


def test_fusion_matches_numpy():
    rng = np.random.default_rng(0)
    p = rng.random((50, 3)).astype(np.float32) * 0.98 + 0.01
    w = {"click": 1.0, "like": 0.7, "rating": 0.5}
    want = p[:, 0] ** 1.0 * p[:, 1] ** 0.7 * (1.0 + p[:, 2]) ** 0.5
    got = weighted_product(p, TASKS, w)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # tasks missing from the weights are ignored
    np.testing.assert_allclose(weighted_product(p, TASKS, {"click": 1.0}), p[:, 0], rtol=1e-5)


def _wrong_model(path, n_sparse: int, n_bag: int, names=("sparse", "bag")):
    a = helper.make_tensor_value_info(names[0], TensorProto.INT64, ["batch", n_sparse])
    b = helper.make_tensor_value_info(names[1], TensorProto.FLOAT, ["batch", n_bag])
    out = helper.make_tensor_value_info("click", TensorProto.FLOAT, ["batch", n_bag])
    g = helper.make_graph([helper.make_node("Identity", [names[1]], ["click"])], "wrong", [a, b], [out])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_rank_model_refuses_schema_mismatch(ds, tmp_path):
    s = _schema(ds)
    _wrong_model(tmp_path / "w1.onnx", s.n_fields + 1, s.n_bag)
    with pytest.raises(SnapshotError, match="sparse"):
        RankModel(tmp_path / "w1.onnx", s, TASKS, 1)
    _wrong_model(tmp_path / "w2.onnx", s.n_fields, s.n_bag, names=("codes", "bag"))
    with pytest.raises(SnapshotError, match="codes"):
        RankModel(tmp_path / "w2.onnx", s, TASKS, 1)
    _wrong_model(tmp_path / "ok.onnx", s.n_fields, s.n_bag)
    RankModel(tmp_path / "ok.onnx", s, TASKS, 1)  # matching inputs load


def test_rank_model_outputs_in_task_order(ds, student, tmp_path):
    model, _ = student
    s = _schema(ds)
    export_mmoe_onnx(model, str(tmp_path / "m.onnx"), s.n_fields, s.n_bag)
    rm = RankModel(tmp_path / "m.onnx", s, TASKS, 1)
    sparse, bag, _ = _held_out(ds)
    np.testing.assert_allclose(rm.predict(sparse[:20], bag[:20]), predict_mmoe(model, sparse[:20], bag[:20]),
                               atol=1e-5)


class _NoUsers:
    def user(self, user_id):
        return None


class _FakeSnapshot:
    features = _NoUsers()
    manifest: dict = {}


def test_prerank_keeps_top_candidates_in_request_order(ds, student, tmp_path):
    from export.models.deepfm import DeepFMConfig, export_deepfm_onnx, train_deepfm
    from rank_server.config import RankConfig
    from rank_server.features import ItemFeatures
    from rank_server.rank import RankState, rank

    s = _schema(ds)
    export_mmoe_onnx(student[0], str(tmp_path / "m.onnx"), s.n_fields, s.n_bag)
    fm, _ = train_deepfm(ds, ds.interactions, DeepFMConfig(embed_dim=4, hidden=(8,), epochs=1, batch_size=256), s)
    export_deepfm_onnx(fm, str(tmp_path / "fm.onnx"), s.n_fields, s.n_bag)
    items = ItemFeatures(ds.item_cat.astype(np.int32), ds.item_bag.astype(np.uint8))
    pre = RankModel(tmp_path / "fm.onnx", s, ["prerank"], 1)
    state = RankState(_FakeSnapshot(), s, items, RankModel(tmp_path / "m.onnx", s, TASKS, 1), 2, pre)
    cand = np.array([5, 3, -1, 40, 7, 11, 999, 20, 1, 2], np.int32)
    cfg = RankConfig(prerank_keep=4)
    res = rank(state, cfg, "", cand, 10**9)
    assert res.dropped_unknown == 2 and res.prerank_dropped == 4 and res.item_idx.size == 4
    assert res.task_scores.shape == (4, 3) and res.fused.shape == (4,)
    known = cand[(cand >= 0) & (cand < ds.n_items)]
    from rank_server.features import rank_inputs
    sp, bg = rank_inputs(s, items, None, 2, known, 10**9)
    p = pre.predict(sp, bg)[:, 0]
    want = known[np.sort(np.argsort(-p, kind="stable")[:4])]
    assert np.array_equal(res.item_idx, want)
    # at or under the keep count pre-rank is skipped
    res = rank(state, RankConfig(prerank_keep=8), "", cand, 10**9)
    assert res.item_idx.size == 8 and res.prerank_dropped == 0
