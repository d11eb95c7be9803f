"""Item-to-item: the user's recent items' Swing neighbours (``i2i_swing.npz``), weighted by recency."""
from __future__ import annotations

from recall_server.channels._i2i import load_neighbor_table, score_history

FILE = "i2i_swing.npz"


def load(snapshot, config):
    """The validated Swing CSR table."""
    return load_neighbor_table(snapshot, FILE)


def recall(state, query, k):
    """See :func:`recall_server.channels._i2i.score_history`."""
    return score_history(state.tables["swing"], query, k)
