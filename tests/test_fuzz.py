"""Property-based fuzzing over gRPC: random and malformed requests to every service of a running cluster.

Every call must end with OK, INVALID_ARGUMENT or FAILED_PRECONDITION (a stale snapshot version): never
UNKNOWN or INTERNAL (an exception escaped a servicer) and never DEADLINE_EXCEEDED (a hang). Afterwards
every server still reports SERVING and answers a normal request without degrading. The messages are
well-formed protobuf with hostile contents (odd byte lengths, NaN, huge or negative numbers, unknown enum
values and names, zero and extreme finite floats, int32 edges, strings past every length cap, oversized
``x-request-id`` metadata); undecodable bytes are INVALID_ARGUMENT naming the method (tests/test_malformed_bytes.py),
and metadata over gRPC's own size limit is gRPC's business (RESOURCE_EXHAUSTED, allowed only for those calls).
"""
from __future__ import annotations

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.launcher import Cluster, ClusterConfig, health_status
from recsys.stage.v1 import recall_service_pb2 as recall_pb2
from recsys.stage.v1 import recall_service_pb2_grpc as recall_grpc
from recsys.stage.v1 import rank_service_pb2 as rank_pb2
from recsys.stage.v1 import rank_service_pb2_grpc as rank_grpc
from recsys.stage.v1 import rerank_service_pb2 as rerank_pb2
from recsys.stage.v1 import rerank_service_pb2_grpc as rerank_grpc
from recsys.v1 import recsys_pb2
from recsys.v1 import recsys_pb2_grpc
from recsys.v2 import recommend_service_pb2 as pb2
from recsys.v2 import recommend_service_pb2_grpc as recommend_grpc

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}
FUZZ = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

LONG = ["x" * 257, "y" * 20_000]  # just past ServerOptions.max_string_len, and far past the metadata limit
int32 = st.one_of(st.integers(-2**31, 2**31 - 1), st.sampled_from([-2**31, -1, 0, 1, 2**31 - 1]))
text = st.one_of(st.text(max_size=20), st.sampled_from(LONG))
ids = st.lists(st.one_of(st.text(max_size=8), st.sampled_from(["1", "50", "172", "999999", *LONG])), max_size=30)
names = st.one_of(st.sampled_from(["ann", "itemcf", "swing", "popular", "segment_popular", "click", "like",
                                   "rating", *LONG]), st.text(max_size=6))
# every edge of the float parameters: zero (epsilon's open bound), both signs of the largest finite float32
# (min-max scaling overflowed), the bounds of lambda [0, 1], alpha [0, 50], fusion [0, 100], and beyond
EDGE_FLOATS = [0.0, -0.0, 1e-45, 1.0, 0.99999994, 1.0000001, 50.0, 50.000004, 100.0, 100.00001,
               3e38, -3e38, 3.4028235e38, -3.4028235e38]
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from(EDGE_FLOATS))
# x-request-id: plain, odd characters, long, and past gRPC's own metadata limits
request_ids = st.one_of(st.just(None), st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
                        st.sampled_from(["ok-id.1", "a" * 129, "r" * 9_000, "r" * 20_000]))
OVERSIZED_METADATA = 8_000


def edges(*limits: int):
    """int32 values at and just past each limit (config defaults: max_k, max_n, max_quota, ...)."""
    return st.one_of(int32, st.sampled_from(sorted({v + d for v in limits for d in (-1, 0, 1)})))


raw = st.one_of(st.binary(max_size=64), st.binary(min_size=4000, max_size=24000))
params = st.builds(rerank_pb2.RerankParams, mmr_lambda=st.one_of(floats, st.floats(0, 1)), alpha=floats,
                   window=edges(0, 1, 5000), epsilon=floats)
context = st.builds(recsys_pb2.Context, timestamp=st.one_of(st.integers(-2**63, 2**63 - 1), st.just(0)),
                    device=text, page=text)
rank_context = st.builds(rank_pb2.RankContext, timestamp=st.one_of(st.integers(-2**63, 2**63 - 1), st.just(0)))


