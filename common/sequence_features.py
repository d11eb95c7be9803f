"""The user-sequence score as a ranking feature (issue 30), shared by export's replay and the rank server.

A snapshot with a sequence encoder (``export.models.sequence``) holds ``models/sequence.onnx`` (``hist`` int64
[batch, history_len] item codes, most recent last, left-padded with 0 → ``state`` float32 [batch, dim]) and
``sequence_items.npy`` (float32 [n_items, dim], row i = dense item i). Its rank schema then ends its dense
columns with ``seq_score``: each candidate's ``state · item_vec``.

Per request the history is encoded ONCE (one ONNX call on one row); each candidate then costs one gather and
one dot product (:meth:`SequenceScorer.column`). numpy and onnxruntime only: the rank server imports it.
"""
from __future__ import annotations

import numpy as np

from common.onnx_session import onnx_session
from common.snapshot import Snapshot, SnapshotError

SEQUENCE_FILE = "models/sequence.onnx"
SEQUENCE_ITEMS_FILE = "sequence_items.npy"
SEQ_COLUMN = "seq_score"


def split_dense_names(names: list[str]) -> tuple[list[str], bool]:
    """``(candidate feature names, has the sequence column)``: the sequence column is the last one when present."""
    if names and names[-1] == SEQ_COLUMN:
        return list(names[:-1]), True
    if SEQ_COLUMN in names:
        raise SnapshotError(f"dense feature '{SEQ_COLUMN}' must be the last column, got {names}")
    return list(names), False


def has_sequence(snapshot: Snapshot) -> bool:
    """Whether ``snapshot`` holds a sequence encoder."""
    return (snapshot.path / SEQUENCE_FILE).exists()


def window(hist_codes: np.ndarray, history_len: int) -> np.ndarray:
    """int64 [1, history_len]: the latest ``history_len`` non-padding codes, most recent last, left-padded."""
    h = np.asarray(hist_codes, np.int64).reshape(-1)
    h = h[h > 0][-history_len:]
    out = np.zeros((1, history_len), np.int64)
    if h.size:
        out[0, history_len - h.size:] = h
    return out


class SequenceScorer:
    """One snapshot's sequence encoder and item vectors (loaded once per snapshot version)."""

    def __init__(self, session, item_vecs: np.ndarray, history_len: int, path: str = "") -> None:
        self.session = session
        self.item_vecs = np.ascontiguousarray(item_vecs, np.float32)
        self.history_len = int(history_len)
        self.path = path

    @property
    def n_items(self) -> int:
        return int(self.item_vecs.shape[0])

    @classmethod
    def load(cls, snapshot: Snapshot, threads: int = 1) -> "SequenceScorer":
        """The encoder and item vectors of ``snapshot``; SnapshotError naming a missing or inconsistent file."""
        path = snapshot.file(SEQUENCE_FILE)
        session = onnx_session(path, threads)
        inputs = {i.name: i.shape for i in session.get_inputs()}
        outputs = {o.name: o.shape for o in session.get_outputs()}
        if set(inputs) != {"hist"} or "state" not in outputs or len(inputs["hist"]) != 2 \
                or not isinstance(inputs["hist"][1], int):
            raise SnapshotError(f"model {path} must map 'hist' [batch, history_len] to 'state'; it has inputs "
                                f"{inputs} and outputs {outputs}")
        vecs = snapshot.load_array(SEQUENCE_ITEMS_FILE)
        n_items = int(snapshot.schema["n_items"])
        dim = outputs["state"][-1]
        if vecs.ndim != 2 or vecs.shape[0] != n_items or (isinstance(dim, int) and vecs.shape[1] != dim):
            raise SnapshotError(f"{snapshot.path / SEQUENCE_ITEMS_FILE} has shape {vecs.shape}; the snapshot has "
                                f"{n_items} items and the encoder's state has {dim} dimensions")
        return cls(session, vecs, int(inputs["hist"][1]), str(path))

    def state(self, hist_codes: np.ndarray) -> np.ndarray:
        """float32 [dim]: the user state of one history (codes, most recent last; the latest ``history_len``)."""
        return self.session.run(["state"], {"hist": window(hist_codes, self.history_len)})[0][0]

    def states(self, hist: np.ndarray, batch: int = 4096) -> np.ndarray:
        """float32 [U, dim] for history rows int [U, history_len] (offline: export's replays)."""
        hist = np.asarray(hist, np.int64)
        if hist.ndim != 2 or hist.shape[1] != self.history_len:
            raise ValueError(f"hist must be [U, {self.history_len}], got {hist.shape}")
        out = [self.session.run(["state"], {"hist": np.ascontiguousarray(hist[s:s + batch])})[0]
               for s in range(0, hist.shape[0], batch)]
        return np.concatenate(out) if out else np.zeros((0, self.item_vecs.shape[1]), np.float32)

    def scores(self, state: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """float32 [C]: ``state · item_vec[c]`` for known dense ids ``cand``."""
        return self.item_vecs[np.asarray(cand, np.int64)] @ np.asarray(state, np.float32).reshape(-1)

    def column(self, hist_codes: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """float32 [C, 1]: one request's ``seq_score`` column (the history encoded once)."""
        cand = np.asarray(cand, np.int64)
        if cand.size == 0:
            return np.zeros((0, 1), np.float32)
        return self.scores(self.state(hist_codes), cand).astype(np.float32).reshape(-1, 1)

    def append(self, dense: np.ndarray, hist_codes: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """``dense`` [C, D] with the ``seq_score`` column appended: [C, D + 1]."""
        return np.concatenate([dense, self.column(hist_codes, cand)], axis=1)
