"""What the recall server holds in memory for one snapshot version."""
from __future__ import annotations

from dataclasses import dataclass

import hnswlib
import numpy as np
import onnxruntime as ort

from common.snapshot import Snapshot, SnapshotError
from kernels.i2i_score import check_neighbor_table
from recall_server.config import RecallConfig


@dataclass
class RecallState:
    """Artifacts of one snapshot, loaded once and shared by all requests."""

    snapshot: Snapshot
    index: hnswlib.Index
    user_tower: ort.InferenceSession
    itemcf: tuple[np.ndarray, np.ndarray, np.ndarray]   # CSR indptr, indices, scores
    popular: np.ndarray                                  # int32 dense ids, most popular first
    history_len: int
    n_user_fields: int

    @property
    def n_items(self) -> int:
        return int(self.snapshot.item_ids.shape[0])


def onnx_session(path, threads: int) -> ort.InferenceSession:
    """An onnxruntime CPU session with a fixed thread count (workers must not oversubscribe cores)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise SnapshotError(f"model {path} cannot be loaded: {exc}") from None


def load_state(snapshot: Snapshot, config: RecallConfig) -> RecallState:
    """Load the HNSW index, the user tower and the i2i tables of ``snapshot``."""
    schema = snapshot.schema
    dim = int(schema["embedding_dim"])
    index = hnswlib.Index(space="ip", dim=dim)
    path = snapshot.file("items.hnsw")
    try:
        index.load_index(str(path), max_elements=int(schema["n_items"]))
    except RuntimeError as exc:
        raise SnapshotError(f"HNSW index {path} cannot be loaded: {exc}") from None
    if index.get_current_count() != int(schema["n_items"]):
        raise SnapshotError(f"HNSW index {path} holds {index.get_current_count()} items, "
                            f"the manifest says {schema['n_items']}; re-run export")
    index.set_ef(config.hnsw_ef)
    index.set_num_threads(1)
    cf = snapshot.load_npz("i2i_itemcf.npz")
    try:
        check_neighbor_table(cf["indptr"], cf["indices"], cf["scores"], int(schema["n_items"]))
    except (KeyError, ValueError) as exc:
        raise SnapshotError(f"i2i table {snapshot.path / 'i2i_itemcf.npz'} is invalid: {exc}") from None
    popular = snapshot.load_array("popular.npy").astype(np.int32)
    return RecallState(
        snapshot=snapshot,
        index=index,
        user_tower=onnx_session(snapshot.file("models/user_tower.onnx"), config.onnx_threads),
        itemcf=(cf["indptr"].astype(np.int64), cf["indices"].astype(np.int32), cf["scores"].astype(np.float32)),
        popular=popular,
        history_len=int(schema["history_len"]),
        n_user_fields=len(schema["user_cat_names"]),
    )
