"""Input validation shared by the public kernel wrappers.

The njit kernels assume well-formed inputs (an out-of-range id there is a
silent out-of-bounds read, not an exception), so every public wrapper runs its
arguments through these helpers first. Every error is a ``ValueError`` whose
message starts with the offending parameter's name.
"""
from __future__ import annotations

import numbers

import numpy as np


def check_array(name: str, x, dtype, ndim: int = 1) -> np.ndarray:
    """Return ``x`` as a C-contiguous array after checking type, dtype and rank.

    The dtype must match exactly: silently casting e.g. int64 ids to int32
    could wrap large ids, and the project convention fixes the dtypes anyway.
    """
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != np.dtype(dtype):
        raise ValueError(f"{name} must have dtype {np.dtype(dtype).name}, got {x.dtype.name}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")
    # No copy when already contiguous; the kernels index assuming C order.
    return np.ascontiguousarray(x)


def check_same_length(name: str, x: np.ndarray, ref_name: str, ref: np.ndarray) -> None:
    """Raise unless ``x`` and ``ref`` have the same first dimension."""
    if x.shape[0] != ref.shape[0]:
        raise ValueError(
            f"{name} must have the same length as {ref_name} ({ref.shape[0]}), got {x.shape[0]}"
        )


def check_int(name: str, v, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``v`` as a Python int after checking it is an integer in range."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {type(v).__name__}")
    v = int(v)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def check_real(
    name: str,
    v,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
) -> float:
    """Return ``v`` as a finite Python float after checking its range."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if minimum is not None:
        if strict_minimum and v <= minimum:
            raise ValueError(f"{name} must be > {minimum}, got {v}")
        if not strict_minimum and v < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def check_finite(name: str, x: np.ndarray) -> None:
    """Raise ``ValueError("<name> contains NaN or inf")`` on any non-finite value."""
    if x.size and not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")


def check_offsets(name: str, offsets: np.ndarray, total: int) -> None:
    """Check a row-pointer array: starts at 0, non-decreasing, ends at ``total``."""
    if offsets.shape[0] < 1:
        raise ValueError(f"{name} must have at least one element")
    if offsets[0] != 0:
        raise ValueError(f"{name}[0] must be 0, got {offsets[0]}")
    if offsets[-1] != total:
        raise ValueError(f"{name}[-1] must equal the number of entries ({total}), got {offsets[-1]}")
    if offsets.shape[0] > 1 and np.any(np.diff(offsets) < 0):
        raise ValueError(f"{name} must be non-decreasing")


def _inner_positions(indptr: np.ndarray, nnz: int) -> np.ndarray:
    """Mask over ``np.diff(indices)`` marking consecutive pairs inside one row."""
    inner = np.ones(max(nnz - 1, 0), dtype=bool)
    # A row starting at position s > 0 makes the pair (s-1, s) straddle rows.
    starts = indptr[1:-1]
    starts = starts[(starts > 0) & (starts < nnz)]
    inner[starts - 1] = False
    return inner


def check_csr(
    indptr_name: str,
    indptr: np.ndarray,
    indices_name: str,
    indices: np.ndarray,
    n_cols: int,
    sorted_unique: bool,
) -> int:
    """Validate CSR structure arrays (already dtype-checked); return ``n_rows``.

    ``sorted_unique`` additionally requires strictly increasing column indices
    within each row, which the set-intersection kernels rely on and which
    ``build_csr``/``transpose_csr`` guarantee.
    """
    check_offsets(indptr_name, indptr, indices.shape[0])
    nnz = indices.shape[0]
    if nnz:
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= n_cols:
            raise ValueError(f"{indices_name} must lie in [0, {n_cols}), got values in [{lo}, {hi}]")
        if sorted_unique and nnz > 1:
            # int64 so the difference cannot wrap.
            steps = np.diff(indices.astype(np.int64))
            if np.any((steps <= 0) & _inner_positions(indptr, nnz)):
                raise ValueError(f"{indices_name} must be strictly increasing within each row")
    return indptr.shape[0] - 1


def check_sorted_desc_segments(name: str, values: np.ndarray, offsets: np.ndarray) -> None:
    """Raise unless ``values`` is non-increasing inside every ``offsets`` segment."""
    n = values.shape[0]
    if n > 1:
        rises = np.diff(values) > 0
        if np.any(rises & _inner_positions(offsets, n)):
            raise ValueError(f"{name} must be sorted in descending order within each channel")
