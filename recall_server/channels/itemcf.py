"""Item-to-item: the user's recent items' ItemCF neighbours (``i2i_itemcf.npz``), weighted by recency."""
from __future__ import annotations

from recall_server.channels._i2i import load_neighbor_table, score_history

FILE = "i2i_itemcf.npz"


def load(snapshot, config):
    """The validated ItemCF CSR table."""
    return load_neighbor_table(snapshot, FILE)


def recall(state, query, k):
    """See :func:`recall_server.channels._i2i.score_history`."""
    return score_history(state.tables["itemcf"], query, k)
