"""The export pipeline: dataset → models, tables, index, features → one published snapshot."""
from __future__ import annotations

import json
import time
from pathlib import Path

import hnswlib
import numpy as np
import onnxruntime as ort
import torch

from common.config import as_dict
from common.feature_store import pack_user, write_feature_store
from common.log import get_logger
from common.rank_features import RankSchema
from common.snapshot import Snapshot, SnapshotBuilder
from export.config import ExportConfig
from export.dataset import Dataset, Interactions
from export.datasets import load_atomic, load_movielens_100k
from export.deepfm import export_deepfm_onnx, make_rank_examples, predict, train_deepfm
from export.evaluate import evaluate_recall
from export.evaluate_prerank import evaluate_prerank
from export.evaluate_rerank import evaluate_rerank
from export.history import last_n
from export.metrics import auc, gauc
from export.mmoe import TASKS as MMOE_TASKS
from export.mmoe_export import build_mmoe
from export.recall_tables import blocklist_ids, content_table, popular_segments, swing_table
from export.split import make_split
from export.two_tower import export_user_tower_onnx, item_embeddings, train_two_tower, user_embeddings, user_inputs
from kernels.csr import build_csr
from kernels.itemcf import itemcf_topm
from rank_server.config import RankConfig

log = get_logger("export")
RANK_TASKS = list(MMOE_TASKS)   # outputs of the served MMoE, in order


def load_dataset(config: ExportConfig) -> Dataset:
    """The configured dataset: ML-100K from its usual places, the synthetic generator, or a generic atomic dataset."""
    if config.dataset == "ml-100k":
        return load_movielens_100k(config.data_dir or None)
    if config.dataset == "synthetic":
        from export.synthetic import make_dataset

        return make_dataset(config.synthetic)
    if not config.data_dir:
        raise ValueError(f"dataset '{config.dataset}' needs data_dir (the folder with {config.dataset}.inter)")
    return load_atomic(config.data_dir, config.dataset)


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


def popular_items(train: Interactions, n_items: int, n: int) -> np.ndarray:
    """Dense ids by training-period interaction count, most popular first (ties: smaller id)."""
    counts = np.bincount(train.item, minlength=n_items)
    return np.lexsort((np.arange(n_items), -counts))[:n].astype(np.int32)


def itemcf_table(train: Interactions, n_users: int, n_items: int, top_m: int) -> dict[str, np.ndarray]:
    """ItemCF top-M neighbours (CSR) from the training interactions, via the Numba kernel."""
    u_indptr, u_items, _ = build_csr(train.user.astype(np.int32), train.item.astype(np.int32), n_users)
    i_indptr, i_users, _ = build_csr(train.item.astype(np.int32), train.user.astype(np.int32), n_items)
    indptr, indices, scores = itemcf_topm(u_indptr, u_items, i_indptr, i_users, n_items, top_m)
    return {"indptr": indptr, "indices": indices, "scores": scores}


def build_hnsw(emb: np.ndarray, config: ExportConfig, path: Path) -> None:
    """An inner-product HNSW index over the item vectors, labels = dense ids."""
    index = hnswlib.Index(space="ip", dim=emb.shape[1])
    index.init_index(max_elements=emb.shape[0], M=config.hnsw.M, ef_construction=config.hnsw.ef_construction,
                     random_seed=0)
    index.set_num_threads(config.threads)
    index.add_items(emb, np.arange(emb.shape[0]))
    index.save_index(str(path))


