"""kernels.merge.merge_quota against the numpy reference in kernels.reference."""
import numpy as np
import pytest

from kernels.merge import merge_quota
from kernels.reference import ref_merge_quota


def channels(lists):
    """Flat merge inputs from per-channel id lists (scores made descending)."""
    ids = np.concatenate([np.asarray(x, np.int32) for x in lists] + [np.empty(0, np.int32)])
    scores = np.concatenate([np.linspace(1.0, 0.0, len(x), dtype=np.float32) for x in lists]
                            + [np.empty(0, np.float32)])
    channel = np.repeat(np.arange(len(lists), dtype=np.int32), [len(x) for x in lists])
    offsets = np.r_[0, np.cumsum([len(x) for x in lists])].astype(np.int64)
    return ids, scores, channel, offsets


def assert_same(got, want):
    assert got[0].dtype == np.int32 and got[1].dtype == np.float32 and got[2].dtype == np.uint32
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
    np.testing.assert_array_equal(got[2], want[2])


@pytest.mark.parametrize("seed", range(8))
def test_merge_random(seed):
    rng = np.random.default_rng(seed)
    n_channels = int(rng.integers(1, 7))
    lists = [rng.choice(200, int(rng.integers(0, 80)), replace=False) for _ in range(n_channels)]
    if n_channels > 1:
        lists[1][:3] = -1  # padding entries
    quotas = rng.integers(0, 60, n_channels).astype(np.int32)
    exclude = rng.integers(0, 200, 30).astype(np.int32)
    ids, scores, channel, offsets = channels(lists)
    for n in (0, 5, 40, 1000):
        got = merge_quota(ids, scores, channel, offsets, quotas, exclude, n)
        assert_same(got, ref_merge_quota(ids, scores, channel, offsets, quotas, exclude, n))
    assert len(set(got[0].tolist())) == got[0].shape[0]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fusion", ["max", "rrf"])
def test_merge_weighted_random(seed, fusion):
    rng = np.random.default_rng(100 + seed)
    n_channels = int(rng.integers(1, 7))
    # overlapping lists from a small universe, so many ids are fused from several channels
    lists = [rng.choice(60, int(rng.integers(0, 50)), replace=False) for _ in range(n_channels)]
    quotas = rng.integers(0, 40, n_channels).astype(np.int32)
    weights = rng.choice([0.0, 0.05, 0.25, 1.0, 2.5], n_channels).astype(np.float32)
    exclude = rng.integers(0, 60, 10).astype(np.int32)
    ids, scores, channel, offsets = channels(lists)
    for n in (0, 7, 30, 1000):
        got = merge_quota(ids, scores, channel, offsets, quotas, exclude, n, weights, fusion, 7.0)
        assert_same(got, ref_merge_quota(ids, scores, channel, offsets, quotas, exclude, n, weights, fusion, 7.0))


def test_merge_rrf_hand_example():
    ids, scores, channel, offsets = channels([[7, 3, 9], [9, 8]])
    got = merge_quota(ids, scores, channel, offsets, np.array([3, 2], np.int32), np.array([3], np.int32), 10,
                      np.array([1.0, 0.5], np.float32), "rrf", 1.0)
    # ch0 keeps 7 (1/1), 9 (1/2); ch1 keeps 9 (0.5/1), 8 (0.5/2): 9 is found twice and sums to 1.0.
    np.testing.assert_array_equal(got[0], [7, 9, 8])
    np.testing.assert_allclose(got[1], [1.0, 1.0, 0.25])
    np.testing.assert_array_equal(got[2], [1, 3, 2])


def test_merge_hand_example():
    ids, scores, channel, offsets = channels([[7, 3, 9, 4], [3, 8, 7], [5]])
    quotas = np.array([2, 4, 1], np.int32)
    got = merge_quota(ids, scores, channel, offsets, quotas, np.array([3], np.int32), 10)
    # ch0 keeps 7 (1.0), 9 (0.5); ch1 keeps 8 (1.0), 7 (0.75); ch2 keeps 5 (1.0).
    np.testing.assert_array_equal(got[0], [5, 7, 8, 9])
    np.testing.assert_allclose(got[1], [1.0, 1.0, 1.0, 0.5])
    np.testing.assert_array_equal(got[2], [4, 3, 2, 1])


def test_merge_empty_and_zero_quota():
    ids, scores, channel, offsets = channels([])
    got = merge_quota(ids, scores, channel, offsets, np.empty(0, np.int32), np.empty(0, np.int32), 5)
    assert all(x.shape == (0,) for x in got)
    ids, scores, channel, offsets = channels([[1, 2], []])
    got = merge_quota(ids, scores, channel, offsets, np.array([0, 3], np.int32),
                      np.empty(0, np.int32), 5)
    assert all(x.shape == (0,) for x in got)


