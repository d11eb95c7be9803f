"""What the recall server holds in memory for one snapshot version."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import hnswlib
import numpy as np
import onnxruntime as ort

from common.item_filter import AttributeTable, load_attribute_table
from common.onnx_session import onnx_session
from common.snapshot import ANN_IDS_FILE, Snapshot, SnapshotError
from feedback.realtime import SnapshotKeys
from recall_server.channels import channel_module
from recall_server.config import RecallConfig
from recall_server.filtering import EligibleCache


@dataclass
class RecallState:
    """Artifacts of one snapshot, loaded once and shared by all requests: the core (index, user tower,
    popular list, blocklist) and each configured channel's own tables (``recall_server.channels``)."""

    snapshot: Snapshot
    index: hnswlib.Index
    user_tower: ort.InferenceSession
    popular: np.ndarray                                  # int32 dense ids, most popular first
    history_len: int
    n_user_fields: int
    blocklist: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))  # sorted int32 dense ids
    tables: dict[str, Any] = field(default_factory=dict)  # channel name -> what its load() returned
    ann_max_overfetch: int = 0                           # RecallConfig.ann_max_overfetch
    weights: dict[str, float] = field(default_factory=dict)  # merge weights in force (merge_weights)
    keys: SnapshotKeys | None = None                     # item hashes for the exposure filter (feedback on)
    # request-time filters (recall_server.filtering): attributes, item vectors for exact ANN (memory-mapped:
    # pages are read only for filtered requests), cached eligible sets
    attributes: AttributeTable | None = None
    item_emb: np.ndarray | None = None
    ann_exact_max: int = 0
    filter_overfetch: float = 1.5
    eligible_cache: EligibleCache = field(default_factory=lambda: EligibleCache(0))
    quotas: dict[str, int] = field(default_factory=dict)     # default quotas in force (merge_quotas)
    ann_items: int = 0                                   # items the index holds (manifest ann_index.items)
    hnsw_ef: int = 0                                     # query ef in force (ann_params)
    # (dense ids, their vectors, contiguous) of a small index, searched exactly (RecallConfig.ann_exact_items)
    ann_exact: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def n_items(self) -> int:
        return int(self.snapshot.item_ids.shape[0])


def merge_weights(snapshot: Snapshot, config: RecallConfig) -> dict[str, float]:
    """The channel merge weights for ``snapshot``: the config's when they were set (differ from the
    defaults) or ``use_fitted`` is off, else the ones export fitted on the validation part (manifest
    ``recall_merge.weights``), else the defaults. SnapshotError when the fitted ones are malformed."""
    fitted = (snapshot.manifest.get("recall_merge") or {}).get("weights")
    if not fitted or not config.use_fitted or config.weights != RecallConfig().weights:
        return dict(config.weights)
    if not isinstance(fitted, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and 0.0 <= v < float("inf") for k, v in fitted.items()):
        raise SnapshotError(f"{snapshot.path}: manifest recall_merge.weights must map channel names to finite "
                            f"numbers >= 0; re-run export")
    return {**config.weights, **{k: float(v) for k, v in fitted.items()}}


def merge_quotas(snapshot: Snapshot, config: RecallConfig) -> dict[str, int]:
    """The default per-channel quotas for ``snapshot``, chosen like :func:`merge_weights`: the config's when
    set (differ from the defaults) or ``use_fitted`` is off, else export's fitted ones (manifest
    ``recall_merge.quotas``), else the defaults. SnapshotError when the fitted ones are malformed."""
    fitted = (snapshot.manifest.get("recall_merge") or {}).get("quotas")
    if not fitted or not config.use_fitted or config.quotas != RecallConfig().quotas:
        return dict(config.quotas)
    if not isinstance(fitted, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and 0 <= v <= config.max_quota for k, v in fitted.items()):
        raise SnapshotError(f"{snapshot.path}: manifest recall_merge.quotas must map channel names to integers in "
                            f"0..{config.max_quota} (max_quota); re-run export")
    return {**config.quotas, **fitted}


def ann_params(snapshot: Snapshot, config: RecallConfig) -> tuple[int, int]:
    """``(items in the index, query ef)``: the manifest's ``ann_index`` (export.recall.ann_index; snapshots before
    it index every item), and its validated ef unless the config sets ``hnsw_ef`` or ``use_fitted`` is off."""
    ann = snapshot.manifest.get("ann_index") or {}
    n_items = int(snapshot.schema["n_items"])
    items, ef = ann.get("items", n_items), ann.get("ef")
    if not isinstance(items, int) or not 1 <= items <= n_items or (ef is not None and (
            not isinstance(ef, int) or ef < 1)):
        raise SnapshotError(f"{snapshot.path}: manifest ann_index must give items in 1..{n_items} and ef >= 1; "
                            f"re-run export")
    use_ef = ef is not None and config.use_fitted and config.hnsw_ef == RecallConfig().hnsw_ef
    return items, (ef if use_ef else config.hnsw_ef)


