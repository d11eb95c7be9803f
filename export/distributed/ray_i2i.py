"""Item-range kernels as Ray tasks: the engine behind ``engine = "ray"`` (``export.recall.i2i`` says what to run).

* **Inputs once.** Each job's input arrays are put in Ray's object store once (``ray.put``; jobs passing
  the same tuple share it); every task on a node maps the same copy, since numpy arrays come out of the
  store zero-copy (read-only, which the kernels never write to).
* **Ranges of equal work.** Each job is cut into ``workers * ranges_per_worker`` contiguous ranges of
  anchor items of about equal work (``kernels.i2i_ranges``); a task runs the unchanged Numba kernel over
  its range on one thread. A row depends on the inputs alone (every user pair of U(i) is formed inside
  item i's row, so Swing needs no shuffle of user pairs), and the driver concatenates the ranges in
  order: the result is the one-process build, bit for bit (tests/test_ray_parity.py).
* **Counts by user.** Item counts are summed from tasks over ranges of users (integers: exact in any order).

Each task reports its process's CPU seconds and peak RSS, so a run can say how evenly the workers were
loaded (``stats``). The workers import only ``export.distributed.tasks`` (kernels, numpy, Ray). This module
imports nothing of the export above it: the settings come as any object with ``RayConfig``'s fields.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import ray

from common.log import get_logger
from export.distributed.tasks import item_counts, table_range
from kernels.i2i_ranges import split_ranges

log = get_logger("export.ray")
_session_key: tuple | None = None
# each distributed phase of this process, in order: its workers' CPU and peak memory (the manifest's "ray")
_phases: list[dict] = []


def record_phase(name: str, load: dict) -> None:
    """Note one distributed phase (an i2i build's range tasks, a Ray Train run) for :func:`phases`."""
    _phases.append({"phase": name, **load})


def phases(reset: bool = False) -> list[dict]:
    """The phases recorded since the last reset, in the order they ran."""
    out = list(_phases)
    if reset:
        _phases.clear()
    return out


@dataclass
class RangeJob:
    """One table to build by ranges of anchor items."""

    kind: str                 # the kernel (export.distributed.tasks.KERNELS: itemcf, swing, next)
    arrays: tuple             # its input arrays; jobs passing the same tuple share one copy in the store
    n_items: int
    params: dict              # the kernel's keyword arguments besides lo, hi
    work: np.ndarray          # estimated cost per anchor item (kernels.i2i_ranges), for the equal-work cut


def ray_session(rc) -> None:
    """Connect to ``rc.address``, or start a local cluster with ``rc.workers`` CPUs (``address = "local"``);
    a call with the same settings reuses the session (an export's three builds share one)."""
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
    """CPU seconds per worker process over the tasks, and the busiest worker's share of the total."""
    per_worker: dict[int, float] = defaultdict(float)
    for s in task_stats:
        per_worker[s["pid"]] += s["cpu_s"]
    total = sum(per_worker.values())
    return {"workers": len(per_worker), "cpu_s": round(total, 3),
            "cpu_s_per_worker": sorted((round(v, 3) for v in per_worker.values()), reverse=True),
            "busiest_share": round(max(per_worker.values()) / total, 4) if total > 0 else 0.0,
            "peak_rss_mb_per_worker": sorted({s["pid"]: round(s["peak_rss_mb"], 1) for s in task_stats}.values(),
                                             reverse=True)}


def run_ranges(jobs: dict[str, RangeJob], rc, count_arrays: tuple | None = None, n_items: int = 0,
               stats: dict | None = None) -> tuple[dict[str, tuple], np.ndarray | None]:
    """Build every job's table by range tasks on the cluster of ``rc`` (``RayConfig``'s fields), and, with
    ``count_arrays`` (a sequence CSR, ``kernels.next_item``), the int64 item counts of its rows.

    Returns ``({name: (indptr, indices, scores)}, counts or None)``; ``stats`` (when given) receives the
    ranges, the seconds until each table was done, and the per-task CPU records.
    """
    ray_session(rc)
    n_parts = rc.workers * rc.ranges_per_worker
    started = time.perf_counter()
    refs: dict[int, ray.ObjectRef] = {}
    for arrays in [job.arrays for job in jobs.values()] + ([count_arrays] if count_arrays is not None else []):
        if id(arrays) not in refs:
            refs[id(arrays)] = ray.put(arrays)
    put_s = time.perf_counter() - started
    bounds = {name: split_ranges(job.work, n_parts) for name, job in jobs.items()}
    # every task is submitted at once, so a worker done with its ranges of one table goes on to the next
    pending = {name: [table_range.remote(job.kind, refs[id(job.arrays)], job.n_items, job.params, int(lo), int(hi))
                      for lo, hi in zip(bounds[name][:-1], bounds[name][1:])]
               for name, job in jobs.items()}
    count_refs = []
    if count_arrays is not None:
        user_bounds = split_ranges(np.diff(count_arrays[0]), n_parts)
        count_refs = [item_counts.remote(refs[id(count_arrays)], n_items, int(lo), int(hi))
                      for lo, hi in zip(user_bounds[:-1], user_bounds[1:])]

    tables: dict[str, tuple] = {}
    task_stats: list[dict] = []
    done: dict[str, float] = {}
    for name, table_refs in pending.items():
        results = ray.get(table_refs)
        tables[name] = concat_ranges([r[0] for r in results])
        task_stats += [r[1] for r in results]
        done[name] = round(time.perf_counter() - started, 3)   # since submission: the tables overlap
    counts = None
    if count_refs:
        results = ray.get(count_refs)
        counts = np.sum([r[0] for r in results], axis=0, dtype=np.int64)
        task_stats += [r[1] for r in results]
    refs.clear()   # the store frees the inputs once no task holds them
    load = worker_load(task_stats)
    log.info("ray_ranges_built", tables=list(jobs), ranges=n_parts, put_s=round(put_s, 3),
             seconds=round(time.perf_counter() - started, 3), **load)
    record_phase("i2i", {"tables": list(jobs), "ranges": n_parts, "wall_s": round(time.perf_counter() - started, 3),
                         **load})
    if stats is not None:
        stats.update({"bounds": {k: v.tolist() for k, v in bounds.items()}, "put_s": put_s, "done_s": done,
                      "wall_s": time.perf_counter() - started, "tasks": task_stats, **load})
    return tables, counts
