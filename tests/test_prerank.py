"""Tests of the pre-rank distilled from the MMoE teacher: loss, training, ONNX parity, serving, survival metric."""
import numpy as np
import onnx
import pytest
import torch

from common.snapshot import SnapshotError
from export.models.mmoe import TASKS, MMoEConfig, export_mmoe_onnx, make_mmoe_examples, mmoe_logits, predict_mmoe, train_mmoe
from export.models.prerank import PrerankConfig, prerank_loss, train_prerank
from export.models.quantize import onnx_predict, session
from rank_server.config import RankConfig
from rank_server.fusion import DEFAULT_WEIGHTS, weighted_product
from rank_server.model import RankModel
from tests.test_mmoe import _wrong_model
from tests.test_models import _schema, _synthetic_dataset

torch.set_num_threads(2)

TEACHER = MMoEConfig(embed_dim=16, n_experts=4, expert_hidden=64, tower_hidden=16, epochs=6, batch_size=128,
                     lr=1e-2, neg_per_pos=2)
PRE = PrerankConfig(embed_dim=4, hidden=(16,), epochs=8, batch_size=128, lr=1e-2, distill_weight=1.0)


@pytest.fixture(scope="module")
def ds():
    return _synthetic_dataset()


@pytest.fixture(scope="module")
def examples(ds):
    return make_mmoe_examples(ds, ds.interactions, _schema(ds), 2, seed=0)


@pytest.fixture(scope="module")
def teacher(ds, examples):
    return train_mmoe(ds, ds.interactions, TEACHER, _schema(ds), examples=examples)[0]


@pytest.fixture(scope="module")
def teacher_logits(teacher, examples):
    return mmoe_logits(teacher, examples[0], examples[1])


@pytest.fixture(scope="module")
def prerank(ds, examples, teacher_logits):
    return train_prerank(_schema(ds), PRE, examples, teacher_logits)


def _labels(n):
    g = torch.Generator().manual_seed(1)
    click = (torch.rand(n, generator=g) < 0.5).float()
    return {"click": click, "like": click * (torch.rand(n, generator=g) < 0.5).float(),
            "rating": click * torch.rand(n, generator=g), "mask": click.clone()}


def test_prerank_loss_uses_teacher_targets():
    torch.manual_seed(0)
    labels = _labels(16)
    t = torch.randn(16, 3) * 2
    cfg = PrerankConfig(temperature=2.0, distill_weight=1.0)
    # weight 1: the labels do not matter, the teacher does
    other = {k: 1.0 - v if k != "mask" else v for k, v in labels.items()}
    z = torch.randn(16, 3)
    assert torch.allclose(prerank_loss(z, labels, t, cfg), prerank_loss(z, other, t, cfg))
    assert not torch.allclose(prerank_loss(z, labels, t, cfg), prerank_loss(z, labels, -t, cfg))
    # the teacher's own logits are the minimum: zero gradient there, higher loss around it
    at = t.clone().requires_grad_(True)
    prerank_loss(at, labels, t, cfg).backward()
    assert at.grad.abs().max() < 1e-6
    assert prerank_loss(t + 0.5 * torch.randn(16, 3), labels, t, cfg) > prerank_loss(t, labels, t, cfg)
    # weight 0: labels only (the teacher is ignored)
    cfg0 = PrerankConfig(distill_weight=0.0)
    assert torch.allclose(prerank_loss(z, labels, t, cfg0), prerank_loss(z, labels, None, cfg0))


def test_distilled_prerank_follows_the_teacher(ds, examples, teacher_logits, prerank):
    model, log = prerank
    assert log["distilled"] and log["epoch_loss"][-1] < log["epoch_loss"][0]
    plain, plain_log = train_prerank(_schema(ds), PRE, examples, None)
    assert not plain_log["distilled"]
    t = teacher_logits.numpy()
    d = mmoe_logits(model, examples[0], examples[1]).numpy()
    p = mmoe_logits(plain, examples[0], examples[1]).numpy()
    assert np.mean((d - t) ** 2) < np.mean((p - t) ** 2)
    # ordering by fused score agrees with the teacher's
    fused_t = weighted_product(1 / (1 + np.exp(-t)), TASKS, DEFAULT_WEIGHTS)
    fused_d = weighted_product(1 / (1 + np.exp(-d)), TASKS, DEFAULT_WEIGHTS)
    assert np.corrcoef(np.argsort(np.argsort(fused_t)), np.argsort(np.argsort(fused_d)))[0, 1] > 0.8


