"""The three-tower pre-rank at serving time (issue 26; ``export.models.prerank.PrerankThreeTower``).

Per request: the user tower once (one row), the cached item vectors of the candidates gathered with one
``np.take``, the cross part over the candidates (``u`` [1, d] broadcast, ``v`` [n, d], ``dense`` [n, D]).
The snapshot describes the model in ``models/prerank_three_tower.json`` (:data:`SPEC_FILE`); a snapshot
without it serves the one-graph pre-rank (``rank_server.model.RankModel``)."""
from __future__ import annotations

import json

import numpy as np

from common.onnx_session import onnx_session
from common.rank_features import RankSchema
from common.snapshot import Snapshot, SnapshotError

SPEC_FILE = "models/prerank_three_tower.json"
USER_FILE = "models/prerank_user.onnx"
CROSS_FILE = "models/prerank_cross.onnx"
ITEMS_FILE = "models/prerank_items.npy"


def has_three_tower(snapshot: Snapshot) -> bool:
    """Whether the snapshot's pre-rank is the three-tower model."""
    return (snapshot.path / SPEC_FILE).exists()


class ThreeTowerPrerank:
    """User tower + cached item vectors + cross part; ``predict`` has :class:`rank_server.model.RankModel`'s
    contract (``sparse``, ``bag``, ``dense`` → [n, T]) and :meth:`scores_for` skips the per-candidate sparse
    rows altogether."""

    def __init__(self, snapshot: Snapshot, schema: RankSchema, task_names: list[str], threads: int,
                 n_items: int):
        spec_path = snapshot.file(SPEC_FILE)
        try:
            spec = json.loads(spec_path.read_text())
            files = {k: spec[k] for k in ("user", "cross", "items")}
            dim = int(spec["dim"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SnapshotError(f"{spec_path} is malformed: {exc}; re-run export") from None
        self.path = spec_path
        self.user = onnx_session(snapshot.file(files["user"]), threads)
        self.cross = onnx_session(snapshot.file(files["cross"]), threads)
        self.items = np.ascontiguousarray(snapshot.load_array(files["items"]), dtype=np.float32)
        if self.items.ndim != 2 or self.items.shape != (n_items, dim):
            raise SnapshotError(f"{snapshot.path / files['items']} has shape {self.items.shape}, the snapshot has "
                                f"{n_items} items and the pre-rank d = {dim}; re-run export")
        self.dim = dim
        self.task_names = list(task_names)
        self.outputs = [o.name for o in self.cross.get_outputs()]
        self._fetch = list(self.task_names) if set(self.task_names) <= set(self.outputs) else None
        user_in = {i.name: i.shape for i in self.user.get_inputs()}
        cross_in = {i.name: i.shape for i in self.cross.get_inputs()}
        self.has_dense = "dense" in cross_in
        want = {"u", "v", "dense"} if self.has_dense else {"u", "v"}
        if set(user_in) != {"sparse"} or user_in["sparse"][1] != schema.n_fields or set(cross_in) != want:
            raise SnapshotError(f"{spec_path}: user tower inputs {user_in} / cross inputs {cross_in} do not match "
                                f"the feature schema ({schema.n_fields} sparse fields); re-run export")
        if self.has_dense and cross_in["dense"][1] != len(schema.dense_names):
            raise SnapshotError(f"{spec_path}: cross part reads {cross_in['dense'][1]} dense columns, the schema "
                                f"has {len(schema.dense_names)}; re-run export")

    def user_vector(self, user_row: np.ndarray) -> np.ndarray:
        """u float32 [1, d] from one assembled ``sparse`` row [1, F] (its item columns are not read)."""
        return self.user.run(None, {"sparse": np.ascontiguousarray(user_row[:1], np.int64)})[0]

    def scores_for(self, user_row: np.ndarray, item_idx: np.ndarray, dense: np.ndarray | None) -> np.ndarray:
        """Task probabilities float32 [n, T] of the candidates ``item_idx`` (known dense ids) for the user
        of ``user_row``."""
        feed = {"u": self.user_vector(user_row), "v": np.take(self.items, item_idx, axis=0)}
        if self.has_dense:
            feed["dense"] = np.ascontiguousarray(dense, np.float32)
        outs = self.cross.run(self._fetch, feed)
        scores = np.stack([np.asarray(o, np.float32).reshape(-1) for o in outs], axis=1)
        return scores[:, : len(self.task_names)]

    def predict(self, sparse: np.ndarray, bag: np.ndarray, dense: np.ndarray | None = None) -> np.ndarray:
        """As ``RankModel.predict``: rows of one request (column 1 holds the item code, dense id + 1)."""
        return self.scores_for(sparse[:1], np.asarray(sparse[:, 1], np.int64) - 1, dense)