@pytest.fixture(scope="module")
def cluster(snapshot_root, tmp_path_factory):
    config = ClusterConfig(snapshot=str(snapshot_root), gateway_port=0, local_stages=[], replicas={},
                           run_dir=str(tmp_path_factory.mktemp("fuzz")),
                           overrides={"gateway": ["deadline_ms=2000"]})
    with Cluster(config) as running:
        yield running


@pytest.fixture(scope="module")
def stubs(cluster, snapshot):
    channels = {name: grpc.insecure_channel(cluster.addr(name)) for name in ("recall", "rank", "rerank", "gateway")}
    yield {"recall": recall_grpc.RecallServiceStub(channels["recall"]).Recall,
           "rank": rank_grpc.RankServiceStub(channels["rank"]).Rank,
           "rerank": rerank_grpc.RerankServiceStub(channels["rerank"]).Rerank,
           "gateway": recsys_pb2_grpc.GatewayStub(channels["gateway"]).Recommend,
           "v2": recommend_grpc.RecommendServiceStub(channels["gateway"]).Recommend,
           "version": snapshot.version}
    for channel in channels.values():
        channel.close()


SEEN: dict[str, set[str]] = {}  # status codes per test, to check the fuzzing got past validation too


def _status(call, request, test: str, request_id: str | None = None) -> grpc.StatusCode:
    metadata = () if request_id is None else (("x-request-id", request_id),)
    allowed = ALLOWED | ({grpc.StatusCode.RESOURCE_EXHAUSTED} if len(request_id or "") > OVERSIZED_METADATA else set())
    try:
        call(request, timeout=15, metadata=metadata)
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        assert exc.code() in allowed, f"{exc.code().name}: {(exc.details() or '')[:400]} for {request!r:.400}"
        assert len(exc.details() or "") <= 1000, f"unbounded detail ({len(exc.details())} chars) for {request!r:.400}"
        code = exc.code()
    SEEN.setdefault(test, set()).add(code.name)
    return code


def _version(stubs):
    return st.sampled_from(["", stubs["version"], "v-stale", *LONG])


def test_fuzz_recall(stubs):
    @FUZZ
    @given(st.builds(recall_pb2.RecallRequest, user_id=text, override_history=st.booleans(),
                     history_item_ids=ids, quotas=st.dictionaries(names, edges(0, 5000), max_size=3),
                     n=edges(0, 5000), exclude_item_ids=ids, snapshot_version=_version(stubs)), request_ids)
    def check(request, request_id):
        _status(stubs["recall"], request, "recall", request_id)

    check()


def test_fuzz_rank(stubs):
    @FUZZ
    @given(st.builds(rank_pb2.RankRequest, user_id=text, context=rank_context,
                     item_idx=st.one_of(raw, st.lists(st.integers(-3, 2000), max_size=50).map(
                         lambda v: np.array(v, "<i4").tobytes())),
                     snapshot_version=_version(stubs), fusion=st.dictionaries(names, floats, max_size=3)), request_ids)
    def check(request, request_id):
        _status(stubs["rank"], request, "rank", request_id)

    check()


def test_fuzz_rerank(stubs):

    @FUZZ
    @given(st.builds(rerank_pb2.RerankRequest, item_idx=raw, scores=raw, k=st.one_of(edges(0, 200), st.integers(0, 20)),
                     method=st.integers(0, 7), params=params, snapshot_version=_version(stubs), promoted=raw,
                     exclude_idx=raw), request_ids)
    def check(request, request_id):
        _status(stubs["rerank"], request, "rerank", request_id)

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
        request = rerank_pb2.RerankRequest(item_idx=np.array(idx, "<i4").tobytes(),
                                           scores=np.array(scores, "<f4").tobytes(), k=k, method=method,
                                           promoted=np.array(promoted, "u1").tobytes() if promoted else b"",
                                           params=p)
        _status(stubs["rerank"], request, "rerank_plausible")

    check()
    assert {"OK", "INVALID_ARGUMENT"} <= SEEN["rerank_plausible"]


