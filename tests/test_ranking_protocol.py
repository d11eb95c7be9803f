"""The ranker's honest protocol and its pieces (issue 11): no test row shapes training, candidate features
against numpy references, list metrics by hand, fusion forms, replay ordering."""
from __future__ import annotations

import math

import numpy as np
import pytest

from common.candidate_features import CandidateTables, candidate_features, dense_names
from common.config import load_config
from export.config import ExportConfig
from export.data.dataset import Interactions
from export.models.deepfm import make_rank_examples
from export.evaluation.funnel import list_row
from export.evaluation.metrics import ndcg_at_k
from export.models.mmoe import make_mmoe_examples
from export.ranking.replay import order_lists
from export.recall.tables import item_stats, transition_table
from rank_server.fusion import FORMS, fuse
from tests.test_models import _schema, _synthetic_dataset


# ---------------------------------------------------------------- leak test

@pytest.fixture(scope="module")
def small_synthetic():
    from export.data.synthetic import SyntheticConfig, make_dataset

    return make_dataset(SyntheticConfig(n_items=400, n_users=120, n_interactions=6000, seed=3))


def _strip_test_rows(ds, split):
    """The same dataset with the test rows removed from its log."""
    import dataclasses

    return dataclasses.replace(ds, interactions=split.known)


def test_no_test_row_shapes_the_rankers_training_data(small_synthetic, tmp_path):
    """The training and validation replays (recall artifacts, candidates, features, labels, sampled
    negatives) are identical whether or not the dataset still holds the test part."""
    from export.pipeline import rank_schema, replay_cuts
    from export.data.split import make_split

    ds = small_synthetic
    # one HNSW point: the export picks (M, ef) partly on measured latency, so two runs may serve different
    # indexes; that choice is not what this test is about
    config = load_config(ExportConfig, None, ["two_tower.epochs=1", "recall_n=300", "rank_n=100",
                                              "rank_replay.neg_per_user=20", "hnsw.M_grid=[16]",
                                              "hnsw.ef_grid=[200]", "hnsw.min_count_grid=[]"])
    split = make_split(ds, config.holdout_frac, valid_frac=config.valid_frac)
    assert len(split.test) > 0
    out = []
    for name, data in (("full", ds), ("stripped", _strip_test_rows(ds, split))):
        _, _, rep_a, rep_b, _, _ = replay_cuts(data, split, config, rank_schema(data), tmp_path / name)
        rows = rep_a.sample(config.rank_replay, 0)
        out.append((rep_a, rep_b, rows))
    (a1, b1, r1), (a2, b2, r2) = out
    np.testing.assert_array_equal(r1, r2)
    for x, y in ((a1, a2), (b1, b2)):
        for field in ("users", "offsets", "item", "recalled", "sparse", "bag", "truth_items"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field), err_msg=field)
        np.testing.assert_allclose(x.dense, y.dense, rtol=1e-6, atol=1e-6)
        for k in x.labels:
            np.testing.assert_array_equal(x.labels[k], y.labels[k])
    # the validation labels are the validation part, never the test part
    test_keys = set(zip(split.test.user.tolist(), split.test.item.tolist()))
    owner = np.repeat(b1.users, np.diff(b1.offsets))
    pos = b1.labels["click"] > 0
    assert not test_keys & set(zip(owner[pos].tolist(), b1.item[pos].tolist()))


