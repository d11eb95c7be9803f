"""Everything recall and the ranker's candidate features read, built from one slice of the log.

The published snapshot is built from every interaction before the test part; the ranker's training and
validation replays (``export.ranking.replay``) need the same artifacts built from *earlier* slices, so that a
candidate's recall scores never contain the interactions it is labelled with (issue 11: candidates from the
published snapshot leak the labels into the recall scores). One function builds them all, into any
directory, with a manifest that ``common.snapshot.Snapshot.open(..., verify=False)`` reads.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.candidate_features import ITEM_STATS_FILE
from common.feature_store import pack_user, write_feature_store
from export.data.feedback_fold import user_last_ts
from common.snapshot import ANN_IDS_FILE, FORMAT_VERSION, MANIFEST
from export.config import ExportConfig
from export.data.dataset import Dataset, Interactions
from export.recall.ann_index import build_hnsw, build_routing, served_vectors
from export.data.history import last_n
from export.recall.i2i import i2i_tables
from export.recall.tables import (
    blocklist_ids,
    content_table,
    item_stats,
    popular_segments,
)
from export.models.two_tower import (
    ItemTower,
    UserTower,
    export_user_tower_onnx,
    item_embeddings,
    train_two_tower,
    user_embeddings,
    user_inputs,
)


@dataclass
class RecallBuild:
    """What one build produced besides its files."""

    path: Path
    user_tower: UserTower
    item_tower: ItemTower
    item_emb: np.ndarray          # float32 [n_items, dim]
    ann_ids: np.ndarray           # int32 dense ids held by items.hnsw, ascending
    history: np.ndarray           # int32 [n_users, history_len] codes
    two_tower_log: dict
    # the training users' vectors inserted into items.hnsw as routing nodes (export.recall.ann_index)
    routing: np.ndarray | None = None


def sample_users(inter: Interactions, n_users: int, max_rows: int = 0, max_users: int = 0,
                 seed: int = 0) -> Interactions:
    """The rows of a seeded random sample of users (whole histories, so time order within a user is kept):
    users are taken in random order while the rows stay within ``max_rows`` and the users within
    ``max_users`` (0: no limit). Returns ``inter`` itself when nothing is cut."""
    counts = np.bincount(inter.user, minlength=n_users)
    active = np.flatnonzero(counts)
    if (not max_rows or len(inter) <= max_rows) and (not max_users or active.size <= max_users):
        return inter
    order = np.random.default_rng(seed).permutation(active)
    if max_rows:
        order = order[np.cumsum(counts[order]) <= max_rows]
    if max_users:
        order = order[:max_users]
    keep = np.zeros(n_users, bool)
    keep[order] = True
    return inter.subset(keep[inter.user])


def rebuild_ann(build: "RecallBuild", n_items: int, min_count: int, M: int, config: ExportConfig) -> np.ndarray:
    """Rewrite ``build``'s index (and ``ann_items.npy``) for another ``M``: every item, with the build's routing
    nodes (``build.routing``); returns the ids. ``min_count`` is the build's own (the
    served vectors, ``item_emb.npy``, were chosen with it) and kept for the caller's signature."""
    ids = np.arange(n_items, dtype=np.int32)
    np.save(build.path / ANN_IDS_FILE, ids, allow_pickle=False)
    build_hnsw(build.item_emb, ids, M, config.hnsw.ef_construction, config.threads, build.path / "items.hnsw",
               routing=build.routing)
    return ids


def feature_records(ds: Dataset, known: Interactions, history: np.ndarray) -> dict[str, bytes]:
    """Packed LMDB records of every user: profile, last-N history codes, seen items."""
    order = np.lexsort((known.item, known.user))
    seen_indptr = np.searchsorted(known.user[order], np.arange(ds.n_users + 1))
    seen_items = known.item[order].astype(np.int32)
    records = {}
    for u, user_id in enumerate(ds.user_ids.tolist()):  # offline, once per user
        hist = history[u][history[u] > 0]
        seen = np.unique(seen_items[seen_indptr[u]:seen_indptr[u + 1]])
        records[user_id] = pack_user(u, ds.user_cat[u], hist, seen)
    return records


def base_schema(ds: Dataset, config: ExportConfig, dim: int) -> dict:
    """The manifest ``schema`` fields every snapshot has (the rank schema is added by the caller)."""
    return {"n_users": ds.n_users, "n_items": ds.n_items, "embedding_dim": dim,
            "history_len": config.two_tower.history_len, "user_cat_names": ds.user_cat_names,
            "user_cat_vocab": ds.user_cat_vocab, "item_cat_names": ds.item_cat_names,
            "item_cat_vocab": ds.item_cat_vocab, "bag_names": ds.item_bag_names,
            # raw values of each item_cat code (code c = values[c - 1]): request-time filters (common.item_filter)
            "item_cat_values": ds.item_cat_values}


