"""The user-sequence encoder and its rank feature (issue 30): training, torch-vs-ONNX parity, the served column
(encoded once per request, the same as export's replay computes), and refusals."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from common.rank_features import RankSchema
from common.onnx_session import onnx_session
from common.sequence_features import (
    SEQ_COLUMN,
    SEQUENCE_FILE,
    SEQUENCE_ITEMS_FILE,
    SequenceScorer,
    split_dense_names,
    window,
)
from common.snapshot import Snapshot, SnapshotError
from export.models.sequence import (
    SequenceConfig,
    SequenceEncoder,
    export_sequence,
    item_vectors,
    next_item_ndcg,
    train_sequence,
    user_states,
)
from export.models.fit import SparseEmbeddingConfig
from tests.test_models import _synthetic_dataset

torch.set_num_threads(1)
HL = 6


@pytest.fixture(scope="module")
def ds():
    return _synthetic_dataset()


@pytest.fixture(scope="module", params=["gru", "sasrec"])
def trained(request, ds):
    cfg = SequenceConfig(kind=request.param, dim=16, history_len=HL, epochs=3, batch_size=64, lr=1e-2, dropout=0.0)
    return train_sequence(ds.n_items, ds.interactions, ds.n_users, cfg)


def _scorer(model, tmp_path) -> SequenceScorer:
    export_sequence(model, tmp_path)
    return SequenceScorer(onnx_session(tmp_path / SEQUENCE_FILE, 1), np.load(tmp_path / SEQUENCE_ITEMS_FILE), HL)


def _histories(n_items: int, n: int, seed: int = 0) -> np.ndarray:
    """Left-padded code windows, one empty, one full, the rest of random lengths."""
    rng = np.random.default_rng(seed)
    hist = np.zeros((n, HL), np.int64)
    for r in range(n):
        length = HL if r == 1 else (0 if r == 0 else int(rng.integers(1, HL + 1)))
        if length:
            hist[r, HL - length:] = rng.integers(1, n_items + 1, length)
    return hist


def test_training_lowers_the_loss_and_beats_chance(trained, ds):
    model, log = trained
    assert log["epoch_loss"][-1] < log["epoch_loss"][0] and log["softmax"] == "full"
    # a third of the log as truth, the rest as history: the encoder orders the catalogue better than chance
    cut = len(ds.interactions) * 2 // 3
    hist, truth = (ds.interactions.subset(np.arange(len(ds.interactions)) < cut),
                   ds.interactions.subset(np.arange(len(ds.interactions)) >= cut))
    assert np.nanmean(next_item_ndcg(model, hist, truth, ds.n_users, HL)) > 0.0


def test_next_item_ndcg_in_blocks_and_on_a_sample_equals_the_whole_matrix(trained, ds):
    """The blocked scoring (a 10^6-item catalogue cannot hold every user's scores at once) against the whole
    score matrix in numpy, and a sample's values against the same users' rows of the whole."""
    from export.evaluation.metrics import ndcg_per_user
    from export.models.sequence import item_vectors, last_n, user_states

    model, _ = trained
    cut = len(ds.interactions) * 2 // 3
    index = np.arange(len(ds.interactions))
    hist, truth = ds.interactions.subset(index < cut), ds.interactions.subset(index >= cut)
    users = np.unique(truth.user)
    scores = user_states(model, last_n(hist, ds.n_users, HL)[users]) @ item_vectors(model).T
    row_of = {int(u): j for j, u in enumerate(users)}
    for u, i in zip(hist.user, hist.item):
        if int(u) in row_of:
            scores[row_of[int(u)], i] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    order = np.argsort(truth.user, kind="stable")
    t_user, t_item = truth.user[order], truth.item[order].astype(np.int64)
    indptr = np.r_[np.searchsorted(t_user, users), t_user.size].astype(np.int64)
    reference = ndcg_per_user(top, indptr, t_item, 10)
    blocked = next_item_ndcg(model, hist, truth, ds.n_users, HL, block_cells=3 * ds.n_items)   # 3 users a block
    np.testing.assert_allclose(blocked, reference, rtol=1e-6)
    sample = next_item_ndcg(model, hist, truth, ds.n_users, HL, max_users=7, seed=3, block_cells=1)
    picked = np.sort(np.random.default_rng(3).choice(users, 7, replace=False))
    np.testing.assert_allclose(sample, reference[np.searchsorted(users, picked)], rtol=1e-6)


def test_sampled_softmax_trains(ds):
    cfg = SequenceConfig(kind="gru", dim=8, history_len=HL, epochs=2, batch_size=64, full_softmax_max_items=10,
                         negatives=16)
    _, log = train_sequence(ds.n_items, ds.interactions, ds.n_users, cfg)
    assert log["softmax"] == "sampled (16)" and np.isfinite(log["epoch_loss"]).all()


@pytest.mark.parametrize("full_max", [10, 10**6], ids=["sampled", "full"])
def test_sparse_item_table_trains(ds, full_max):
    """A catalogue past ``sparse.min_rows`` trains its item table with sparse gradients (SparseAdam): the output
    side must read the table through the embedding, not index its weight (a dense gradient, which SparseAdam
    refuses; a 10^5-item synthetic export died on it)."""
    cfg = SequenceConfig(kind="gru", dim=8, history_len=HL, epochs=2, batch_size=64, full_softmax_max_items=full_max,
                         negatives=16, sparse=SparseEmbeddingConfig(min_rows=1))
    model, log = train_sequence(ds.n_items, ds.interactions, ds.n_users, cfg)
    assert model.item_emb.sparse and np.isfinite(log["epoch_loss"]).all()
    assert log["epoch_loss"][-1] < log["epoch_loss"][0]


def test_onnx_states_and_scores_match_torch(trained, ds, tmp_path):
    """Parity: one history at a time (serving) and in batches (export's replays), padding and full windows."""
    model, _ = trained
    scorer = _scorer(model, tmp_path)
    hist = _histories(ds.n_items, 40)
    want = user_states(model, hist)
    np.testing.assert_allclose(scorer.states(hist), want, atol=1e-5)
    vecs = item_vectors(model)
    cand = np.arange(ds.n_items)[::-1]
    for r in (0, 1, 5):
        np.testing.assert_allclose(scorer.state(hist[r]), want[r], atol=1e-5)
        np.testing.assert_allclose(scorer.column(hist[r], cand)[:, 0], vecs[cand] @ want[r], atol=1e-4)


def test_window_keeps_the_latest_items_left_padded():
    assert window(np.array([0, 0, 3, 4]), 3).tolist() == [[0, 3, 4]]
    assert window(np.array([1, 2, 3, 4, 5]), 3).tolist() == [[3, 4, 5]]
    assert window(np.empty(0, np.int32), 2).tolist() == [[0, 0]]


def test_sequence_column_is_last_or_refused():
    assert split_dense_names(["a", "b", SEQ_COLUMN]) == (["a", "b"], True)
    assert split_dense_names(["a", "b"]) == (["a", "b"], False)
    with pytest.raises(SnapshotError, match="last column"):
        split_dense_names([SEQ_COLUMN, "a"])


def test_replay_column_equals_the_served_column(trained, ds, tmp_path):
    """Training and serving compute the same feature: export's batched replay column against one request at a
    time through the served scorer."""
    from export.ranking.replay import Replay
    from export.ranking.sequence import replay_column

    model, _ = trained
    scorer = _scorer(model, tmp_path)
    history = _histories(ds.n_items, ds.n_users, seed=3)
    rng = np.random.default_rng(1)
    users = np.array([4, 0, 7, 1])
    sizes = np.array([5, 3, 0, 9])
    item = rng.integers(0, ds.n_items, sizes.sum()).astype(np.int32)
    rep = Replay(users, np.r_[0, np.cumsum(sizes)], item, np.ones(item.size, bool), None, None, None, {},
                 np.zeros(users.size + 1, np.int64), np.empty(0, np.int64), np.zeros(users.size, np.int64))
    got = replay_column(rep, scorer, history)
    want = np.concatenate([scorer.column(history[u], item[rep.offsets[j]:rep.offsets[j + 1]])
                           for j, u in enumerate(users)])
    np.testing.assert_allclose(got, want, atol=1e-5)


# ---- the rank server on a snapshot with the sequence column


def _with_sequence(snapshot, tmp_path):
    """A copy of the session snapshot serving ``seq_score``: a fresh GRU encoder and an untrained MMoE that
    reads one more dense column (the rank server reads the model named in its config)."""
    from export.models.mmoe import MMoE, MMoEConfig, export_mmoe_onnx

    path = tmp_path / "snap"
    shutil.copytree(snapshot.path, path)
    manifest = json.loads((path / "manifest.json").read_text())
    names, _ = split_dense_names(manifest["schema"]["rank"]["dense_names"])
    hl = int(manifest["schema"]["history_len"])
    torch.manual_seed(0)
    enc = SequenceEncoder(int(manifest["schema"]["n_items"]), SequenceConfig(kind="gru", dim=8, history_len=hl)).eval()
    export_sequence(enc, path)
    manifest["schema"]["rank"]["dense_names"] = [*names, SEQ_COLUMN]
    schema = RankSchema.from_dict(manifest["schema"]["rank"])
    export_mmoe_onnx(MMoE(schema, MMoEConfig(), n_dense=len(schema.dense_names)), str(path / "models/seq_rank.onnx"),
                     schema.n_fields, schema.n_bag)
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path, enc


def test_rank_serves_the_sequence_score_encoded_once_per_request(snapshot, tmp_path):
    from rank_server.config import RankConfig
    from rank_server.rank import load_state, rank

    path, enc = _with_sequence(snapshot, tmp_path)
    snap = Snapshot.open(path, verify=False)
    try:
        state = load_state(snap, RankConfig(snapshot=str(path), model="models/seq_rank.onnx", prerank_model="",
                                            order="model"))
        assert state.sequence is not None and state.sequence.history_len == int(snap.schema["history_len"])
        runs, fed = [], {}

        class _Counting:
            def __init__(self, session):
                self.session = session

            def run(self, *args, **kwargs):
                runs.append(1)
                return self.session.run(*args, **kwargs)

        state.sequence.session = _Counting(state.sequence.session)
        predict = state.model.predict

        def spy(sparse, bag, dense=None):
            fed["dense"] = dense
            return predict(sparse, bag, dense)

        state.model.predict = spy
        ids = snap.features.array("user_ids")
        user_id = next(str(u) for u in ids[:50] if snap.features.user(str(u)).hist.size >= 3)
        user = snap.features.user(user_id)
        cand = np.arange(0, 300, 3, dtype=np.int32)
        res = rank(state, RankConfig(snapshot=str(path)), user_id, cand, 10**9)
        assert res.item_idx.size == cand.size and len(runs) == 1           # one encoding for 100 candidates
        dense = fed["dense"]
        assert dense.shape == (cand.size, len(state.schema.dense_names))
        hist = window(user.hist, state.sequence.history_len)
        want = item_vectors(enc)[cand] @ user_states(enc, hist)[0]         # torch: the served column's parity
        np.testing.assert_allclose(dense[:, -1], want, atol=1e-5)
        # the other columns are the candidate features as before
        from common.candidate_features import candidate_features

        np.testing.assert_allclose(dense[:, :-1], candidate_features(state.tables, user.hist, user.seen.size, cand),
                                   atol=1e-6)
    finally:
        snap.close()


def test_dense_features_read_the_real_time_history(snapshot, tmp_path):
    """A click newer than the snapshot (appended to the history, as ``feedback.realtime.history_codes`` does)
    moves the sequence score: the state is encoded from the history the request sees."""
    from rank_server.features import dense_features, load_dense

    path, enc = _with_sequence(snapshot, tmp_path)
    snap = Snapshot.open(path, verify=False)
    try:
        tables, seq = load_dense(snap, RankSchema.from_dict(snap.schema["rank"]))
        hist = np.array([5, 9, 12], np.int32)
        cand = np.arange(20, dtype=np.int32)
        before = dense_features(tables, seq, hist, 3, cand)
        after = dense_features(tables, seq, np.r_[hist, 40].astype(np.int32), 4, cand)
        np.testing.assert_allclose(after[:, -1], seq.column(np.r_[hist, 40], cand)[:, 0], atol=1e-6)
        assert not np.allclose(before[:, -1], after[:, -1])
    finally:
        snap.close()


def test_rank_server_refuses_a_schema_with_the_column_but_no_encoder(snapshot, tmp_path):
    from rank_server.config import RankConfig
    from rank_server.rank import load_state

    path, _ = _with_sequence(snapshot, tmp_path)
    (path / SEQUENCE_FILE).unlink()
    snap = Snapshot.open(path, verify=False)
    try:
        with pytest.raises(SnapshotError, match="sequence.onnx"):
            load_state(snap, RankConfig(snapshot=str(path), model="models/seq_rank.onnx", prerank_model="",
                                        order="model"))
    finally:
        snap.close()


def test_rank_server_refuses_item_vectors_of_another_catalogue(snapshot, tmp_path):
    from rank_server.config import RankConfig
    from rank_server.rank import load_state

    path, _ = _with_sequence(snapshot, tmp_path)
    np.save(path / SEQUENCE_ITEMS_FILE, np.zeros((3, 8), np.float32))
    snap = Snapshot.open(path, verify=False)
    try:
        with pytest.raises(SnapshotError, match=SEQUENCE_ITEMS_FILE):
            load_state(snap, RankConfig(snapshot=str(path), model="models/seq_rank.onnx", prerank_model="",
                                        order="model"))
    finally:
        snap.close()


def test_config_refuses_unknown_kind():
    with pytest.raises(ValueError, match="sequence.kind"):
        SequenceConfig(kind="lstm").validate()
    with pytest.raises(ValueError, match="heads must divide dim"):
        dataclasses.replace(SequenceConfig(), kind="sasrec", dim=10, heads=3).validate()
