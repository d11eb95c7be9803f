"""The feedback store's parts against references: string hash, Bloom kernels, event and user-state layouts."""
from __future__ import annotations

import math

import numpy as np
import pytest

from feedback.config import FeedbackConfig
from feedback.events import Event, EventType, check_event, decode, encode
from feedback.user_state import UserState
from kernels.bloom import bloom_add, bloom_contains, bloom_size
from kernels.string_hash import hash_strings
from kernels.reference import ref_bloom_add, ref_bloom_contains, ref_string_hash


def test_string_hash_matches_reference():
    strings = ["", "a", "1", "item_42", "Ünïcødé ☃", "x" * 300] + [str(i) for i in range(200)]
    got = hash_strings(strings)
    assert got.dtype == np.uint64
    assert [int(h) for h in got] == [ref_string_hash(s) for s in strings]
    assert hash_strings(np.array(["1", "2"])).tolist() == hash_strings(["1", "2"]).tolist()
    assert len(set(hash_strings([str(i) for i in range(100000)]).tolist())) == 100000


def test_bloom_kernels_match_reference():
    rng = np.random.default_rng(0)
    n_bytes, k = bloom_size(200, 0.01)
    bits, ref = np.zeros(n_bytes, np.uint8), np.zeros(n_bytes, np.uint8)
    keys = rng.integers(0, 2**63, 200, dtype=np.uint64)
    bloom_add(bits, keys, k)
    ref_bloom_add(ref, keys, k)
    np.testing.assert_array_equal(bits, ref)
    probe = np.concatenate([keys, rng.integers(0, 2**63, 500, dtype=np.uint64)])
    np.testing.assert_array_equal(bloom_contains(bits, probe, k), ref_bloom_contains(ref, probe, k))
    assert bloom_contains(bits, keys, k).all()  # no false negatives


@pytest.mark.parametrize("capacity,rate", [(1000, 0.01), (100, 0.01), (5000, 0.001)])
def test_bloom_false_positive_rate_at_capacity(capacity, rate):
    n_bytes, k = bloom_size(capacity, rate)
    assert n_bytes * 8 >= -capacity * math.log(rate) / math.log(2) ** 2
    bits = np.zeros(n_bytes, np.uint8)
    bloom_add(bits, hash_strings([f"in{i}" for i in range(capacity)]), k)
    fp = bloom_contains(bits, hash_strings([f"out{i}" for i in range(200000)]), k).mean()
    assert fp <= rate * 1.3, fp  # the sized rate, with room for sampling noise


def test_bloom_rejects_bad_arguments():
    with pytest.raises(ValueError, match="bits"):
        bloom_add(np.zeros(4, np.int32), np.zeros(1, np.uint64), 3)
    with pytest.raises(ValueError, match="hashes"):
        bloom_contains(np.zeros(4, np.uint8), np.zeros(1, np.int64), 3)
    with pytest.raises(ValueError, match="k"):
        bloom_contains(np.zeros(4, np.uint8), np.zeros(1, np.uint64), 0)
    with pytest.raises(ValueError, match="fp_rate"):
        bloom_size(10, 0.0)


def test_event_record_round_trip_and_malformed():
    event = Event("u1", "i☃", EventType.RATING, 4.5, 1700000000.25, "req-1", "ev-9")
    assert decode(encode(event)) == event
    with pytest.raises(ValueError):
        decode(encode(event)[:-1])
    with pytest.raises(ValueError):
        decode(encode(event) + b"x")


@pytest.mark.parametrize("event,field", [
    (Event("", "i", 2), "user_id"), (Event("u", "", 2), "item_id"), (Event("u", "i", 0), "type"),
    (Event("u", "i", 9), "type"), (Event("u", "i", 4, float("nan")), "value"), (Event("u", "i", 4, 7.0), "value"),
    (Event("u", "i", 2, 0.0, -1.0), "timestamp"), (Event("u", "i", 2, 0.0, float("inf")), "timestamp"),
    (Event("u", "i", 2, 0.0, 2e9 + 1000), "timestamp"), (Event("u" * 300, "i", 2), "user_id"),
    (Event("u", "i", 2, event_id="e" * 300), "event_id"), (Event("u", "i\ud800", 2), "item_id"),
])
def test_check_event_names_the_field(event, field):
    problem = check_event(event, now=2e9, config=FeedbackConfig())
    assert problem is not None and problem.startswith(field), problem


def test_check_event_accepts_valid():
    assert check_event(Event("u", "i", EventType.CLICK, timestamp=2e9 + 10), 2e9, FeedbackConfig()) is None
    assert check_event(Event("u", "i", EventType.RATING, 5.0), 2e9, FeedbackConfig()) is None


def test_user_state_round_trip():
    state = UserState.empty(*bloom_size(100, 0.01), now=10.0)
    state.expose(hash_strings(["a", "b"]), 10.0, 100.0)
    for seq, item in enumerate(["x", "yé", "z"], start=5):
        state.add_history(seq, 11.0 + seq, item, history_len=2)
    back = UserState.decode(state.encode())
    np.testing.assert_array_equal(back.current, state.current)
    np.testing.assert_array_equal(back.previous, state.previous)
    assert back.hist_items == ["yé", "z"] and back.hist_seq.tolist() == [6, 7]
    assert back.recent_items(after_ts=17.0) == ["z"] and back.recent_items() == ["yé", "z"]
    assert (back.current_start, back.previous_start) == (10.0, -np.inf)
    with pytest.raises(ValueError):
        UserState.decode(state.encode()[:-1])


def test_exposure_ages_out_between_one_and_two_windows():
    window = 100.0
    state = UserState.empty(*bloom_size(100, 0.01), now=0.0)
    item = hash_strings(["seen"])
    state.expose(item, 50.0, window)
    for t in (50.0, 120.0, 149.9):  # within a window of the impression: always filtered
        assert state.exposed(item, t, window)[0]
    state.expose(hash_strings(["other"]), 160.0, window)  # rotation: the impression moves to the previous
    assert state.exposed(item, 160.0, window)[0]
    assert not state.exposed(item, 200.0, window)[0]  # its generation (started at 0) is 2 windows old
    state.expose(hash_strings(["late"]), 1000.0, window)  # idle two windows: both generations dropped
    assert not state.exposed(hash_strings(["other"]), 1000.0, window)[0]
