"""The two-tower on Ray Train: ``ray.workers`` data-parallel torch workers (TorchTrainer, CPU, gloo), behind
``engine = "ray"`` (``export.recall.build`` calls :func:`train_two_tower_ray` in place of
``export.models.two_tower.train_two_tower``).

What is the same as the one-process training: the towers (built with the same seed, so every worker and the
local build start from the same weights), the loss (in-batch sampled softmax with temperature, log-Q
correction from the whole sample's item shares, rows of the same item masked as negatives, optional uniform
negatives), the optimizer (``EmbeddingAdam``: AdamW on dense parameters, SparseAdam on the large id tables),
the id dropout, the epochs and the per-worker batch size (``two_tower.batch_size``).

What changes:

* **Gradients are averaged over the workers** each step: the towers run inside one DistributedDataParallel
  module (``ray.train.torch.prepare_model``; gloo all-reduces dense gradients in buckets and the sparse
  embedding gradients as sparse tensors), so every worker takes the same optimizer step and holds the same
  weights. One step covers ``workers x batch_size`` rows.
* **In-batch negatives are per worker.** Each worker's softmax runs over its own batch of ``batch_size`` rows
  (as many negatives as the local build's), not over the global batch; no embeddings cross the workers.
* **Each worker reads its own shard.** Every epoch, one permutation of the rows (the same seed on every worker)
  is cut into ``workers`` equal shards (``n // workers`` rows; the few rows left over sit out that epoch), so
  the workers take the same number of steps and no collective waits on a missing batch.
* **The sampled-rows limit rises with the workers**: the caller samples ``two_tower.max_train_rows`` (else
  ``max_train_rows``) x ``ray.workers`` rows, so each worker trains on as many rows, for as many steps per
  epoch, as the local build did.

The trained weights come back to the driver as a Ray Train checkpoint under ``<out>/.ray-train-<pid>``
(storage every node reads: the shared snapshot volume in deploy/k8s/ray), which is removed once read. The
training log adds each worker's CPU seconds and peak RSS (the manifest's ``metrics.training.two_tower``).
"""
from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import ray
import torch
from torch import nn

from common.log import get_logger
from export.data.dataset import Dataset, Interactions
from export.data.history import history_before
from export.distributed.ray_i2i import ray_session, record_phase
from export.models.fit import EmbeddingAdam
from export.models.two_tower import (ItemTower, TwoTowerConfig, UserTower, _drop_ids, content_dim, in_batch_loss,
                                     item_content)

log = get_logger("export.ray_train")
CHECKPOINT_FILE = "towers.pt"


def make_towers(ds: Dataset, cfg: TwoTowerConfig) -> tuple[UserTower, ItemTower]:
    """Both towers as ``train_two_tower`` builds them (seeded: the same initial weights in every process)."""
    torch.manual_seed(cfg.seed)
    user_tower = UserTower(ds.n_users, ds.user_cat_vocab, ds.n_items, cfg)
    item_tower = ItemTower(ds.n_items, ds.item_cat_vocab, len(ds.item_bag_names), cfg, content_dim(ds))
    return user_tower, item_tower


class _Towers(nn.Module):
    """Both towers as one module, so DistributedDataParallel sees one forward per step."""

    def __init__(self, user_tower: UserTower, item_tower: ItemTower) -> None:
        super().__init__()
        self.user_tower = user_tower
        self.item_tower = item_tower

    def forward(self, u_code, u_cat, hist, i_code, i_cat, i_bag, i_content=None):
        u_vec = self.user_tower(u_code, u_cat, hist)
        if i_content is None:
            return u_vec, self.item_tower(i_code, i_cat, i_bag)
        return u_vec, self.item_tower(i_code, i_cat, i_bag, i_content)


