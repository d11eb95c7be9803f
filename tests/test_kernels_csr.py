"""kernels.csr against the numpy references in kernels.reference."""
import numpy as np
import pytest

from kernels.csr import build_csr, transpose_csr
from kernels.reference import random_log, ref_build_csr, ref_transpose_csr


def assert_csr_equal(got, want):
    g_indptr, g_indices, g_data = got
    w_indptr, w_indices, w_data = want
    assert g_indptr.dtype == np.int64 and g_indices.dtype == np.int32 and g_data.dtype == np.float32
    np.testing.assert_array_equal(g_indptr, w_indptr)
    np.testing.assert_array_equal(g_indices, w_indices)
    np.testing.assert_array_equal(g_data, w_data)


@pytest.mark.parametrize("seed", range(5))
def test_build_csr_random_with_duplicates(seed):
    rng = np.random.default_rng(seed)
    rows, cols = random_log(rng, 50, 70, 2000)
    values = rng.integers(1, 6, rows.shape[0]).astype(np.float32)
    got = build_csr(rows, cols, 55, values, n_cols=70)  # rows 50..54 stay empty
    assert_csr_equal(got, ref_build_csr(rows, cols, 55, values))
    # The log repeats pairs, so dedupe must actually have happened.
    assert got[1].shape[0] < rows.shape[0]


def test_build_csr_keeps_max_of_duplicates_and_sorts_columns():
    rows = np.array([1, 0, 1, 1, 0], np.int32)
    cols = np.array([3, 2, 0, 3, 2], np.int32)
    values = np.array([1.0, 5.0, 2.0, 4.0, 3.0], np.float32)
    indptr, indices, data = build_csr(rows, cols, 3, values)
    np.testing.assert_array_equal(indptr, [0, 1, 3, 3])
    np.testing.assert_array_equal(indices, [2, 0, 3])
    np.testing.assert_array_equal(data, [5.0, 2.0, 4.0])


def test_build_csr_default_values_and_inferred_n_cols():
    rows = np.array([0, 0, 2], np.int32)
    cols = np.array([4, 4, 1], np.int32)
    got = build_csr(rows, cols, 3)
    assert_csr_equal(got, ref_build_csr(rows, cols, 3))
    np.testing.assert_array_equal(got[2], [1.0, 1.0])


def test_build_csr_empty():
    empty = np.empty(0, np.int32)
    indptr, indices, data = build_csr(empty, empty, 4)
    np.testing.assert_array_equal(indptr, np.zeros(5))
    assert indices.shape == (0,) and data.shape == (0,)
    indptr, _, _ = build_csr(empty, empty, 0)
    np.testing.assert_array_equal(indptr, [0])


@pytest.mark.parametrize("seed", range(3))
def test_transpose_csr_random(seed):
    rng = np.random.default_rng(seed)
    rows, cols = random_log(rng, 40, 60, 800)
    values = rng.random(rows.shape[0]).astype(np.float32)
    csr = build_csr(rows, cols, 40, values, n_cols=60)
    got = transpose_csr(*csr, 65)  # columns 60..64 are empty
    assert_csr_equal(got, ref_transpose_csr(*csr, 65))
    # Transposing twice gives the original back.
    assert_csr_equal(transpose_csr(*got, 40), csr)


def test_transpose_csr_unsorted_rows_and_empty():
    indptr = np.array([0, 3, 3, 5], np.int64)
    indices = np.array([2, 0, 1, 0, 2], np.int32)
    data = np.arange(5, dtype=np.float32)
    assert_csr_equal(transpose_csr(indptr, indices, data, 3),
                     ref_transpose_csr(indptr, indices, data, 3))
    out = transpose_csr(np.zeros(3, np.int64), np.empty(0, np.int32), np.empty(0, np.float32), 2)
    np.testing.assert_array_equal(out[0], [0, 0, 0])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(rows=np.array([0, 1], np.int64)), "rows"),
        (dict(cols=np.array([0], np.int32)), "cols"),
        (dict(rows=np.array([0, 3], np.int32)), "rows"),
        (dict(cols=np.array([0, -1], np.int32)), "cols"),
        (dict(n_rows=-1), "n_rows"),
        (dict(values=np.array([1.0, np.nan], np.float32)), "values"),
        (dict(values=np.array([1.0, 2.0], np.float64)), "values"),
        (dict(n_cols=1), "cols"),
    ],
)
def test_build_csr_validation(kwargs, name):
    args = dict(rows=np.array([0, 1], np.int32), cols=np.array([0, 1], np.int32), n_rows=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=f"^{name}"):
        build_csr(**args)


def test_transpose_csr_validation():
    indptr = np.array([0, 2], np.int64)
    indices = np.array([0, 5], np.int32)
    data = np.ones(2, np.float32)
    with pytest.raises(ValueError, match="^indices"):
        transpose_csr(indptr, indices, data, 3)
    with pytest.raises(ValueError, match=r"^indptr\[-1\]"):
        transpose_csr(np.array([0, 1], np.int64), indices, data, 6)
    with pytest.raises(ValueError, match="^data"):
        transpose_csr(indptr, indices, np.ones(3, np.float32), 6)