def test_sampled_negatives_avoid_only_what_is_known():
    ds = _synthetic_dataset()
    schema = _schema(ds)
    inter = ds.interactions
    known = inter.subset(np.arange(len(inter)) < len(inter) // 2)
    a = make_mmoe_examples(ds, known, schema, 2, 0, known=known)
    b = make_mmoe_examples(ds, known, schema, 2, 0)           # default: the rows given
    for x, y in zip(a[:2], b[:2]):
        np.testing.assert_array_equal(x, y)
    c = make_rank_examples(ds, known, schema, 2, 0, known=known)
    d = make_rank_examples(ds, known, schema, 2, 0)
    np.testing.assert_array_equal(c[0], d[0])


# ---------------------------------------------------------------- candidate features vs numpy

def _csr(rows: dict[int, dict[int, float]], n: int):
    indptr = np.zeros(n + 1, np.int64)
    idx, sc = [], []
    for i in range(n):
        nb = rows.get(i, {})
        for j, s in sorted(nb.items(), key=lambda t: -t[1]):
            idx.append(j)
            sc.append(s)
        indptr[i + 1] = len(idx)
    return indptr, np.asarray(idx, np.int32), np.asarray(sc, np.float32)


def test_candidate_features_match_a_plain_reference():
    rng = np.random.default_rng(0)
    n, d = 30, 4
    tables_raw = {name: {i: {int(j): float(rng.random()) for j in rng.choice(n, 5, replace=False) if j != i}
                         for i in range(n)} for name in ("itemcf", "swing", "next")}
    emb = rng.normal(size=(n, d)).astype(np.float32)
    count = rng.integers(0, 50, n).astype(np.float32)
    recent = np.minimum(count, rng.integers(0, 10, n)).astype(np.float32)
    channels = ["ann", "itemcf", "popular"]
    t = CandidateTables.build(emb, _csr(tables_raw["itemcf"], n), _csr(tables_raw["swing"], n),
                              _csr(tables_raw["next"], n), count, recent, channels)
    hist_codes = np.array([0, 3, 8, 12, 5], np.int32)            # a padded history: items 2, 7, 11, 4
    cand = np.array([9, 1, 7, 20, 4], np.int32)
    masks = np.array([1, 3, 4, 0, 2], np.uint32)
    scores = np.array([0.9, 0.5, 0.45, 0.2, 0.1], np.float32)
    got = candidate_features(t, hist_codes, 37, cand, masks, ["ann", "itemcf", "popular"], scores)
    assert got.shape == (5, len(dense_names(channels)))

    hist = [2, 7, 11, 4]
    w = [0.9 ** (len(hist) - 1 - h) for h in range(len(hist))]
    last_w = [0.0, 0.25, 0.5, 1.0]
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    mean = unit[hist].mean(0)
    for r, c in enumerate(cand.tolist()):
        def sim(name, weights):
            return sum(wh * tables_raw[name].get(h, {}).get(c, 0.0) for h, wh in zip(hist, weights))
        want = [math.log1p(r), scores[r] / 0.9, masks[r] & 1, masks[r] >> 1 & 1, masks[r] >> 2 & 1,
                math.log1p(sim("itemcf", w)), math.log1p(sim("swing", w)), math.log1p(sim("itemcf", last_w)),
                math.log1p(sim("next", last_w)), unit[c] @ (mean / np.linalg.norm(mean)),
                max(unit[c] @ unit[h] for h in hist), unit[c] @ unit[hist[-1]], math.log1p(count[c]),
                math.log1p(recent[c]), math.log1p(37)]
        np.testing.assert_allclose(got[r], want, rtol=1e-5, atol=1e-6, err_msg=f"candidate {c}")


def test_candidate_features_without_history_or_recall_info():
    n = 10
    empty = (np.zeros(n + 1, np.int64), np.empty(0, np.int32), np.empty(0, np.float32))
    t = CandidateTables.build(np.eye(n, 3, dtype=np.float32), empty, empty, empty, np.ones(n), np.ones(n), ["ann"])
    got = candidate_features(t, np.empty(0, np.int32), 0, np.array([3, 1], np.int32))
    assert got.shape == (2, len(t.names)) and np.isfinite(got).all()
    assert got[:, 1:3].sum() == 0            # no recall information: score and channel columns are 0
    assert candidate_features(t, np.array([2]), 1, np.empty(0, np.int32)).shape == (0, len(t.names))


def test_transition_table_matches_counting():
    inter = Interactions(user=np.array([0, 0, 0, 0, 1, 1, 1], np.int32),
                         item=np.array([1, 2, 3, 2, 1, 3, 0], np.int32),
                         rating=np.ones(7, np.float32), timestamp=np.array([1, 2, 3, 4, 1, 2, 3], np.int64))
    table = transition_table(inter, 2, 4, top_m=10, span=2)
    weights: dict[tuple[int, int], float] = {}
    for seq in ([1, 2, 3, 2], [1, 3, 0]):
        for t in range(len(seq)):
            for d in (1, 2):
                if t + d < len(seq) and seq[t] != seq[t + d]:
                    weights[seq[t], seq[t + d]] = weights.get((seq[t], seq[t + d]), 0.0) + 1.0 / d
    for a in range(4):
        got = dict(zip(table["indices"][table["indptr"][a]:table["indptr"][a + 1]].tolist(),
                       table["scores"][table["indptr"][a]:table["indptr"][a + 1]].tolist()))
        total = sum(v for (x, _), v in weights.items() if x == a)
        want = {b: v / total for (x, b), v in weights.items() if x == a}
        assert got.keys() == want.keys()
        for b in want:
            assert got[b] == pytest.approx(want[b], rel=1e-6)
    stats = item_stats(inter, 4, recent_days=2 / 86400)
    assert stats["count"].tolist() == [1, 2, 2, 2] and stats["recent_count"].tolist() == [1, 0, 2, 2]


def test_transition_table_keeps_the_heaviest_then_smaller_ids():
    rng = np.random.default_rng(5)
    n_items, top_m = 12, 3
    user = np.repeat(np.arange(40, dtype=np.int32), 6)
    inter = Interactions(user=user, item=rng.integers(0, n_items, user.size).astype(np.int32),
                         rating=np.ones(user.size, np.float32), timestamp=np.tile(np.arange(6, dtype=np.int64), 40))
    table = transition_table(inter, 40, n_items, top_m=top_m, span=2)
    weights: dict[tuple[int, int], float] = {}
    for u in range(40):
        seq = inter.item[inter.user == u].tolist()
        for t in range(len(seq)):
            for d in (1, 2):
                if t + d < len(seq) and seq[t] != seq[t + d]:
                    weights[seq[t], seq[t + d]] = weights.get((seq[t], seq[t + d]), 0.0) + 1.0 / d
    for a in range(n_items):
        want = sorted(((-w, b) for (x, b), w in weights.items() if x == a))[:top_m]
        got = table["indices"][table["indptr"][a]:table["indptr"][a + 1]].tolist()
        assert got == [b for _, b in want], a


# ---------------------------------------------------------------- list metrics by hand

def test_ndcg_by_hand():
    pred = np.array([[1, 2, 3], [5, 5, -1], [7, 8, 9]])
    indptr, items = np.array([0, 2, 3, 3]), np.array([1, 3, 5])
    # user 0: hits at positions 0 and 2 of 2 relevant; user 1: a hit at 0 (the repeat earns nothing);
    # user 2 has no truth and does not count
    u0 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(pred, indptr, items, 3) == pytest.approx((u0 + 1.0) / 2)
    assert ndcg_at_k(pred, indptr, items, 1) == pytest.approx(1.0)


def test_list_row_by_hand():
    bag = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]], np.uint8)
    unit = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8]], np.float32)
    pred = np.full((2, 10), -1)
    pred[0, :3] = [0, 1, 3]
    pred[1, :2] = [2, 0]
    indptr, items = np.array([0, 1, 3]), np.array([3, 0, 1])
    row = list_row(pred, indptr, items, bag, unit)
    assert row["recall@10"] == pytest.approx((1.0 + 0.5) / 2)
    assert row["genres@10"] == pytest.approx((3 + 2) / 2)
    # ILS: user 0 pairs (0,1)=0, (0,3)=.6, (1,3)=.8 → mean .4667; user 1: (2,0) = 1
    assert row["ils@10"] == pytest.approx((1.4 / 3 + 1.0) / 2, rel=1e-5)
    assert math.isnan(row["recall@50"])          # a 10-long list has no recall@50


