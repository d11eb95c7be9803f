"""Handler threads by kind of call, so streams and health checks never wait behind unary work.

gRPC's synchronous server runs every call on one thread pool by default, and a stream holds its thread
for as long as the client keeps it open: eight idle reflection streams used to freeze a server with eight
threads, and a health check waited behind every queued Recommend. ``CallPools`` gives each kind its own
pool (gRPC's per-handler ``experimental_thread_pool``):

* unary calls (the recsys services): the server's pool of ``ServerOptions.threads``;
* ``grpc.health.v1.Health/Check``: ``ServerOptions.health_threads`` of its own, answered even when
  request work is saturated (docs/ARCHITECTURE.md §4);
* streams that block a thread while open (server reflection): ``ServerOptions.max_streams`` threads plus
  one that refuses a stream beyond that at once with RESOURCE_EXHAUSTED instead of queueing it.
  ``Health/Watch`` is gRPC's non-blocking kind (it holds no thread between updates) and is left alone.
"""
from __future__ import annotations

import threading
from concurrent import futures

import grpc

HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def _on_pool(behavior, pool: futures.ThreadPoolExecutor):
    """``behavior`` as a plain function that gRPC runs on ``pool``."""
    def run(request, context):
        return behavior(request, context)
    run.experimental_thread_pool = pool
    return run


def _non_blocking(handler) -> bool:
    """gRPC's experimental non-blocking streams (Health/Watch) return at once and hold no thread."""
    behavior = handler.unary_stream or handler.stream_stream
    return bool(getattr(behavior, "experimental_non_blocking", False))


class CallPools(grpc.ServerInterceptor):
    """Route health checks and streams to pools of their own; cap open streams at ``max_streams``."""

    def __init__(self, component: str, health_threads: int, max_streams: int):
        self.max_streams = max_streams
        self.health_pool = futures.ThreadPoolExecutor(health_threads, thread_name_prefix=f"{component}-health")
        # + 1: the streams holding slots never occupy every thread, so a refusal never queues behind them
        self.stream_pool = futures.ThreadPoolExecutor(max_streams + 1, thread_name_prefix=f"{component}-stream")
        self._slots = threading.BoundedSemaphore(max_streams) if max_streams > 0 else None

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        if handler_call_details.method == HEALTH_CHECK and handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_on_pool(handler.unary_unary, self.health_pool),
                                                       handler.request_deserializer, handler.response_serializer)
        if not (handler.request_streaming or handler.response_streaming) or _non_blocking(handler):
            return handler
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(self._capped_stream(handler.stream_stream),
                                                         handler.request_deserializer, handler.response_serializer)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(self._capped_stream(handler.unary_stream),
                                                        handler.request_deserializer, handler.response_serializer)
        return grpc.stream_unary_rpc_method_handler(self._capped_unary(handler.stream_unary),
                                                    handler.request_deserializer, handler.response_serializer)

    def _acquire(self, context) -> None:
        if self._slots is None or not self._slots.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"too many open streams on this server (server.max_streams = {self.max_streams})")

    def _capped_stream(self, behavior):
        def streaming(request, context):
            self._acquire(context)
            try:
                yield from behavior(request, context)
            finally:
                self._slots.release()
        return _on_pool(streaming, self.stream_pool)

    def _capped_unary(self, behavior):
        def stream_unary(request_iterator, context):
            self._acquire(context)
            try:
                return behavior(request_iterator, context)
            finally:
                self._slots.release()
        return _on_pool(stream_unary, self.stream_pool)

    def shutdown(self) -> None:
        """Let the pools' threads end (after the server stopped)."""
        self.health_pool.shutdown(wait=False)
        self.stream_pool.shutdown(wait=False)
