"""The columnar write path against its references: the wire parser against protobuf, the batch checks against
``check_event``, log records against ``encode``, user-state records against ``UserState``, item sets against
a Python set."""
from __future__ import annotations

import math

import numpy as np
import pytest

from feedback.config import FeedbackConfig
from feedback.event_batch import EVENT, ITEM, USER, EventBatch, events_of
from feedback.events import Event, EventType, check_event, encode
from feedback.known_items import KnownItems
from feedback.state_update import CORRUPT, update_records
from feedback.user_state import UserState
from feedback.wire import parse_request
from kernels.bloom import bloom_size
from kernels.string_hash import hash_strings
from recsys.v2 import recommend_service_pb2 as pb

IDS = ["", "u", "ü☃", "𝄞x", "a" * 40, "x" * 257, "7", "same", "same"]


def _events(n: int, seed: int) -> list[Event]:
    rng = np.random.default_rng(seed)
    values = [0.0, 3.5, 5.0, 7.0, -1.0, float("nan"), float("inf"), 1e300]
    stamps = [0.0, 1.5e9, 2e9 + 299, 2e9 + 301, -1.0, float("nan"), float("-inf")]
    types = [0, 1, 2, 3, 4, 5, -1, 77, 2**31 - 1]
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    return [Event(pick(IDS), pick(IDS), pick(types), pick(values), pick(stamps), pick(IDS), pick(IDS))
            for _ in range(n)]


def _message(e: Event) -> pb.FeedbackEvent:
    return pb.FeedbackEvent(user_id=e.user_id, item_id=e.item_id, type=e.type, value=e.value,
                            timestamp=e.timestamp, request_id=e.request_id, event_id=e.event_id)


def _same_events(got: list[Event], want: list[Event]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g.user_id, g.item_id, g.type, g.request_id, g.event_id) == \
            (w.user_id, w.item_id, int(w.type), w.request_id, w.event_id)
        for a, b in ((g.value, w.value), (g.timestamp, w.timestamp)):
            assert a == b or (math.isnan(a) and math.isnan(b))


def test_wire_parser_reads_what_protobuf_reads():
    events = _events(300, 0)
    data = pb.FeedbackRequest(events=[_message(e) for e in events]).SerializeToString()
    _same_events(events_of(parse_request(data)), events)
    assert len(parse_request(b"")) == 0


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


@pytest.mark.parametrize("extra", [
    _field(9, 0, _varint(5)),                                   # unknown varint
    _field(12, 2, _varint(3) + b"abc"),                         # unknown length-delimited
    _field(13, 5, b"\x00\x00\x80\x3f") + _field(14, 1, b"\x00" * 8),   # unknown fixed32, fixed64
    _field(15, 3, _field(1, 0, _varint(1)) + _field(16, 3, b"") + _field(16, 4, b"")) + _field(15, 4, b""),  # groups
    _field(3, 2, _varint(1) + b"x"),                            # a known number with another wire type
    _field(1, 2, _varint(2) + b"u2") + _field(3, 0, _varint(2**64 - 2)),   # repeated: last wins; type -2
    _field(4, 1, np.float64(2.5).tobytes()) + _field(5, 1, np.float64(1e9).tobytes()),
])
def test_wire_parser_follows_protobuf_on_unknown_and_repeated_fields(extra):
    base = pb.FeedbackEvent(user_id="u", item_id="i", type=2, event_id="e").SerializeToString() + extra
    data = _field(1, 2, _varint(len(base)) + base) + _field(2, 0, _varint(1))   # and an unknown top-level field
    want = pb.FeedbackRequest.FromString(data)
    _same_events(events_of(parse_request(data)),
                 [Event(e.user_id, e.item_id, e.type, e.value, e.timestamp, e.request_id, e.event_id)
                  for e in want.events])