def test_served_table_agrees_with_list_row(tmp_path):
    from tools.evaluate import compare

    assert compare({m: 0.5 for m in ("recall@10", "ndcg@10", "recall@50", "genres@10", "ils@10")},
                   {m: 0.5005 for m in ("recall@10", "ndcg@10", "recall@50", "genres@10", "ils@10")}, 0.001) == []
    assert compare({"recall@10": 0.2, "ndcg@10": 0.3, "recall@50": 0.4, "genres@10": 8, "ils@10": 0.9},
                   {"recall@10": 0.2, "ndcg@10": 0.31, "recall@50": float("nan"), "genres@10": 8, "ils@10": 0.9},
                   0.002) == ["ndcg@10", "recall@50"]
    # genres@10 is a count: the tolerance is relative to it (0.002 * 9.8)
    row = {"recall@10": 0.2, "ndcg@10": 0.3, "recall@50": 0.4, "ils@10": 0.9}
    assert compare({**row, "genres@10": 9.8017}, {**row, "genres@10": 9.8038}, 0.002) == []
    assert compare({**row, "genres@10": 9.75}, {**row, "genres@10": 9.8038}, 0.002) == ["genres@10"]


def test_order_lists_ties_keep_recall_order():
    offsets = np.array([0, 4, 6])
    recalled = np.array([True, True, True, False, True, True])
    item = np.array([10, 11, 12, 13, 20, 21])
    scores = np.array([0.5, 0.9, 0.5, 99.0, 0.1, 0.1])
    got = order_lists(offsets, recalled, item, scores, 4)
    assert got.tolist() == [[11, 10, 12, -1], [20, 21, -1, -1]]


