"""Per-user real-time state bounded by design (issue 31, item 1): a flood of new user ids against a store sized for
far fewer users keeps every write succeeding inside the map, evicts the least recently active users (counted),
keeps the active ones; the age limit; a store that is full anyway is RESOURCE_EXHAUSTED and not retried."""
from __future__ import annotations

import asyncio
import time
from concurrent import futures
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from common.metrics import REGISTRY
from feedback.config import FeedbackConfig
from feedback.events import Event, EventType
from feedback.realtime import Realtime
from feedback.store import EVICT_SLACK, FeedbackStore, FeedbackStoreError, FeedbackStoreFull


def evicted_total(reason: str) -> float:
    return REGISTRY.get_sample_value("recsys_feedback_evicted_users_total", {"reason": reason}) or 0.0


def used_bytes(store: FeedbackStore) -> int:
    """Bytes of the map LMDB has handed out (its highest page), and the data file's size."""
    info, stat = store.env.info(), store.env.stat()
    return (info["last_pgno"] + 1) * stat["psize"]


def test_config_derives_max_users_and_names_the_keys_to_change():
    default = FeedbackConfig()
    assert default.max_users == 0 and 100_000 < default.user_cap() < 400_000  # ~206k at 4096 MB and 10^7 events
    assert 4096 < default.user_bytes() <= 8192 + 256  # a full default history with 8-byte ids: two pages
    # the incident's configuration: 24 MB and 2,000 log events held 5,444 users when it filled
    incident = FeedbackConfig(map_size_mb=24, max_log_events=2000)
    assert 1000 < incident.user_cap() < 5444 * 0.6
    incident.validate()
    with pytest.raises(ValueError) as info:
        FeedbackConfig(map_size_mb=24, max_log_events=2000, max_users=5444).validate()
    message = str(info.value)
    assert all(key in message for key in ("feedback.max_users", "feedback.map_size_mb", "feedback.max_log_events"))
    FeedbackConfig(map_size_mb=24, max_log_events=2000, max_users=incident.user_cap()).validate()
    with pytest.raises(ValueError, match="feedback.max_user_age_s"):
        FeedbackConfig(max_user_age_s=-1).validate()
    with pytest.raises(ValueError, match="feedback.max_users"):
        FeedbackConfig(max_users=-1).validate()


def test_a_flood_of_new_users_stays_inside_the_map_and_keeps_the_active_users(tmp_path):
    """~200k events from ~180k invented users in Feedback-sized batches against the incident's 24 MB store."""
    config = FeedbackConfig(path=str(tmp_path / "fb"), map_size_mb=24, max_log_events=2000, history_len=20)
    store = FeedbackStore.open(config)
    cap = store.max_users
    map_bytes = config.map_size_mb << 20
    known = [f"known{j}" for j in range(20)]
    before = evicted_total("max_users")
    batches, batch, rng = 400, 500, np.random.default_rng(7)
    t0, seen, evicted, seconds, peak = 1_700_000_000.0, set(), 0, [], 0
    first_batch_users: list[str] = []
    for b in range(batches):
        now = t0 + b * 0.05
        events = [Event(u, f"k{b}", EventType.CLICK, request_id=f"r{b}", event_id=f"e{b}-{u}") for u in known]
        for j in range(batch - len(known)):
            user = f"flood-{b}-{j}" if rng.random() < 0.95 else f"flood-{b - 1}-{j}"  # some come back once
            kind = EventType.IMPRESSION if j % 4 else EventType.CLICK
            events.append(Event(user, f"i{rng.integers(0, 50_000)}", kind, request_id=f"r{b}", event_id=f"e{b}.{j}"))
        if b == 0:
            first_batch_users = sorted({e.user_id for e in events} - set(known))
        start = time.perf_counter()
        result = store.append(events, now=now)  # every append succeeds: no FeedbackStoreError
        seconds.append(time.perf_counter() - start)
        new_users = {e.user_id for e in events} - seen
        seen |= new_users
        assert len(result.seqs) == batch
        assert sum(result.evicted.values()) <= len(new_users) + EVICT_SLACK  # bounded work per transaction
        evicted += sum(result.evicted.values())
        assert store.user_count() <= cap
        peak = max(peak, used_bytes(store))
        assert peak <= 0.9 * map_bytes  # well inside the map (planned: FILL = 80%)
    path = Path(config.path) / "data.mdb"
    print(f"\nflood: {batches * batch} events, {len(seen)} users, cap {cap}, evicted {evicted}, "
          f"kept {store.user_count()}, peak used {peak >> 10} KiB, file {path.stat().st_size >> 10} KiB of "
          f"{map_bytes >> 10} KiB; append ms p50 {np.median(seconds) * 1e3:.1f} p99 "
          f"{np.percentile(seconds[1:], 99) * 1e3:.1f} max (after the first) {max(seconds[1:]) * 1e3:.1f}")
    assert store.user_count() == cap and evicted == len(seen) - cap
    assert evicted_total("max_users") - before == evicted  # counted in the metric
    assert path.stat().st_size <= map_bytes and store.disk_bytes() <= map_bytes
    for user in known:  # the recently active users kept their state, the newest click last
        state = store.user_state(user)
        assert state is not None and state.hist_items[-1] == f"k{batches - 1}" and len(state.hist_items) == 20
    # an evicted user reads as no real-time state: the store and the serving reader say so without error
    reader = Realtime(config)
    for user in first_batch_users[:50]:
        assert store.user_state(user) is None
        view = reader.view(None, None, user, None)  # no state: neither the snapshot nor its keys are consulted
        assert view.state is None and view.recent_dense.size == 0
        assert reader.exposed(view, None, np.arange(5, dtype=np.int32)).size == 0
    reader.close()
    # an evicted user who comes back starts afresh, and is written like any new user
    back = first_batch_users[0]
    store.append([Event(back, "again", EventType.CLICK)], now=t0 + batches)
    assert store.user_state(back).hist_items == ["again"] and store.user_count() == cap
    store.close()


