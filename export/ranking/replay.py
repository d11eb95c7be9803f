"""Replay of serving at a cut point: the ranker's training and validation data (issue 11).

At serving, rank orders recall's ~1,000 candidates for a user with a recent history. So the ranker learns
from exactly that: at a cut, recall runs for every user from the artifacts of the log *before* the cut
(``export.recall.build``, so no recall score has seen a label), its candidates get the serving features
(``rank_server.features.rank_inputs`` and ``common.candidate_features``), and the user's interactions
after the cut label them. Training samples all recalled positives, ``neg_per_user`` of the candidates the
user did not take (hard negatives) and ``random_neg_per_user`` random unseen items (so the model also
meets items recall would not have brought); validation keeps every candidate, in recall's order, to score
whole lists.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.candidate_features import CandidateTables, candidate_features
from common.rank_features import RankSchema
from common.snapshot import Snapshot
from export.data.dataset import Dataset, Interactions
from export.evaluation.recall import truth_subset, truth_users
from rank_server.features import ItemFeatures, rank_inputs
from recall_server.config import RecallConfig
from recall_server.recall import recall
from recall_server.state import load_state


@dataclass
class ReplayConfig:
    """How the ranker's examples are drawn (``[rank_replay]`` in the export config)."""

    label_frac: float = 0.15       # training cut: the latest share of each user's training rows are labels
    neg_per_user: int = 100        # hard negatives per user: recalled candidates the user did not take
    random_neg_per_user: int = 10  # random items the user has not seen, outside recall's list
    like_threshold: float = 4.0
    max_rating: float = 5.0
    max_users: int = 0             # training cut: replay a seeded sample of this many users (0: all)
    # the validation cut's recall reuses the training cut's two-tower (one training less; its histories
    # still come from the whole training part); true: train another on the training part
    retrain_two_tower: bool = False
    seed: int = 0

    def validate(self) -> None:
        if not 0.0 < self.label_frac < 1.0:
            raise ValueError(f"rank_replay.label_frac must be in (0, 1), got {self.label_frac}")
        if self.neg_per_user < 1 or self.random_neg_per_user < 0:
            raise ValueError("rank_replay.neg_per_user must be >= 1 and random_neg_per_user >= 0")


@dataclass
class Replay:
    """Per labelled user, recall's candidates (recall order) then the random negatives, as model inputs.

    Rows of user ``users[j]`` are ``offsets[j]:offsets[j + 1]``; ``recalled`` marks recall's rows.
    """

    users: np.ndarray          # int64 [U] dense user ids
    offsets: np.ndarray        # int64 [U + 1]
    item: np.ndarray           # int32 [R]
    recalled: np.ndarray       # bool [R]
    sparse: np.ndarray         # int64 [R, F]
    bag: np.ndarray            # float32 [R, G]
    dense: np.ndarray          # float32 [R, D]
    labels: dict[str, np.ndarray]   # click / like / rating / mask, float32 [R]
    truth_indptr: np.ndarray   # CSR over the U users: every label item (recalled or not)
    truth_items: np.ndarray
    timestamp: np.ndarray      # int64 [U]: the user's first label time (the request's context)

    @property
    def n_rows(self) -> int:
        return int(self.item.size)

    def sample(self, cfg: ReplayConfig, seed: int) -> np.ndarray:
        """Row indices of a training sample: every recalled positive, ``neg_per_user`` recalled negatives
        drawn uniformly, every random negative."""
        rng = np.random.default_rng(seed)
        click = self.labels["click"] > 0
        keep = (click & self.recalled) | ~self.recalled
        hard = np.flatnonzero(self.recalled & ~click)
        owner = np.searchsorted(self.offsets, hard, side="right") - 1
        # a random key per row, then the neg_per_user smallest per user: uniform without replacement
        order = np.lexsort((rng.random(hard.size), owner))
        hard, owner = hard[order], owner[order]
        starts = np.searchsorted(owner, np.arange(self.users.size))
        pos = np.arange(hard.size) - starts[owner]
        keep[hard[pos < cfg.neg_per_user]] = True
        return np.flatnonzero(keep)

    def subset(self, n_users: int, seed: int = 0) -> "Replay":
        """A seeded sample of ``n_users`` users (all their rows); ``self`` when it has no more."""
        if n_users <= 0 or self.users.size <= n_users:
            return self
        pick = np.sort(np.random.default_rng(seed).choice(self.users.size, n_users, replace=False))
        sizes = np.diff(self.offsets)[pick]
        rows = np.concatenate([np.arange(self.offsets[j], self.offsets[j + 1]) for j in pick])
        t_sizes = np.diff(self.truth_indptr)[pick]
        t_rows = np.concatenate([np.arange(self.truth_indptr[j], self.truth_indptr[j + 1]) for j in pick])
        return Replay(self.users[pick], np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), self.item[rows],
                      self.recalled[rows], self.sparse[rows], self.bag[rows], self.dense[rows],
                      {k: v[rows] for k, v in self.labels.items()},
                      np.concatenate([[0], np.cumsum(t_sizes)]).astype(np.int64), self.truth_items[t_rows],
                      self.timestamp[pick])

    def lists(self, scores: np.ndarray, k: int) -> np.ndarray:
        """Per user, the recalled items ordered by ``scores`` [R] (descending; ties keep recall order), the
        first ``k``, padded with -1: int64 [U, k]."""
        return order_lists(self.offsets, self.recalled, self.item, scores, k)


