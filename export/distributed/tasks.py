"""What runs inside a Ray worker for the i2i build: the kernels over one range, and item counts of a user range.

This module imports numpy, Numba, Ray and ``kernels`` only (no torch, no export config), so a worker starts
small: it is what each worker process imports to run a task.
"""
from __future__ import annotations

import os
import resource
import time

import numba
import numpy as np
import ray

from kernels.itemcf import itemcf_topm
from kernels.next_item import next_item_topm
from kernels.swing import swing_topm

KERNELS = {"itemcf": itemcf_topm, "swing": swing_topm, "next": next_item_topm}


def _stats(kind: str, lo: int, hi: int, cpu0: float, wall0: float) -> dict:
    """The task's record: its range, its worker process, CPU and wall seconds, the process's peak RSS."""
    return {"table": kind, "lo": lo, "hi": hi, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
            "cpu_s": time.process_time() - cpu0, "wall_s": time.perf_counter() - wall0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


@ray.remote(num_cpus=1)
def table_range(kind: str, arrays: tuple, n_items: int, params: dict, lo: int, hi: int):
    """Rows ``[lo, hi)`` of one table (``kind``: itemcf, swing, next): the kernel on one thread, as the task
    holds one CPU. ``arrays`` come from the object store, read-only and shared by the node's workers."""
    numba.set_num_threads(1)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    out = KERNELS[kind](*arrays, n_items, lo=lo, hi=hi, **params)
    return out, _stats(kind, lo, hi, cpu0, wall0)


@ray.remote(num_cpus=1)
def item_counts(arrays: tuple, n_items: int, lo: int, hi: int):
    """Interaction counts per item over users ``[lo, hi)``; ``arrays`` starts with the sequence CSR, which
    holds every row of the log (repeats too), so the counts are those of the rows."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    seq_indptr, seq_items = arrays[0], arrays[1]
    counts = np.bincount(seq_items[seq_indptr[lo]:seq_indptr[hi]], minlength=n_items).astype(np.int64)
    return counts, _stats("popular", lo, hi, cpu0, wall0)
