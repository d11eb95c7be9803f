"""The co-located topology: stages run inside the gateway process (``stages.<stage>=local``).

The local stage call keeps the remote call's contract (a status instead of an exception, a reply that
comes back after its budget is DEADLINE_EXCEEDED and dropped, a caller with no time left is not served);
a co-located cluster (two gateway replicas, no stage servers, dialled as one round_robin list) serves the
very lists the remote topology serves, user for user.
"""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from cluster.launcher import Cluster, ClusterConfig
from gateway.local_stages import LocalAbort, local_call
from recsys.v2 import recommend_service_pb2 as pb2
from recsys.v2 import recommend_service_pb2_grpc as recommend_grpc
from gateway.stage_target import stage_target

N_USERS = 40
TS = 1_700_000_000


def test_local_call_returns_the_reply_within_budget():
    call = local_call("rank", lambda request, context: ("reply", request, context.time_remaining() > 0))
    assert call("req", timeout=1.0, metadata=()) == ("reply", "req", True)


def test_local_call_over_budget_is_deadline_exceeded_and_dropped():
    def slow(request, context):
        time.sleep(0.02)
        return "late reply"

    with pytest.raises(grpc.RpcError) as info:
        local_call("rank", slow)("req", timeout=0.005)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "rank" in info.value.details() and "dropped" in info.value.details()


def test_local_call_refuses_a_caller_without_time_left():
    ran = []
    call = local_call("recall", lambda request, context: ran.append(1), min_remaining_s=0.01)
    with pytest.raises(LocalAbort) as info:
        call("req", timeout=0.001)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and not ran


def test_local_abort_keeps_the_status():
    def bad(request, context):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "k must be in 1..100")

    with pytest.raises(grpc.RpcError) as info:
        local_call("rerank", bad)("req", timeout=1.0)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "k must be" in info.value.details()


def test_pooled_local_call_times_out_and_a_call_queued_past_its_deadline_never_runs():
    """On the gateway's stage pool: the caller stops waiting at the budget (DEADLINE_EXCEEDED), and the call
    that was still queued behind a busy one is not started once its caller has gone."""
    pool = ThreadPoolExecutor(1)
    started, release = threading.Event(), threading.Event()
    ran = []

    def work(request, context):
        if request == "busy":
            started.set()
            release.wait(10)
        ran.append(request)
        return request

    call = local_call("rank", work, executor=pool)

    async def scenario():
        busy = asyncio.ensure_future(call("busy", timeout=30.0))
        while not started.is_set():  # the pool's one thread is taken
            await asyncio.sleep(0.001)
        with pytest.raises(grpc.RpcError) as info:
            await call("queued", timeout=0.05)  # waits behind "busy" past its budget
        release.set()
        assert await busy == "busy"
        return info.value

    error = asyncio.run(scenario())
    pool.shutdown(wait=True)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "budget" in error.details()
    assert ran == ["busy"]


def test_placement_and_local_stages_config_are_checked():
    from common.config import load_config
    from gateway.config import GatewayConfig

    with pytest.raises(ValueError, match="stages.rank must be remote or local"):
        load_config(GatewayConfig, None, ["stages.rank=inside"])
    with pytest.raises(ValueError, match="local_stages: 'ranker' is not a stage"):
        ClusterConfig(local_stages=["ranker"]).validate()
    with pytest.raises(ValueError, match="local.threads must be >= 1"):
        load_config(GatewayConfig, None, ["local.threads=0"])
    with pytest.raises(ValueError, match="replicate the gateway"):
        ClusterConfig(local_stages=["rank"], replicas={"rank": 2}).validate()


def _lists(target: str, users: list[str]) -> dict[str, list]:
    name, options = stage_target(target)
    with grpc.insecure_channel(name, options) as channel:
        stub = recommend_grpc.RecommendServiceStub(channel)
        out = {}
        for user in users:
            # a fixed timestamp: the rank features read the hour and weekday of "now" otherwise
            reply = stub.Recommend(pb2.RecommendRequest(user_id=user, k=20, context=pb2.Context(timestamp=TS)),
                                   timeout=30)
            assert not reply.degraded_stages, (user, reply.degraded_stages)
            out[user] = [(it.item_id, round(it.score, 5), tuple(it.channels)) for it in reply.items]
    return out


@pytest.mark.parametrize("topology", ["colocated"])
def test_colocated_cluster_serves_the_remote_topologys_lists(snapshot, snapshot_root, tmp_path_factory, topology):
    users = [str(u) for u in snapshot.features.array("user_ids")[:N_USERS]] + ["no-such-user"]
    common = {"gateway": ["deadline_ms=5000", "reload_poll_s=0"], "recall": ["reload_poll_s=0"],
              "rank": ["reload_poll_s=0"], "rerank": ["reload_poll_s=0"]}
    remote = ClusterConfig(snapshot=str(snapshot_root), gateway_port=0, local_stages=[], replicas={}, overrides=common,
                           run_dir=str(tmp_path_factory.mktemp("remote")))
    with Cluster(remote) as cluster:
        assert set(cluster.procs) == {"recall", "rank", "rerank", "gateway"}
        expected = _lists(cluster.gateway_addr, users)
    local = ClusterConfig(snapshot=str(snapshot_root), gateway_port=0, overrides=common,
                          local_stages=["recall", "rank", "rerank"], replicas={"gateway": 2},
                          run_dir=str(tmp_path_factory.mktemp(topology)))
    with Cluster(local) as cluster:
        assert set(cluster.procs) == {"gateway", "gateway.1"}  # no stage servers
        assert "," in cluster.gateway_target
        got = _lists(cluster.gateway_target, users)
    for proc in cluster.procs.values():
        assert proc.poll() is not None, "a gateway outlived the cluster"
    assert got == expected


def test_colocated_gateway_switches_to_a_new_version_once_its_local_stages_hold_it(snapshot_root, tmp_path_factory):
    """Hot reload with every stage in the gateway: the local stages load the new version from CURRENT, the
    gateway waits until they hold it (its readiness check asks their reloaders), then serves it whole."""
    from tests.conftest import private_root
    from tests.test_hot_reload import publish_copy
    from common.snapshot import current_version
    from benches.funnel import build_funnel
    from gateway.local_stages import LocalAioContext

    root = private_root(snapshot_root, tmp_path_factory, "colocated-reload")
    old = current_version(root)
    gateway = build_funnel(str(root), {"gateway": ["deadline_ms=5000", "reload_poll_s=0"]})

    def serve() -> pb2.RecommendResponse:
        request = pb2.RecommendRequest(user_id="1", k=10, context=pb2.Context(timestamp=TS))
        return asyncio.run(gateway.Recommend(request, LocalAioContext()))

    assert serve().snapshot_version == old
    publish_copy(root, old, "v2-colocated")
    assert not gateway.stages_hold("v2-colocated")  # the local stages have not loaded it yet
    switching = threading.Thread(target=gateway.reloader.check)  # loads it, then waits for the stages
    switching.start()
    switching.join(1.0)
    assert switching.is_alive() and gateway.reloader.current.snapshot.version == old
    for servicer in gateway.local.values():
        servicer.reloader.check()
    assert gateway.stages_hold("v2-colocated")
    switching.join(60)
    assert gateway.reloader.current.snapshot.version == "v2-colocated"
    reply = serve()
    assert reply.snapshot_version == "v2-colocated" and not reply.degraded_stages and len(reply.items) == 10
