"""One compute thread per server process for the numeric libraries (BLAS, OpenMP).

numpy's OpenBLAS starts one thread per visible core and splits a large enough product across them. A server
process runs one request's math at a time per handler and scales by replicas (docs/ARCHITECTURE.md §8), so those threads
only compete with the other processes on the box: a product split over two threads waits for the slower
one, and when another process holds a core that is a whole scheduler slice. Measured on the 2-core VM
(10^6 snapshot, in-process ``recall()`` timed per call for 1,500 users beside a ``while True: pass``
process): p90 / p99 8.5 / 9.9 ms and 8.4 / 11.5 ms with OpenBLAS's default 2 threads, 1.9 / 3.5 and
1.7 / 3.3 ms with 1. On a Kubernetes node the default would be the node's core count, not the pod's CPU
limit.

The launcher and the image also set ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS``, but a server started any
other way (``python -m recall_server``, a test, a different image) would not have them; ``limit`` applies the
configured count to the libraries already loaded, whatever the environment says. Numba's pool is sized at
import by ``NUMBA_NUM_THREADS`` (its runtime setting is per calling thread) and onnxruntime's by each
server's ``onnx_threads``; the serving kernels do not use numba's parallel pool.
"""
from __future__ import annotations

from common.log import Logger


def limit(threads: int, log: Logger | None = None) -> list[dict]:
    """Cap every BLAS / OpenMP thread pool loaded in this process at ``threads``; returns what threadpoolctl
    saw (library, API, threads before), and logs it as one ``compute_threads`` line."""
    from threadpoolctl import threadpool_info, threadpool_limits

    before = [{"library": i.get("internal_api"), "api": i.get("user_api"), "threads": i.get("num_threads")}
              for i in threadpool_info()]
    threadpool_limits(limits=threads)   # as a call (not a with-block) the limit stays for the process's life
    if log is not None:
        log.info("compute_threads", threads=threads, pools=before)
    return before


def current() -> dict[str, int]:
    """Threads per loaded pool now, by library (for tests and the health of a running process)."""
    from threadpoolctl import threadpool_info

    return {str(i.get("internal_api")): int(i.get("num_threads", 0)) for i in threadpool_info()}
