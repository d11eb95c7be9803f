"""Undecodable request bytes (issue 27 item 5): never UNKNOWN, never INTERNAL for a caller's bytes.

Raw bytes that do not decode as the method's request message (garbage, truncation, a length prefix of 4 GB or
past the end, bad UTF-8 in a string field, an unclosed group, invalid wire types, nesting past the parser's
limit) sent to every unary method of every server get INVALID_ARGUMENT naming the method and the message, with
no Python class name; each is logged once (``request_undecodable``, with its byte length) and counted once in
``recsys_request_errors_total``; a well-formed request still works afterwards (``common.request_decoding``).

Two layers: the server bootstraps in this process (``common.server.GrpcServer`` serving fake stages and
``common.aio_server.AioGrpcServer`` serving fake gateway servicers; no snapshot needed), and the real cluster.
"""
from __future__ import annotations

import asyncio
import io
import json
import threading
import urllib.request
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
import pytest
from google.protobuf import descriptor as pb_descriptor
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families

from common.log import Logger
from common.metrics import REGISTRY
from common.server_options import ServerOptions
from recsys.stage.v1 import rank_service_pb2 as rank_pb2
from recsys.stage.v1 import rank_service_pb2_grpc as rank_grpc
from recsys.stage.v1 import recall_service_pb2 as recall_pb2
from recsys.stage.v1 import recall_service_pb2_grpc as recall_grpc
from recsys.stage.v1 import rerank_service_pb2 as rerank_pb2
from recsys.stage.v1 import rerank_service_pb2_grpc as rerank_grpc
from recsys.v1 import recsys_pb2
from recsys.v1 import recsys_pb2_grpc
from recsys.v2 import recommend_service_pb2 as pb2
from recsys.v2 import recommend_service_pb2_grpc as recommend_grpc

# every unary method of every server: full method name → request message class
GATEWAY_METHODS = {"/recsys.v2.RecommendService/Recommend": pb2.RecommendRequest,
                   "/recsys.v2.RecommendService/Feedback": pb2.FeedbackRequest,
                   "/recsys.v1.Gateway/Recommend": recsys_pb2.RecommendRequest}
STAGE_METHODS = {"recall": {"/recsys.stage.v1.RecallService/Recall": recall_pb2.RecallRequest},
                 "rank": {"/recsys.stage.v1.RankService/Rank": rank_pb2.RankRequest},
                 "rerank": {"/recsys.stage.v1.RerankService/Rerank": rerank_pb2.RerankRequest}}
HEALTH_CHECK = {"/grpc.health.v1.Health/Check": health_pb2.HealthCheckRequest}
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
OPTIONS = ServerOptions(port=0, grace_s=0, health_port=0)  # in-process servers: + the health-only port


# ------------------------------------------------------------------ the battery of undecodable bytes
def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            return bytes(out + bytes([low]))
        out.append(low | 0x80)


def tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def delimited(field: int, payload: bytes) -> bytes:
    return tag(field, 2) + varint(len(payload)) + payload


def string_path(descriptor, depth: int = 0) -> list[int] | None:
    """Field numbers leading from ``descriptor`` to a (UTF-8 checked) string field, through message fields."""
    for field in descriptor.fields:
        if field.type == pb_descriptor.FieldDescriptor.TYPE_STRING:
            return [field.number]
    for field in descriptor.fields:
        if field.type == pb_descriptor.FieldDescriptor.TYPE_MESSAGE and depth < 3:
            inner = string_path(field.message_type, depth + 1)
            if inner is not None:
                return [field.number, *inner]
    return None


def bad_utf8(message_cls) -> bytes:
    path = string_path(message_cls.DESCRIPTOR)
    assert path is not None, message_cls.DESCRIPTOR.full_name
    payload = b"ok \xc3\x28 \xff\xfe"  # an invalid 2-byte sequence and two bytes never valid in UTF-8
    for number in reversed(path):
        payload = delimited(number, payload)
    return payload


