"""Building and transposing CSR matrices from interaction logs.

A CSR matrix here is the triple ``(indptr int64[n_rows+1], indices int32[nnz],
data float32[nnz])``. Both builders emit rows whose column indices are sorted
and unique, which the similarity kernels rely on (merge/bucket intersections,
no double counting).
"""
from __future__ import annotations

import numba
import numpy as np

from ._validate import check_array, check_csr, check_finite, check_int, check_same_length


@numba.njit(cache=True)
def _build_csr(rows, cols, vals, n_rows, n_cols):
    n = rows.shape[0]
    # LSD radix sort in two stable counting-sort passes (column, then row):
    # O(n + n_rows + n_cols) and no comparison sort, so a 10^8-entry log
    # stays linear.
    col_start = np.zeros(n_cols + 1, np.int64)
    for k in range(n):
        col_start[cols[k] + 1] += 1
    for c in range(n_cols):
        col_start[c + 1] += col_start[c]
    by_col = np.empty(n, np.int64)
    for k in range(n):
        c = cols[k]
        by_col[col_start[c]] = k
        col_start[c] += 1

    row_start = np.zeros(n_rows + 1, np.int64)
    for k in range(n):
        row_start[rows[k] + 1] += 1
    for r in range(n_rows):
        row_start[r + 1] += row_start[r]
    cursor = row_start[:n_rows].copy()
    order = np.empty(n, np.int64)
    for t in range(n):
        k = by_col[t]
        r = rows[k]
        order[cursor[r]] = k
        cursor[r] += 1

    # Entries are now grouped by row with ascending columns, so duplicates of
    # a (row, col) pair are adjacent: keep one, with the largest value (an
    # interaction log may repeat a pair; summing would overweight repeats).
    indptr = np.zeros(n_rows + 1, np.int64)
    indices = np.empty(n, np.int32)
    data = np.empty(n, np.float32)
    out = 0
    for r in range(n_rows):
        row_first = out
        for t in range(row_start[r], row_start[r + 1]):
            k = order[t]
            c = cols[k]
            v = vals[k]
            if out > row_first and indices[out - 1] == c:
                if v > data[out - 1]:
                    data[out - 1] = v
            else:
                indices[out] = c
                data[out] = v
                out += 1
        indptr[r + 1] = out
    return indptr, indices[:out].copy(), data[:out].copy()


@numba.njit(cache=True)
def _transpose_csr(indptr, indices, data, n_cols):
    n_rows = indptr.shape[0] - 1
    nnz = indices.shape[0]
    t_indptr = np.zeros(n_cols + 1, np.int64)
    for k in range(nnz):
        t_indptr[indices[k] + 1] += 1
    for c in range(n_cols):
        t_indptr[c + 1] += t_indptr[c]
    cursor = t_indptr[:n_cols].copy()
    t_indices = np.empty(nnz, np.int32)
    t_data = np.empty(nnz, np.float32)
    # Scanning source rows in increasing order makes every output row sorted
    # by construction, so no per-row sort is needed.
    for r in range(n_rows):
        for k in range(indptr[r], indptr[r + 1]):
            c = indices[k]
            p = cursor[c]
            t_indices[p] = r
            t_data[p] = data[k]
            cursor[c] = p + 1
    return t_indptr, t_indices, t_data


def build_csr(
    rows: np.ndarray,
    cols: np.ndarray,
    n_rows: int,
    values: np.ndarray | None = None,
    n_cols: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Build a CSR matrix from coordinate lists (e.g. user, item of a log).

    Args:
        rows: int32[n] row ids in ``[0, n_rows)``.
        cols: int32[n] column ids in ``[0, n_cols)``.
        n_rows: number of rows of the result (rows without entries are empty).
        values: float32[n] finite entry values, or None for all ones.
        n_cols: number of columns; defaults to ``max(cols) + 1`` (0 if empty).
            Only used for validation and the radix sort's bucket count.

    Returns:
        ``(indptr int64[n_rows+1], indices int32[nnz], data float32[nnz])``
        with column indices sorted ascending within each row. A repeated
        ``(row, col)`` pair is stored once, with the maximum of its values.
    """
    rows = check_array("rows", rows, np.int32)
    cols = check_array("cols", cols, np.int32)
    check_same_length("cols", cols, "rows", rows)
    n_rows = check_int("n_rows", n_rows, minimum=0)
    if values is None:
        values = np.ones(rows.shape[0], np.float32)
    else:
        values = check_array("values", values, np.float32)
        check_same_length("values", values, "rows", rows)
        check_finite("values", values)
    n = rows.shape[0]
    if n_cols is None:
        if n and int(cols.min()) < 0:
            raise ValueError(f"cols must be >= 0, got {int(cols.min())}")
        n_cols = int(cols.max()) + 1 if n else 0
    else:
        n_cols = check_int("n_cols", n_cols, minimum=0)
    if n:
        lo, hi = int(rows.min()), int(rows.max())
        if lo < 0 or hi >= n_rows:
            raise ValueError(f"rows must lie in [0, {n_rows}), got values in [{lo}, {hi}]")
        lo, hi = int(cols.min()), int(cols.max())
        if lo < 0 or hi >= n_cols:
            raise ValueError(f"cols must lie in [0, {n_cols}), got values in [{lo}, {hi}]")
    return _build_csr(rows, cols, values, n_rows, n_cols)


def transpose_csr(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    n_cols: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Transpose a CSR matrix (e.g. user->items into item->users).

    Args:
        indptr: int64[n_rows+1] row pointers.
        indices: int32[nnz] column ids in ``[0, n_cols)``; need not be sorted.
        data: float32[nnz] values.
        n_cols: number of columns, i.e. number of rows of the result.

    Returns:
        ``(indptr int64[n_cols+1], indices int32[nnz], data float32[nnz])``;
        each output row lists its source rows in ascending order.
    """
    indptr = check_array("indptr", indptr, np.int64)
    indices = check_array("indices", indices, np.int32)
    data = check_array("data", data, np.float32)
    check_same_length("data", data, "indices", indices)
    n_cols = check_int("n_cols", n_cols, minimum=0)
    check_csr("indptr", indptr, "indices", indices, n_cols, sorted_unique=False)
    return _transpose_csr(indptr, indices, data, n_cols)
