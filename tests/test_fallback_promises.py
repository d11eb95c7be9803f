"""Fallbacks keep every promise the normal path keeps (issue 27 item 4).

When recall fails, the gateway serves the snapshot's popular items (``gateway.funnel.popular_fallback``); when
rank or rerank fails, it serves the order before them. Either way the list must drop what recall drops: the
request's excluded items and filters, the blocklist, the user's snapshot-seen items, the user's real-time
clicks, and (unless ``include_exposed``) the items impressed within the exposure window.

Over real processes: recall (and for a deterministic popular order, rank) is paused with SIGSTOP, so the
gateway's call runs out of its budget and the reply is the fallback, whatever the machine's speed; every
reply is checked to be one (``degraded_stages`` holds the stage, ``channels`` is ``fallback_popular``).
"""
from __future__ import annotations

import contextlib
import os
import signal

import numpy as np
import pytest

from cluster.launcher import Cluster
from common.config import load_config
from feedback.config import FeedbackConfig
from feedback.events import Event, EventType
from feedback.realtime import Realtime, SnapshotKeys
from gateway.client import RecommendClient
from gateway.config import GatewayConfig
from gateway.funnel import FALLBACK_CHANNEL, Promises, popular_fallback
from tests.conftest import feedback_cluster_config

# short: a paused stage can never answer, so the reply is degraded however slow the machine; the time only
# bounds how long each request waits for the paused stage (recall may use 30% of it)
DEADLINE_MS = 100


@pytest.fixture(scope="module")
def cluster(snapshot_root, tmp_path_factory):
    config = feedback_cluster_config(snapshot_root, tmp_path_factory, "fallback-cluster")
    # the quality factor off: requests waiting on a paused stage take their whole deadline, and it would step
    # to the level that skips the rank call, so the rank fallback would never run
    config.overrides["gateway"].append("quality.enabled=false")
    with Cluster(config) as running:
        yield running


@pytest.fixture(scope="module")
def client(cluster):
    with RecommendClient(cluster.gateway_addr, timeout_s=10.0) as c:
        c.recommend("1", k=10)  # the first call of each process compiles and loads: not under a paused stage
        yield c


@contextlib.contextmanager
def paused(cluster, *stages: str):
    """SIGSTOP the stages' processes for the block (SIGCONT however it ends)."""
    pids = [cluster.procs[stage].pid for stage in stages]
    stopped = []
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)


def fallback(client, user: str, k: int, **kwargs):
    """A Recommend call that recall could not answer: the popular fallback, checked to be one."""
    rec = client.recommend(user, k=k, deadline_ms=DEADLINE_MS, **kwargs)
    assert "recall" in rec.degraded, rec.degraded
    assert all(item.channels == [FALLBACK_CHANNEL] for item in rec.items)
    return rec


def ids_of(rec) -> list[str]:
    return [item.item_id for item in rec.items]


def impressions(client, user: str, rec) -> None:
    reply = client.feedback([Event(user, x, EventType.IMPRESSION, request_id=rec.request_id) for x in ids_of(rec)])
    assert reply.accepted == len(rec.items)


def test_fallback_drops_the_users_snapshot_seen_items(cluster, client, snapshot):
    user = "196"
    seen = set(snapshot.item_ids[snapshot.features.user(user).seen].tolist())
    popular = snapshot.item_ids[snapshot.load_array("popular.npy")[:100]].tolist()
    assert seen & set(popular), "the check needs seen items among the most popular"
    with paused(cluster, "recall", "rank"):  # popular order itself, not rank's choice from it
        rec = fallback(client, user, k=100)
    assert len(rec.items) == 100
    assert not seen & set(ids_of(rec)), f"seen items in the fallback: {sorted(seen & set(ids_of(rec)))}"


def test_fed_back_impressions_never_come_back_in_the_fallback(cluster, client, snapshot):
    user = "2"
    shown: set[str] = set()
    with paused(cluster, "recall"):  # rank ranks the fallback's candidates
        for round_ in range(5):
            rec = fallback(client, user, k=10)
            ids = ids_of(rec)
            assert len(ids) == 10
            repeated = shown & set(ids)
            assert not repeated, f"round {round_}: {sorted(repeated)} impressed earlier and shown again"
            shown |= set(ids)
            impressions(client, user, rec)


