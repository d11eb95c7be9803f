"""ONNX ranking models: one onnxruntime session per model, checked against the feature schema."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common.rank_features import RankSchema
from common.onnx_session import onnx_session
from common.snapshot import SnapshotError


class RankModel:
    """A multi-task ranking model: ``(sparse, bag[, dense]) -> [n, T]`` task probabilities.

    ``dense`` (the candidate features of ``common.candidate_features``) is fed only to models that
    declare that input; older models and the label-trained DeepFM take sparse and bag alone."""

    def __init__(self, path: Path, schema: RankSchema, task_names: list[str], threads: int):
        self.session = onnx_session(path, threads)
        self.path = path
        self.task_names = list(task_names)
        self._check(schema)
        self.outputs = [o.name for o in self.session.get_outputs()]
        # Outputs named after the tasks are fetched in task order; otherwise in graph order.
        self._fetch = list(self.task_names) if set(self.task_names) <= set(self.outputs) else None

    def _check(self, schema: RankSchema) -> None:
        """Refuse a model whose inputs do not match the schema, naming both sides."""
        expected = {"sparse": len(schema.field_names), "bag": len(schema.bag_names)}
        got = {i.name: i.shape for i in self.session.get_inputs()}
        self.has_dense = "dense" in got
        if self.has_dense:
            expected["dense"] = len(schema.dense_names)
        if set(got) != set(expected):
            raise SnapshotError(f"model {self.path} has inputs {sorted(got)}, the feature schema needs "
                                f"{sorted(expected)}; export the model and snapshot together")
        for name, width in expected.items():
            shape = got[name]
            if len(shape) != 2 or shape[1] != width:
                raise SnapshotError(f"model {self.path} input '{name}' has shape {shape}, the feature schema "
                                    f"needs [batch, {width}] ({name} fields: "
                                    f"{ {'sparse': schema.field_names, 'bag': schema.bag_names, 'dense': schema.dense_names}[name]})")

    def predict(self, sparse: np.ndarray, bag: np.ndarray, dense: np.ndarray | None = None) -> np.ndarray:
        """Task probabilities, float32 [n, T] in ``task_names`` order."""
        feed = {"sparse": sparse, "bag": bag}
        if self.has_dense:
            feed["dense"] = dense
        outs = self.session.run(self._fetch, feed)
        scores = np.stack([np.asarray(o, np.float32).reshape(-1) for o in outs], axis=1)
        return scores[:, : len(self.task_names)]
