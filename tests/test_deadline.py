"""The gateway answers within its deadline + 2 ms when a stage hangs, and degrades on garbage, over the wire.

A real gateway process talks to a fake stage server in this process (``tests.fake_stages``) that can
hang or answer garbage per stage. Latency is measured at the client, so it includes the client ↔ gateway
round trip, which the gateway's deadline clock does not see (it starts when the handler runs). That
overhead is measured in the same test as the median of no-hang requests (which also pay three fast
stage calls, so it over-estimates the transport alone) and allowed on top of deadline + 2 ms. Medians of
several requests keep one scheduler hiccup on a loaded 2-core box from failing the test.
"""
from __future__ import annotations

import statistics
import time

import grpc
import pytest

from recsys.v1 import recsys_pb2

from recsys.v1 import recsys_pb2_grpc
from tests.fake_stages import start_fake_stages, start_gateway, stop

DEADLINE_MS = 50
SLACK_MS = 2.0
N_REQUESTS = 7


@pytest.fixture(scope="module")
def rig(snapshot, snapshot_root, tmp_path_factory):
    server, fake, port = start_fake_stages(snapshot.version, snapshot.item_ids.shape[0])
    addr = f"127.0.0.1:{port}"
    # budgets sum to 1: with every stage hanging the last call runs right up to the deadline. The quality factor
    # off: with a stage hanging, requests take their whole deadline and it would step to the level that skips
    # the rank call (tests/test_quality_e2e.py covers that); here every request runs the full funnel.
    proc, gw_port = start_gateway(snapshot_root, tmp_path_factory.mktemp("deadline"), [
        f"recall_addr={addr}", f"rank_addr={addr}", f"rerank_addr={addr}", "deadline_ms=2000",
        "budget.recall=0.3", "budget.rank=0.5", "budget.rerank=0.2", "quality.enabled=false"])
    channel = grpc.insecure_channel(f"127.0.0.1:{gw_port}")
    try:
        yield fake, recsys_pb2_grpc.GatewayStub(channel)
    finally:
        channel.close()
        stop(proc)
        server.stop(0)
    assert proc.poll() is not None


def _timed(stub, n=N_REQUESTS, request_id=None):
    request = recsys_pb2.RecommendRequest(user_id="1", k=10, deadline_ms=DEADLINE_MS)
    metadata = (("x-request-id", request_id),) if request_id else None
    latencies, replies = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        reply = stub.Recommend(request, timeout=5, metadata=metadata)
        latencies.append((time.perf_counter() - t0) * 1000.0)
        replies.append(reply)
    return latencies, replies


def _server_total(reply) -> float:
    return next(t.ms for t in reply.stage_timings if t.stage == "total")


def test_deadline_holds_when_stages_hang(rig):
    fake, stub = rig
    fake.mode.update(recall="ok", rank="ok", rerank="ok")
    _timed(stub, 3)  # warm the channels
    baseline, replies = _timed(stub, 15)
    assert all(list(r.degraded) == [] for r in replies)
    overhead = statistics.median(baseline)
    bound = DEADLINE_MS + SLACK_MS + overhead
    report = {"baseline_p50_ms": round(overhead, 2), "bound_ms": round(bound, 2)}
    for hanging in (("recall",), ("rank",), ("rerank",), ("recall", "rank", "rerank")):
        fake.mode.update(recall="ok", rank="ok", rerank="ok")
        fake.mode.update({stage: "hang" for stage in hanging})
        latencies, replies = _timed(stub)
        for reply in replies:
            assert set(hanging) <= set(reply.degraded), (hanging, list(reply.degraded))
            assert len(reply.item_ids) == 10 and len(set(reply.item_ids)) == 10
        report["+".join(hanging)] = {"client_p50_ms": round(statistics.median(latencies), 2),
                                     "client_max_ms": round(max(latencies), 2),
                                     "gateway_p50_ms": round(statistics.median(map(_server_total, replies)), 2)}
        assert statistics.median(latencies) <= bound, (hanging, latencies, report)
        assert statistics.median(map(_server_total, replies)) <= DEADLINE_MS + SLACK_MS, (hanging, report)
    fake.mode.update(recall="ok", rank="ok", rerank="ok")
    print("deadline test:", report)


def test_callers_grpc_deadline_wins_when_tighter(rig):
    fake, stub = rig
    fake.mode.update(recall="hang", rank="hang", rerank="hang")
    try:
        reply = stub.Recommend(recsys_pb2.RecommendRequest(user_id="1", k=5, deadline_ms=1000), timeout=0.2)
    finally:
        fake.mode.update(recall="ok", rank="ok", rerank="ok")
    assert _server_total(reply) <= 200 + SLACK_MS
    assert set(reply.degraded) == {"recall", "rank", "rerank"}


@pytest.mark.parametrize("stage", ["recall", "rank", "rerank"])
def test_garbage_reply_degrades(rig, stage):
    fake, stub = rig
    fake.mode[stage] = "garbage"
    try:
        _, replies = _timed(stub, 1, request_id=f"garbage-{stage}")
    finally:
        fake.mode[stage] = "ok"
    reply = replies[0]
    assert list(reply.degraded) == [stage]
    assert len(reply.item_ids) == 10 and len(set(reply.item_ids)) == 10
    assert reply.request_id == f"garbage-{stage}"
    assert fake.metadata[stage]["x-request-id"] == f"garbage-{stage}"  # the caller's id reached the stage


def test_overload_is_shed_fast_with_resource_exhausted_and_recovers(rig):
    """Admission control (gateway.admission) over the wire: with recall hanging, every reply of a first wave of
    concurrent requests ran out of time in a stage; a second wave inside the same window is mostly refused at
    once with RESOURCE_EXHAUSTED instead of joining the queue; once the window has passed with the stage well
    again, nothing is refused. Counts only, no timings."""
    fake, stub = rig
    request = recsys_pb2.RecommendRequest(user_id="1", k=10, deadline_ms=200)

    def wave(n):
        futures = [stub.Recommend.future(request, timeout=5) for _ in range(n)]
        codes, details = [], []
        for future in futures:
            try:
                future.result()
                codes.append("OK")
            except grpc.RpcError as exc:
                codes.append(exc.code().name)
                details.append(exc.details())
        return codes, details

    fake.mode.update(recall="hang")
    try:
        first, _ = wave(40)
        second, details = wave(40)
    finally:
        fake.mode.update(recall="ok")
    assert set(first) <= {"OK", "RESOURCE_EXHAUSTED"} and set(second) <= {"OK", "RESOURCE_EXHAUSTED"}
    assert second.count("RESOURCE_EXHAUSTED") >= 20, second
    assert all("request shed" in d for d in details), details[:3]
    time.sleep(1.5)  # past admission.window_s: the timed-out replies no longer count
    relaxed = recsys_pb2.RecommendRequest(user_id="1", k=10, deadline_ms=1000)
    replies = [stub.Recommend(relaxed, timeout=5) for _ in range(10)]  # none refused (an RpcError would raise)
    assert all(list(r.degraded) == [] for r in replies)