def order_lists(offsets: np.ndarray, recalled: np.ndarray, item: np.ndarray, scores: np.ndarray,
                k: int) -> np.ndarray:
    """See :meth:`Replay.lists`; rows not ``recalled`` never enter a list."""
    n_users = offsets.size - 1
    sizes = np.diff(offsets)
    width = int(sizes.max(initial=0))
    owner = np.repeat(np.arange(n_users), sizes)
    col = np.arange(offsets[-1]) - offsets[owner]
    grid = np.full((n_users, max(width, 1)), -np.inf)
    ids = np.full((n_users, max(width, 1)), -1, np.int64)
    r = np.flatnonzero(recalled)
    grid[owner[r], col[r]] = np.nan_to_num(np.asarray(scores, np.float64)[r], nan=-1e300)
    ids[owner[r], col[r]] = item[r]
    order = np.argsort(-grid, axis=1, kind="stable")[:, :k]
    out = np.take_along_axis(ids, order, axis=1)
    out[np.take_along_axis(grid, order, axis=1) == -np.inf] = -1
    if out.shape[1] < k:
        out = np.pad(out, ((0, 0), (0, k - out.shape[1])), constant_values=-1)
    return out


def replay(snapshot_dir: Path, ds: Dataset, labels: Interactions, schema: RankSchema, recall_n: int,
           cfg: ReplayConfig, recall_config: RecallConfig | None = None, seed: int = 0,
           max_users: int = 0, training_sample: bool = False) -> Replay:
    """Run recall for every user with rows in ``labels`` against the artifacts in ``snapshot_dir`` (built
    from the log before the cut) and assemble the ranker's inputs; see the module docstring.

    ``max_users`` > 0 replays a seeded sample of that many users (large synthetic catalogues).
    ``training_sample``: keep, per user as it is replayed, only the rows :meth:`Replay.sample` would keep
    (every recalled positive, ``neg_per_user`` recalled negatives drawn uniformly, the random negatives), so
    memory grows with the sample (~110 rows a user) and not with recall's ~1,000 candidates (a 10^6-item
    export's training cut held 10^8 rows and was killed at 24 GB). ``sample`` of the result keeps every row.
    """
    snapshot = Snapshot.open(snapshot_dir, verify=False)
    try:
        rcfg = recall_config or RecallConfig(snapshot=str(snapshot_dir))
        state = load_state(snapshot, rcfg)
        tables = CandidateTables.load(snapshot, list(rcfg.channels))
        if tables.names != schema.dense_names:
            raise ValueError(f"replay: candidate features {tables.names} differ from the schema's "
                             f"{schema.dense_names}")
        items = ItemFeatures(ds.item_cat.reshape(ds.n_items, -1).astype(np.int32),
                             ds.item_bag.reshape(ds.n_items, -1).astype(np.uint8))
        n_user_fields = len(ds.user_cat_names)
        indptr, truth, users, first_ts = truth_users(labels, ds.n_users, max_users, seed)
        # label values per (user, item): the best rating when an item was rated twice
        key = labels.user.astype(np.int64) * ds.n_items + labels.item
        order = np.lexsort((labels.rating, key))
        lab_key = key[order]
        last = np.r_[lab_key[1:] != lab_key[:-1], True]
        lab_key, lab_rating = lab_key[last], labels.rating[order][last].astype(np.float32)
        rng = np.random.default_rng(seed)

        parts: dict[str, list] = {k: [] for k in ("item", "recalled", "sparse", "bag", "dense")}
        sizes = []
        for u in users.tolist():   # offline, once per user: the serving functions are per request
            user_id = str(ds.user_ids[u])
            res = recall(state, rcfg, user_id, recall_n)
            record = snapshot.features.user(user_id)
            hist = record.hist if record is not None else np.empty(0, np.int32)
            n_seen = record.seen.size if record is not None else 0
            dense = candidate_features(tables, hist, n_seen, res.ids, res.channel_masks, res.channel_names,
                                       res.scores)
            ids = res.ids.astype(np.int32)
            if training_sample:   # recall order kept: the positives and a uniform draw of the negatives
                row_key = np.int64(u) * ds.n_items + ids
                pos = np.minimum(np.searchsorted(lab_key, row_key), max(lab_key.size - 1, 0))
                clicked = (lab_key[pos] == row_key) if lab_key.size else np.zeros(ids.size, bool)
                neg = np.flatnonzero(~clicked)
                if neg.size > cfg.neg_per_user:
                    clicked[rng.choice(neg, cfg.neg_per_user, replace=False)] = True
                    keep = np.flatnonzero(clicked)
                    ids, dense = ids[keep], dense[keep]
            rand = _random_unseen(rng, ds.n_items, cfg.random_neg_per_user,
                                  np.concatenate([res.ids.astype(np.int32),
                                                  record.seen if record is not None else ids[:0],
                                                  truth[indptr[u]:indptr[u + 1]].astype(np.int32)]))
            if rand.size:
                extra = candidate_features(tables, hist, n_seen, rand)
                extra[:, 0] = np.log1p(recall_n)   # "beyond recall's list": never a served position
                dense = np.concatenate([dense, extra])
            all_ids = np.concatenate([ids, rand])
            sparse, bag = rank_inputs(schema, items, record, n_user_fields, all_ids, int(first_ts[u]))
            parts["item"].append(all_ids)
            parts["recalled"].append(np.r_[np.ones(ids.size, bool), np.zeros(rand.size, bool)])
            parts["sparse"].append(sparse)
            parts["bag"].append(bag)
            parts["dense"].append(dense)
            sizes.append(all_ids.size)
    finally:
        snapshot.close()

    item = np.concatenate(parts["item"]) if sizes else np.empty(0, np.int32)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    owner = np.repeat(users, sizes)
    row_key = owner.astype(np.int64) * ds.n_items + item
    pos = np.minimum(np.searchsorted(lab_key, row_key), max(lab_key.size - 1, 0))
    hit = (lab_key[pos] == row_key) if lab_key.size else np.zeros(item.size, bool)
    rating = np.where(hit, lab_rating[pos] if lab_key.size else 0.0, 0.0).astype(np.float32)
    click = hit.astype(np.float32)
    sub_indptr, sub_truth = truth_subset(indptr, truth, users)
    n_dense = len(schema.dense_names)
    return Replay(
        users=users.astype(np.int64), offsets=offsets, item=item.astype(np.int32),
        recalled=np.concatenate(parts["recalled"]) if sizes else np.empty(0, bool),
        sparse=np.concatenate(parts["sparse"]) if sizes else np.empty((0, schema.n_fields), np.int64),
        bag=np.concatenate(parts["bag"]) if sizes else np.empty((0, schema.n_bag), np.float32),
        dense=np.concatenate(parts["dense"]) if sizes else np.empty((0, n_dense), np.float32),
        labels={"click": click, "like": (click * (rating >= cfg.like_threshold)).astype(np.float32),
                "rating": np.clip(rating / cfg.max_rating, 0, 1).astype(np.float32), "mask": click.copy()},
        truth_indptr=sub_indptr, truth_items=sub_truth.astype(np.int64),
        timestamp=first_ts[users].astype(np.int64))