def battery(message_cls) -> dict[str, bytes]:
    """Named byte strings none of which decodes as ``message_cls``."""
    return {
        "garbage": b"\xff\xfe\xfd\xfc garbage \x00\x01",
        "truncated_varint": tag(2, 0) + b"\xff\xff",
        "tag_varint_too_long": b"\xff" * 11,
        "length_4gb": tag(1, 2) + varint(4 << 30) + b"abc",
        "length_2^64-1": tag(1, 2) + varint(2**64 - 1),
        "length_past_end": tag(1, 2) + varint(100) + b"abc",
        "truncated_fixed64": tag(15, 1) + b"\x01\x02",
        "bad_utf8": bad_utf8(message_cls),
        "unclosed_group": tag(15, 3) + tag(1, 0) + b"\x01",
        "end_group_alone": tag(15, 4),
        "mismatched_end_group": tag(15, 3) + tag(16, 4),
        "wire_type_6": tag(1, 6) + b"\x00",
        "wire_type_7": tag(1, 7) + b"\x00",
        "field_number_0": tag(0, 0) + b"\x01",
        "groups_nested_past_limit": tag(15, 3) * 200 + tag(15, 4) * 200,
    }


@pytest.mark.parametrize("message_cls", [*GATEWAY_METHODS.values(), *(m for s in STAGE_METHODS.values()
                                                                      for m in s.values()),
                                         health_pb2.HealthCheckRequest])
def test_the_battery_is_undecodable(message_cls):
    """The premise: protobuf itself refuses every byte string of the battery (else it tests nothing)."""
    for name, raw in battery(message_cls).items():
        with pytest.raises(Exception):
            message_cls.FromString(raw)


def call_raw(channel: grpc.Channel, method: str, raw: bytes, metadata=()) -> tuple[grpc.StatusCode, str]:
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        call(raw, timeout=15, metadata=metadata)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def check_refusal(method: str, message_cls, case: str, code, details: str) -> None:
    assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{method} {case}: {code.name} {details[:300]!r}"
    assert code not in NEVER
    assert "<class" not in details and "Exception" not in details and "Error parsing" not in details, details
    assert details.startswith(f"request to {method} could not be decoded as {message_cls.DESCRIPTOR.full_name}"), \
        details
    assert len(details) <= 300, details


def run_battery(channel, methods: dict) -> dict[tuple[str, str], str]:
    """Send the battery to each of ``methods``; return (method, case) → status name (asserting each)."""
    seen = {}
    for method, message_cls in methods.items():
        for case, raw in battery(message_cls).items():
            code, details = call_raw(channel, method, raw, metadata=(("x-request-id", f"bad-{case}".replace("^", "")),))
            check_refusal(method, message_cls, case, code, details)
            seen[method, case] = code.name
    return seen


def undecodable_lines(text: str) -> list[dict]:
    return [record for line in text.splitlines() if line.startswith("{")
            and (record := json.loads(line))["event"] == "request_undecodable"]


def expected_count(methods: dict, method: str) -> int:
    """Calls of the battery counted under ``method``'s label (v1 and v2 Recommend share ``Recommend``)."""
    label = method.rsplit("/", 1)[-1]
    return sum(len(battery(cls)) for m, cls in methods.items() if m.rsplit("/", 1)[-1] == label)


def errors_in_process(method: str) -> float:
    short = method.rsplit("/", 1)[-1]
    return REGISTRY.get_sample_value("recsys_request_errors_total",
                                     {"method": short, "code": "INVALID_ARGUMENT"}) or 0.0


# ------------------------------------------------------------------ in process: both server bootstraps
class FakeGateway(recommend_grpc.RecommendServiceServicer, recsys_pb2_grpc.GatewayServicer):
    """The gateway's two services on ``grpc.aio``, answering well-formed requests with a fixed reply."""

    async def Recommend(self, request, context):
        if isinstance(request, recsys_pb2.RecommendRequest):
            return recsys_pb2.RecommendResponse(item_ids=["1"] * request.k, request_id="r")
        return pb2.RecommendResponse(request_id=f"k{request.k}")

    async def Feedback(self, request, context):
        return pb2.FeedbackResponse(accepted=len(request.events))


class LegacyFakeGateway(recsys_pb2_grpc.GatewayServicer):
    def __init__(self, core: FakeGateway):
        self.core = core

    async def Recommend(self, request, context):
        return await self.core.Recommend(request, context)


