"""Stages do no work for a caller that has gone (common.deadline_guard), on a real gRPC server."""
from __future__ import annotations

import io
import threading
import time

import grpc

from common.log import Logger
from common.server import GrpcServer, ServerOptions


def _server(options: ServerOptions, calls: list[bytes], release: threading.Event):
    server = GrpcServer("test", options, Logger("test", stream=io.StringIO()))

    def work(request, context):
        calls.append(request)
        release.wait(10)
        return b"done:" + request

    server.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "test.Guard", {"Work": grpc.unary_unary_rpc_method_handler(work)}),))
    return server, server.start()


def test_a_call_whose_deadline_passed_in_the_queue_is_not_run():
    """gRPC's synchronous server drops it itself (the call is cancelled when its deadline passes); measured
    here so that staying true is checked, since the guard below only adds the minimum-time rule."""
    calls: list[bytes] = []
    release = threading.Event()
    server, port = _server(ServerOptions(threads=1), calls, release)  # one handler thread: B must queue
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/test.Guard/Work")
            a = call.future(b"a", timeout=10)
            deadline = time.monotonic() + 10
            while not calls:  # A holds the only thread
                assert time.monotonic() < deadline
                time.sleep(0.01)
            b = call.future(b"b", timeout=0.2)
            try:
                b.result()
                raise AssertionError("B answered while the only thread was busy")
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            release.set()
            assert a.result() == b"done:a"
    finally:
        release.set()
        server.stop()  # drains: B would run now if it were going to
    assert calls == [b"a"], "the handler ran for a caller that had gone"


def test_a_call_with_too_little_time_left_is_refused_before_running():
    calls: list[bytes] = []
    release = threading.Event()
    release.set()
    server, port = _server(ServerOptions(min_remaining_ms=500), calls, release)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/test.Guard/Work")
            assert call(b"plenty", timeout=10) == b"done:plenty"
            try:
                call(b"short", timeout=0.3)
                raise AssertionError("a call with 300 ms left passed a 500 ms minimum")
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "not started" in exc.details()
    finally:
        server.stop()
    assert calls == [b"plenty"]