def build_recall(ds: Dataset, known: Interactions, config: ExportConfig, path: Path,
                 towers: tuple[UserTower, ItemTower, dict] | None = None, lap=None, hnsw_M: int = 0,
                 build_index: bool = True) -> RecallBuild:
    """Write every recall artifact of ``known`` (the log slice this build may see) into ``path``.

    Two-tower (trained on a ``two_tower.max_train_rows`` (else ``max_train_rows``) user sample of ``known``
    unless ``towers`` are given; with ``engine = "ray"`` on Ray Train, ``export.distributed.ray_train``, with
    that many rows per worker),
    its ONNX user tower, every item's served vector and the HNSW index over all of them with training users'
    vectors as routing nodes (``export.recall.ann_index``; ``M`` = ``hnsw_M`` or ``config.hnsw.M``); ItemCF, Swing and next-item tables; popular lists
    (global and per segment); content neighbours of cold items; the blocklist; item statistics; the LMDB
    features (every user's last-N history and seen set from ``known``); and a manifest with the schema, so
    the directory opens as a snapshot. ``lap(step)`` is called after each step (timings).
    ``build_index`` False leaves ``items.hnsw`` out, for a caller that builds it later with chosen parameters
    (:func:`rebuild_ann`; at 10^6 items a default index costs minutes for nothing).
    """
    lap = lap or (lambda step: None)
    path = Path(path)
    (path / "models").mkdir(parents=True, exist_ok=True)
    tt = config.two_tower
    if towers is None:
        rows = tt.max_train_rows or config.max_train_rows
        if config.engine == "ray":   # Ray Train: ray.workers data-parallel workers, each on as many rows
            from export.distributed.ray_train import train_two_tower_ray

            sample = sample_users(known, ds.n_users, max_rows=rows * config.ray.workers, seed=1)
            towers = train_two_tower_ray(ds, sample, tt, config.ray, config.out)
        else:
            towers = train_two_tower(ds, sample_users(known, ds.n_users, max_rows=rows, seed=1), tt)
    user_tower, item_tower, tt_log = towers
    tower_emb = item_embeddings(item_tower, ds)
    content_emb = item_embeddings(item_tower, ds, drop_ids=True)  # features only: new items' view
    # every item is served and indexed; items the towers barely saw serve their features-only vector
    item_emb = served_vectors(tower_emb, content_emb, item_tower.train_counts, config.hnsw.min_count)
    del tower_emb
    history = last_n(known, ds.n_users, tt.history_len)
    export_user_tower_onnx(user_tower, str(path / "models/user_tower.onnx"), ds.user_cat.shape[1], tt.history_len)
    np.save(path / "item_emb.npy", item_emb, allow_pickle=False)
    with torch.no_grad():
        routing = build_routing(user_embeddings(user_tower, user_inputs(ds, history)), history,
                                config.hnsw.routing_nodes)
    lap("two_tower")
    ann_ids = np.arange(ds.n_items, dtype=np.int32)
    np.save(path / ANN_IDS_FILE, ann_ids, allow_pickle=False)
    if build_index:
        build_hnsw(item_emb, ann_ids, hnsw_M if hnsw_M else config.hnsw.M, config.hnsw.ef_construction,
                   config.threads, path / "items.hnsw", routing=routing)
        lap("hnsw")

    def npz(name: str, arrays: dict[str, np.ndarray]) -> None:
        with open(path / name, "wb") as fh:
            np.savez(fh, **arrays)

    tables = i2i_tables(known, ds.n_users, ds.n_items, config)   # on config.engine (export.recall.i2i)
    np.save(path / "popular.npy", tables.pop("popular"), allow_pickle=False)
    for name, arrays in tables.items():
        npz(name, arrays)
    lap("i2i")
    npz(ITEM_STATS_FILE, item_stats(known, ds.n_items, config.recent_days))
    npz("popular_segments.npz", popular_segments(ds, known, config.segment_fields, config.segment_edges,
                                                 config.segment_popular_n))
    np.save(path / "blocklist.npy", blocklist_ids(ds, config.blocklist), allow_pickle=False)
    npz("i2i_content.npz", content_table(content_emb, ds, known, config.content_top_m, threads=config.threads))
    lap("popular_content")
    write_feature_store(path / "features.lmdb", {
        "item_ids": ds.item_ids.astype(str), "item_titles": ds.item_titles.astype(str),
        "item_cat": ds.item_cat.astype(np.int32), "item_bag": ds.item_bag.astype(np.uint8),
        "user_ids": ds.user_ids.astype(str), "user_last_ts": user_last_ts(known, ds.n_users)},
        feature_records(ds, known, history))
    write_manifest(path, {"schema": base_schema(ds, config, int(item_emb.shape[1])),
                          "ann_index": {"items": int(ann_ids.size), "M": hnsw_M or config.hnsw.M,
                                        "ef_construction": config.hnsw.ef_construction,
                                        "ef": config.hnsw.ef_eval, "min_count": config.hnsw.min_count,
                                        "routing_nodes": int(routing.shape[0]) if build_index else 0}})
    lap("features")
    return RecallBuild(path, user_tower, item_tower, item_emb, ann_ids, history, tt_log, routing)


def write_manifest(path: Path, manifest: dict) -> None:
    """An unhashed manifest (``format`` and ``version`` = the directory name) so ``Snapshot.open(path,
    verify=False)`` reads a directory under construction; ``SnapshotBuilder.publish`` rewrites it."""
    (Path(path) / MANIFEST).write_text(json.dumps({"format": FORMAT_VERSION, "version": Path(path).name,
                                                   **manifest}))


def add_to_manifest(path: Path, keys: dict) -> None:
    """Add (or replace) top-level keys of the unhashed manifest written by :func:`write_manifest`."""
    manifest = json.loads((Path(path) / MANIFEST).read_text())
    manifest.update(keys)
    (Path(path) / MANIFEST).write_text(json.dumps(manifest))


def user_vectors(build: RecallBuild, ds: Dataset) -> np.ndarray:
    """Every user's two-tower vector from the build's histories (torch), float32 [n_users, dim]."""
    with torch.no_grad():
        return user_embeddings(build.user_tower, user_inputs(ds, build.history))
