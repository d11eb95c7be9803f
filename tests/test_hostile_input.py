"""Hostile input over gRPC against a real cluster (issue 12): every request gets a defined status with a
bounded detail, nothing a client sends grows the logs without bound, and no hostile request degrades others."""
from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from cluster.launcher import Cluster, ClusterConfig
from recsys.stage.v1 import recall_service_pb2 as recall_pb2
from recsys.stage.v1 import recall_service_pb2_grpc as recall_grpc
from recsys.stage.v1 import rank_service_pb2 as rank_pb2
from recsys.stage.v1 import rank_service_pb2_grpc as rank_grpc
from recsys.stage.v1 import rerank_service_pb2 as rerank_pb2
from recsys.stage.v1 import rerank_service_pb2_grpc as rerank_grpc
from recsys.v1 import recsys_pb2
from recsys.v1 import recsys_pb2_grpc

HUGE = "x" * 100_000  # well past gRPC's 8 KB metadata limit if echoed in a status detail
DETAILS_LIMIT = 1000  # ServerOptions.max_details_chars (the default)


@pytest.fixture(scope="module")
def cluster(snapshot_root, tmp_path_factory):
    config = ClusterConfig(snapshot=str(snapshot_root), gateway_port=0, local_stages=[], replicas={}, run_dir=str(tmp_path_factory.mktemp("hostile")),
                           overrides={"gateway": ["deadline_ms=3000"]})
    with Cluster(config) as running:
        yield running


@pytest.fixture(scope="module")
def stubs(cluster):
    channels = {name: grpc.insecure_channel(cluster.addr(name)) for name in ("recall", "rank", "rerank", "gateway")}
    yield {"recall": recall_grpc.RecallServiceStub(channels["recall"]).Recall,
           "rank": rank_grpc.RankServiceStub(channels["rank"]).Rank,
           "rerank": rerank_grpc.RerankServiceStub(channels["rerank"]).Rerank,
           "gateway": recsys_pb2_grpc.GatewayStub(channels["gateway"]).Recommend}
    for channel in channels.values():
        channel.close()


def _error(call, request, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=15, **kwargs)
    return info.value


def _rerank_request(snapshot, scores, method, **params):
    idx = np.arange(len(scores), dtype="<i4")
    return rerank_pb2.RerankRequest(item_idx=idx.tobytes(), scores=np.asarray(scores, "<f4").tobytes(), k=5,
                                    method=method, params=rerank_pb2.RerankParams(**params),
                                    snapshot_version=snapshot.version)


# ------------------------------------------------------------------ item 3: UNKNOWN from rerank
@pytest.mark.parametrize("method", [rerank_pb2.RERANK_METHOD_DPP, rerank_pb2.RERANK_METHOD_DPP_WINDOW])
def test_rerank_epsilon_zero_is_invalid_argument(stubs, snapshot, method):
    exc = _error(stubs["rerank"], _rerank_request(snapshot, np.linspace(1, 0, 20), method, epsilon=0.0))
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "params.epsilon" in exc.details()


@pytest.mark.parametrize("method", [rerank_pb2.RERANK_METHOD_NONE, rerank_pb2.RERANK_METHOD_MMR, rerank_pb2.RERANK_METHOD_DPP, rerank_pb2.RERANK_METHOD_DPP_WINDOW])
def test_rerank_serves_extreme_finite_scores(stubs, snapshot, method):
    scores = np.array([3e38, -3e38, 1.0, -1.0, 3.4028235e38, -3.4028235e38, 0.0, 1e-38] * 3, np.float32)
    reply = stubs["rerank"](_rerank_request(snapshot, scores, method), timeout=15)
    positions = np.frombuffer(reply.positions, "<i4")
    assert positions.size == 5 and np.unique(positions).size == 5 and positions.max() < scores.size


# ------------------------------------------------------------------ item 5: client strings in details and logs
def _requests_echoing_huge_strings(snapshot):
    return [
        ("rank", rank_pb2.RankRequest(user_id="1", snapshot_version=HUGE)),
        ("rank", rank_pb2.RankRequest(user_id="1", item_idx=np.arange(3, dtype="<i4").tobytes(),
                                        snapshot_version=snapshot.version, fusion={HUGE: 1.0})),
        ("rerank", rerank_pb2.RerankRequest(k=1, snapshot_version=HUGE)),
        ("recall", recall_pb2.RecallRequest(user_id="1", quotas={HUGE: 5})),
        ("recall", recall_pb2.RecallRequest(user_id=HUGE)),
        ("gateway", recsys_pb2.RecommendRequest(user_id="1", k=5, exclude_item_ids=[HUGE])),
        ("gateway", recsys_pb2.RecommendRequest(user_id="1", k=5, context=recsys_pb2.Context(device=HUGE))),
    ]


