"""A caller's undecodable bytes are the caller's error: INVALID_ARGUMENT naming the method, logged and counted.

gRPC decodes a request with the method handler's ``request_deserializer`` before any of our code runs, and
when that raises it answers for us: the synchronous server INTERNAL "Exception deserializing request!", the
``grpc.aio`` server UNKNOWN "Unexpected <class 'google.protobuf.message.DecodeError'>: ...", neither logged
nor counted. So every server registers its services through ``DecodingServer``: each unary method's handler
gets an identity deserializer (gRPC hands over the bytes as received) and a behavior that decodes them
itself with the same ``FromString`` gRPC would have called (no extra copy, one extra Python call). Bytes that
do not decode (garbage, truncation, a length prefix past the end, bad UTF-8 in a string field, an unclosed
group, invalid wire types) are refused with INVALID_ARGUMENT "request to /pkg.Service/Method could not be
decoded as pkg.Request (...)", logged once as ``request_undecodable`` with the byte length and counted in
``recsys_request_errors_total`` (``common.metrics.record_undecodable``). Streaming methods (health ``Watch``,
reflection) are left as gRPC made them.
"""
from __future__ import annotations

import inspect

import grpc
from google.protobuf.message import DecodeError

from common.client_text import clip
from common.log import Logger
from common.metrics import record_undecodable

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
_REASON_CHARS = 120
# attributes gRPC reads off a behavior (``common.call_pools`` sets the first; the sync health Watch the second)
_BEHAVIOR_ATTRS = ("experimental_thread_pool", "experimental_non_blocking")


def message_name(deserializer) -> str:
    """The full protobuf name of the message ``deserializer`` (a message class's ``FromString``) decodes."""
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", None) or "its request message"


def undecodable_details(method: str, message: str, exc: BaseException) -> str:
    """The status detail for bytes of ``method`` that did not decode as ``message``: no Python class names."""
    if isinstance(exc, DecodeError):  # upb: "Error parsing message with type 'x': Wire format was corrupt"
        reason = clip(str(exc).rsplit(": ", 1)[-1].strip() or "malformed bytes", _REASON_CHARS)
    else:  # the pure-Python protobuf can raise others (UnicodeDecodeError, struct.error, ...)
        reason = "malformed bytes"
    return f"request to {method} could not be decoded as {message} ({reason})"


def decoding_handler(method: str, handler, log: Logger):
    """``handler`` (a ``grpc.RpcMethodHandler``) taking the request's bytes and decoding them itself, refusing
    undecodable ones with INVALID_ARGUMENT; streaming handlers and handlers without a deserializer unchanged."""
    if (handler is None or handler.request_streaming or handler.response_streaming
            or handler.request_deserializer is None or handler.unary_unary is None):
        return handler
    decode = handler.request_deserializer
    inner = handler.unary_unary
    message = message_name(decode)

    def refusal(raw, exc: BaseException) -> str:
        record_undecodable(method, len(raw), message, log)
        return undecodable_details(method, message, exc)

    if inspect.iscoroutinefunction(inner):  # grpc.aio
        async def decoded(raw, context):
            try:
                request = decode(raw)
            except Exception as exc:  # any failure to parse the caller's bytes is the caller's error
                await context.abort(INVALID_ARGUMENT, refusal(raw, exc))
            return await inner(request, context)
    else:
        def decoded(raw, context):
            try:
                request = decode(raw)
            except Exception as exc:
                context.abort(INVALID_ARGUMENT, refusal(raw, exc))
            return inner(request, context)

    for attr in _BEHAVIOR_ATTRS:
        if hasattr(inner, attr):
            setattr(decoded, attr, getattr(inner, attr))
    return handler._replace(request_deserializer=None, unary_unary=decoded)


class _DecodingGenericHandler(grpc.GenericRpcHandler):
    """A generic handler whose unary method handlers decode their own requests (wrapped once per method)."""

    def __init__(self, inner: grpc.GenericRpcHandler, log: Logger):
        self._inner = inner
        self._log = log
        self._wrapped: dict[str, tuple[object, object]] = {}  # method → (inner handler, its decoding handler)

    def service(self, handler_call_details):
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[method] = (handler, decoding_handler(method, handler, self._log))
        return cached[1]


class DecodingServer:
    """What ``add_XServicer_to_server`` is handed instead of the server: registers every handler on ``server``
    (a ``grpc.Server`` or a ``grpc.aio.Server``) through ``decoding_handler``."""

    def __init__(self, server, log: Logger):
        self.server = server
        self.log = log

    def add_generic_rpc_handlers(self, generic_rpc_handlers) -> None:
        self.server.add_generic_rpc_handlers(tuple(_DecodingGenericHandler(h, self.log)
                                                   for h in generic_rpc_handlers))

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict) -> None:
        self.server.add_registered_method_handlers(service_name, {
            name: decoding_handler(f"/{service_name}/{name}", handler, self.log)
            for name, handler in method_handlers.items()})


def add_decoding(add_to_server, servicer: object, server, log: Logger) -> None:
    """``add_to_server(servicer, server)`` (generated ``add_XServicer_to_server``) with decoding handlers."""
    add_to_server(servicer, DecodingServer(server, log))
