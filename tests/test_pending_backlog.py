"""server.max_pending_calls / max_pending_calls_hard reach gRPC core: calls that pile up before a busy server
takes them are dropped there with CANCELLED (what a burst's CANCELLED replies are), and not without the cap."""
from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.server import ServerOptions, server_channel_options


class _BusyHealth(health_pb2_grpc.HealthServicer):
    async def Check(self, request, context):
        time.sleep(0.005)   # holds the event loop, as a CPU-bound handler would: calls queue in gRPC core
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def _burst(options: ServerOptions, calls: int) -> dict[str, int]:
    port: list[int] = []
    ready, stop = threading.Event(), threading.Event()

    async def serve() -> None:
        server = grpc.aio.server(options=server_channel_options(options))
        health_pb2_grpc.add_HealthServicer_to_server(_BusyHealth(), server)
        port.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.02)
        await server.stop(0)

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(10)
    codes: dict[str, int] = {}
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port[0]}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            futures = [stub.Check.future(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(calls)]
            for future in futures:
                try:
                    future.result()
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                codes[code] = codes.get(code, 0) + 1
    finally:
        stop.set()
        thread.join(10)
    return codes


def test_a_small_backlog_drops_a_burst_in_grpc_core_with_cancelled():
    codes = _burst(ServerOptions(max_pending_calls=2, max_pending_calls_hard=4), 200)
    assert codes.get("CANCELLED", 0) > 0 and codes.get("OK", 0) > 0, codes
    assert set(codes) <= {"OK", "CANCELLED"}, codes


def test_grpc_own_backlog_takes_the_same_burst_whole():
    assert _burst(ServerOptions(), 200) == {"OK": 200}


@pytest.mark.parametrize("soft, hard", [(5, 0), (0, 5), (10, 5), (-1, 4)])
def test_backlog_limits_are_validated(soft, hard):
    with pytest.raises(ValueError, match="max_pending_calls"):
        ServerOptions(max_pending_calls=soft, max_pending_calls_hard=hard).validate()