def test_prerank_logits_match_the_deepfm_sums(examples, prerank):
    """The field sums run as matmuls with a 0/1 selector (faster under onnxruntime); they equal the plain
    first-order + FM + DNN formula written with sums over the field axis."""
    from export.models.field_codes import bag_weights, field_rows

    sparse, bag, _ = examples
    x, b = torch.from_numpy(sparse[:300].astype(np.int64)), torch.from_numpy(bag[:300].astype(np.float32))
    m, _ = prerank
    with torch.no_grad():
        idx = field_rows(m, x)
        w = bag_weights(b)
        fields = torch.cat([m.embed(idx), (w @ m.bag_embed).unsqueeze(1)], dim=1)
        s = fields.sum(1)
        fm = 0.5 * (s * s - (fields * fields).sum(1)).sum(1, keepdim=True)
        want = m.bias + m.linear(idx).sum(1) + w @ m.bag_linear + fm * m.fm_scale + m.dnn(fields.flatten(1))
        np.testing.assert_allclose(m.logits(x, b).numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def test_prerank_onnx_parity(ds, examples, prerank, tmp_path):
    model, _ = prerank
    s = _schema(ds)
    path = tmp_path / "prerank.onnx"
    export_mmoe_onnx(model, str(path), s.n_fields, s.n_bag)
    m = onnx.load(str(path))
    assert [o.name for o in m.graph.output] == TASKS
    assert [i.name for i in m.graph.input] == ["sparse", "bag"]
    sparse, bag, _ = make_mmoe_examples(ds, ds.interactions, s, 1, seed=7)
    got = onnx_predict(session(path), sparse, bag)
    want = predict_mmoe(model, sparse, bag)
    assert got.shape == want.shape == (sparse.shape[0], 3)
    assert np.abs(got - want).max() <= 1e-5


class _FakeSnapshot:
    """What rank_server.rank.load_state reads before item features: schema, manifest, files."""

    def __init__(self, root, schema):
        self.root = self.path = root
        self.schema = {"rank": schema.to_dict(), "rank_tasks": TASKS, "user_cat_names": ["group", "gender"]}
        self.manifest = {"schema": self.schema, "rank_serving_model": "rank.onnx",
                         "prerank_serving_model": "prerank.onnx"}

    def file(self, name):
        return self.root / name

    @property
    def features(self):
        raise AssertionError("load_state must refuse the pre-rank model before reading features")


def test_rank_server_refuses_prerank_not_matching_schema(ds, teacher, tmp_path):
    from rank_server.rank import load_state

    s = _schema(ds)
    export_mmoe_onnx(teacher, str(tmp_path / "rank.onnx"), s.n_fields, s.n_bag)
    _wrong_model(tmp_path / "prerank.onnx", s.n_fields + 2, s.n_bag)
    snap = _FakeSnapshot(tmp_path, s)
    with pytest.raises(SnapshotError) as err:
        load_state(snap, RankConfig())  # prerank_model "auto": the manifest's prerank.onnx
    msg = str(err.value)
    assert "prerank.onnx" in msg and str(s.n_fields + 2) in msg and str(s.n_fields) in msg
    assert all(name in msg for name in s.field_names)   # the schema's side, by name
    _wrong_model(tmp_path / "renamed.onnx", s.n_fields, s.n_bag, names=("codes", "bag"))
    with pytest.raises(SnapshotError, match="codes.*sparse|sparse.*codes"):
        load_state(snap, RankConfig(prerank_model="renamed.onnx"))
    with pytest.raises(SnapshotError, match="rank order 'prerank' needs a pre-rank model"):
        load_state(snap, RankConfig(prerank_model="", order="prerank"))


class _NoUsers:
    """Snapshot features that know no user (every request is a cold one)."""

    def user(self, user_id):
        return None


def _ranker_and_prerank(ds, teacher, prerank, tmp_path):
    """Schema, item features and the pre-rank model of a tiny rank state; the teacher as rank.onnx."""
    from rank_server.features import ItemFeatures

    s = _schema(ds)
    export_mmoe_onnx(teacher, str(tmp_path / "rank.onnx"), s.n_fields, s.n_bag)
    export_mmoe_onnx(prerank[0], str(tmp_path / "prerank.onnx"), s.n_fields, s.n_bag)
    items = ItemFeatures(ds.item_cat.astype(np.int32), ds.item_bag.astype(np.uint8))
    return s, items, RankModel(tmp_path / "prerank.onnx", s, TASKS, 1)


def test_rank_uses_fused_distilled_prerank(ds, teacher, prerank, tmp_path):
    from rank_server.features import rank_inputs
    from rank_server.rank import RankState, prerank_scores, rank

    s, items, pre = _ranker_and_prerank(ds, teacher, prerank, tmp_path)
    snap = type("S", (), {"features": _NoUsers(), "manifest": {}})()
    state = RankState(snap, s, items, RankModel(tmp_path / "rank.onnx", s, TASKS, 1), 2, pre)
    cand = np.arange(0, 40, dtype=np.int32)[::-1].copy()
    cfg = RankConfig(prerank_keep=10)
    res = rank(state, cfg, "", cand, 10**9)
    sp, bg = rank_inputs(s, items, None, 2, cand, 10**9)
    fused = weighted_product(pre.predict(sp, bg), TASKS, DEFAULT_WEIGHTS)
    np.testing.assert_allclose(prerank_scores(pre, sp, bg, DEFAULT_WEIGHTS), fused, rtol=1e-6)
    want = cand[np.sort(np.argsort(-fused, kind="stable")[:10])]
    assert res.prerank_dropped == 30 and np.array_equal(res.item_idx, want)


def test_rank_order_prerank_serves_the_prerank_order_without_the_ranker(ds, teacher, prerank, tmp_path):
    """order "prerank" (or the manifest's rank_order under "auto"): the kept candidates carry the pre-rank's
    fused scores and task outputs; the ranker is not run."""
    from rank_server.features import rank_inputs
    from rank_server.rank import RankState, rank

    s, items, pre = _ranker_and_prerank(ds, teacher, prerank, tmp_path)

    class _NeverRun(RankModel):
        def predict(self, *args):
            raise AssertionError("the ranker ran although the order is the pre-rank's")

    cand = np.arange(0, 40, dtype=np.int32)[::-1].copy()
    sp, bg = rank_inputs(s, items, None, 2, cand, 10**9)
    p = pre.predict(sp, bg)
    fused = weighted_product(p, TASKS, DEFAULT_WEIGHTS)
    keep = np.sort(np.argsort(-fused, kind="stable")[:10])
    for manifest, cfg in (({}, RankConfig(prerank_keep=10, order="prerank")),
                          ({"rank_order": "prerank"}, RankConfig(prerank_keep=10))):
        snap = type("S", (), {"features": _NoUsers(), "manifest": manifest})()
        state = RankState(snap, s, items, _NeverRun(tmp_path / "rank.onnx", s, TASKS, 1), 2, pre)
        res = rank(state, cfg, "", cand, 10**9)
        assert res.prerank_dropped == 30 and np.array_equal(res.item_idx, cand[keep])
        np.testing.assert_allclose(res.fused, fused[keep], rtol=1e-6)
        np.testing.assert_allclose(res.task_scores, p[keep], rtol=1e-6)
        assert res.task_names == list(TASKS)
    # fewer candidates than prerank_keep: all of them, scored by the pre-rank
    res = rank(state, RankConfig(prerank_keep=100), "", cand, 10**9)
    assert res.prerank_dropped == 0 and np.array_equal(res.item_idx, cand)
    np.testing.assert_allclose(res.fused, fused, rtol=1e-6)
    with pytest.raises(ValueError, match="order must be one of auto, model, prerank"):
        RankConfig(order="best").validate()


def test_export_serves_the_ranker_only_where_it_beats_the_prerank_order():
    from export.ranking.ranker import choose_rank_order

    rows = {"rank": {"ndcg@10": 0.2053}, "prerank": {"ndcg@10": 0.1998}}
    assert choose_rank_order(rows)["order"] == "model"
    rows = {"rank": {"ndcg@10": 0.0467}, "prerank": {"ndcg@10": 0.0542}}
    assert choose_rank_order(rows)["order"] == "prerank"
    assert choose_rank_order(rows, gate=False)["order"] == "model"
    # recall's own order where both models order worse (the 10^6 export's validation rows), later stage on ties
    rows = {"recall": {"ndcg@10": 0.0548}, "prerank": {"ndcg@10": 0.0511}, "rank": {"ndcg@10": 0.0511}}
    got = choose_rank_order(rows)
    assert got["order"] == "recall" and got["validation_ndcg@10"] == {"rank": 0.0511, "prerank": 0.0511,
                                                                     "recall": 0.0548}
    rows["recall"]["ndcg@10"] = 0.0511
    assert choose_rank_order(rows)["order"] == "model"


def test_rank_order_recall_serves_recall_order_without_the_ranker(ds, teacher, prerank, tmp_path):
    """order "recall": recall's first prerank_keep known candidates in recall's order, scored by recall's
    merged score (by position without one), task outputs from the pre-rank; the ranker is not run."""
    from rank_server.features import rank_inputs
    from rank_server.rank import RankState, RecallInfo, rank

    s, items, pre = _ranker_and_prerank(ds, teacher, prerank, tmp_path)

    class _NeverRun(RankModel):
        def predict(self, *args):
            raise AssertionError("the ranker ran although the order is recall's")

    cand = np.arange(0, 40, dtype=np.int32)[::-1].copy()
    cand[3] = 10 ** 8                                     # an unknown id: dropped, its recall score with it
    scores = np.linspace(1.0, 0.1, 40, dtype=np.float32)
    known = np.r_[np.arange(3), np.arange(4, 40)]
    sp, bg = rank_inputs(s, items, None, 2, cand[known][:10], 10**9)
    for manifest, cfg in (({}, RankConfig(prerank_keep=10, order="recall")),
                          ({"rank_order": "recall"}, RankConfig(prerank_keep=10))):
        snap = type("S", (), {"features": _NoUsers(), "manifest": manifest})()
        state = RankState(snap, s, items, _NeverRun(tmp_path / "rank.onnx", s, TASKS, 1), 2, pre)
        res = rank(state, cfg, "", cand, 10**9, RecallInfo(scores=scores))
        assert np.array_equal(res.item_idx, cand[known][:10])
        assert (res.dropped_unknown, res.prerank_dropped) == (1, 29)
        np.testing.assert_array_equal(res.fused, scores[known][:10])
        np.testing.assert_allclose(res.task_scores, pre.predict(sp, bg), rtol=1e-6)
    res = rank(state, RankConfig(prerank_keep=10), "", cand, 10**9)   # no recall scores: by position
    np.testing.assert_allclose(res.fused, 1.0 / (1.0 + np.arange(10)))


def test_prerank_top_equals_the_full_sort():
    """The partial sort (only rows scoring at least the keep-th best are ordered) keeps exactly the rows the
    full stable sort keeps: ties to the earlier candidate, NaN scores last."""
    from rank_server.rank import prerank_top

    rng = np.random.default_rng(0)
    for trial in range(2000):
        n, keep = int(rng.integers(1, 300)), int(rng.integers(1, 350))
        scores = (rng.integers(0, 4, n) if trial % 2 else rng.random(n)).astype(np.float32)
        if trial % 3 == 0:
            scores[rng.random(n) < rng.random()] = np.nan
        reference = np.sort(np.lexsort((np.arange(n), -scores))[:keep])
        assert np.array_equal(prerank_top(scores, keep), reference), (n, keep)


# ---- the three-tower pre-rank (issue 26): user tower once per request, cached item vectors, cross part

TT = PrerankConfig(embed_dim=4, epochs=8, batch_size=128, lr=1e-2, distill_weight=1.0, tower_dim=8,
                   tower_hidden=16, cross_hidden=(8,), kind="three_tower")
DENSE = ["recall_pos", "recall_score", "pop"]


class _DirSnapshot:
    """What the rank server reads of a snapshot, from a plain folder (models/ and the three-tower files)."""

    def __init__(self, path, manifest=None):
        self.path = path
        self.manifest = manifest or {}
        self.features = _NoUsers()

    def file(self, name):
        if not (self.path / name).exists():
            raise SnapshotError(f"snapshot file {self.path / name} is missing")
        return self.path / name

    def load_array(self, name):
        return np.load(self.file(name), allow_pickle=False)


def _dense(n, seed=3):
    rng = np.random.default_rng(seed)
    return np.stack([np.log1p(rng.integers(0, 1000, n)), rng.random(n), rng.random(n) * 5], 1).astype(np.float32)


@pytest.fixture(scope="module")
def three_tower(ds, examples, teacher_logits):
    """A three-tower pre-rank with three dense candidate columns (random: only parity is tested with them)."""
    import dataclasses

    s = dataclasses.replace(_schema(ds), dense_names=DENSE)
    return s, train_prerank(s, TT, examples, teacher_logits, dense=_dense(examples[0].shape[0]))


@pytest.fixture(scope="module")
def three_tower_plain(ds, examples, teacher_logits):
    """A three-tower pre-rank without dense inputs (the tiny rank state's schema)."""
    return train_prerank(_schema(ds), TT, examples, teacher_logits)


def _export_three_tower(ds, model, schema, path):
    from export.models.prerank import export_three_tower

    (path / "models").mkdir(exist_ok=True)
    export_mmoe_onnx(model, str(path / "models/prerank.onnx"), schema.n_fields, schema.n_bag)
    return export_three_tower(model, path, schema, ds.item_cat.astype(np.int32), ds.item_bag.astype(np.uint8))


def test_three_tower_towers_read_only_their_side(ds, three_tower):
    from export.models.prerank import PrerankThreeTower

    s, (model, log) = three_tower
    assert isinstance(model, PrerankThreeTower) and log["kind"] == "three_tower"
    assert log["epoch_loss"][-1] < log["epoch_loss"][0]
    names = s.field_names
    assert [names[c] for c in model.user_cols] == ["user:group", "user:gender", "hour", "weekday"]
    assert [names[c] for c in model.item_cols] == ["item:group"]   # ids off by default (use_ids)
    from common.rank_features import assemble

    sp, bg = assemble(s, 3, ds.user_cat[3], np.arange(1, 11), ds.item_cat[:10], ds.item_bag[:10], 5, 2)
    sp2 = sp.copy()
    sp2[:, [names.index("user:group"), names.index("hour")]] = [[2, 9]]
    x, x2, b = torch.from_numpy(sp), torch.from_numpy(sp2), torch.from_numpy(bg)
    with torch.no_grad():
        assert torch.equal(model.item_vec(x, b), model.item_vec(x2, b))         # v ignores user and context
        assert not torch.equal(model.user_vec(x), model.user_vec(x2))
        u = model.user_vec(x)
        assert torch.allclose(u, u[:1].expand_as(u))                             # u is one per request


def test_three_tower_served_scores_match_torch(ds, three_tower, tmp_path):
    """The served split (user tower ONNX on one row, the export's item vectors gathered, cross ONNX over the
    candidates) gives the torch model's probabilities."""
    from common.rank_features import assemble
    from rank_server.prerank import ThreeTowerPrerank

    s, (model, _) = three_tower
    spec = _export_three_tower(ds, model, s, tmp_path)
    assert spec["cross_dense"] == DENSE and spec["dim"] == TT.tower_dim
    assert [i.name for i in onnx.load(str(tmp_path / spec["cross"])).graph.input] == ["u", "v", "dense"]
    pre = ThreeTowerPrerank(_DirSnapshot(tmp_path), s, TASKS, 1, ds.n_items)
    items = np.array([0, 5, 59, 17, 17, 33], np.int64)
    worst = 0.0
    for user in (0, 7, 39):
        sp, bg = assemble(s, user + 1, ds.user_cat[user], items + 1, ds.item_cat[items], ds.item_bag[items], 14, 6)
        dense = _dense(items.size, seed=user)
        got = pre.scores_for(sp[:1], items, dense)
        want = predict_mmoe(model, sp, bg, dense)
        np.testing.assert_allclose(pre.predict(sp, bg, dense), got, rtol=0, atol=1e-6)
        worst = max(worst, float(np.abs(got - want).max()))
    assert got.shape == (items.size, len(TASKS)) and worst < 1e-5
    # the whole model as one graph (prerank.onnx) agrees too
    np.testing.assert_allclose(onnx_predict(session(tmp_path / "models/prerank.onnx"), sp, bg, dense), want,
                               atol=1e-5)


def test_three_tower_snapshot_checks(ds, three_tower, tmp_path):
    from rank_server.prerank import ITEMS_FILE, ThreeTowerPrerank

    s, (model, _) = three_tower
    _export_three_tower(ds, model, s, tmp_path)
    with pytest.raises(SnapshotError, match="items"):
        ThreeTowerPrerank(_DirSnapshot(tmp_path), s, TASKS, 1, ds.n_items + 1)
    np.save(tmp_path / ITEMS_FILE, np.zeros((ds.n_items, 3), np.float32))
    with pytest.raises(SnapshotError, match="shape"):
        ThreeTowerPrerank(_DirSnapshot(tmp_path), s, TASKS, 1, ds.n_items)


def test_rank_serves_the_three_tower_prerank(ds, teacher, three_tower_plain, tmp_path):
    """End to end on a tiny rank state: the snapshot's pre-rank is the three-tower (auto), it cuts the
    candidates to its fused top ``prerank_keep`` (torch's order), and the ranker scores exactly those."""
    from common.rank_features import assemble
    from rank_server.features import ItemFeatures, rank_inputs
    from rank_server.prerank import SPEC_FILE, ThreeTowerPrerank
    from rank_server.rank import RankState, prerank_file, rank

    model, _ = three_tower_plain
    s = _schema(ds)
    (tmp_path / "models").mkdir()
    export_mmoe_onnx(teacher, str(tmp_path / "models/rank_mmoe.onnx"), s.n_fields, s.n_bag)
    snap = _DirSnapshot(tmp_path)
    assert prerank_file(snap, RankConfig()) == "models/prerank.onnx"    # an old snapshot: the one graph
    _export_three_tower(ds, model, s, tmp_path)
    assert prerank_file(snap, RankConfig()) == SPEC_FILE
    assert prerank_file(snap, RankConfig(prerank_model="models/prerank.onnx")) == "models/prerank.onnx"
    items = ItemFeatures(ds.item_cat.astype(np.int32), ds.item_bag.astype(np.uint8))
    pre = ThreeTowerPrerank(snap, s, TASKS, 1, ds.n_items)
    ranker = RankModel(tmp_path / "models/rank_mmoe.onnx", s, TASKS, 1)
    state = RankState(snap, s, items, ranker, 2, pre)
    cand = np.array([5, 3, -1, 40, 7, 11, 999, 20, 1, 2, 33, 48, 59, 0], np.int32)
    res = rank(state, RankConfig(prerank_keep=5), "", cand, 10**9)
    known = cand[(cand >= 0) & (cand < ds.n_items)]
    sp, bg = rank_inputs(s, items, None, 2, known, 10**9)
    fused = weighted_product(predict_mmoe(model, sp, bg), TASKS, DEFAULT_WEIGHTS)
    keep = np.sort(np.argsort(-fused, kind="stable")[:5])
    assert res.dropped_unknown == 2 and res.prerank_dropped == known.size - 5
    assert np.array_equal(res.item_idx, known[keep])
    np.testing.assert_allclose(res.prerank_scores, fused[keep], rtol=1e-5)
    want = ranker.predict(sp[keep], bg[keep])
    np.testing.assert_allclose(res.task_scores, want, rtol=1e-6)
    # the user row alone feeds the user tower: the same scores from a row assembled with another item
    row, _ = assemble(s, 0, np.zeros(2, np.int64), [9], ds.item_cat[[8]], ds.item_bag[[8]], *sp[0, -2:])
    np.testing.assert_allclose(pre.scores_for(row, known, None), pre.scores_for(sp[:1], known, None), atol=0)


def _replay(pre_click, stu_click, truth, recalled=None):
    """A one-user replay over len(pre_click) candidates (items 0..n-1) with the given truth items."""
    from export.ranking.replay import Replay

    n = len(pre_click)
    z = np.zeros(n, np.float32)
    rep = Replay(np.array([0]), np.array([0, n], np.int64), np.arange(n, dtype=np.int32),
                 np.ones(n, bool) if recalled is None else np.asarray(recalled), np.zeros((n, 1), np.int64),
                 np.zeros((n, 0), np.float32), np.zeros((n, 0), np.float32), {"click": z},
                 np.array([0, len(truth)], np.int64), np.asarray(truth, np.int32), np.array([10**9]))
    probs = lambda c: np.stack([np.asarray(c, np.float32), np.ones(n, np.float32), np.ones(n, np.float32)], 1)
    return rep, probs(pre_click), probs(stu_click)


def test_prerank_rows_cut_then_student_order():
    """The validation rows the pre-rank kind is chosen on: ``rank`` is the student's order of the pre-rank's
    best ``keep`` recalled candidates, ``prerank`` the pre-rank's own order."""
    from export.ranking.ranker import prerank_rows

    # the truth (item 2) is the student's favourite but the pre-rank's third: a cut to 2 loses it
    rep, pre, stu = _replay([0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.9, 0.3], [2])
    rows = prerank_rows(rep, pre, stu, keep=2)
    assert rows["rank"][0] == 0.0 and 0 < rows["prerank"][0] < 1
    assert prerank_rows(rep, pre, stu, keep=3)["rank"][0] == 1.0
    # a row recall did not return never takes a kept slot
    rep, pre, stu = _replay([0.99, 0.8, 0.7, 0.1], [0.1, 0.2, 0.9, 0.3], [2], recalled=[False, True, True, True])
    assert prerank_rows(rep, pre, stu, keep=2)["rank"][0] == 1.0


def test_choose_prerank_accepts_the_three_tower_within_the_cost():
    from export.ranking.ranker import choose_prerank

    class _Fixed(torch.nn.Module):
        n_tasks = 3

        def __init__(self, click):
            super().__init__()
            self.click = torch.tensor(click)

        def logits(self, sparse, bag, dense=None):
            return torch.stack([torch.logit(self.click), torch.zeros_like(self.click), torch.zeros_like(self.click)], 1)

    rep, _, _ = _replay([0.5] * 4, [0.5] * 4, [2])
    student = _Fixed([0.1, 0.2, 0.9, 0.3])
    good, bad = _Fixed([0.2, 0.3, 0.8, 0.1]), _Fixed([0.9, 0.8, 0.1, 0.7])
    pick = choose_prerank(rep, student, {"deepfm": good, "three_tower": good}, keep=2, max_cost=0.005)
    assert pick["kind"] == "three_tower" and pick["rows"]["three_tower"] == pick["rows"]["deepfm"]
    pick = choose_prerank(rep, student, {"deepfm": good, "three_tower": bad}, keep=2, max_cost=0.005)
    assert pick["kind"] == "deepfm" and pick["rows"]["three_tower"]["rank"] < pick["rows"]["deepfm"]["rank"]
