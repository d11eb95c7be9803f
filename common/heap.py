"""Keep a server's long-lived objects out of the cyclic garbage collector's full passes.

After start-up a server process holds ~10^5 tracked objects that live as long as it does (numba's and
onnxruntime's modules, the loaded state). Every full (generation 2) collection walks them all: 47 ms in a
recall server over a 10^6-item snapshot, a stall that lands on whichever requests are in flight, every
few hundred requests. ``gc.freeze`` moves everything that exists now into a permanent generation the
collector skips. Objects that die later by reference count are still freed at once; only a frozen
*cycle* stays, so after a hot reload ``refreeze`` unfreezes, collects (the retired version's cycles go
then, once) and freezes the new state.
"""
from __future__ import annotations

import gc
import time

from common.log import Logger

_frozen = False   # set by freeze(): refreeze() does nothing in a process that never froze (tests, tools)


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


def refreeze(log: Logger) -> None:
    """After a hot reload: let the retired version's cycles be collected, then freeze the new state
    (one full collection, off the request path, on the reload thread)."""
    if not _frozen:
        return
    gc.unfreeze()
    freeze(log)
