"""The i2i tables (ItemCF, Swing, next-item) and the popularity counts as Ray tasks (``engine = "ray"``).

* **Inputs once.** A build's CSRs (``export.recall.i2i.I2IInputs``) are put in Ray's object store once
  (``ray.put``); every task on a node maps the same copy, since numpy arrays come out of the store
  zero-copy (read-only, which the kernels never write to).
* **Ranges of equal work.** Each table is cut into ``ray.workers * ray.ranges_per_worker`` contiguous
  ranges of anchor items of about equal work (``kernels.i2i_ranges``); a task runs the unchanged Numba
  kernel over its range on one thread. Every user pair of U(i) is formed inside item i's row, so Swing
  needs no shuffle of user pairs, and the driver concatenates the ranges in order: the result is the
  local build, bit for bit (tests/test_ray_parity.py).
* **Popularity by user.** The interaction counts are summed from tasks over ranges of users (integer
  sums: exact in any order).

Each task reports its process's CPU seconds and peak RSS, so a run can say how evenly the workers were
loaded (``stats``). The workers import only ``export.distributed.tasks`` (kernels, numpy, Ray).
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict

import numpy as np
import ray

from common.candidate_features import NEXT_FILE
from common.log import get_logger
from export.config import ExportConfig, RayConfig
from export.recall.i2i import (
    ITEMCF_FILE,
    SWING_FILE,
    I2IInputs,
    as_table,
    itemcf_params,
    next_params,
    popular_order,
    swing_params,
)
from export.distributed.tasks import item_counts, table_range
from kernels.i2i_ranges import item_work, split_ranges

log = get_logger("export.ray")
KINDS = {ITEMCF_FILE: "itemcf", SWING_FILE: "swing", NEXT_FILE: "next"}   # the tasks' kernel names
_session_key: tuple | None = None


def ray_session(rc: RayConfig) -> None:
    """Connect to the configured Ray cluster, or start a local one with ``rc.workers`` CPUs; a call with
    the same settings reuses the session (an export's three builds share one)."""
    global _session_key
    key = (rc.address, rc.workers, rc.object_store_mb)
    if ray.is_initialized() and _session_key == key:
        return
    if ray.is_initialized():
        ray.shutdown()
    started = time.perf_counter()
    if rc.address == "local":
        ray.init(num_cpus=rc.workers, include_dashboard=False, logging_level=logging.WARNING,
                 object_store_memory=(rc.object_store_mb << 20) or None)
    else:
        ray.init(address=rc.address, logging_level=logging.WARNING)
    _session_key = key
    log.info("ray_started", address=rc.address, workers=rc.workers,
             cpus=ray.cluster_resources().get("CPU", 0), seconds=round(time.perf_counter() - started, 2))


def shutdown() -> None:
    """End this process's Ray session (a local cluster stops with it)."""
    global _session_key
    if ray.is_initialized():
        ray.shutdown()
    _session_key = None


def concat_ranges(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """One CSR table from the tables of consecutive row ranges, in order."""
    sizes = np.array([int(p[0][-1]) for p in parts], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    indptr = np.concatenate([np.zeros(1, np.int64)] + [p[0][1:] + off for p, off in zip(parts, offsets)])
    return (indptr, np.concatenate([p[1] for p in parts]).astype(np.int32, copy=False),
            np.concatenate([p[2] for p in parts]).astype(np.float32, copy=False))


def worker_load(task_stats: list[dict]) -> dict:
    """CPU seconds per worker process over the i2i tasks, and the busiest worker's share of the total."""
    per_worker: dict[int, float] = defaultdict(float)
    for s in task_stats:
        per_worker[s["pid"]] += s["cpu_s"]
    total = sum(per_worker.values())
    return {"workers": len(per_worker), "cpu_s": round(total, 3),
            "cpu_s_per_worker": sorted((round(v, 3) for v in per_worker.values()), reverse=True),
            "busiest_share": round(max(per_worker.values()) / total, 4) if total > 0 else 0.0,
            "peak_rss_mb_per_worker": sorted({s["pid"]: round(s["peak_rss_mb"], 1) for s in task_stats}.values(),
                                             reverse=True)}


def ray_tables(inputs: I2IInputs, config: ExportConfig, stats: dict | None = None) -> dict[str, object]:
    """The tables of ``export.recall.i2i.local_tables``, built by Ray tasks; ``stats`` (when given) receives
    the ranges, the per-table wall times and the per-task CPU records."""
    rc = config.ray
    ray_session(rc)
    n, n_parts = inputs.n_items, rc.workers * rc.ranges_per_worker
    started = time.perf_counter()
    itemcf_ref = ray.put(inputs.itemcf_csrs)
    swing_ref = itemcf_ref if inputs.shared_csrs else ray.put(inputs.swing_csrs)
    seq_ref = ray.put(inputs.sequences)
    put_s = time.perf_counter() - started

    ui, _, ii, iu = inputs.itemcf_csrs
    su, _, si, sus = inputs.swing_csrs
    sw = swing_params(config)
    bounds = {ITEMCF_FILE: split_ranges(item_work(ui, ii, iu), n_parts),
              SWING_FILE: split_ranges(item_work(su, si, sus, sw["max_users_per_item"], pair_term=True), n_parts),
              NEXT_FILE: split_ranges(np.diff(inputs.sequences[2]), n_parts)}   # occurrences per source item
    jobs = {ITEMCF_FILE: (itemcf_ref, itemcf_params(config)), SWING_FILE: (swing_ref, sw),
            NEXT_FILE: (seq_ref, next_params(config))}
    # every task is submitted at once, so a worker that finishes its ranges of one table goes on to the next
    pending = {name: [table_range.remote(KINDS[name], ref, n, params, int(lo), int(hi))
                      for lo, hi in zip(bounds[name][:-1], bounds[name][1:])]
               for name, (ref, params) in jobs.items()}
    user_bounds = split_ranges(np.diff(inputs.sequences[0]), n_parts)
    count_refs = [item_counts.remote(seq_ref, n, int(lo), int(hi)) for lo, hi in zip(user_bounds[:-1], user_bounds[1:])]

    out: dict[str, object] = {}
    task_stats: list[dict] = []
    wall: dict[str, float] = {}
    for name, refs in pending.items():
        results = ray.get(refs)
        out[name] = as_table(concat_ranges([r[0] for r in results]))
        task_stats += [r[1] for r in results]
        wall[name] = round(time.perf_counter() - started, 3)   # since submission: the tables overlap
    counts = ray.get(count_refs)
    out["popular"] = popular_order(np.sum([c[0] for c in counts], axis=0, dtype=np.int64), config.popular_n)
    task_stats += [c[1] for c in counts]
    del itemcf_ref, swing_ref, seq_ref   # the store frees the inputs once no task holds them
    load = worker_load(task_stats)
    log.info("ray_i2i_built", items=n, ranges=n_parts, put_s=round(put_s, 3),
             seconds=round(time.perf_counter() - started, 3), **load)
    if stats is not None:
        stats.update({"bounds": {k: v.tolist() for k, v in bounds.items()}, "put_s": put_s, "done_s": wall,
                      "wall_s": time.perf_counter() - started, "tasks": task_stats, **load})
    return out