def test_an_exhausted_fallback_shrinks_and_says_so(cluster, client, snapshot):
    """With a filter that leaves a few dozen items, impressions use the popular list up: the lists get shorter
    and say so (``fewer_than_k``); nothing repeats. ``include_exposed`` brings the impressed items back."""
    user = "fallback-exhaust"
    bag, names = snapshot.features.array("item_bag"), list(snapshot.schema["bag_names"])
    counts = dict(zip(names, bag.sum(axis=0).tolist()))
    genre = min((g for g, c in counts.items() if 15 <= c <= 60), key=counts.get)
    popular = snapshot.load_array("popular.npy")
    eligible = set(snapshot.item_ids[popular[bag[popular, names.index(genre)] > 0]].tolist())
    shown: set[str] = set()
    lengths = []
    with paused(cluster, "recall"):
        for _ in range(len(eligible) // 10 + 3):
            rec = fallback(client, user, k=10, filters=[f"genre in {genre}"])
            ids = ids_of(rec)
            lengths.append(len(ids))
            assert rec.eligible_items == counts[genre] and set(ids) <= eligible
            assert rec.fewer_than_k == (len(ids) < 10)
            assert not shown & set(ids), f"{sorted(shown & set(ids))} shown again"
            shown |= set(ids)
            if not ids:
                break
            impressions(client, user, rec)
        assert lengths[-1] == 0 and lengths[:-1] and min(lengths[:-1]) > 0, lengths
        assert lengths == sorted(lengths, reverse=True) and len(shown) == len(eligible), (lengths, len(eligible))
        again = fallback(client, user, k=10, filters=[f"genre in {genre}"], include_exposed=True)
    assert len(again.items) == 10 and set(ids_of(again)) <= shown  # "watch again": the impressed items


def test_a_new_users_fresh_clicks_are_absent_from_the_fallback(cluster, client):
    user = "fallback-clicker"
    with paused(cluster, "recall", "rank"):  # popular order: the clicked items would come back at 1, 2 and 8
        before = ids_of(fallback(client, user, k=20))
        clicked = [before[0], before[1], before[7]]
        assert client.feedback([Event(user, x, EventType.CLICK) for x in clicked]).accepted == 3
        # include_exposed: the exposure filter (a click also counts as shown) may not hide them; only the
        # real-time history does, as in recall
        for include_exposed in (True, False):
            after = ids_of(fallback(client, user, k=20, include_exposed=include_exposed))
            assert len(after) == 20
            assert not set(clicked) & set(after), (include_exposed, [after.index(x) + 1 for x in clicked
                                                                     if x in after])


def test_exclusions_and_filters_still_hold_in_the_fallback(cluster, client, snapshot):
    user = "196"
    with paused(cluster, "recall"):
        plain = ids_of(fallback(client, user, k=20))
        rec = fallback(client, user, k=20, exclude=plain[:5], debug=True, filters=["genre in Comedy"])
    assert len(rec.items) == 20
    assert not set(plain[:5]) & set(ids_of(rec))
    assert all("Comedy" in item.attributes["genre"] for item in rec.items)


def test_rank_fallback_keeps_recalls_promises(cluster, client):
    """Rank down: the gateway serves recall's order, which recall cleared of exposed items."""
    user = "3"
    shown: set[str] = set()
    with paused(cluster, "rank"):
        for round_ in range(3):
            rec = client.recommend(user, k=10, deadline_ms=400)
            assert "rank" in rec.degraded, rec.degraded
            assert len(rec.items) == 10 and not shown & set(ids_of(rec)), round_
            shown |= set(ids_of(rec))
            impressions(client, user, rec)


# -- popular_fallback itself, over a feedback store of its own -------------------------------------------------

@pytest.fixture()
def store_reader(tmp_path):
    config = FeedbackConfig(path=str(tmp_path / "feedback"))
    realtime = Realtime(config)
    try:
        yield realtime
    finally:
        realtime.close()


def test_popular_fallback_drops_blocklist_clicks_and_exposures(snapshot, store_reader):
    popular = snapshot.load_array("popular.npy").astype(np.int32)
    ids = snapshot.item_ids
    user = "fallback-unit"
    promises = Promises(np.sort(popular[[0, 5]]), store_reader, SnapshotKeys.of(snapshot))
    n = int(load_config(GatewayConfig, None, []).recall_n)
    base = popular_fallback(snapshot, popular, user, np.empty(0, np.int32), n, promises)
    assert not np.isin(popular[[0, 5]], base).any() and base[0] == popular[1]
    store_reader.store.append([Event(user, str(ids[popular[1]]), EventType.CLICK),
                               Event(user, str(ids[popular[2]]), EventType.IMPRESSION)])
    got = popular_fallback(snapshot, popular, user, np.array([popular[3]], np.int32), n, promises)
    assert not np.isin(popular[:4], got).any() and got[0] == popular[4]
    watch_again = popular_fallback(snapshot, popular, user, np.empty(0, np.int32), n, promises, include_exposed=True)
    assert popular[2] in watch_again and popular[1] not in watch_again  # exposed back, clicked still out
    # feedback off (no reader): the snapshot's promises only
    assert popular[1] in popular_fallback(snapshot, popular, user, np.empty(0, np.int32), n,
                                          Promises(promises.blocklist))


# -- issue 27 item 7: FeedbackEvent.value as the proto and README document it -----------------------------------

def test_feedback_value_is_checked_for_every_type_and_used_only_as_a_rating():
    """``value`` must be finite for every event type; only a RATING's is range-checked (it is the rating)."""
    from feedback.events import check_event

    config = FeedbackConfig()
    for kind in (EventType.IMPRESSION, EventType.CLICK, EventType.LIKE, EventType.RATING):
        for bad in (float("nan"), float("inf")):
            assert (check_event(Event("u", "i", kind, bad), 0.0, config) or "").startswith("value"), (kind, bad)
    assert check_event(Event("u", "i", EventType.CLICK, 42.0), 0.0, config) is None  # not a rating: unused
    assert check_event(Event("u", "i", EventType.RATING, 42.0), 0.0, config).startswith("value of a RATING")