# ---------------------------------------------------------------- fusion forms

def test_fusion_forms_match_their_definitions():
    rng = np.random.default_rng(1)
    p = rng.random((6, 3)).astype(np.float32)
    tasks = ["click", "like", "rating"]
    w = {"click": 1.0, "like": 0.5, "rating": 0.25}
    np.testing.assert_allclose(fuse(p, tasks, w, "sum"), p @ [1.0, 0.5, 0.25], rtol=1e-6)
    np.testing.assert_allclose(fuse(p, tasks, w, "one_plus"), np.prod(1 + p * [1.0, 0.5, 0.25], axis=1), rtol=1e-6)
    np.testing.assert_allclose(fuse(p, tasks, w, "product"),
                               p[:, 0] * p[:, 1] ** 0.5 * (1 + p[:, 2]) ** 0.25, rtol=1e-5)
    ranks = np.argsort(np.argsort(-p, axis=0, kind="stable"), axis=0)
    np.testing.assert_allclose(fuse(p, tasks, w, "rank"), (np.array([1.0, 0.5, 0.25]) / (ranks + 10.0)).sum(1),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="fusion form"):
        fuse(p, tasks, w, "max")
    assert set(FORMS) == {"product", "sum", "one_plus", "rank"}


def test_rerank_config_takes_the_snapshots_fitted_defaults():
    from rerank_server.config import RerankConfig

    snap = type("S", (), {"manifest": {"rerank_params": {"method": "MMR", "mmr_lambda": 0.85}}})()
    assert RerankConfig().for_snapshot(snap).mmr_lambda == 0.85           # defaults take the fitted value
    assert RerankConfig(mmr_lambda=0.3).for_snapshot(snap).mmr_lambda == 0.3   # an explicit setting wins
    assert RerankConfig(use_fitted=False).for_snapshot(snap).mmr_lambda == RerankConfig().mmr_lambda
    assert RerankConfig(method="DPP").for_snapshot(snap).method == "DPP"
    bad = type("S", (), {"manifest": {"rerank_params": {"mmr_lambda": 7}}})()
    with pytest.raises(ValueError, match="mmr_lambda"):
        RerankConfig().for_snapshot(bad)


# ---------------------------------------------------------------- steadier choices on validation

def _toy_replay(n_users: int, per_user: int, seed: int = 0):
    """A Replay whose users each have ``per_user`` recalled candidates; truth = the user's candidate 0."""
    from export.ranking.replay import Replay

    rng = np.random.default_rng(seed)
    rows = n_users * per_user
    offsets = np.arange(0, rows + 1, per_user, dtype=np.int64)
    item = np.tile(np.arange(per_user, dtype=np.int32), n_users)
    zeros = np.zeros(rows, np.float32)
    return Replay(np.arange(n_users, dtype=np.int64), offsets, item, np.ones(rows, bool),
                  np.zeros((rows, 1), np.int64), np.zeros((rows, 1), np.float32), rng.random((rows, 1), np.float32),
                  {"click": zeros, "like": zeros, "rating": zeros, "mask": zeros},
                  np.arange(n_users + 1, dtype=np.int64), np.zeros(n_users, np.int64), np.zeros(n_users, np.int64))