def test_fuzz_gateway(stubs):
    hostile = st.builds(recsys_pb2.RecommendRequest, user_id=st.one_of(st.text(max_size=300), st.sampled_from(LONG)),
                        k=st.one_of(edges(0, 100), st.integers(-1, 120)),
                        context=context, exclude_item_ids=st.one_of(ids, st.lists(st.just("1"), min_size=1001,
                                                                                  max_size=1001)),
                        deadline_ms=st.one_of(edges(0, 10000), st.integers(0, 200)), debug=st.booleans())
    plausible = st.builds(recsys_pb2.RecommendRequest, user_id=st.sampled_from(["1", "2", "somebody-new"]),
                          k=st.integers(1, 100), exclude_item_ids=st.lists(st.sampled_from(["1", "50", "x"]), max_size=3),
                          deadline_ms=st.sampled_from([0, 1, 200, 10000]), debug=st.booleans())

    @FUZZ
    @given(st.one_of(hostile, plausible), request_ids)
    def check(request, request_id):
        _status(stubs["gateway"], request, "gateway", request_id)

    check()
    assert {"OK", "INVALID_ARGUMENT"} <= SEEN["gateway"]


# filters: the bad inputs the API must refuse with INVALID_ARGUMENT naming the field (never UNKNOWN)
ATTRS = ["genre", "release_year", "colour", "", *LONG]
GENRE_VALUES = ["Comedy", "Drama", "Horror", "Comdy", ""]
value_sets = st.one_of(st.builds(pb2.ValueSet, values=st.lists(st.one_of(st.sampled_from(GENRE_VALUES), text),
                                                              max_size=5)),
                       st.just(pb2.ValueSet(values=["Comedy"] * 10_000)))  # 10^4 values
bounds = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1900.0, 1995.0, 2100.0]))


def _range(lo, hi):
    r = pb2.Range()
    if lo is not None:
        r.min = lo
    if hi is not None:
        r.max = hi
    return r


conditions = st.one_of(
    st.builds(lambda a, v: pb2.AttributeFilter(attribute=a, any_of=v), st.sampled_from(ATTRS), value_sets),
    st.builds(lambda a, v: pb2.AttributeFilter(attribute=a, none_of=v), st.sampled_from(ATTRS), value_sets),
    st.builds(lambda a, lo, hi: pb2.AttributeFilter(attribute=a, range=_range(lo, hi)), st.sampled_from(ATTRS),
              bounds, bounds),
    st.builds(pb2.AttributeFilter, attribute=st.sampled_from(ATTRS)))  # no condition set


def test_fuzz_gateway_filters(stubs):
    """Any filter either serves a list whose every item satisfies it, or is INVALID_ARGUMENT naming the field."""
    @FUZZ
    @given(st.lists(conditions, min_size=1, max_size=18))
    def check(filters):
        request = pb2.RecommendRequest(user_id="1", k=10, filters=filters, debug=True)
        try:
            reply = stubs["v2"](request, timeout=15)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{exc.code().name}: {exc.details()[:300]}"
            assert exc.details().startswith("filters"), exc.details()[:300]
            assert len(exc.details()) <= 1000
            SEEN.setdefault("filters", set()).add("INVALID_ARGUMENT")
            return
        SEEN.setdefault("filters", set()).add("OK")
        assert len(reply.items) <= 10 and reply.eligible_items >= len(reply.items)
        assert reply.fewer_than_k == (len(reply.items) < 10)
        for item in reply.items:
            attrs = {a.name: a for a in item.attributes}
            for f in filters:
                if f.attribute == "genre":
                    have = set(attrs["genre"].values)
                    want = set((f.any_of if f.HasField("any_of") else f.none_of).values)
                    assert bool(have & want) == f.HasField("any_of"), (item.item_id, have, f)
                else:
                    year = attrs["release_year"].number
                    assert (not f.range.HasField("min") or year >= f.range.min) and \
                           (not f.range.HasField("max") or year <= f.range.max), (item.item_id, year, f)

    check()
    assert "INVALID_ARGUMENT" in SEEN["filters"]  # served filters: tests/test_cluster_e2e.py


def test_servers_stay_healthy_after_fuzzing(cluster, stubs):
    for name in ("recall", "rank", "rerank", "gateway"):
        assert health_status(cluster.addr(name), timeout=5) == "SERVING", name
    reply = stubs["gateway"](recsys_pb2.RecommendRequest(user_id="1", k=10), timeout=15)
    assert len(reply.item_ids) == 10 and list(reply.degraded) == []
    for name, proc in cluster.procs.items():
        assert proc.poll() is None, f"{name} died during fuzzing"