@pytest.fixture(scope="module")
def stage_server():
    """``common.server.GrpcServer`` serving the three fake stages, logging into a buffer."""
    from common.server import GrpcServer
    from tests.fake_stages import FakeStages

    stream = io.StringIO()
    server = GrpcServer("stages", OPTIONS, Logger("stages", stream=stream, level="debug"))
    fake = FakeStages("v-test", 50)
    server.add(recall_grpc.add_RecallServiceServicer_to_server, fake, "recsys.stage.v1.RecallService")
    server.add(rank_grpc.add_RankServiceServicer_to_server, fake, "recsys.stage.v1.RankService")
    server.add(rerank_grpc.add_RerankServiceServicer_to_server, fake, "recsys.stage.v1.RerankService")
    port = server.start()
    server.set_serving(True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, stream
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gateway_server():
    """``common.aio_server.AioGrpcServer`` serving fake gateway servicers on an event loop of its own."""
    from common.aio_server import AioGrpcServer

    stream = io.StringIO()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start():
        server = AioGrpcServer("gateway", OPTIONS, Logger("gateway", stream=stream, level="debug"))
        core = FakeGateway()
        server.add(recommend_grpc.add_RecommendServiceServicer_to_server, core, "recsys.v2.RecommendService")
        server.add(recsys_pb2_grpc.add_GatewayServicer_to_server, LegacyFakeGateway(core), "recsys.v1.Gateway")
        port = await server.start()
        await server.set_serving(True)
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, stream
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _in_process_battery(channel, stream, methods):
    before = {method: errors_in_process(method) for method in methods}
    lines_before = len(undecodable_lines(stream.getvalue()))
    seen = run_battery(channel, methods)
    lines = undecodable_lines(stream.getvalue())[lines_before:]
    for method, message_cls in methods.items():
        cases = battery(message_cls)
        # counted once per call (not again by the metrics interceptor as a plain failure)
        assert errors_in_process(method) - before[method] == expected_count(methods, method), method
        logged = [line for line in lines if line["method"] == method]
        assert len(logged) == len(cases), (method, logged)
        assert sorted(line["bytes"] for line in logged) == sorted(len(raw) for raw in cases.values())
        assert all(line["message"] == message_cls.DESCRIPTOR.full_name and line["code"] == "INVALID_ARGUMENT"
                   and line["level"] == "warning" for line in logged)
        assert all(line.get("request_id", "").startswith("bad-") for line in logged)  # the caller's id is on it
    # never also logged as a plain failure
    assert not [line for line in stream.getvalue().splitlines() if '"request_failed"' in line and "bad-" in line]
    return seen


def test_stage_server_refuses_undecodable_bytes(stage_server):
    channel, stream = stage_server
    methods = {m: cls for stage in STAGE_METHODS.values() for m, cls in stage.items()}
    _in_process_battery(channel, stream, methods)
    # still serving well-formed requests
    reply = recall_grpc.RecallServiceStub(channel).Recall(recall_pb2.RecallRequest(user_id="1", n=10), timeout=10)
    assert len(reply.item_idx) > 0
    reply = rerank_grpc.RerankServiceStub(channel).Rerank(
        rerank_pb2.RerankRequest(item_idx=np.arange(10, dtype="<i4").tobytes(), k=3), timeout=10)
    assert len(reply.positions) == 12


def test_gateway_server_refuses_undecodable_bytes(gateway_server):
    channel, stream = gateway_server
    _in_process_battery(channel, stream, GATEWAY_METHODS)
    assert recommend_grpc.RecommendServiceStub(channel).Recommend(pb2.RecommendRequest(user_id="1", k=3),
                                                                  timeout=10).request_id == "k3"
    assert recommend_grpc.RecommendServiceStub(channel).Feedback(
        pb2.FeedbackRequest(events=[pb2.FeedbackEvent(user_id="1", item_id="2")]), timeout=10).accepted == 1
    assert len(recsys_pb2_grpc.GatewayStub(channel).Recommend(recsys_pb2.RecommendRequest(user_id="1", k=2),
                                                              timeout=10).item_ids) == 2


@pytest.mark.parametrize("server", ["stage_server", "gateway_server"])
def test_health_check_refuses_undecodable_bytes(server, request):
    channel, stream = request.getfixturevalue(server)
    method, message_cls = next(iter(HEALTH_CHECK.items()))
    for case, raw in battery(message_cls).items():
        code, details = call_raw(channel, method, raw)
        check_refusal(method, message_cls, case, code, details)
    assert any(line["method"] == method for line in undecodable_lines(stream.getvalue()))
    reply = channel.unary_unary(method, request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                                response_deserializer=health_pb2.HealthCheckResponse.FromString)(
        health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("server", ["stage_server", "gateway_server"])
def test_health_only_port_refuses_undecodable_bytes(server, request):
    """The plaintext health-only port (``server.health_port``) is a server of its own: the same refusal."""
    _channel, stream = request.getfixturevalue(server)
    port = next(json.loads(line)["port"] for line in stream.getvalue().splitlines()
                if '"health_port_started"' in line)
    method, message_cls = next(iter(HEALTH_CHECK.items()))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        for case in ("garbage", "length_4gb", "bad_utf8", "unclosed_group"):
            code, details = call_raw(channel, method, battery(message_cls)[case])
            check_refusal(method, message_cls, case, code, details)


@pytest.mark.parametrize("server", ["stage_server", "gateway_server"])
def test_wire_type_mismatches_on_known_fields_are_unknown_fields(server, request):
    """A known field sent with another (valid) wire type is an unknown field to protobuf, so the request
    decodes: it is the servicer's to judge, and never becomes UNKNOWN or INTERNAL."""
    channel, _stream = request.getfixturevalue(server)
    methods = {m: c for s in STAGE_METHODS.values() for m, c in s.items()} if server == "stage_server" \
        else GATEWAY_METHODS
    for method in methods:
        for raw in (delimited(2, b"abc"), tag(1, 0) + varint(7), tag(1, 5) + b"\0\0\0\0", tag(1, 1) + b"\0" * 8):
            code, details = call_raw(channel, method, raw)
            assert code not in NEVER and "<class" not in details, (method, raw, code, details)


# ------------------------------------------------------------------ the real cluster
@pytest.fixture(scope="module")
def cluster(snapshot_root, tmp_path_factory):
    from cluster.launcher import Cluster, ClusterConfig

    servers = ("recall", "rank", "rerank", "gateway")
    overrides = {name: ["server.metrics_port=0"] for name in servers}
    overrides["gateway"] += ["deadline_ms=3000"]
    config = ClusterConfig(snapshot=str(snapshot_root), gateway_port=0, local_stages=[], replicas={},
                           run_dir=str(tmp_path_factory.mktemp("malformed")), overrides=overrides)
    with Cluster(config) as running:
        yield running


def scrape_errors(cluster, name: str) -> dict[tuple[str, str], float]:
    port = int((Path(cluster.run_dir) / f"{name}.port.metrics").read_text())
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.labels["method"], s.labels["code"]): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "recsys_request_errors_total"}