def test_error_details_and_log_lines_stay_bounded(cluster, stubs, snapshot):
    for stage, request in _requests_echoing_huge_strings(snapshot):
        exc = _error(stubs[stage], request)
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (stage, exc.code(), exc.details()[:300])
        assert len(exc.details()) <= DETAILS_LIMIT, (stage, exc.details()[:300])
    for log in cluster.run_dir.glob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            assert len(line) < 4000, f"{log.name}: {line[:300]}"


def test_the_interceptor_clips_any_detail(cluster, stubs):
    """Whatever a servicer puts in a detail, at most max_details_chars go back (the last line of defence)."""
    from common.metrics import ServerInterceptor
    from common.server_options import ServerOptions

    class Context:
        def __init__(self):
            self._details = None

        def invocation_metadata(self):
            return ()

        def abort(self, code, details):
            self._details = details
            raise grpc.RpcError()

        def code(self):
            return grpc.StatusCode.INVALID_ARGUMENT

        def details(self):
            return self._details

        def set_details(self, details):
            self._details = details

    class Details:
        def __init__(self, method):
            self.method = method

    def servicer(request, context):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, HUGE)

    interceptor = ServerInterceptor(__import__("common.log").log.Logger("test", stream=open("/dev/null", "w")),
                                    ServerOptions())
    handler = interceptor.intercept_service(lambda _d: grpc.unary_unary_rpc_method_handler(servicer),
                                            Details("/recsys.v1.Rank/Rank"))
    context = Context()
    with pytest.raises(grpc.RpcError):
        handler.unary_unary(None, context)
    assert len(context.details()) <= DETAILS_LIMIT and "100000 characters" in context.details()


# ------------------------------------------------------------------ item 6: x-request-id
@pytest.mark.parametrize("sent", ["a" * 4000, "has spaces and {json}", "semi;colon/slash"])
def test_bad_request_ids_are_replaced_not_forwarded(stubs, sent):
    reply = stubs["gateway"](recsys_pb2.RecommendRequest(user_id="1", k=5), timeout=15,
                             metadata=(("x-request-id", sent),))
    assert list(reply.degraded) == [] and len(reply.item_ids) == 5
    assert reply.request_id != sent and len(reply.request_id) == 32


def test_request_ids_near_the_metadata_limit_never_degrade(stubs):
    """9-16 KB ids used to be forwarded; stages then refused them at random and the request degraded."""
    for size in (9_000, 12_000, 15_000):
        for _ in range(4):
            try:
                reply = stubs["gateway"](recsys_pb2.RecommendRequest(user_id="1", k=5), timeout=15,
                                         metadata=(("x-request-id", "r" * size),))
            except grpc.RpcError as exc:  # gRPC's own limit on the gateway's metadata: a defined status
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                continue
            assert list(reply.degraded) == [] and len(reply.request_id) == 32


def test_a_plain_request_id_travels(stubs):
    reply = stubs["gateway"](recsys_pb2.RecommendRequest(user_id="1", k=5), timeout=15,
                             metadata=(("x-request-id", "req-42.a:b_c"),))
    assert reply.request_id == "req-42.a:b_c"


# ------------------------------------------------------------------ item 7: quotas are capped
def test_huge_quota_is_refused_naming_the_channel(stubs):
    exc = _error(stubs["recall"], recall_pb2.RecallRequest(user_id="1", quotas={"ann": 2**31 - 1}))
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "quotas.ann" in exc.details()


def test_string_fields_are_capped_naming_the_field(stubs):
    exc = _error(stubs["gateway"], recsys_pb2.RecommendRequest(user_id="1", k=5, exclude_item_ids=["1", "y" * 300]))
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "exclude_item_ids[1]" in exc.details()


def test_log_lines_are_json(cluster):
    for log in cluster.run_dir.glob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                json.loads(line)