def test_the_age_limit_evicts_idle_users(tmp_path):
    store = FeedbackStore.open(FeedbackConfig(path=str(tmp_path / "fb"), map_size_mb=64, max_log_events=1000,
                                              max_user_age_s=3600))
    before = evicted_total("max_user_age_s")
    store.append([Event("old", "a", EventType.CLICK), Event("recent", "b", EventType.CLICK)], now=1000.0)
    store.append([Event("recent", "c", EventType.IMPRESSION)], now=3000.0)
    result = store.append([Event("new", "d", EventType.CLICK)], now=1000.0 + 3600 + 1)
    assert result.evicted == {"max_user_age_s": 1}
    assert store.user_state("old") is None
    assert store.user_state("recent").hist_items == ["b"] and store.user_state("new").hist_items == ["d"]
    assert evicted_total("max_user_age_s") - before == 1
    assert store.append([Event("new", "e", EventType.CLICK)], now=3000.0 + 3600 + 1).evicted == {"max_user_age_s": 1}
    assert store.user_state("recent") is None and store.user_count() == 1
    store.close()


def test_lowering_max_users_converges_in_bounded_steps_and_indexes_users_of_an_older_store(tmp_path):
    path = str(tmp_path / "fb")
    store = FeedbackStore.open(FeedbackConfig(path=path, map_size_mb=64, max_log_events=1000))
    for i in range(600):
        store.append([Event(f"u{i:03d}", "x", EventType.CLICK)], now=1000.0 + i)
    with store.env.begin(write=True) as txn:  # a store written before the activity index existed
        txn.drop(store.last_active, delete=False)
        txn.drop(store.by_active, delete=False)
    store.close()
    small = FeedbackStore.open(FeedbackConfig(path=path, map_size_mb=64, max_log_events=1000, max_users=50))
    first = small.append([Event("fresh", "y", EventType.CLICK)], now=5000.0)
    assert first.evicted == {"max_users": 1 + EVICT_SLACK}  # at most the batch's new users plus the slack
    while small.user_count() > 50:
        small.append([Event("fresh", "y", EventType.IMPRESSION)], now=5001.0)
    # the oldest went first (indexed at their newest history time), the newest and the fresh one stayed
    kept = [f"u{i:03d}" for i in range(600) if small.user_state(f"u{i:03d}") is not None]
    assert kept == [f"u{i:03d}" for i in range(551, 600)] and small.user_state("fresh") is not None
    small.close()


