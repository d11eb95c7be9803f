"""What the item-to-item channels (ItemCF, Swing) share: their CSR neighbour tables and how a history
scores against one. Not a channel itself (the leading underscore keeps it out of the channel list)."""
from __future__ import annotations

import numpy as np

from common.snapshot import SnapshotError
from kernels.i2i_score import check_neighbor_table, i2i_score
from recall_server.channels import RecallQuery, empty


def load_neighbor_table(snapshot, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A validated i2i CSR table ``(indptr int64, indices int32, scores float32)``; SnapshotError naming it."""
    table = snapshot.load_npz(name)
    try:
        check_neighbor_table(table["indptr"], table["indices"], table["scores"], int(snapshot.schema["n_items"]))
    except (KeyError, ValueError) as exc:
        raise SnapshotError(f"i2i table {snapshot.path / name} is invalid: {exc}") from None
    return (table["indptr"].astype(np.int64), table["indices"].astype(np.int32),
            table["scores"].astype(np.float32))


def score_history(table: tuple[np.ndarray, np.ndarray, np.ndarray], query: RecallQuery,
                  k: int) -> tuple[np.ndarray, np.ndarray]:
    """Recency-weighted sum of the history items' neighbour scores, top ``k``, excluded items skipped."""
    if query.hist.size == 0 or k <= 0:
        return empty()
    indptr, indices, scores = table
    return i2i_score(query.hist - 1, query.hist_weights, indptr, indices, scores, k, query.exclude)
