"""export.recall.merge_fit: the fast recall@K against export.evaluation.metrics, and the merge search on a toy catalogue."""
import numpy as np

from export.evaluation.metrics import recall_at_k
from export.recall.merge_fit import ChannelLists, TruthHits, merged_predictions, search_merge
from recall_server.config import RecallConfig


def test_truth_hits_equals_recall_at_k():
    rng = np.random.default_rng(0)
    users = 200
    indptr = np.r_[0, np.cumsum(rng.integers(0, 6, users))]
    items = rng.integers(0, 400, indptr[-1])          # repeats within a user count once, as in recall_at_k
    pred = np.full((users, 60), -1, np.int64)
    for u in range(users):                            # distinct ids, some past every truth item, -1 padded
        got = rng.permutation(900)[:rng.integers(0, 61)]
        pred[u, :got.size] = got
    ks = [1, 10, 50, 60]
    assert TruthHits(indptr, items, ks)(pred) == {k: recall_at_k(pred, indptr, items, k) for k in ks}


def _toy(users: int, n: int):
    """Two channels: 'a' puts one truth item first, 'b' the other one at rank 0, 1 or 2; the rest of each
    list is noise. Alone, 'a' is the best channel at K = 1 and each finds half the truth at K = 20; a merge
    that puts a's first item first finds all of it."""
    rng = np.random.default_rng(1)
    ids, offsets, truth = [], [], []
    total = 0
    for u in range(users):
        t1, t2 = 1000 + 2 * u, 1001 + 2 * u
        a = np.r_[t1, rng.choice(500, n - 1, replace=False)]
        b = rng.choice(np.arange(500, 1000), n, replace=False)
        b[u % 3] = t2
        ids += [a, b]
        offsets.append([total, total + n, total + 2 * n])
        total += 2 * n
        truth.append([t1, t2])
    lists = ChannelLists(np.concatenate(ids).astype(np.int32), np.tile(np.linspace(1, 0, n, dtype=np.float32),
                         2 * users), np.asarray(offsets, np.int64), np.zeros(0, np.int32),
                         np.zeros(users + 1, np.int64))
    return lists, (np.arange(0, 2 * users + 1, 2), np.asarray(truth).ravel())


def test_search_merge_reaches_the_best_channel_at_every_k():
    n, ks = 40, [1, 20]
    lists, truth = _toy(50, n)
    config = RecallConfig(channels=["a", "b"], quotas={"a": 40, "b": 40}, weights={"a": 1.0, "b": 1.0},
                          use_fitted=False)
    fit = search_merge(lists, truth, config, n, ks)
    assert fit["channels"]["a"]["recall@1"] == 0.5 and fit["channels"]["b"]["recall@20"] == 0.5
    assert fit["channels"]["b"]["recall@1"] < 0.5
    chosen = TruthHits(*truth, ks)(merged_predictions(lists, ["a", "b"], fit["quotas"], fit["weights"], n, config))
    assert chosen[1] == 0.5 and chosen[20] == 1.0            # a's first item first, b's finds within 20
    assert fit["curve"][0]["recall@1"] < 0.5                 # at equal weights b's first item wins the tie
    last = fit["curve"][-1]
    assert (last["min_ratio"], last["mean_ratio"]) == (1.0, 1.5)   # capped at 1; K = 20 is at 2x the best
    assert (last["recall@1"], last["recall@20"]) == (chosen[1], chosen[20])