def _random_unseen(rng: np.random.Generator, n_items: int, n: int, banned: np.ndarray) -> np.ndarray:
    """Up to ``n`` distinct items outside ``banned``, uniformly (a few rejection rounds)."""
    if n <= 0:
        return np.empty(0, np.int32)
    banned = np.unique(banned)
    got = np.empty(0, np.int32)
    for _ in range(5):
        draw = rng.integers(0, n_items, size=2 * n).astype(np.int32)
        draw = draw[~np.isin(draw, banned)]
        got = np.unique(np.concatenate([got, draw]))
        if got.size >= n:
            break
    return rng.permutation(got)[:n].astype(np.int32)


def examples(rep: Replay, rows: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray, dict], np.ndarray]:
    """``((sparse, bag, labels), dense)`` of ``rows``: the form ``export.models.mmoe.train_mmoe`` takes."""
    return (rep.sparse[rows], rep.bag[rows], {k: v[rows] for k, v in rep.labels.items()}), rep.dense[rows]


def concat_examples(*parts):
    """Row-wise concatenation of several :func:`examples` results."""
    sparse = np.concatenate([p[0][0] for p in parts])
    bag = np.concatenate([p[0][1] for p in parts])
    labels = {k: np.concatenate([p[0][2][k] for p in parts]) for k in parts[0][0][2]}
    dense = np.concatenate([p[1] for p in parts])
    return (sparse, bag, labels), dense