def test_merge_32_channels_fill_the_mask():
    lists = [[42]] * 32
    ids, scores, channel, offsets = channels(lists)
    got = merge_quota(ids, scores, channel, offsets, np.ones(32, np.int32), np.empty(0, np.int32), 3)
    np.testing.assert_array_equal(got[0], [42])
    assert got[2][0] == np.uint32(0xFFFFFFFF)


def test_merge_validation():
    ids, scores, channel, offsets = channels([[1, 2, 5], [3]])
    quotas = np.array([1, 1], np.int32)
    e = np.empty(0, np.int32)
    with pytest.raises(ValueError, match="^channel"):
        merge_quota(ids, scores, np.zeros(4, np.int32), offsets, quotas, e, 5)
    with pytest.raises(ValueError, match="^scores"):
        merge_quota(ids, scores[::-1].copy(), channel, offsets, quotas, e, 5)
    with pytest.raises(ValueError, match="^offsets"):
        merge_quota(ids, scores, channel, np.array([0, 2], np.int64), quotas, e, 5)
    with pytest.raises(ValueError, match="^quotas"):
        merge_quota(ids, scores, channel, offsets, np.array([1, -1], np.int32), e, 5)
    with pytest.raises(ValueError, match="^quotas"):
        merge_quota(*channels([[1]] * 33), np.ones(33, np.int32), e, 5)
    with pytest.raises(ValueError, match="^ids"):
        merge_quota(ids.astype(np.int64), scores, channel, offsets, quotas, e, 5)
    with pytest.raises(ValueError, match="^n"):
        merge_quota(ids, scores, channel, offsets, quotas, e, -3)
    with pytest.raises(ValueError, match="^weights"):
        merge_quota(ids, scores, channel, offsets, quotas, e, 5, np.array([1.0], np.float32))
    with pytest.raises(ValueError, match="^weights"):
        merge_quota(ids, scores, channel, offsets, quotas, e, 5, np.array([1.0, -1.0], np.float32))
    with pytest.raises(ValueError, match="^fusion"):
        merge_quota(ids, scores, channel, offsets, quotas, e, 5, None, "sum")
    with pytest.raises(ValueError, match="^rrf_k"):
        merge_quota(ids, scores, channel, offsets, quotas, e, 5, None, "rrf", 0.0)


@pytest.mark.parametrize("fusion", ["max", "rrf"])
def test_merge_rows_equals_one_call_per_row(fusion):
    """merge_quota_rows: each row's ids are merge_quota's on that row alone (a -1 padded row)."""
    from kernels.merge import merge_quota_rows
    rng = np.random.default_rng(7)
    n_channels, n = 4, 25
    quotas = np.array([10, 0, 30, 5], np.int32)
    weights = np.array([1.0, 0.5, 0.25, 2.0], np.float32)
    rows, excl, want = [], [], []
    for _ in range(9):
        lists = [rng.choice(80, int(rng.integers(0, 40)), replace=False) for _ in range(n_channels)]
        exclude = rng.integers(0, 80, int(rng.integers(0, 8))).astype(np.int32)
        ids, scores, channel, offsets = channels(lists)
        got = merge_quota(ids, scores, channel, offsets, quotas, exclude, n, weights, fusion, 7.0)[0]
        want.append(np.r_[got, np.full(n - got.size, -1)])
        rows.append((ids, scores, offsets))
        excl.append(exclude)
    starts = np.cumsum([0] + [r[0].size for r in rows])
    flat_offsets = np.stack([r[2] + s for r, s in zip(rows, starts)])
    exclude_ptr = np.cumsum([0] + [e.size for e in excl]).astype(np.int64)
    got = merge_quota_rows(np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows]),
                           flat_offsets, quotas, np.concatenate(excl), exclude_ptr, n, weights, fusion, 7.0)
    assert got.dtype == np.int32 and got.shape == (9, n)
    np.testing.assert_array_equal(got, np.stack(want))
    with pytest.raises(ValueError, match="previous one ends"):
        bad = flat_offsets.copy()
        bad[1:, 0] += 1
        merge_quota_rows(np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows]), bad,
                         quotas, np.concatenate(excl), exclude_ptr, n, weights, fusion, 7.0)
    with pytest.raises(ValueError, match="exclude_ptr"):
        merge_quota_rows(np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows]),
                         flat_offsets, quotas, np.concatenate(excl), exclude_ptr[:-1], n, weights, fusion, 7.0)
