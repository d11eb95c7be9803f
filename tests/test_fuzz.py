"""Property-based fuzzing over gRPC: random and malformed requests to every service of a running cluster.

Every call must end with OK, INVALID_ARGUMENT or FAILED_PRECONDITION (a stale snapshot version): never
UNKNOWN or INTERNAL (an exception escaped a servicer) and never DEADLINE_EXCEEDED (a hang). Afterwards
every server still reports SERVING and answers a normal request without degrading. The messages are
well-formed protobuf with hostile contents (odd byte lengths, NaN, huge or negative numbers, unknown enum
values and names); undecodable bytes are gRPC's own business (it answers INTERNAL before our code runs).
"""
from __future__ import annotations

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cluster import Cluster, ClusterConfig, health_status
from protos import recsys_pb2, recsys_pb2_grpc

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}
FUZZ = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

int32 = st.integers(-2**31, 2**31 - 1)
ids = st.lists(st.one_of(st.text(max_size=8), st.sampled_from(["1", "50", "172", "999999"])), max_size=30)
names = st.one_of(st.sampled_from(["ann", "itemcf", "swing", "popular", "segment_popular", "click", "like",
                                   "rating"]), st.text(max_size=6))
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
raw = st.one_of(st.binary(max_size=64), st.binary(min_size=4000, max_size=24000))
params = st.builds(recsys_pb2.RerankParams, **{"lambda": st.one_of(floats, st.floats(0, 1))}, alpha=floats,
                   window=int32, epsilon=floats)
context = st.builds(recsys_pb2.Context, timestamp=st.integers(-2**63, 2**63 - 1), device=st.text(max_size=5),
                    page=st.text(max_size=5))


@pytest.fixture(scope="module")
def cluster(snapshot_root, tmp_path_factory):
    config = ClusterConfig(snapshot=str(snapshot_root), gateway_port=0,
                           run_dir=str(tmp_path_factory.mktemp("fuzz")),
                           overrides={"gateway": ["deadline_ms=2000"]})
    with Cluster(config) as running:
        yield running


@pytest.fixture(scope="module")
def stubs(cluster, snapshot):
    channels = {name: grpc.insecure_channel(cluster.addr(name)) for name in ("recall", "rank", "rerank", "gateway")}
    yield {"recall": recsys_pb2_grpc.RecallStub(channels["recall"]).Recall,
           "rank": recsys_pb2_grpc.RankStub(channels["rank"]).Rank,
           "rerank": recsys_pb2_grpc.RerankStub(channels["rerank"]).Rerank,
           "gateway": recsys_pb2_grpc.GatewayStub(channels["gateway"]).Recommend,
           "version": snapshot.version}
    for channel in channels.values():
        channel.close()


SEEN: dict[str, set[str]] = {}  # status codes per test, to check the fuzzing got past validation too


def _status(call, request, test: str) -> grpc.StatusCode:
    try:
        call(request, timeout=15)
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        assert exc.code() in ALLOWED, f"{exc.code().name}: {exc.details()} for {request!r:.400}"
        code = exc.code()
    SEEN.setdefault(test, set()).add(code.name)
    return code


def _version(stubs):
    return st.sampled_from(["", stubs["version"], "v-stale"])


def test_fuzz_recall(stubs):
    @FUZZ
    @given(st.builds(recsys_pb2.RecallRequest, user_id=st.text(max_size=20), override_history=st.booleans(),
                     history_item_ids=ids, quotas=st.dictionaries(names, int32, max_size=3), n=int32,
                     exclude_item_ids=ids))
    def check(request):
        _status(stubs["recall"], request, "recall")

    check()


def test_fuzz_rank(stubs):
    @FUZZ
    @given(st.builds(recsys_pb2.RankRequest, user_id=st.text(max_size=20), context=context, item_idx=raw,
                     snapshot_version=_version(stubs), fusion=st.dictionaries(names, floats, max_size=3)))
    def check(request):
        _status(stubs["rank"], request, "rank")

    check()


def test_fuzz_rerank(stubs):

    @FUZZ
    @given(st.builds(recsys_pb2.RerankRequest, item_idx=raw, scores=raw, k=st.one_of(int32, st.integers(0, 20)),
                     method=st.integers(0, 7), params=params, snapshot_version=_version(stubs), promoted=raw,
                     exclude_idx=raw))
    def check(request):
        _status(stubs["rerank"], request, "rerank")

    check()


def test_fuzz_rerank_plausible(stubs):
    """Well-sized arrays with hostile values, so the requests get past the length checks."""
    def sized(n, valid, hostile):  # half the lists valid, half hostile, so some requests pass validation
        return st.one_of(st.lists(valid, min_size=n, max_size=n), st.lists(hostile, min_size=n, max_size=n))

    @settings(FUZZ, max_examples=50)
    @given(st.integers(1, 60).flatmap(lambda n: st.tuples(
        sized(n, st.integers(0, 1000), st.integers(-5, 2000)),
        sized(n, st.floats(-10, 10, width=32), floats),
        st.one_of(st.integers(1, 10), st.integers(-2, 70)), st.one_of(st.integers(0, 4), st.integers(-1, 9)),
        st.lists(st.integers(0, 1), min_size=n, max_size=n), st.one_of(st.none(), st.none(), params))))
    def check(args):
        idx, scores, k, method, promoted, p = args
        request = recsys_pb2.RerankRequest(item_idx=np.array(idx, "<i4").tobytes(),
                                           scores=np.array(scores, "<f4").tobytes(), k=k, method=method,
                                           promoted=np.array(promoted, "u1").tobytes() if promoted else b"",
                                           params=p)
        _status(stubs["rerank"], request, "rerank_plausible")

    check()
    assert {"OK", "INVALID_ARGUMENT"} <= SEEN["rerank_plausible"]


def test_fuzz_gateway(stubs):
    @FUZZ
    @given(st.builds(recsys_pb2.RecommendRequest, user_id=st.text(max_size=300), k=st.one_of(int32, st.integers(-1, 120)),
                     context=context, exclude_item_ids=st.one_of(ids, st.lists(st.just("1"), min_size=1001,
                                                                               max_size=1001)),
                     deadline_ms=st.one_of(int32, st.integers(0, 200)), debug=st.booleans()))
    def check(request):
        _status(stubs["gateway"], request, "gateway")

    check()
    assert {"OK", "INVALID_ARGUMENT"} <= SEEN["gateway"]


def test_servers_stay_healthy_after_fuzzing(cluster, stubs):
    for name in ("recall", "rank", "rerank", "gateway"):
        assert health_status(cluster.addr(name), timeout=5) == "SERVING", name
    reply = stubs["gateway"](recsys_pb2.RecommendRequest(user_id="1", k=10), timeout=15)
    assert len(reply.item_ids) == 10 and list(reply.degraded) == []
    for name, proc in cluster.procs.items():
        assert proc.poll() is None, f"{name} died during fuzzing"
