"""Item-to-item: the user's recent items' Swing neighbours (``i2i_swing.npz``), weighted by recency."""
from __future__ import annotations

import numpy as np

from kernels.i2i_score import i2i_score
from recall_server.channels import RecallQuery, empty
from recall_server.state import load_neighbor_table

FILE = "i2i_swing.npz"


def load(snapshot, config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The validated Swing CSR table."""
    return load_neighbor_table(snapshot, FILE, int(snapshot.schema["n_items"]))


def recall(state, query: RecallQuery, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Recency-weighted sum of the history items' neighbour scores, top ``k``, excluded items skipped."""
    if query.hist.size == 0 or k <= 0:
        return empty()
    indptr, indices, scores = state.tables["swing"]
    return i2i_score(query.hist - 1, query.hist_weights, indptr, indices, scores, k, query.exclude)
