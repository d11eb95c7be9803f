"""Keep a server's long-lived objects out of the cyclic garbage collector's full passes.

After start-up a server process holds ~10^5 tracked objects that live as long as it does (numba's and
onnxruntime's modules, the loaded state). Every full (generation 2) collection walks them all: 47 ms in a
recall server over a 10^6-item snapshot, a stall that lands on whichever requests are in flight, every
few hundred requests. ``gc.freeze`` moves everything that exists now into a permanent generation the
collector skips. Objects that die later by reference count are still freed at once; only a frozen
*cycle* stays.

After a hot reload ``freeze_new`` collects the young generations and freezes the new state, without
walking the frozen heap. The full walk (``refreeze``: unfreeze, collect, freeze) held the GIL for 0.2-1 s per
server on the shared 2-core VM (130,000 objects; 0.1 ms for the few hundred a reload adds), and each
server ran it right after its switch: every request in flight on that server waited it out, the tail of
a swap (docs/results/2026-12-06-swap-tail.md). It is not needed for the retired version: a stage's or the
gateway's state has no reference cycle, so it is freed by reference count when its last holder lets go
(tests/test_swap_tail.py checks each). ``refreeze`` stays as the fallback ``common.reload`` takes when a
retired snapshot outlives its requests (a cycle someone added), once, logged.
"""
from __future__ import annotations

import gc
import time

from common.log import Logger

_frozen = False   # set by freeze(): refreeze() and freeze_new() do nothing in a process that never froze


def freeze(log: Logger | None = None) -> None:
    """Collect once, then freeze every object alive now; call when the server is loaded, before serving
    (or in a bench client before timing, whose own full passes would read as server latency)."""
    global _frozen
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    _frozen = True
    if log is not None:
        log.info("heap_frozen", objects=gc.get_freeze_count(),
                 ms=round((time.perf_counter() - started) * 1e3, 1))


def freeze_new(log: Logger) -> None:
    """After a hot reload: collect what is not frozen (the load's garbage; the frozen heap is not walked)
    and freeze what survives (the new state), so full passes stay as short as before the reload."""
    if not _frozen:
        return
    started, cpu = time.perf_counter(), time.thread_time()
    walked = len(gc.get_objects())   # the young generations: what the collection below walks
    gc.collect()
    added = len(gc.get_objects())    # what survived it: the new state, frozen next
    gc.freeze()
    # no gc.get_freeze_count() here: it counts the frozen heap by walking it (10-30 ms under the GIL at
    # 130,000 objects on the 2-core VM). ms is wall time, in which a busy machine makes the reload thread wait
    # for the GIL and a core, at no cost to serving; cpu_ms is what it ran
    log.info("heap_frozen", walked=walked, added=added, full=False,
             ms=round((time.perf_counter() - started) * 1e3, 1), cpu_ms=round((time.thread_time() - cpu) * 1e3, 2))


def refreeze(log: Logger) -> None:
    """Unfreeze, collect everything (frozen cycles included) and freeze again: one full walk of the heap
    under the GIL, a stall for every request in flight; only for cycles that ``freeze_new`` cannot free."""
    if not _frozen:
        return
    gc.unfreeze()
    freeze(log)