def _train_loop(config: dict) -> None:
    """One Ray Train worker: the same towers and loss as ``train_two_tower`` on this worker's shard of each
    epoch, gradients averaged by DDP; rank 0 reports the weights as a checkpoint."""
    import torch.distributed as dist
    from ray.train import Checkpoint, get_context, report
    from ray.train.torch import prepare_model

    started, cpu0 = time.perf_counter(), time.process_time()
    ctx = get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg: TwoTowerConfig = config["cfg"]
    data = ray.get(config["data"])
    ds_shape = config["shape"]
    n_items = ds_shape["n_items"]
    user_tower, item_tower = make_towers(config["ds_meta"], cfg)
    # EmbeddingAdam switches the large id tables to sparse gradients: before DDP sees the module
    opt = EmbeddingAdam([user_tower, item_tower], cfg.lr, cfg.weight_decay, cfg.sparse, decoupled=True)
    # without bag fields the item tower's bag layer takes no part in the forward: DDP must then look for it
    model = prepare_model(_Towers(user_tower, item_tower),
                          parallel_strategy_kwargs={"find_unused_parameters": item_tower.n_bag == 0})
    model.train()

    # the arrays come out of the object store read-only (zero-copy) and are only ever indexed, never written:
    # torch's warning about non-writable arrays does not apply
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        users = torch.from_numpy(data["user"])
        items = torch.from_numpy(data["item"])
        hist = torch.from_numpy(data["hist"])
        user_cat = torch.from_numpy(data["user_cat"])
        item_cat = torch.from_numpy(data["item_cat"])
        item_bag = torch.from_numpy(data["item_bag"])
        content = None if data["content"] is None else torch.from_numpy(data["content"])
        log_q = torch.from_numpy(data["log_q"])
    n = int(users.shape[0])
    shard = n // world
    order_gen = torch.Generator().manual_seed(cfg.seed)          # the same permutation on every worker
    gen = torch.Generator().manual_seed(cfg.seed + 1 + rank)     # this worker's id dropout and negatives

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        u, i = users[idx].long(), items[idx].long()
        cand = i
        i_in = i
        if cfg.uniform_negatives > 0:
            extra = torch.randint(0, n_items, (cfg.uniform_negatives,), generator=gen)
            cand = i_in = torch.cat([i, extra])
        u_vec, i_vec = model(_drop_ids(u + 1, cfg.id_dropout, gen), user_cat[u], hist[idx].long(),
                             _drop_ids(i_in + 1, cfg.id_dropout, gen), item_cat[i_in], item_bag[i_in],
                             None if content is None else content[i_in])
        return in_batch_loss(u_vec, i_vec, i, cand, log_q, cfg, n_items)

    epoch_loss, steps = [], 0
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=order_gen)[rank * shard:(rank + 1) * shard]
        total, steps = 0.0, 0
        for start in range(0, shard, cfg.batch_size):
            idx = perm[start:start + cfg.batch_size]
            if idx.numel() < 2:
                continue   # the same on every worker: the shards are of equal length
            loss = batch_loss(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()   # DDP averages the gradients over the workers here
            opt.step()
            total += loss.item()
            steps += 1
        mean = torch.tensor([total / max(steps, 1)], dtype=torch.float64)
        dist.all_reduce(mean)
        epoch_loss.append(float(mean.item()) / world)

    usage = resource.getrusage(resource.RUSAGE_SELF)
    mine = torch.tensor([time.process_time() - cpu0, usage.ru_maxrss / 1024.0, time.perf_counter() - started],
                        dtype=torch.float64)
    every = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    metrics = {"epoch_loss": epoch_loss, "steps_per_epoch": steps,
               "cpu_s_per_worker": [round(float(t[0]), 3) for t in every],
               "peak_rss_mb_per_worker": [round(float(t[1]), 1) for t in every],
               "wall_s_per_worker": [round(float(t[2]), 3) for t in every]}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            torch.save({"user": user_tower.state_dict(), "item": item_tower.state_dict()},
                       os.path.join(tmp, CHECKPOINT_FILE))
            checkpoint = Checkpoint.from_directory(tmp)
        report(metrics, checkpoint=checkpoint)


class _DatasetMeta:
    """What :func:`make_towers` reads of a Dataset, without its arrays (shipped to every worker)."""

    def __init__(self, ds: Dataset) -> None:
        self.n_users, self.n_items = ds.n_users, ds.n_items
        self.user_cat_vocab, self.item_cat_vocab = list(ds.user_cat_vocab), list(ds.item_cat_vocab)
        self.item_bag_names = list(ds.item_bag_names)
        content = ds.item_content
        # content_dim() reads .shape[1]: a zero-row array of the same width stands in for the vectors
        self.item_content = None if content is None else np.zeros((0, content.shape[1]), np.float32)


def train_two_tower_ray(ds: Dataset, train: Interactions, cfg: TwoTowerConfig, rc,
                        storage: str | Path) -> tuple[UserTower, ItemTower, dict]:
    """Train both towers on ``train`` with ``rc.workers`` Ray Train workers (``RayConfig``'s fields: the cluster
    of ``rc.address``); ``storage``: a folder every node can read and write (the checkpoint passes there).

    Returns the towers in eval mode and a log like ``train_two_tower``'s, plus the workers' CPU and memory.
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t0 = time.perf_counter()
    ray_session(rc)
    counts = np.bincount(train.item, minlength=ds.n_items).astype(np.float64)
    data = {"user": train.user.astype(np.int32), "item": train.item.astype(np.int32),
            "hist": history_before(train, ds.n_users, cfg.history_len).astype(np.int32),
            "user_cat": ds.user_cat.astype(np.int64).reshape(ds.n_users, -1),
            "item_cat": ds.item_cat.astype(np.int64).reshape(ds.n_items, -1),
            "item_bag": ds.item_bag.astype(np.float32).reshape(ds.n_items, -1),
            "content": None if (content := item_content(ds)) is None else content.numpy(),
            "log_q": np.log(np.maximum(counts, 1.0) / max(len(train), 1)).astype(np.float32)}
    ref = ray.put(data)
    del data
    root = Path(storage).resolve()
    name = f".ray-train-{os.getpid()}-{time.time_ns()}"
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"cfg": cfg, "data": ref, "ds_meta": _DatasetMeta(ds),
                           "shape": {"n_users": ds.n_users, "n_items": ds.n_items}},
        scaling_config=ScalingConfig(num_workers=rc.workers, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=str(root), name=name))
    try:
        result = trainer.fit()
        user_tower, item_tower = make_towers(ds, cfg)
        with result.checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=True)
        user_tower.load_state_dict(state["user"])
        item_tower.load_state_dict(state["item"])
    finally:
        shutil.rmtree(root / name, ignore_errors=True)
        del ref
    user_tower.eval()
    item_tower.eval()
    item_tower.train_counts = counts.astype(np.int64)
    m = result.metrics
    cpu = m["cpu_s_per_worker"]
    train_log = {"epoch_loss": m["epoch_loss"], "n_examples": len(train), "engine": "ray", "workers": rc.workers,
                 "rows_per_worker_per_epoch": len(train) // rc.workers, "steps_per_epoch": m["steps_per_epoch"],
                 "global_batch": rc.workers * cfg.batch_size, "negatives": "in-batch per worker",
                 "cpu_s_per_worker": cpu, "busiest_share": round(max(cpu) / sum(cpu), 4) if sum(cpu) > 0 else 0.0,
                 "peak_rss_mb_per_worker": m["peak_rss_mb_per_worker"], "wall_s_per_worker": m["wall_s_per_worker"],
                 "seconds": time.perf_counter() - t0}
    record_phase("two_tower", {"workers": rc.workers, "wall_s": round(train_log["seconds"], 3),
                               "cpu_s": round(sum(cpu), 3), "cpu_s_per_worker": cpu,
                               "busiest_share": train_log["busiest_share"],
                               "peak_rss_mb_per_worker": m["peak_rss_mb_per_worker"]})
    log.info("ray_two_tower_trained", workers=rc.workers, rows=len(train), seconds=round(train_log["seconds"], 2),
             cpu_s_per_worker=cpu, peak_rss_mb_per_worker=m["peak_rss_mb_per_worker"])
    return user_tower, item_tower, train_log
