"""Feedback over real processes: the RPC's statuses, clicks visible to the next request on every replica,
and no item shown twice within the exposure window when impressions are fed back."""
from __future__ import annotations

import time

import grpc
import pytest

from feedback.events import Event, EventType
from gateway.client import RecommendClient
from cluster.launcher import Cluster
from tests.conftest import feedback_cluster_config
from recsys.v2 import recommend_service_pb2 as pb2


@pytest.fixture(scope="module")
def cluster(snapshot_root, tmp_path_factory):
    with Cluster(feedback_cluster_config(snapshot_root, tmp_path_factory, "feedback-cluster",
                                         {"recall": 2, "rank": 2})) as running:
        yield running


@pytest.fixture(scope="module")
def client(cluster):
    with RecommendClient(cluster.gateway_addr, timeout_s=10.0) as c:
        yield c


def test_feedback_statuses(client, snapshot):
    item = str(snapshot.item_ids[0])
    reply = client.feedback([Event("fb-user", item, EventType.CLICK, event_id="a1"),
                             Event("fb-user", "no-such-item", EventType.CLICK),
                             Event("fb-user", item, EventType.RATING, float("nan")),
                             Event("", item, EventType.CLICK),
                             Event("fb-user", item, EventType.CLICK, timestamp=1e11),
                             Event("fb-user", item, 0),
                             Event("fb-user", item, EventType.CLICK, event_id="a1")])
    assert reply.accepted == 1 and list(reply.duplicate_indices) == [6]
    assert list(reply.unknown_item_indices) == [1]
    assert {r.index: r.reason.split()[0] for r in reply.rejected} == {2: "value", 3: "user_id", 4: "timestamp",
                                                                      5: "type"}
    assert client.feedback([]).accepted == 0  # an empty batch is a no-op
    with pytest.raises(grpc.RpcError) as err:
        client.feedback([Event("u", item, EventType.CLICK)] * 10_001)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "events has 10001" in err.value.details()


def test_unknown_enum_value_is_rejected_per_event(client, snapshot):
    reply = client.feedback([pb2.FeedbackEvent(user_id="u", item_id=str(snapshot.item_ids[0]), type=77)])
    assert reply.accepted == 0 and reply.rejected[0].reason.startswith("type")


def test_three_clicks_personalise_a_new_user_on_every_replica(client, snapshot):
    user = "fb-new-user"
    before = client.recommend(user, k=20)
    clicked = [it.item_id for it in before.items[5:8]]
    t0 = time.monotonic()
    client.feedback([Event(user, x, EventType.CLICK) for x in clicked])
    # the next requests (round-robin over 2 recall and 2 rank replicas) all see the clicks at once
    for _ in range(4):
        after = client.recommend(user, k=20)
        ids = [it.item_id for it in after.items]
        assert not set(clicked) & set(ids)  # clicked items count as seen
        channels = {c for it in after.items for c in it.channels}
        assert channels & {"itemcf", "swing", "ann"}, channels  # personalised channels, not only popular
    assert time.monotonic() - t0 < 30


def test_no_item_is_shown_twice_when_impressions_are_fed_back(client):
    seen: dict[str, set[str]] = {}
    requests = 0
    for round_ in range(10):
        for u in range(1, 101):
            user = str(u)
            rec = client.recommend(user, k=10)
            ids = [it.item_id for it in rec.items]
            requests += 1
            assert len(ids) == 10
            repeated = seen.setdefault(user, set()) & set(ids)
            assert not repeated, f"user {user} was shown {sorted(repeated)} again in round {round_}"
            seen[user] |= set(ids)
            client.feedback([Event(user, x, EventType.IMPRESSION, request_id=rec.request_id) for x in ids])
    assert requests == 1000
    # a "watch again" row may ask for exposed items back
    again = client.recommend("1", k=10, include_exposed=True)
    assert {it.item_id for it in again.items} & seen["1"]


def test_no_acknowledged_event_is_lost_when_the_gateway_is_killed(cluster, client, snapshot):
    """kill -9 of the gateway (the store's writer) in the middle of a Feedback stream; the launcher restarts
    it. Every event whose call returned OK is in the store afterwards, and each batch is whole."""
    import os
    import signal

    from feedback.config import FeedbackConfig
    from feedback.store import FeedbackStore

    items = snapshot.item_ids.astype(str).tolist()
    acked: list[str] = []
    batch, sent = 200, 0
    killed = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(acked) < 6000:
        ids = [f"kill-{sent + j}" for j in range(batch)]
        events = [Event(f"kill-user-{j % 50}", items[j % len(items)], EventType.IMPRESSION, event_id=e)
                  for j, e in enumerate(ids)]
        sent += batch
        try:
            client.feedback(events, timeout_s=5.0)
            acked += ids
        except grpc.RpcError:
            pass  # the gateway is down or restarting: this batch is not acknowledged
        if not killed and len(acked) >= 2000:
            os.kill(cluster.procs["gateway"].pid, signal.SIGKILL)
            killed = True
    assert killed and len(acked) >= 6000, "the restarted gateway did not take Feedback again"
    store = FeedbackStore.open(FeedbackConfig(path=cluster.config.feedback_path))
    try:
        stored = {e.event_id for _, e in store.events() if e.event_id.startswith("kill-")}
    finally:
        store.close()
    assert set(acked) <= stored
    per_batch = {}
    for e in stored:
        per_batch.setdefault(int(e.split("-")[1]) // batch, 0)
        per_batch[int(e.split("-")[1]) // batch] += 1
    assert set(per_batch.values()) == {batch}  # all or nothing on disk
