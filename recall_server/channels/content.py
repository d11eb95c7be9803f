"""Cold start for new items: items with no training interactions whose content vector (the item tower
without the id) is nearest to the user's recent items', weighted by recency.

``i2i_content.npz`` (``export.recall.tables.content_table``) holds ``row`` (item -> table row, items
sharing a row share neighbours) and the neighbours as CSR. Snapshots exported before this channel have
no such file: the channel then returns nothing.
"""
from __future__ import annotations

import numpy as np

from common.snapshot import SnapshotError
from kernels.i2i_score import i2i_score
from recall_server.channels import RecallQuery, empty

FILE = "i2i_content.npz"


def load(snapshot, config) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """``(row, indptr, indices, scores)``, validated; None when the snapshot has no content table."""
    if not snapshot.has_file(FILE):
        return None
    n_items = int(snapshot.schema["n_items"])
    path = snapshot.path / FILE
    table = snapshot.load_npz(FILE)
    try:
        row, indptr = table["row"].astype(np.int64), table["indptr"].astype(np.int64)
        indices, scores = table["indices"].astype(np.int32), table["scores"].astype(np.float32)
        ok = (row.shape == (n_items,) and indptr.ndim == 1 and indptr.size >= 1 and indptr[0] == 0
              and indptr[-1] == indices.size == scores.size and bool(np.all(np.diff(indptr) >= 0))
              and (row.size == 0 or 0 <= row.min() <= row.max() < indptr.size - 1)
              and (indices.size == 0 or 0 <= indices.min() <= indices.max() < n_items)
              and bool(np.isfinite(scores).all()))
    except (KeyError, ValueError) as exc:
        raise SnapshotError(f"i2i table {path} is invalid: {exc}") from None
    if not ok:
        raise SnapshotError(f"i2i table {path} is inconsistent (shapes, offsets, ids or scores); re-run export")
    return row, indptr, indices, scores


def recall(state, query: RecallQuery, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Recency-weighted content neighbours of the history items, top ``k``, excluded items skipped."""
    table = state.tables.get("content")
    if query.hist.size == 0 or k <= 0 or table is None:
        return empty()
    row, indptr, indices, scores = table
    items = query.hist.astype(np.int64) - 1
    rows = np.where(items >= 0, row[np.maximum(items, 0)], -1).astype(np.int32)  # unknown ids: ignored
    return i2i_score(rows, query.hist_weights, indptr, indices, scores, k, query.exclude)
