"""Feature assembly for the ranking models: one batch per request from the snapshot's arrays."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from common.candidate_features import CandidateTables, candidate_features, channels_of
from common.feature_store import UserRecord
from common.rank_features import RankSchema, assemble, context_codes
from common.sequence_features import SequenceScorer, split_dense_names
from common.snapshot import Snapshot, SnapshotError


@dataclass
class ItemFeatures:
    """Item feature matrices indexed by dense id, held in memory."""

    cat: np.ndarray   # int32 [n_items, F_item]
    bag: np.ndarray   # uint8 [n_items, G]

    @classmethod
    def load(cls, snapshot: Snapshot) -> "ItemFeatures":
        return cls(snapshot.features.array("item_cat").astype(np.int32),
                   snapshot.features.array("item_bag").astype(np.uint8))

    @property
    def n_items(self) -> int:
        return int(self.cat.shape[0])


def rank_inputs(schema: RankSchema, items: ItemFeatures, user: UserRecord | None, n_user_fields: int,
                item_idx: np.ndarray, timestamp: int) -> tuple[np.ndarray, np.ndarray]:
    """The model inputs ``(sparse, bag)`` for one user against ``item_idx`` (all known ids)."""
    hour, weekday = context_codes(int(timestamp) if timestamp > 0 else int(time.time()))
    user_code = user.dense_id + 1 if user is not None else 0
    user_cat = user.cat if user is not None else np.zeros(n_user_fields, np.int32)
    return assemble(schema, user_code, user_cat, item_idx.astype(np.int64) + 1, items.cat[item_idx],
                    items.bag[item_idx], hour, weekday)


def load_dense(snapshot: Snapshot, schema: RankSchema, threads: int = 1
               ) -> tuple[CandidateTables | None, SequenceScorer | None]:
    """What the schema's dense columns need of ``snapshot``: the candidate tables (``common.candidate_features``)
    and, when the columns end with ``seq_score``, the sequence encoder (``common.sequence_features``);
    ``(None, None)`` for a schema without dense columns. SnapshotError when the snapshot's files do not give
    exactly the schema's columns."""
    if not schema.dense_names:
        return None, None
    names, with_sequence = split_dense_names(schema.dense_names)
    tables = CandidateTables.load(snapshot, channels_of(names))
    if tables.names != names:
        raise SnapshotError(f"{snapshot.path}: rank schema dense_names {schema.dense_names} do not match "
                            f"this build's candidate features {tables.names}; re-run export")
    sequence = SequenceScorer.load(snapshot, threads) if with_sequence else None
    if sequence is not None and sequence.n_items != tables.n_items:
        raise SnapshotError(f"{snapshot.path}: the sequence encoder knows {sequence.n_items} items, the candidate "
                            f"tables {tables.n_items}; re-run export")
    return tables, sequence


def dense_features(tables: CandidateTables, sequence: SequenceScorer | None, hist: np.ndarray, n_seen: int,
                   cand: np.ndarray, masks: np.ndarray | None = None, channel_names: list[str] | None = None,
                   recall_scores: np.ndarray | None = None) -> np.ndarray:
    """The dense matrix of one request in the schema's column order: the candidate features, then the
    sequence score when the snapshot serves one (its history encoded once for all candidates)."""
    dense = candidate_features(tables, hist, n_seen, cand, masks, channel_names, recall_scores)
    return sequence.append(dense, hist, cand) if sequence is not None else dense