def test_a_store_full_even_after_eviction_is_resource_exhausted_naming_the_keys(tmp_path):
    store = FeedbackStore.open(FeedbackConfig(path=str(tmp_path / "small"), map_size_mb=1))
    store.append([Event("u", "first", EventType.CLICK)])
    huge = [Event(f"user{i}", "x" * 200, EventType.CLICK, event_id=f"ev{i}" * 20) for i in range(2000)]
    with pytest.raises(FeedbackStoreFull) as info:
        store.append(huge)
    exc = info.value
    assert isinstance(exc, FeedbackStoreError) and exc.grpc_status == "RESOURCE_EXHAUSTED"
    assert FeedbackStoreError.grpc_status == "UNAVAILABLE"
    assert all(key in str(exc) for key in ("feedback.map_size_mb", "feedback.max_users", "feedback.max_log_events"))
    assert store.last_seq() == 1 and store.user_state("u").hist_items == ["first"]  # nothing of the batch
    store.close()


def test_the_gateway_answers_a_full_store_with_resource_exhausted(tmp_path):
    """gateway/server.py's Feedback handler, run on a stand-in servicer with the real feedback writer: the
    store's full error's status."""
    import io

    from common.log import Logger
    from feedback.writer import FeedbackWriter
    from gateway.server import GatewayServicer

    store = FeedbackStore.open(FeedbackConfig(path=str(tmp_path / "small"), map_size_mb=1))

    class Aborted(Exception):
        pass

    class Context:
        async def abort(self, code, details):
            self.code, self.details = code, details
            raise Aborted()

    log = Logger("test", stream=io.StringIO())
    writer = FeedbackWriter(store, log)
    servicer = SimpleNamespace(config=SimpleNamespace(feedback=store.config), feedback=store, _feedback_writer=writer,
                               reloader=SimpleNamespace(current=SimpleNamespace(snapshot=SimpleNamespace(
                                   version="v1", item_ids=np.array(["x" * 200])))), log=log)
    from recsys.v2 import recommend_service_pb2 as pb

    request = pb.FeedbackRequest(events=[pb.FeedbackEvent(user_id=f"user{i}", item_id="x" * 200, type=2,
                                                          event_id=f"ev{i}" * 20) for i in range(2000)])
    context = Context()
    try:
        with pytest.raises(Aborted):
            asyncio.run(GatewayServicer.Feedback(servicer, request, context))
    finally:
        writer.close()
    assert "is full" in context.details
    assert context.code == grpc.StatusCode.RESOURCE_EXHAUSTED, (
        "gateway/server.py maps FeedbackStoreError to UNAVAILABLE: a full store is permanent "
        "(FeedbackStoreFull.grpc_status)")
    store.close()


def _refusing_service():
    from recsys.v2 import recommend_service_pb2_grpc as recommend_grpc

    class Refusing(recommend_grpc.RecommendServiceServicer):
        """A RecommendService whose Feedback always fails with one status code; counts the calls."""

        def __init__(self, code):
            self.code, self.calls = code, 0

        def Feedback(self, request, context):
            self.calls += 1
            context.abort(self.code, "the feedback store at /x is full: raise feedback.map_size_mb")

    return Refusing


@pytest.mark.parametrize("code, calls", [(grpc.StatusCode.RESOURCE_EXHAUSTED, 1), (grpc.StatusCode.UNAVAILABLE, 3)])
def test_the_client_does_not_retry_resource_exhausted(code, calls):
    from gateway.client import RecommendClient
    from recsys.v2 import recommend_service_pb2_grpc as recommend_grpc

    server = grpc.server(futures.ThreadPoolExecutor(2))
    service = _refusing_service()(code)
    recommend_grpc.add_RecommendServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with RecommendClient(f"127.0.0.1:{port}", timeout_s=5.0, retries=2) as client:
            with pytest.raises(grpc.RpcError) as info:
                client.feedback([Event("u", "i", EventType.CLICK)])
        assert info.value.code() == code and service.calls == calls  # UNAVAILABLE only is retried
    finally:
        server.stop(0)