def hnsw_recall(path: Path, emb: np.ndarray, queries: np.ndarray, k: int, ef: int) -> float:
    """Mean overlap of the index's top-k with exact inner-product search, over ``queries``."""
    index = hnswlib.Index(space="ip", dim=emb.shape[1])
    index.load_index(str(path), max_elements=emb.shape[0])
    k = min(k, emb.shape[0])
    index.set_ef(max(ef, k))
    got, _ = index.knn_query(queries, k=k)
    overlap = []
    block = max(1, (1 << 26) // max(emb.shape[0], 1))  # ~256 MB of float32 scores per block
    for s in range(0, queries.shape[0], block):
        scores = queries[s:s + block] @ emb.T
        exact = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        overlap += [np.intersect1d(g, e).size / k for g, e in zip(got[s:s + block], exact)]
    return float(np.mean(overlap)) if overlap else 0.0


def feature_records(ds: Dataset, train: Interactions, history: np.ndarray) -> dict[str, bytes]:
    """Packed LMDB records of every user: profile, last-N history codes, seen items."""
    order = np.lexsort((train.item, train.user))
    seen_indptr = np.searchsorted(train.user[order], np.arange(ds.n_users + 1))
    seen_items = train.item[order].astype(np.int32)
    records = {}
    for u, user_id in enumerate(ds.user_ids.tolist()):  # offline, once per user
        hist = history[u][history[u] > 0]
        seen = np.unique(seen_items[seen_indptr[u]:seen_indptr[u + 1]])
        records[user_id] = pack_user(u, ds.user_cat[u], hist, seen)
    return records


def run_export(config: ExportConfig) -> Path:
    """Run the whole pipeline and publish the snapshot; returns its directory."""
    torch.set_num_threads(config.threads)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        timings[name] = round(time.perf_counter() - t0, 3)
        log.info("step_done", step=name, seconds=timings[name])
        return time.perf_counter()

    t = time.perf_counter()
    ds = load_dataset(config)
    split = make_split(ds, config.holdout_frac)
    t = lap("load_and_split", t)
    # models train on a user sample when max_train_rows caps them; offline metrics use eval_users users
    model_train = sample_users(split.train, ds.n_users, max_rows=config.max_train_rows, seed=1)
    eval_test = sample_users(split.test, ds.n_users, max_users=config.eval_users, seed=2)
    eval_query_users = np.unique(eval_test.user) if config.eval_users else np.arange(ds.n_users)
    log.info("dataset", name=ds.name, users=ds.n_users, items=ds.n_items, train=len(split.train),
             test=len(split.test), model_train=len(model_train), eval_test=len(eval_test))

    builder = SnapshotBuilder(config.out)
    try:
        # ---- two-tower: item vectors for ANN and rerank, user tower for serving
        tt = config.two_tower
        user_tower, item_tower, tt_log = train_two_tower(ds, model_train, tt)
        item_emb = item_embeddings(item_tower, ds)
        content_emb = item_embeddings(item_tower, ds, drop_ids=True)  # features only: new items' view
        history = last_n(split.train, ds.n_users, tt.history_len)
        export_user_tower_onnx(user_tower, str(builder.path / "models/user_tower.onnx"), ds.user_cat.shape[1],
                               tt.history_len)
        inputs = user_inputs(ds, history)
        torch_users = user_embeddings(user_tower, inputs)
        onnx_users = ort.InferenceSession(str(builder.path / "models/user_tower.onnx"),
                                          providers=["CPUExecutionProvider"]).run(None, inputs)[0]
        builder.save_array("item_emb.npy", item_emb)
        t = lap("two_tower", t)

        # ---- HNSW over item vectors
        build_hnsw(item_emb, config, builder.path / "items.hnsw")
        ann_recall = hnsw_recall(builder.path / "items.hnsw", item_emb, torch_users[eval_query_users], 100,
                                 config.hnsw.ef_eval)
        t = lap("hnsw", t)

        # ---- ItemCF (Numba) and popular
        builder.save_npz("i2i_itemcf.npz", **itemcf_table(split.train, ds.n_users, ds.n_items, config.itemcf_top_m))
        builder.save_array("popular.npy", popular_items(split.train, ds.n_items, config.popular_n))
        builder.save_npz("i2i_swing.npz", **swing_table(split.train, ds.n_users, ds.n_items, config.swing_top_m,
                                                       config.swing_alpha, config.swing_user_damping,
                                                       config.swing_max_users))
        builder.save_npz("popular_segments.npz", **popular_segments(ds, split.train, config.segment_fields,
                                                                    config.segment_edges, config.segment_popular_n))
        builder.save_array("blocklist.npy", blocklist_ids(ds, config.blocklist))
        t = lap("itemcf_swing_popular", t)
        builder.save_npz("i2i_content.npz", **content_table(content_emb, ds, split.train, config.content_top_m))
        del content_emb
        t = lap("content", t)

        # ---- DeepFM ranker
        schema = RankSchema.from_dataset_meta(ds.n_users, ds.n_items, ds.user_cat_names, ds.user_cat_vocab,
                                              ds.item_cat_names, ds.item_cat_vocab, ds.item_bag_names)
        dcfg = config.deepfm
        deepfm, dfm_log = train_deepfm(ds, model_train, dcfg, schema)
        rank_path = builder.path / "models/rank_deepfm.onnx"
        export_deepfm_onnx(deepfm, str(rank_path), schema.n_fields, schema.n_bag)
        sparse, bag, label = make_rank_examples(ds, eval_test, schema, dcfg.neg_per_pos, dcfg.seed + 1,
                                                dcfg.min_positive_rating)
        onnx_prob = ort.InferenceSession(str(rank_path), providers=["CPUExecutionProvider"]).run(
            None, {"sparse": sparse, "bag": bag})[0].reshape(-1)
        torch_prob = predict(deepfm, sparse, bag)
        t = lap("deepfm", t)

        # ---- MMoE: teacher, distilled student, ONNX fp32 + int8 (the served ranker)
        mmoe = build_mmoe(ds, model_train, eval_test, schema, config.mmoe, config.mmoe_teacher, config.distill,
                          builder.path, prerank_cfg=config.prerank)
        t = lap("mmoe", t)

        # ---- features
        write_feature_store(builder.path / "features.lmdb", {
            "item_ids": ds.item_ids.astype(str), "item_titles": ds.item_titles.astype(str),
            "item_cat": ds.item_cat.astype(np.int32), "item_bag": ds.item_bag.astype(np.uint8),
            "user_ids": ds.user_ids.astype(str)}, feature_records(ds, split.train, history))
        t = lap("features", t)

        manifest = {
            "dataset": {"name": ds.name, "users": ds.n_users, "items": ds.n_items,
                        "interactions": len(ds.interactions), "train": len(split.train), "test": len(split.test),
                        "model_train": len(model_train), "eval_test": len(eval_test),
                        "split": f"per-user temporal, last {config.holdout_frac:.0%} held out"},
            "schema": {"n_users": ds.n_users, "n_items": ds.n_items, "embedding_dim": int(item_emb.shape[1]),
                       "history_len": tt.history_len, "user_cat_names": ds.user_cat_names,
                       "user_cat_vocab": ds.user_cat_vocab, "item_cat_names": ds.item_cat_names,
                       "item_cat_vocab": ds.item_cat_vocab, "bag_names": ds.item_bag_names,
                       "rank": schema.to_dict(), "rank_tasks": RANK_TASKS},
            "rank_serving_model": mmoe["serving_model"],
            "prerank_serving_model": mmoe["prerank_serving_model"],
            "config": as_dict(config),
        }
        (builder.path / "manifest.json").write_text(json.dumps({**manifest, "format": 1,
                                                                "version": builder.version}))
        # one view of the unpublished snapshot for every evaluation, closed before publish renames the
        # directory: an LMDB environment left open here would block reopening it under its final name
        preview = Snapshot.open(builder.path, verify=False)
        try:
            recall_metrics = evaluate_recall(preview, ds, eval_test, config.eval_k)
            t = lap("evaluate", t)
            rerank_metrics = evaluate_rerank(preview, ds, eval_test)
            t = lap("evaluate_rerank", t)
            # does pre-rank keep rank's top 50? label-trained DeepFM vs the pre-rank distilled from the teacher
            prerank_metrics = evaluate_prerank(
                preview, ds, eval_test, mmoe["serving_model"],
                {"deepfm": "models/rank_deepfm.onnx", "distilled": mmoe["prerank_serving_model"]},
                RankConfig().fusion)
        finally:
            preview.close()
        t = lap("evaluate_prerank", t)
        manifest["metrics"] = {
            "recall": recall_metrics,
            "rerank": rerank_metrics,
            "prerank": prerank_metrics,
            "hnsw_recall@100_vs_exact": round(ann_recall, 4),
            "rank": {"deepfm": {"like": {"auc": round(auc(label, onnx_prob), 4),
                                         "gauc": round(gauc(label, onnx_prob, sparse[:, 0]), 4),
                                         "examples": int(label.size), "positives": int(label.sum())}},
                     **mmoe["metrics"], "quantization": mmoe["quantization"],
                     "prerank_quantization": mmoe["prerank_quantization"]},
            "parity": {"user_tower_max_abs_diff": float(np.abs(onnx_users - torch_users).max()),
                       "deepfm_max_abs_diff": float(np.abs(onnx_prob - torch_prob).max()), **mmoe["parity"]},
            "training": {"two_tower": tt_log, "deepfm": dfm_log, **mmoe["training"]},
        }
        manifest["timings_s"] = {**timings, "total": round(time.perf_counter() - t_start, 3)}
        final = builder.publish(manifest, make_current=config.make_current)
    except BaseException:
        builder.abort()
        raise
    log.info("snapshot_published", path=str(final), current=config.make_current,
             seconds=round(time.perf_counter() - t_start, 2))
    return final