def test_wire_parser_refuses_malformed_bytes():
    data = pb.FeedbackRequest(events=[_message(e) for e in _events(5, 1)]).SerializeToString()
    for cut in range(1, len(data)):
        try:
            pb.FeedbackRequest.FromString(data[:cut])
        except Exception:  # noqa: BLE001 - protobuf refuses it: so must the parser
            with pytest.raises(ValueError, match="malformed FeedbackRequest"):
                parse_request(data[:cut])
    for bad in (b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x00", b"\x0c", b"\x0b\x08\x01"):
        with pytest.raises(ValueError):
            parse_request(bad)


def test_batch_checks_match_check_event():
    config = FeedbackConfig()
    events = _events(2000, 2) + [Event("u", "i\ud800", 2), Event("u\udfff", "", 0), Event("u", "i", 2, event_id="\ud800")]
    batch = EventBatch.from_events(events)
    bad, reasons = batch.problems(2e9, config)
    want = {i: r for i, e in enumerate(events) if (r := check_event(e, 2e9, config)) is not None}
    assert dict(zip(bad.tolist(), reasons)) == want
    assert len(want) < len(events)   # the random mix holds valid events too


def test_log_records_match_encode():
    events = [e for e in _events(500, 3) if check_event(e, 2e9, FeedbackConfig()) is None]
    batch = EventBatch.from_events(events)
    records, offsets = batch.records()
    data = records.tobytes()
    assert [data[a:b] for a, b in zip(offsets[:-1], offsets[1:])] == [encode(e) for e in events]
    # a batch parsed from a request, taken out of order, encodes the same
    parsed = parse_request(pb.FeedbackRequest(events=[_message(e) for e in events]).SerializeToString())
    order = np.arange(len(events))[::-1].copy()
    records, offsets = parsed.take(order).records()
    data = records.tobytes()
    assert [data[a:b] for a, b in zip(offsets[:-1], offsets[1:])] == [encode(events[i]) for i in order]


def test_first_equal_and_concat():
    ids = ["a", "b", "a", "", "c", "b", "", "ü"]
    batch = EventBatch.from_events([Event("u", "i", 2, event_id=x) for x in ids])
    first = {}
    assert batch.first_equal(EVENT).tolist() == [first.setdefault(x, i) for i, x in enumerate(ids)]
    both = EventBatch.concat([batch, parse_request(pb.FeedbackRequest(
        events=[pb.FeedbackEvent(user_id="v", item_id="j", type=1, event_id=x) for x in ids]).SerializeToString())])
    assert [e.event_id for e in events_of(both)] == ids + ids
    assert both.keys(np.array([0, 8, 15]), USER) == [b"u", b"v", b"v"]
    assert both.first_equal(EVENT).tolist()[8:] == [0, 1, 0, 3, 4, 1, 3, 7]


def test_known_items_match_a_set():
    snapshot_ids = np.array(["1", "22", "ü☃", "𝄞", "a\x00b", "x" * 50, "dup", "dup"])
    known = KnownItems(snapshot_ids)
    probe = ["1", "2", "22", "ü☃", "𝄞", "a\x00b", "a", "x" * 50, "x" * 49, "dup", "", "☃"]
    batch = EventBatch.from_events([Event("u", x, 2) for x in probe])
    want = [x in set(snapshot_ids.tolist()) for x in probe]
    assert known.contains(batch).tolist() == want
    assert KnownItems(list(snapshot_ids)).contains(batch).tolist() == want
    assert len(known) == 8


def _python_update(old: bytes | None, events: list[tuple[int, int, float, str]], m: int, k: int, now: float,
                   window: float, history_len: int) -> bytes:
    """The reference: what FeedbackStore did before the columnar pass (UserState, one event at a time)."""
    if old is None:
        state = UserState.empty(m, k, now)
    else:
        state = UserState.decode(old)
        if state.current.shape[0] != m or state.k != k:
            fresh = UserState.empty(m, k, now)
            fresh.hist_seq, fresh.hist_ts, fresh.hist_items = state.hist_seq, state.hist_ts, state.hist_items
            state = fresh
    state.expose(hash_strings([item for _, _, _, item in events]), now, window)
    for kind, seq, ts, item in events:
        if kind in (EventType.CLICK, EventType.LIKE, EventType.RATING):
            state.add_history(seq, ts, item, history_len)
    return state.encode()


def test_state_records_match_user_state():
    rng = np.random.default_rng(4)
    m, k = bloom_size(50, 0.01)
    window, now, history_len = 100.0, 10_000.0, 6
    old: list[bytes | None] = []
    for u in range(60):   # new users, fresh, rotating, expired, resized filters, full and empty histories
        if u % 6 == 0:
            old.append(None)
            continue
        mu, ku = (m, k) if u % 6 != 5 else bloom_size(20, 0.05)
        state = UserState.empty(mu, ku, now - [10.0, 150.0, 250.0, 5.0, 99.0, 30.0][u % 6])
        state.expose(hash_strings([f"old{u}-{j}" for j in range(5)]), state.current_start, window)
        for j in range(int(rng.integers(0, 9))):
            state.add_history(100 + j, 5000.0 + j, f"h{u}é{j}", history_len)
        old.append(state.encode())
    kinds = rng.choice([1, 2, 3, 4], 400)
    users = rng.integers(0, 60, 400)
    items = [f"item{int(x)}☃" if x % 3 else f"i{int(x)}" for x in rng.integers(0, 90, 400)]
    seqs = np.arange(1000, 1400)
    ts = rng.uniform(9000, 11000, 400)
    batch = EventBatch.from_events([Event(f"u{u}", it, int(t)) for u, it, t in zip(users, items, kinds)])
    records, offsets, status = update_records(
        old, users.astype(np.int64), 60, batch.hashes(ITEM), np.isin(kinds, [2, 3, 4]), seqs, ts,
        (batch.buf, batch.start[:, ITEM], batch.length[:, ITEM]), m, k, now, window, history_len)
    data = records.tobytes()
    for u in range(60):
        mine = [(int(kinds[e]), int(seqs[e]), float(ts[e]), items[e]) for e in range(400) if users[e] == u]
        want = _python_update(old[u], mine, m, k, now, window, history_len) if mine else None
        if want is not None:
            assert data[offsets[u]:offsets[u + 1]] == want, u
        assert status[u] == (0 if old[u] is None else 1)


def test_a_corrupt_state_record_is_reported_not_rewritten():
    m, k = bloom_size(50, 0.01)
    good = UserState.empty(m, k, 1.0).encode()
    batch = EventBatch.from_events([Event("u", "i", 2), Event("v", "i", 2)])
    _, _, status = update_records([good[:-1], good], np.array([0, 1]), 2, batch.hashes(ITEM), np.ones(2, bool),
                                  np.arange(2), np.ones(2), (batch.buf, batch.start[:, ITEM], batch.length[:, ITEM]),
                                  m, k, 2.0, 10.0, 5)
    assert status.tolist() == [CORRUPT, 1]


def test_calls_checked_together_get_their_own_answers():
    from feedback.ingest import check, split_checked

    config = FeedbackConfig()
    known = KnownItems(np.array(["a", "b"]))
    calls = [[Event("u", "a", 2), Event("", "a", 2), Event("u", "zz", 1)], [Event("v", "b", 1, timestamp=5.0)],
             [Event("w", "q", 1), Event("w", "a", 4, 9.0), Event("w", "b", 2)]]
    nows = [100.0, 200.0, 300.0]
    together = check(EventBatch.concat([EventBatch.from_events(c) for c in calls]), known,
                     np.repeat(nows, [len(c) for c in calls]), config)
    for events, now, part in zip(calls, nows, split_checked(together, [len(c) for c in calls])):
        alone = check(EventBatch.from_events(events), known, now, config)
        assert part.keep.tolist() == alone.keep.tolist() and part.rejected == alone.rejected
        assert part.unknown_items.tolist() == alone.unknown_items.tolist()
        assert events_of(part.batch) == events_of(alone.batch)   # stamped with the call's own arrival time
