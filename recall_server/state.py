"""What the recall server holds in memory for one snapshot version."""
from __future__ import annotations

from dataclasses import dataclass, field

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
    swing: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # CSR, loaded when "swing" is served
    segments: dict[str, np.ndarray] | None = None        # popular_segments.npz (export.recall_tables)
    blocklist: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))  # sorted int32 dense ids
    content: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None  # i2i_content.npz: row + CSR

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
    n_items = int(schema["n_items"])
    cf = load_neighbor_table(snapshot, "i2i_itemcf.npz", n_items)
    swing = load_neighbor_table(snapshot, "i2i_swing.npz", n_items) if "swing" in config.channels else None
    segments = (load_segments(snapshot, n_items, len(schema["user_cat_names"]))
                if "segment_popular" in config.channels else None)
    # snapshots exported before the content channel have no i2i_content.npz: the channel then returns nothing
    content = (load_content_table(snapshot, n_items) if "content" in config.channels
               and "i2i_content.npz" in snapshot.manifest.get("files", {}) else None)
    popular = snapshot.load_array("popular.npy").astype(np.int32)
    blocklist = snapshot.load_array("blocklist.npy")
    if blocklist.ndim != 1 or blocklist.dtype.kind != "i" or (blocklist.size and (
            blocklist.min() < 0 or blocklist.max() >= n_items)):
        raise SnapshotError(f"snapshot file {snapshot.path / 'blocklist.npy'} must hold dense item ids "
                            f"in 0..{n_items - 1}")
    return RecallState(
        snapshot=snapshot,
        index=index,
        user_tower=onnx_session(snapshot.file("models/user_tower.onnx"), config.onnx_threads),
        itemcf=cf,
        popular=popular,
        history_len=int(schema["history_len"]),
        n_user_fields=len(schema["user_cat_names"]),
        swing=swing,
        segments=segments,
        blocklist=np.unique(blocklist).astype(np.int32),
        content=content,
    )


def load_neighbor_table(snapshot: Snapshot, name: str, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A validated i2i CSR table ``(indptr int64, indices int32, scores float32)``; SnapshotError naming it."""
    table = snapshot.load_npz(name)
    try:
        check_neighbor_table(table["indptr"], table["indices"], table["scores"], n_items)
    except (KeyError, ValueError) as exc:
        raise SnapshotError(f"i2i table {snapshot.path / name} is invalid: {exc}") from None
    return (table["indptr"].astype(np.int64), table["indices"].astype(np.int32),
            table["scores"].astype(np.float32))


def load_content_table(snapshot: Snapshot, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``i2i_content.npz`` (``export.recall_tables.content_table``) as ``(row, indptr, indices, scores)``, validated."""
    path = snapshot.path / "i2i_content.npz"
    table = snapshot.load_npz("i2i_content.npz")
    try:
        row, indptr = table["row"].astype(np.int64), table["indptr"].astype(np.int64)
        indices, scores = table["indices"].astype(np.int32), table["scores"].astype(np.float32)
        ok = (row.shape == (n_items,) and indptr.ndim == 1 and indptr.size >= 1 and indptr[0] == 0
              and indptr[-1] == indices.size == scores.size and bool(np.all(np.diff(indptr) >= 0))
              and (row.size == 0 or 0 <= row.min() <= row.max() < indptr.size - 1)
              and (indices.size == 0 or 0 <= indices.min() <= indices.max() < n_items)
              and bool(np.isfinite(scores).all()))
    except (KeyError, ValueError) as exc:
        raise SnapshotError(f"i2i table {path} is invalid: {exc}") from None
    if not ok:
        raise SnapshotError(f"i2i table {path} is inconsistent (shapes, offsets, ids or scores); re-run export")
    return row, indptr, indices, scores


def load_segments(snapshot: Snapshot, n_items: int, n_user_fields: int) -> dict[str, np.ndarray]:
    """``popular_segments.npz``, checked for consistent shapes and in-range ids; SnapshotError naming it."""
    path = snapshot.path / "popular_segments.npz"
    seg = snapshot.load_npz("popular_segments.npz")
    try:
        fields, code_bucket, radix = seg["fields"], seg["code_bucket"], seg["radix"]
        indptr, indices = seg["indptr"].astype(np.int64), seg["indices"].astype(np.int32)
        n_segments = indptr.size - 1
        ok = (fields.ndim == 1 and (fields.size == 0 or 0 <= fields.min() <= fields.max() < n_user_fields)
              and code_bucket.ndim == 2 and code_bucket.shape[0] == fields.size == radix.size and n_segments >= 1
              and indptr[0] == 0 and indptr[-1] == indices.size and np.all(np.diff(indptr) >= 0)
              and (indices.size == 0 or (indices.min() >= 0 and indices.max() < n_items))
              and (code_bucket.size == 0 or code_bucket.min() >= 0)
              and int((code_bucket.max(axis=1, initial=0) * radix).sum()) < n_segments)
    except (KeyError, ValueError, IndexError) as exc:
        raise SnapshotError(f"segment table {path} is invalid: {exc}") from None
    if not ok:
        raise SnapshotError(f"segment table {path} is inconsistent (shapes, offsets or ids); re-run export")
    return {"fields": fields.astype(np.int64), "code_bucket": code_bucket.astype(np.int64),
            "radix": radix.astype(np.int64), "indptr": indptr, "indices": indices}
