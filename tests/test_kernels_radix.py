"""kernels.radix: stable radix argsort against numpy's stable argsort."""
import numpy as np
import pytest

from kernels.radix import radix_argsort


@pytest.mark.parametrize("n", [0, 1, 2, 17, 5000])
@pytest.mark.parametrize("low, high", [(0, 3), (0, 2048), (0, 5_000_000), (-1000, 1000),
                                       (-2**31, 2**31 - 1)])
def test_radix_argsort_is_stable_argsort(n, low, high):
    keys = np.random.default_rng(n).integers(low, high, n, endpoint=True).astype(np.int32)
    got = radix_argsort(keys)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, np.argsort(keys, kind="stable"))


def test_radix_argsort_constant_keys_keep_input_order():
    np.testing.assert_array_equal(radix_argsort(np.full(9, 7, np.int32)), np.arange(9))
