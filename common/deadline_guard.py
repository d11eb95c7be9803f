"""Work nobody waits for is not done: a stage call whose caller has gone is refused before it runs.

Under overload a synchronous server's calls queue for a handler thread; by the time one runs, its caller
(the gateway, which gave it the time the request had left as its gRPC deadline) may have given up or have
too little time left for the stage's work to be of use. A call whose deadline passed in the queue is
dropped by gRPC's server itself (it is cancelled; tests/test_deadline_guard.py checks this stays so);
``DeadlineGuard`` adds the rest: a call whose caller cancelled, or that starts with less than
``server.min_remaining_ms`` of its deadline left, is answered DEADLINE_EXCEEDED at once instead of
computing a reply nobody will read, so the server catches up with its queue instead of falling further
behind. Installed on every synchronous server by ``common.server.GrpcServer`` for the ``recsys`` services
(health and reflection are left alone).
"""
from __future__ import annotations

import grpc

_SKIP_PREFIX = "/grpc."


def caller_gone(context, min_remaining_s: float) -> str | None:
    """Why the call should not be started (its caller cancelled, or less than ``min_remaining_s`` of its
    deadline is left), or None."""
    if not context.is_active():
        return "the caller cancelled the call or its deadline passed while it was queued"
    remaining = context.time_remaining()
    if remaining is not None and remaining < min_remaining_s:
        return f"{remaining * 1000:.1f} ms of the caller's deadline left when the call started"
    return None


class DeadlineGuard(grpc.ServerInterceptor):
    """Refuse unary calls whose caller is gone (``caller_gone``) before their handler runs."""

    def __init__(self, min_remaining_s: float):
        self.min_remaining_s = min_remaining_s

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if (handler is None or handler.unary_unary is None
                or handler_call_details.method.startswith(_SKIP_PREFIX)):
            return handler
        inner = handler.unary_unary
        min_remaining_s = self.min_remaining_s

        def guarded(request, context):
            gone = caller_gone(context, min_remaining_s)
            if gone is not None:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"not started: {gone}")
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(guarded, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)