def exact_index(snapshot: Snapshot, item_emb: np.ndarray, ann_items: int) -> tuple[np.ndarray, np.ndarray]:
    """The ANN index's items as ``(dense ids int32, vectors float32 [ids, dim])`` for exact search; the ids
    from ``ANN_IDS_FILE`` (snapshots without it index every item)."""
    n_items = item_emb.shape[0]
    if (snapshot.path / ANN_IDS_FILE).is_file():
        ids = snapshot.load_array(ANN_IDS_FILE)
        if ids.ndim != 1 or ids.size != ann_items or ids.dtype.kind != "i" or (ids.size and (
                ids.min() < 0 or ids.max() >= n_items)):
            raise SnapshotError(f"snapshot file {snapshot.path / ANN_IDS_FILE} must hold the index's "
                                f"{ann_items} dense item ids in 0..{n_items - 1}; re-run export")
    else:
        ids = np.arange(n_items)
    ids = ids.astype(np.int32)
    return ids, np.ascontiguousarray(item_emb[ids], np.float32)


def load_state(snapshot: Snapshot, config: RecallConfig) -> RecallState:
    """Load the HNSW index, the user tower, the popular list and blocklist, and every configured channel's
    tables (its ``load``) from ``snapshot``."""
    schema = snapshot.schema
    dim = int(schema["embedding_dim"])
    index = hnswlib.Index(space="ip", dim=dim)
    path = snapshot.file("items.hnsw")
    ann_items, ef = ann_params(snapshot, config)
    # routing nodes (export.recall.ann_index): user vectors in the graph, marked deleted, so never returned
    routing = int((snapshot.manifest.get("ann_index") or {}).get("routing_nodes", 0) or 0)
    try:
        index.load_index(str(path), max_elements=int(schema["n_items"]) + routing)
    except RuntimeError as exc:
        raise SnapshotError(f"HNSW index {path} cannot be loaded: {exc}") from None
    if index.get_current_count() != ann_items + routing:
        raise SnapshotError(f"HNSW index {path} holds {index.get_current_count()} nodes, the manifest says "
                            f"{ann_items} items and {routing} routing nodes; re-run export")
    index.set_ef(ef)
    index.set_num_threads(1)
    n_items = int(schema["n_items"])
    popular = snapshot.load_array("popular.npy").astype(np.int32)
    blocklist = snapshot.load_array("blocklist.npy")
    if blocklist.ndim != 1 or blocklist.dtype.kind != "i" or (blocklist.size and (
            blocklist.min() < 0 or blocklist.max() >= n_items)):
        raise SnapshotError(f"snapshot file {snapshot.path / 'blocklist.npy'} must hold dense item ids "
                            f"in 0..{n_items - 1}")
    state = RecallState(
        snapshot=snapshot,
        index=index,
        user_tower=onnx_session(snapshot.file("models/user_tower.onnx"), config.onnx_threads),
        popular=popular,
        history_len=int(schema["history_len"]),
        n_user_fields=len(schema["user_cat_names"]),
        blocklist=np.unique(blocklist).astype(np.int32),
        ann_max_overfetch=config.ann_max_overfetch,
        weights=merge_weights(snapshot, config),
        keys=SnapshotKeys.of(snapshot) if config.feedback.path else None,
        attributes=load_attribute_table(snapshot),
        item_emb=snapshot.load_array("item_emb.npy", mmap=True),
        ann_exact_max=config.ann_exact_max,
        filter_overfetch=config.filter_overfetch,
        eligible_cache=EligibleCache(config.filter_cache),
        quotas=merge_quotas(snapshot, config),
        ann_items=ann_items,
        hnsw_ef=ef,
    )
    if state.item_emb.shape != (n_items, dim):
        raise SnapshotError(f"snapshot file {snapshot.path / 'item_emb.npy'} has shape {state.item_emb.shape}, "
                            f"expected ({n_items}, {dim}); re-run export")
    if ann_items <= config.ann_exact_items:
        state.ann_exact = exact_index(snapshot, state.item_emb, ann_items)
    for name in config.channels:
        load = getattr(channel_module(name), "load", None)
        if load is not None:
            state.tables[name] = load(snapshot, config)
    return state
