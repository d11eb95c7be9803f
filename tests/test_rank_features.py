"""Tests of the shared rank feature schema (common.rank_features)."""
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from common.rank_features import RankSchema, assemble, context_codes


def _schema() -> RankSchema:
    return RankSchema.from_dataset_meta(
        n_users=10,
        n_items=20,
        user_cat_names=["age", "gender"],
        user_cat_vocab=[5, 3],
        item_cat_names=["year"],
        item_cat_vocab=[4],
        bag_names=["Action", "Comedy", "Drama"],
    )


def test_schema_field_order_and_vocab():
    s = _schema()
    assert s.field_names == ["user_id", "item_id", "user:age", "user:gender", "item:year", "hour", "weekday"]
    assert s.field_vocab == [11, 21, 5, 3, 4, 25, 8]
    assert s.bag_names == ["Action", "Comedy", "Drama"]
    assert (s.n_fields, s.n_bag, s.n_user_fields, s.n_item_fields) == (7, 3, 2, 1)


def test_schema_dict_round_trip_is_json():
    s = _schema()
    d = json.loads(json.dumps(s.to_dict()))
    assert RankSchema.from_dict(d) == s


def test_schema_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        RankSchema(field_names=["a", "b"], field_vocab=[3], bag_names=[])
    with pytest.raises(ValueError):
        RankSchema.from_dataset_meta(1, 1, ["a"], [], [], [], [])


def test_context_codes_match_datetime():
    rng = np.random.default_rng(0)
    ts = np.concatenate([rng.integers(-10**9, 2 * 10**9, 500), [0, -1, 86399, 86400, 1700000000]])
    hour, weekday = context_codes(ts)
    assert hour.dtype == np.int64 and weekday.dtype == np.int64
    for t, h, w in zip(ts.tolist(), hour.tolist(), weekday.tolist()):
        dt = datetime.fromtimestamp(t, tz=timezone.utc)
        assert h == dt.hour + 1
        assert w == dt.isoweekday()  # Monday = 1 .. Sunday = 7
    assert hour.min() >= 1 and hour.max() <= 24 and weekday.min() >= 1 and weekday.max() <= 7


def test_context_codes_scalar():
    h, w = context_codes(0)  # 1970-01-01 00:00 UTC, a Thursday
    assert int(h) == 1 and int(w) == 4


def test_assemble_scalar_user_broadcasts_and_matches_per_row():
    s = _schema()
    items = np.array([1, 5, 20], dtype=np.int64)
    item_cat = np.array([[1], [2], [3]])
    item_bag = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]], dtype=np.uint8)
    sparse, bag = assemble(s, 3, np.array([2, 1]), items, item_cat, item_bag, 5, 2)
    assert sparse.dtype == np.int64 and sparse.shape == (3, 7)
    assert bag.dtype == np.float32 and bag.shape == (3, 3)
    np.testing.assert_array_equal(sparse[:, 0], 3)
    np.testing.assert_array_equal(sparse[:, 1], items)
    np.testing.assert_array_equal(sparse[:, 2:4], [[2, 1]] * 3)
    np.testing.assert_array_equal(sparse[:, 4], [1, 2, 3])
    np.testing.assert_array_equal(sparse[:, 5], 5)
    np.testing.assert_array_equal(sparse[:, 6], 2)
    np.testing.assert_array_equal(bag, item_bag)

    per_row, bag2 = assemble(
        s, np.full(3, 3), np.tile([2, 1], (3, 1)), items, item_cat, item_bag, np.full(3, 5), np.full(3, 2)
    )
    np.testing.assert_array_equal(per_row, sparse)
    np.testing.assert_array_equal(bag2, bag)


def test_assemble_out_of_range_codes_become_unknown():
    s = _schema()  # vocab [11, 21, 5, 3, 4, 25, 8]
    sparse, _ = assemble(
        s,
        np.array([11, -1, 10]),                 # 11 == n_users + 1 is out of range
        np.array([[5, 2], [4, -3], [0, 3]]),    # age vocab 5, gender vocab 3
        np.array([21, 20, 99]),                 # n_items + 1 = 21 is the vocab size
        np.array([[4], [3], [-1]]),
        np.zeros((3, 3)),
        np.array([25, 24, 0]),
        np.array([8, 7, -2]),
    )
    expected = np.array([
        [0, 0, 0, 2, 0, 0, 0],
        [0, 20, 4, 0, 3, 24, 7],
        [10, 0, 0, 0, 0, 0, 0],
    ])
    np.testing.assert_array_equal(sparse, expected)


def test_assemble_does_not_modify_inputs():
    s = _schema()
    user_cat = np.array([9, 9])
    item_codes = np.array([50])
    assemble(s, 1, user_cat, item_codes, np.array([[1]]), np.zeros((1, 3)), 1, 1)
    np.testing.assert_array_equal(user_cat, [9, 9])
    np.testing.assert_array_equal(item_codes, [50])


def test_assemble_rejects_bad_shapes():
    s = _schema()
    with pytest.raises(ValueError):
        assemble(s, 1, np.array([1, 1, 1]), np.array([1, 2]), np.ones((2, 1)), np.zeros((2, 3)), 1, 1)
    with pytest.raises(ValueError):
        assemble(s, 1, np.array([1, 1]), np.array([1, 2]), np.ones((2, 1)), np.zeros((2, 4)), 1, 1)
    with pytest.raises(ValueError):
        assemble(s, np.array([1, 2, 3]), np.array([1, 1]), np.array([1, 2]), np.ones((2, 1)), np.zeros((2, 3)), 1, 1)


def test_assemble_empty_batch():
    s = _schema()
    sparse, bag = assemble(s, 1, np.array([1, 1]), np.zeros(0), np.zeros((0, 1)), np.zeros((0, 3)), 1, 1)
    assert sparse.shape == (0, 7) and bag.shape == (0, 3)


def test_module_does_not_import_torch():
    """The rank server imports this module and must stay free of torch."""
    code = "import sys, common.rank_features; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