def test_ndcg_per_user_is_what_the_mean_averages():
    from export.evaluation.metrics import ndcg_per_user

    pred = np.array([[1, 2, 3], [5, 5, -1], [7, 8, 9]])
    indptr, items = np.array([0, 2, 3, 3]), np.array([1, 3, 5])
    per_user = ndcg_per_user(pred, indptr, items, 3)
    assert math.isnan(per_user[2]) and per_user[1] == pytest.approx(1.0)
    assert np.nanmean(per_user) == pytest.approx(ndcg_at_k(pred, indptr, items, 3))


def test_rank_fusion_ranks_within_each_request():
    """The rank form's ranks are per request (per user), as the rank server computes them."""
    from export.ranking.ranker import fuse_per_user

    rep = _toy_replay(3, 5)
    probs = np.random.default_rng(2).random((15, 3)).astype(np.float32)
    w = {"click": 1.0, "like": 0.5, "rating": 0.25}
    got = fuse_per_user(probs, rep, w, "rank")
    for u in range(3):
        rows = slice(u * 5, u * 5 + 5)
        np.testing.assert_allclose(got[rows], fuse(probs[rows], ["click", "like", "rating"], w, "rank"), rtol=1e-6)
    np.testing.assert_allclose(fuse_per_user(probs, rep, w, "sum"), fuse(probs, ["click", "like", "rating"], w, "sum"))


def test_fusion_keeps_the_click_head_unless_the_gain_is_clear():
    from export.ranking.ranker import fusion_search

    rep = _toy_replay(400, 6)
    rng = np.random.default_rng(3)
    probs = rng.random((rep.n_rows, 3)).astype(np.float32)
    truth = rep.offsets[:-1]                       # candidate 0 of every user is the one they took
    # noise heads: the best grid point beats click only by chance -> click only is served
    chosen = fusion_search(probs, rep, ["product", "sum"], min_gain_se=2.0)
    assert chosen["weights"] == {"click": 1.0, "like": 0.0, "rating": 0.0}
    assert chosen["best_grid_point"]["gain"] <= 2.0 * chosen["best_grid_point"]["se"]
    # a like head that knows the answer: the gain is many standard errors -> the fused form is served
    probs[:, 1] = 0.1
    probs[truth, 1] = 0.9
    chosen = fusion_search(probs, rep, ["product", "sum"], min_gain_se=2.0)
    assert chosen["weights"]["like"] > 0 and chosen["validation_ndcg@10"] > chosen["click_only_ndcg@10"]


def test_epochs_stay_at_the_configured_count_unless_an_earlier_one_is_clearly_better():
    from export.ranking.ranker import choose_epochs, paired_gain

    rng = np.random.default_rng(4)
    users = 900
    base = rng.random(users)
    # a flat curve: epoch 1 leads the last by noise alone -> the configured count (the last epoch) stays
    flat = np.stack([base + rng.normal(0, 0.05, users) for _ in range(4)])
    flat[0] += 0.002
    got = choose_epochs([flat], 2.0)
    assert got["epochs"] == 4 and got["best_epoch"] == 1 and got["gain_over_last"] <= 2.0 * got["se"]
    # over-fitting: every user is clearly worse at the last epochs -> the early epoch is chosen
    overfit = np.stack([base + 0.05, base + 0.06, base, base - 0.02]) + rng.normal(0, 0.01, (4, users))
    overfit[:, 0] = np.nan                          # a user without truth counts nowhere
    got = choose_epochs([overfit, overfit + rng.normal(0, 0.01, overfit.shape)], 2.0)
    assert got["epochs"] == 2 and got["curve"][1] == max(got["curve"]) and got["best_in_every_seed"]
    # one seed's lucky first epoch carries the average past 2 SE, the other seed prefers the last epoch
    lucky = np.stack([base + 0.03, base, base, base]) + rng.normal(0, 0.005, (4, users))
    other = np.stack([base - 0.002, base, base, base]) + rng.normal(0, 0.0005, (4, users))
    got = choose_epochs([lucky, other], 2.0)
    assert got["best_epoch"] == 1 and got["gain_over_last"] > 2.0 * got["se"]
    assert not got["best_in_every_seed"] and got["epochs"] == 4
    gain, se = paired_gain(np.array([1.0, 2.0, np.nan, 4.0]), np.array([0.0, 1.0, 5.0, 2.0]))
    assert gain == pytest.approx(4 / 3) and se == pytest.approx(np.std([1, 1, 2], ddof=1) / np.sqrt(3))