def test_cluster_refuses_undecodable_bytes_on_every_method(cluster, snapshot):
    servers = {"gateway": GATEWAY_METHODS, **STAGE_METHODS}
    before = {name: scrape_errors(cluster, name) for name in servers}
    outcome: dict[tuple[str, str], str] = {}
    for name, methods in servers.items():
        with grpc.insecure_channel(cluster.addr(name)) as channel:
            outcome.update(run_battery(channel, methods))
    for name, methods in servers.items():
        after = scrape_errors(cluster, name)
        for method, message_cls in methods.items():
            key = (method.rsplit("/", 1)[-1], "INVALID_ARGUMENT")
            assert after.get(key, 0) - before[name].get(key, 0) == expected_count(methods, method), (name, method)
        lines = undecodable_lines((Path(cluster.run_dir) / f"{name}.log").read_text(errors="replace"))
        for method, message_cls in methods.items():
            assert len([line for line in lines if line["method"] == method]) >= len(battery(message_cls)), method
    assert set(outcome.values()) == {"INVALID_ARGUMENT"}

    # every server still serves well-formed requests
    with grpc.insecure_channel(cluster.gateway_addr) as channel:
        v2 = recommend_grpc.RecommendServiceStub(channel)
        reply = v2.Recommend(pb2.RecommendRequest(user_id="1", k=5), timeout=15)
        assert len(reply.items) == 5 and list(reply.degraded_stages) == []
        try:  # the servicer's own answer: feedback is off in this cluster (no feedback.path)
            v2.Feedback(pb2.FeedbackRequest(), timeout=15)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "feedback" in exc.details(), exc
        reply = recsys_pb2_grpc.GatewayStub(channel).Recommend(recsys_pb2.RecommendRequest(user_id="1", k=5),
                                                               timeout=15)
        assert len(reply.item_ids) == 5 and list(reply.degraded) == []
    with grpc.insecure_channel(cluster.addr("recall")) as channel:
        recalled = recall_grpc.RecallServiceStub(channel).Recall(recall_pb2.RecallRequest(user_id="1", n=20),
                                                                 timeout=15)
        assert len(recalled.item_idx) > 0
    with grpc.insecure_channel(cluster.addr("rank")) as channel:
        rank_grpc.RankServiceStub(channel).Rank(rank_pb2.RankRequest(
            user_id="1", item_idx=recalled.item_idx, snapshot_version=snapshot.version), timeout=15)
    with grpc.insecure_channel(cluster.addr("rerank")) as channel:
        idx = np.arange(20, dtype="<i4")
        reply = rerank_grpc.RerankServiceStub(channel).Rerank(rerank_pb2.RerankRequest(
            item_idx=idx.tobytes(), scores=np.linspace(1, 0, 20, dtype="<f4").tobytes(), k=5,
            snapshot_version=snapshot.version), timeout=15)
        assert len(np.frombuffer(reply.positions, "<i4")) == 5


