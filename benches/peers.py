"""Component peers measured in the bench run: hnswlib against exact numpy search, the Numba kernels
against numpy (``benches.kernel_timings``), and the machine the numbers come from."""
from __future__ import annotations

import os
import platform
import time

import numpy as np

from common.snapshot import Snapshot
from benches.loadgen import percentiles


def machine_info() -> dict:
    import grpc
    import numba
    import onnxruntime

    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "processor": platform.processor(), "numpy": np.__version__, "numba": numba.__version__,
            "onnxruntime": onnxruntime.__version__, "grpcio": grpc.__version__}


def ann_vs_exact(snapshot: Snapshot, users: list[str], k: int = 100, n_queries: int = 300) -> dict:
    """hnswlib against exact numpy inner-product search on the same user vectors: recall and latency."""
    from recall_server.channels.ann import user_vector
    from recall_server.config import RecallConfig
    from recall_server.recall import build_query
    from recall_server.state import load_state

    config = RecallConfig(snapshot=str(snapshot.path))
    state = load_state(snapshot, config)
    emb = snapshot.load_array("item_emb.npy")
    queries = np.stack([user_vector(state, build_query(state, config, u, None, [])[0])
                        for u in users[:n_queries]]).astype(np.float32)
    k = min(k, emb.shape[0])
    state.index.set_ef(max(config.hnsw_ef, k))
    out = {"items": int(emb.shape[0]), "dim": int(emb.shape[1]), "k": k, "ef": max(config.hnsw_ef, k)}
    hnsw_ms, exact_ms, overlap = [], [], []
    for q in queries:
        t0 = time.perf_counter()
        labels, _ = state.index.knn_query(q.reshape(1, -1), k=k)
        t1 = time.perf_counter()
        scores = emb @ q
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top])]
        t2 = time.perf_counter()
        hnsw_ms.append((t1 - t0) * 1000)
        exact_ms.append((t2 - t1) * 1000)
        overlap.append(np.intersect1d(labels[0], top).size / k)
    out.update({"hnswlib_ms": percentiles(hnsw_ms), "numpy_exact_ms": percentiles(exact_ms),
                "hnswlib_recall_vs_exact": float(np.mean(overlap))})
    try:
        import faiss  # optional peer
        index = faiss.IndexFlatIP(emb.shape[1])
        index.add(emb)
        t0 = time.perf_counter()
        for q in queries:
            index.search(q.reshape(1, -1), k)
        out["faiss_flat_ms_mean"] = (time.perf_counter() - t0) * 1000 / len(queries)
    except ImportError:
        out["faiss"] = "not installed"
    return out


def kernel_peers() -> list[dict]:
    """Numba kernels against vectorised numpy written for speed (``benches.numpy_peers``, where one exists)
    and against the test oracles (``benches.kernel_timings``), seconds per call."""
    from benches.kernel_timings import run as run_kernels

    return [{"kernel": name, "workload": workload, "first_call_s": first, "kernel_s": t, "fast_numpy_s": fast,
             "speedup_vs_fast_numpy": (fast / t) if fast else None, "oracle_s": ref,
             "speedup_vs_oracle": (ref / t) if ref else None}
            for name, workload, first, t, ref, fast in run_kernels()]