def test_streamed_training_sample_is_a_row_subset_of_the_full_replay(small_synthetic, tmp_path):
    """``replay(training_sample=True)`` keeps, per user, every recalled positive and ``neg_per_user`` of the
    recalled negatives, each row identical to the full replay's row for that item, plus random unseen items
    outside recall's list; sampling it again keeps every row (the pipeline samples both ways)."""
    from export.pipeline import rank_schema, training_cut
    from export.ranking.replay import replay
    from export.recall.build import build_recall
    from export.data.split import make_split

    ds = small_synthetic
    config = load_config(ExportConfig, None, ["two_tower.epochs=1", "recall_n=300", "rank_n=100",
                                              "rank_replay.neg_per_user=20"])
    rr = config.rank_replay
    split = make_split(ds, config.holdout_frac, valid_frac=config.valid_frac)
    cut_train, cut_labels = training_cut(split, rr.label_frac)
    build = build_recall(ds, cut_train, config, tmp_path / "cut")
    schema = rank_schema(ds)
    full = replay(build.path, ds, cut_labels, schema, config.recall_n, rr, seed=0)
    part = replay(build.path, ds, cut_labels, schema, config.recall_n, rr, seed=0, training_sample=True)
    np.testing.assert_array_equal(part.users, full.users)
    np.testing.assert_array_equal(part.truth_items, full.truth_items)
    assert part.n_rows < full.n_rows
    np.testing.assert_array_equal(part.sample(rr, 0), np.arange(part.n_rows))
    seen_any_sample, n_rand = False, 0
    for j, u in enumerate(full.users.tolist()):
        f = slice(full.offsets[j], full.offsets[j + 1])
        p = slice(part.offsets[j], part.offsets[j + 1])
        f_rec, p_rec = full.recalled[f], part.recalled[p]
        f_items, p_items = full.item[f][f_rec], part.item[p][p_rec]
        f_click, p_click = full.labels["click"][f][f_rec] > 0, part.labels["click"][p][p_rec] > 0
        np.testing.assert_array_equal(np.sort(p_items[p_click]), np.sort(f_items[f_click]))
        n_neg = int((~f_click).sum())
        assert int((~p_click).sum()) == min(n_neg, rr.neg_per_user)
        seen_any_sample |= n_neg > rr.neg_per_user
        where = {int(i): r for r, i in enumerate(f_items)}
        rows = np.array([where[int(i)] for i in p_items], np.int64)
        assert np.all(np.diff(rows) > 0), "recall order is kept"
        for name in ("sparse", "bag", "dense"):
            np.testing.assert_array_equal(getattr(part, name)[p][p_rec], getattr(full, name)[f][f_rec][rows],
                                          err_msg=name)
        for k in full.labels:
            np.testing.assert_array_equal(part.labels[k][p][p_rec], full.labels[k][f][f_rec][rows])
        rand = part.item[p][~p_rec]
        assert rand.size <= rr.random_neg_per_user
        n_rand += rand.size
        assert not set(rand.tolist()) & set(f_items.tolist())
        np.testing.assert_allclose(part.dense[p][~p_rec][:, 0], np.log1p(config.recall_n))
    assert seen_any_sample and n_rand > 0


def test_rank_variant_with_the_served_model_scores_as_the_rank_row(snapshot):
    """``evaluate_funnel``'s model variants share the rank state's item features and candidate tables and
    swap only the model: the served model as a variant gives exactly the ``rank`` row."""
    from export.evaluation.funnel import evaluate_funnel
    from tools.evaluate import test_truth

    ds, truth = test_truth(snapshot)
    users = np.unique(truth.user)[:40]
    truth = truth.subset(np.isin(truth.user, users))
    served = snapshot.manifest["rank_serving_model"]
    rows = evaluate_funnel(snapshot, ds, truth, rank_variants={"served again": served})["rows"]
    assert rows["served again"] == rows["rank"]