def test_cluster_health_checks_refuse_undecodable_bytes(cluster):
    method, message_cls = next(iter(HEALTH_CHECK.items()))
    for name in ("recall", "rank", "rerank", "gateway"):
        with grpc.insecure_channel(cluster.addr(name)) as channel:
            for case in ("garbage", "length_4gb", "unclosed_group"):
                code, details = call_raw(channel, method, battery(message_cls)[case])
                check_refusal(method, message_cls, case, code, details)


def test_generic_handlers_decode_their_requests_too():
    """Services registered only as generic handlers (no registered methods) get the same refusal, on both
    runtimes."""
    from concurrent import futures

    from common.request_decoding import DecodingServer

    method = "/test.Echo/Echo"

    def handlers(behavior):
        return (grpc.method_handlers_generic_handler("test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(
            behavior, request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString)}),)

    def check(port, stream):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            for case, raw in battery(health_pb2.HealthCheckRequest).items():
                code, details = call_raw(channel, method, raw)
                check_refusal(method, health_pb2.HealthCheckRequest, case, code, details)
            ok = health_pb2.HealthCheckRequest(service="x").SerializeToString()
            assert call_raw(channel, method, ok) == (grpc.StatusCode.OK, "")
        assert len([line for line in undecodable_lines(stream.getvalue()) if line["method"] == method]) == \
            len(battery(health_pb2.HealthCheckRequest))

    stream = io.StringIO()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    DecodingServer(server, Logger("t", stream=stream)).add_generic_rpc_handlers(handlers(
        lambda request, context: health_pb2.HealthCheckResponse(status=len(request.service))))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        check(port, stream)
    finally:
        server.stop(0)

    async def serve_aio():
        async def echo(request, context):
            return health_pb2.HealthCheckResponse(status=len(request.service))

        aio_stream = io.StringIO()
        aio_server = grpc.aio.server()
        DecodingServer(aio_server, Logger("t", stream=aio_stream)).add_generic_rpc_handlers(handlers(echo))
        aio_port = aio_server.add_insecure_port("127.0.0.1:0")
        await aio_server.start()
        try:
            await asyncio.get_running_loop().run_in_executor(None, check, aio_port, aio_stream)
        finally:
            await aio_server.stop(0)

    asyncio.run(serve_aio())
