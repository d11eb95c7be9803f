"""Cold start: the most popular items among users of the same demographic segment (e.g. age x gender).

``popular_segments.npz`` (``export.recall.tables.popular_segments``) maps profile codes to a segment key
and holds each segment's popular list as CSR. An unknown user (all profile codes 0) falls in the
"unknown" segment, usually empty: global popular and ANN on the empty profile cover it.
"""
from __future__ import annotations

import numpy as np

from common.snapshot import SnapshotError
from recall_server.channels import RecallQuery, empty, ranked

FILE = "popular_segments.npz"


def load(snapshot, config) -> dict[str, np.ndarray]:
    """The segment table, checked for consistent shapes and in-range ids; SnapshotError naming it."""
    n_items = int(snapshot.schema["n_items"])
    n_user_fields = len(snapshot.schema["user_cat_names"])
    path = snapshot.path / FILE
    seg = snapshot.load_npz(FILE)
    try:
        fields, code_bucket, radix = seg["fields"], seg["code_bucket"], seg["radix"]
        indptr, indices = seg["indptr"].astype(np.int64), seg["indices"].astype(np.int32)
        n_segments = indptr.size - 1
        ok = (fields.ndim == 1 and (fields.size == 0 or 0 <= fields.min() <= fields.max() < n_user_fields)
              and code_bucket.ndim == 2 and code_bucket.shape[0] == fields.size == radix.size and n_segments >= 1
              and indptr[0] == 0 and indptr[-1] == indices.size and np.all(np.diff(indptr) >= 0)
              and (indices.size == 0 or (indices.min() >= 0 and indices.max() < n_items))
              and (code_bucket.size == 0 or code_bucket.min() >= 0)
              and int((code_bucket.max(axis=1, initial=0) * radix).sum()) < n_segments)
    except (KeyError, ValueError, IndexError) as exc:
        raise SnapshotError(f"segment table {path} is invalid: {exc}") from None
    if not ok:
        raise SnapshotError(f"segment table {path} is inconsistent (shapes, offsets or ids); re-run export")
    return {"fields": fields.astype(np.int64), "code_bucket": code_bucket.astype(np.int64),
            "radix": radix.astype(np.int64), "indptr": indptr, "indices": indices}


def recall(state, query: RecallQuery, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The user's segment's popular list, first ``k`` plus as many as may be excluded."""
    seg = state.tables["segment_popular"]
    if k <= 0:
        return empty()
    codes = query.user_cat[seg["fields"]]
    width = seg["code_bucket"].shape[1]
    codes = np.where((codes >= 0) & (codes < width), codes, 0)  # an out-of-vocabulary code is unknown
    key = int((seg["code_bucket"][np.arange(codes.size), codes] * seg["radix"]).sum())
    return ranked(seg["indices"][seg["indptr"][key]:seg["indptr"][key + 1]][: k + query.exclude.size])
