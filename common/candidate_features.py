"""Dense ranking features of one user's candidates: what recall said about each candidate, how it relates
to the user's recent history, and how popular it is. Shared by training (``export.ranking.replay``) and the
rank server, so the columns cannot drift between the two.

At serving time rank orders recall's ~1,000 candidates for a user with a recent history; the signal that
separates the items a user takes next from the ones they skip lies mostly in the candidate against that
history (issue 11's measurements: item-to-item similarity to the recent items, next-item transitions from
the last few items, recent popularity), and in which recall channels found the candidate. Id embeddings
alone (the sparse fields of ``common.rank_features``) order recall's candidates worse than recall does.

Columns of the float32 ``dense`` matrix, in order (:func:`dense_names`):

* ``recall_pos``       log1p of the candidate's position in recall's merged list (request order)
* ``recall_score``     recall's merged score divided by the list's best score
* ``ch:<name>``        1 when recall channel ``<name>`` produced the candidate (one per known channel)
* ``itemcf_hist``      log1p(sum over the history of decay^age * ItemCF similarity)
* ``swing_hist``       the same over the Swing table
* ``itemcf_last``      log1p of the ItemCF similarity to the last ``LAST_N`` items (weights 1, 1/2, 1/4)
* ``next_last``        log1p of the next-item transition score from the last ``LAST_N`` items
* ``emb_mean``         cosine of the item vector with the mean of the history's item vectors
* ``emb_max``          the largest cosine with one history item
* ``emb_last``         cosine with the latest history item
* ``pop``              log1p of the item's interaction count in the snapshot's data
* ``recent_pop``       log1p of its count in the data's last ``recent_days`` days
* ``user_activity``    log1p of the number of items the user has interacted with

Per request the work is linear in what it touches: history x top-M table rows, candidates x history
vectors; nothing is O(n_items).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.snapshot import Snapshot, SnapshotError
from kernels.history_similarity import history_similarity
from kernels.i2i_lookup import i2i_lookup
from kernels.i2i_score import check_neighbor_table, recency_weights

HIST_DECAY = 0.9          # recency decay over the history for the *_hist columns
LAST_N = 3                # the "last few items" of itemcf_last / next_last
LAST_WEIGHTS = np.array([0.25, 0.5, 1.0], np.float32)   # oldest .. latest of the last LAST_N
ITEM_STATS_FILE = "item_stats.npz"
NEXT_FILE = "i2i_next.npz"
TABLE_FILES = {"itemcf": "i2i_itemcf.npz", "swing": "i2i_swing.npz", "next": NEXT_FILE}

Csr = tuple[np.ndarray, np.ndarray, np.ndarray]


def dense_names(channels: list[str]) -> list[str]:
    """Column names of the dense matrix for a snapshot whose recall channels are ``channels``."""
    return (["recall_pos", "recall_score"] + [f"ch:{c}" for c in channels]
            + ["itemcf_hist", "swing_hist", "itemcf_last", "next_last", "emb_mean", "emb_max", "emb_last",
               "pop", "recent_pop", "user_activity"])


def channels_of(names: list[str]) -> list[str]:
    """The channel slots of a dense column list (inverse of :func:`dense_names`)."""
    return [n[3:] for n in names if n.startswith("ch:")]


@dataclass
class CandidateTables:
    """The per-snapshot arrays the dense features read, loaded once per snapshot version."""

    item_unit: np.ndarray       # float32 [n_items, d] item vectors scaled to unit length
    itemcf: Csr
    swing: Csr
    next: Csr                   # next-item transitions (export.recall.tables.transition_table)
    pop: np.ndarray             # float32 [n_items] log1p(count)
    recent_pop: np.ndarray      # float32 [n_items] log1p(count in the last recent_days)
    channels: list[str]         # channel slots, in column order

    @property
    def n_items(self) -> int:
        return int(self.item_unit.shape[0])

    @property
    def names(self) -> list[str]:
        return dense_names(self.channels)

    @classmethod
    def load(cls, snapshot: Snapshot, channels: list[str]) -> "CandidateTables":
        """Read and validate the tables of ``snapshot``; SnapshotError naming a bad file."""
        n_items = int(snapshot.schema["n_items"])
        tables = {}
        for key, name in TABLE_FILES.items():
            t = snapshot.load_npz(name)
            try:
                check_neighbor_table(t["indptr"], t["indices"], t["scores"], n_items)
            except (KeyError, ValueError) as exc:
                raise SnapshotError(f"i2i table {snapshot.path / name} is invalid: {exc}") from None
            tables[key] = (t["indptr"].astype(np.int64), t["indices"].astype(np.int32),
                           t["scores"].astype(np.float32))
        stats = snapshot.load_npz(ITEM_STATS_FILE)
        emb = snapshot.load_array("item_emb.npy").astype(np.float32)
        for key in ("count", "recent_count"):
            if key not in stats or stats[key].shape != (n_items,):
                raise SnapshotError(f"{snapshot.path / ITEM_STATS_FILE} needs '{key}' of shape ({n_items},)")
        if emb.shape[0] != n_items:
            raise SnapshotError(f"{snapshot.path / 'item_emb.npy'} has {emb.shape[0]} rows, n_items is {n_items}")
        return cls.build(emb, tables["itemcf"], tables["swing"], tables["next"], stats["count"],
                         stats["recent_count"], channels)

    @classmethod
    def build(cls, item_emb: np.ndarray, itemcf: Csr, swing: Csr, next_table: Csr, count: np.ndarray,
              recent_count: np.ndarray, channels: list[str]) -> "CandidateTables":
        """From arrays in memory (export's replay builds them before any snapshot exists)."""
        emb = np.asarray(item_emb, np.float32)
        unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return cls(np.ascontiguousarray(unit, np.float32), itemcf, swing, next_table,
                   np.log1p(np.asarray(count, np.float64)).astype(np.float32),
                   np.log1p(np.asarray(recent_count, np.float64)).astype(np.float32), list(channels))


def _i2i_at(table: Csr, hist: np.ndarray, weights: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """sum_h weights[h] * sim(hist[h], c) for every candidate c (0 where no history item links to c); weights
    [W, H] give [C, W]."""
    return i2i_lookup(hist, weights, table[0], table[1], table[2], cand)


def candidate_features(tables: CandidateTables, hist_codes: np.ndarray, n_seen: int, cand: np.ndarray,
                       masks: np.ndarray | None = None, channel_names: list[str] | None = None,
                       recall_scores: np.ndarray | None = None) -> np.ndarray:
    """The dense matrix float32 [len(cand), len(tables.names)] for one user.

    ``hist_codes``: the user's recent item codes (dense id + 1, oldest first; 0 = padding).
    ``cand``: dense ids of known items in recall's order. ``masks`` / ``channel_names``: recall's channel
    bits per candidate (None: no recall information, all channel columns 0); ``recall_scores``: recall's
    merged scores (None: 0). Channels recall names that the tables do not know are ignored.
    """
    cand = np.asarray(cand, np.int32)
    n = cand.size
    names = tables.channels
    out = np.zeros((n, 2 + len(names) + 10), np.float32)
    if n == 0:
        return out
    out[:, 0] = np.log1p(np.arange(n, dtype=np.float32))
    if recall_scores is not None and recall_scores.size == n:
        top = float(np.max(recall_scores))
        if top > 0 and np.isfinite(top):
            out[:, 1] = np.clip(recall_scores / top, -1.0, 1.0)
    if masks is not None and channel_names:
        for c, name in enumerate(channel_names[:32]):
            if name in names:
                out[:, 2 + names.index(name)] = (masks >> np.uint32(c)) & np.uint32(1)
    col = 2 + len(names)
    hist = np.asarray(hist_codes, np.int64)
    hist = (hist[hist > 0] - 1).astype(np.int32)
    hist = hist[hist < tables.n_items]
    if hist.size:
        w = recency_weights(hist.size, HIST_DECAY)
        last_w = np.zeros(hist.size, np.float32)
        tail = LAST_WEIGHTS[-min(LAST_N, hist.size):]
        last_w[hist.size - tail.size:] = tail
        # ItemCF once for both weightings (decayed history, last few items): one pass over its rows
        out[:, [col, col + 2]] = np.log1p(_i2i_at(tables.itemcf, hist, np.stack([w, last_w]), cand))
        out[:, col + 1] = np.log1p(_i2i_at(tables.swing, hist, w, cand))
        out[:, col + 3] = np.log1p(_i2i_at(tables.next, hist, last_w, cand))
        out[:, col + 4:col + 7] = history_similarity(tables.item_unit, hist, cand)
    out[:, col + 7] = tables.pop[cand]
    out[:, col + 8] = tables.recent_pop[cand]
    out[:, col + 9] = np.log1p(max(int(n_seen), 0))
    return out
