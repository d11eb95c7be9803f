"""The one way a server opens an ONNX model: onnxruntime on the CPU with a fixed thread count.

Workers must not oversubscribe the cores (replicas, not threads, use them; ``common.compute_threads``), and a
model that cannot be loaded is a ``SnapshotError`` naming the file, refused like any other bad snapshot.
"""
from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from common.snapshot import SnapshotError


def onnx_session(path: Path | str, threads: int) -> ort.InferenceSession:
    """A CPU session of ``path`` on ``threads`` intra-op threads, sequential execution."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise SnapshotError(f"model {path} cannot be loaded: {exc}") from None
