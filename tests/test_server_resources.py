"""What a server owns against other clients and processes (issue 12): its handler threads and its port."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]


def _start_gateway(snapshot_root, tmp_path: Path, name: str, port: int = 0, *extra: str) -> subprocess.Popen:
    """A standalone gateway (it starts without its stages; health and reflection need none)."""
    port_file = tmp_path / f"{name}.port"
    proc = subprocess.Popen([sys.executable, "-m", "gateway.server", "--snapshot", str(snapshot_root), "--port",
                             str(port), "--port-file", str(port_file), "--set", "reload_poll_s=0", *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    proc.port_file = port_file
    return proc


def _wait_port(proc: subprocess.Popen, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.port_file.exists():
            return int(proc.port_file.read_text())
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
        time.sleep(0.1)
    raise AssertionError("server did not report its port")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def gateway(snapshot_root, tmp_path):
    proc = _start_gateway(snapshot_root, tmp_path, "gateway")
    try:
        port = _wait_port(proc)
        yield proc, f"127.0.0.1:{port}"
    finally:
        _stop(proc)


def _serving(channel) -> bool:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def test_idle_streams_cannot_take_the_unary_handlers(gateway):
    """Eight idle reflection streams used to hold all eight handler threads: Health/Check then timed out."""
    _proc, addr = gateway
    release = threading.Event()

    def idle_requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        release.wait(60)  # keep the stream open, sending nothing more

    channels = [grpc.insecure_channel(addr) for _ in range(12)]
    try:
        codes = []
        streams = []
        for channel in channels:
            stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(idle_requests(), timeout=60)
            try:
                next(stream)  # the server answered: this stream now holds a handler
                streams.append(stream)
                codes.append("OK")
            except grpc.RpcError as exc:
                codes.append(exc.code().name)
        # the gateway runs on grpc.aio: an open stream is a coroutine and holds no handler thread, so none is
        # refused (the synchronous stage servers cap them at server.max_streams, common.call_pools)
        assert codes == ["OK"] * len(channels), codes
        # Health/Watch streams are gRPC's non-blocking kind: open ones hold no thread either
        watches = [health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
                   for channel in channels]
        assert all(next(watch).status == health_pb2.HealthCheckResponse.SERVING for watch in watches)
        with grpc.insecure_channel(addr) as fresh:
            for _ in range(20):
                assert _serving(fresh)
            # and unary work still has every handler: a Recommend is answered (degraded: no stages here)
            from recsys.v1 import recsys_pb2
            from recsys.v1 import recsys_pb2_grpc

            reply = recsys_pb2_grpc.GatewayStub(fresh).Recommend(recsys_pb2.RecommendRequest(user_id="1", k=5),
                                                                  timeout=10)
            assert len(reply.item_ids) == 5
    finally:
        release.set()
        for channel in channels:
            channel.close()


def test_a_second_process_cannot_take_a_live_port(snapshot_root, tmp_path, gateway):
    """Every server used to set SO_REUSEPORT, so a stray process silently joined a live port."""
    _proc, addr = gateway
    port = int(addr.rsplit(":", 1)[1])
    stray = _start_gateway(snapshot_root, tmp_path, "stray", port)
    try:
        out, _ = stray.communicate(timeout=120)
    finally:
        _stop(stray)
    assert stray.returncode == 2, out[-2000:]
    assert f"port {port} is in use" in out, out[-2000:]
    with grpc.insecure_channel(addr) as channel:
        assert _serving(channel)


def test_health_check_answers_while_requests_saturate_the_handlers(snapshot, snapshot_root, tmp_path):
    """Recommend work on every handler thread (and more queued) used to make Health/Check wait behind it."""
    from concurrent.futures import ThreadPoolExecutor

    from recsys.v2 import recommend_service_pb2 as pb2
    from recsys.v2 import recommend_service_pb2_grpc as recommend_grpc
    from tests.fake_stages import start_fake_stages, start_gateway, stop

    server, fake, port = start_fake_stages(snapshot.version, snapshot.item_ids.shape[0])
    fake.mode["recall"] = "hang"  # every Recommend holds a gateway handler until its deadline
    addr = f"127.0.0.1:{port}"
    proc, gw_port = start_gateway(snapshot_root, tmp_path, [f"recall_addr={addr}", f"rank_addr={addr}",
                                                            f"rerank_addr={addr}", "deadline_ms=10000"])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{gw_port}") as channel, ThreadPoolExecutor(24) as callers:
            stub = recommend_grpc.RecommendServiceStub(channel)
            busy = [callers.submit(stub.Recommend, pb2.RecommendRequest(user_id="1", k=5), timeout=30)
                    for _ in range(24)]  # 8 handler threads, 16 more queued: 3 rounds of a 3 s recall budget
            deadline = time.monotonic() + 20
            while "recall" not in fake.last:
                assert time.monotonic() < deadline, "no Recommend reached recall"
                time.sleep(0.05)
            time.sleep(0.3)
            for _ in range(10):  # far less than one Recommend's 3 s recall budget: no check queued behind them
                assert _serving_within(channel, 0.5)
            for call in busy:
                assert "recall" in call.result().degraded_stages
    finally:
        stop(proc)
        server.stop(0)


def _serving_within(channel, timeout: float) -> bool:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    return reply.status == health_pb2.HealthCheckResponse.SERVING
