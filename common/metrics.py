"""Prometheus metrics of one server process, and the gRPC interceptor that records them.

Every server (``common.server.GrpcServer``) installs ``ServerInterceptor``: for each unary call of a
``recsys`` service (public or stage) it counts the request, times it, counts errors by status code, makes
the caller's ``x-request-id`` the request id of every log line written while serving it (``common.log``), writes a
debug line per request and a warning per failed one (a request whose bytes did not decode is counted and logged
once, as ``request_undecodable``, by ``record_undecodable``: ``common.request_decoding``). With
``server.metrics_port >= 0`` the process serves ``/metrics`` over HTTP (``serve_metrics``). The gateway adds
per-stage latency, degraded counts and end-to-end latency (``observe_recommend``); every server reports the
snapshot version its servicers serve now as an info gauge (``track_snapshot``, read at scrape time, so it
follows hot reloads).

One registry per process: each worker process serves its own ``/metrics`` (Prometheus sums them).
"""
from __future__ import annotations

import contextvars
import os
import time
from pathlib import Path
from typing import Callable

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from common import request_id as request_ids
from common.client_text import clip
from common.log import Logger, request_id_var
from common.server_options import ServerOptions

REGISTRY = CollectorRegistry(auto_describe=True)

# Latency buckets in seconds: the funnel lives between 1 and 100 ms.
_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.06,
            0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)

REQUESTS = Counter("recsys_requests_total", "gRPC requests served, by method", ["method"], registry=REGISTRY)
ERRORS = Counter("recsys_request_errors_total", "gRPC requests that ended with a non-OK status",
                 ["method", "code"], registry=REGISTRY)
LATENCY = Histogram("recsys_request_seconds", "Server-side latency of a gRPC request, by method", ["method"],
                    buckets=_BUCKETS, registry=REGISTRY)
DEGRADED = Counter("recsys_gateway_degraded_total", "Recommend calls where a stage fell back, by stage",
                   ["stage"], registry=REGISTRY)
STAGE_LATENCY = Histogram("recsys_gateway_stage_seconds", "Time the gateway spent in each stage, fallback included",
                          ["stage"], buckets=_BUCKETS, registry=REGISTRY)
RECOMMEND_LATENCY = Histogram("recsys_gateway_recommend_seconds", "End-to-end Recommend latency in the gateway",
                              buckets=_BUCKETS, registry=REGISTRY)

QUALITY_LEVEL = Counter("recsys_gateway_quality_level_total", "Recommend replies by the quality level they were "
                        "served at (0: the full funnel; gateway.quality)", ["level"], registry=REGISTRY)
SHED = Counter("recsys_gateway_shed_total", "Recommend calls refused at once by admission control (RESOURCE_EXHAUSTED)",
               registry=REGISTRY)
_SKIP_PREFIX = "/grpc."  # health checks and reflection are not traffic


class _SnapshotInfo:
    """``recsys_snapshot_info{version}`` = 1, read from the servicers at scrape time (follows reloads)."""

    def __init__(self):
        self.sources: list[Callable[[], str | None]] = []

    def describe(self):
        return [GaugeMetricFamily("recsys_snapshot_info", "The snapshot version this process serves (value 1)",
                                  labels=["version"])]

    def collect(self):
        family = GaugeMetricFamily("recsys_snapshot_info", "The snapshot version this process serves (value 1)",
                                   labels=["version"])
        for version in sorted({v for source in self.sources if (v := source())}):
            family.add_metric([version], 1)
        yield family


_SNAPSHOT_INFO = _SnapshotInfo()
REGISTRY.register(_SNAPSHOT_INFO)


def live_version(servicer: object) -> str | None:
    """The snapshot version ``servicer`` serves now: its reloader's live state, its state, or its snapshot."""
    reloader = getattr(servicer, "reloader", None)
    state = reloader.current if reloader is not None else getattr(servicer, "state", None)
    snapshot = getattr(state, "snapshot", None) or getattr(servicer, "snapshot", None)
    return getattr(snapshot, "version", None)


def track_snapshot(servicer: object) -> None:
    """Report the snapshot version of ``servicer`` in ``recsys_snapshot_info`` (read at every scrape)."""
    _SNAPSHOT_INFO.sources.append(lambda: live_version(servicer))


FEEDBACK_EVENTS = Counter("recsys_feedback_events_total", "Feedback events by outcome (accepted, duplicate, "
                          "rejected, unknown_item)", ["outcome"], registry=REGISTRY)
# counted by feedback.store in the process that writes (the gateway): users whose real-time state was
# evicted, by reason (max_users: over the cap, least recently active first; max_user_age_s: idle too long)
FEEDBACK_EVICTED = Counter("recsys_feedback_evicted_users_total", "Users whose real-time feedback state was "
                           "evicted, by reason (max_users, max_user_age_s)", ["reason"], registry=REGISTRY)


def observe_feedback(accepted: int, duplicates: int, rejected: int, unknown_items: int) -> None:
    """Count one Feedback call's events by outcome."""
    for outcome, n in (("accepted", accepted), ("duplicate", duplicates), ("rejected", rejected),
                       ("unknown_item", unknown_items)):
        if n:
            FEEDBACK_EVENTS.labels(outcome).inc(n)


def observe_recommend(timings_ms: dict[str, float], degraded: list[str], total_ms: float, level: int = 0) -> None:
    """Record one Recommend call in the gateway's metrics (``level``: its quality level)."""
    child = _LEVEL_CHILDREN.get(level)
    if child is None:
        child = _LEVEL_CHILDREN[level] = QUALITY_LEVEL.labels(level=str(level))
    child.inc()
    for stage, ms in timings_ms.items():
        child = _STAGE_CHILDREN.get(stage)
        if child is None:  # labels() takes a lock and builds a key per call: look each stage up once
            child = _STAGE_CHILDREN[stage] = STAGE_LATENCY.labels(stage=stage)
        child.observe(ms / 1000.0)
    for stage in degraded:
        DEGRADED.labels(stage=stage).inc()
    RECOMMEND_LATENCY.observe(total_ms / 1000.0)


_STAGE_CHILDREN: dict = {}
_LEVEL_CHILDREN: dict = {}


def serve_metrics(host: str, port: int, port_file: str | None, log: Logger) -> int:
    """Serve ``/metrics`` on ``host:port`` (0: the OS picks); write the port to ``<port_file>.metrics``."""
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    bound = int(server.server_port)
    if port_file:
        target = f"{port_file}.metrics"
        Path(f"{target}.tmp").write_text(str(bound))
        os.replace(f"{target}.tmp", target)
    log.info("metrics_started", host=host, port=bound)
    return bound


# set while serving a call whose request bytes could not be decoded, once ``record_undecodable`` has counted and
# logged it (each call has a contextvars context of its own, on both gRPC runtimes)
_undecodable_recorded: contextvars.ContextVar[bool] = contextvars.ContextVar("undecodable_recorded", default=False)


def record_undecodable(method: str, size: int, message: str, log: Logger) -> None:
    """Count and log, once, a call refused with INVALID_ARGUMENT because its request bytes could not be decoded as
    ``message`` (``common.request_decoding``); ``record_call`` then neither counts nor logs its failure again."""
    ERRORS.labels(method=method.rsplit("/", 1)[-1], code=grpc.StatusCode.INVALID_ARGUMENT.name).inc()
    log.warning("request_undecodable", method=method, code=grpc.StatusCode.INVALID_ARGUMENT.name, bytes=size,
                message=message)
    _undecodable_recorded.set(True)


def record_call(name: str, seconds: float, code, details: str | None, raised: BaseException | None, log: Logger,
                options) -> str | None:
    """Count, time and log one finished call; return its details cut to ``max_details_chars`` (None: none)."""
    REQUESTS.labels(method=name).inc()
    LATENCY.labels(method=name).observe(seconds)
    if code is None:
        code = grpc.StatusCode.UNKNOWN if raised is not None else grpc.StatusCode.OK
    if code == grpc.StatusCode.OK:
        log.debug("request", method=name, code="OK", ms=round(seconds * 1000, 3))
        return None
    if details:  # last line of defence: no detail may outgrow gRPC's metadata limits
        details = clip(details, options.max_details_chars)
    if _undecodable_recorded.get():  # counted and logged by record_undecodable already
        _undecodable_recorded.set(False)
        return details
    ERRORS.labels(method=name, code=code.name).inc()
    log.warning("request_failed", method=name, code=code.name, ms=round(seconds * 1000, 3), details=details,
                error=None if raised is None or code != grpc.StatusCode.UNKNOWN else repr(raised))
    return details


def _options(options):
    return options or ServerOptions()


class ServerInterceptor(grpc.ServerInterceptor):
    """Count, time and log every unary ``recsys`` call (v2, the deprecated v1, the stages); carry its request
    id into the logs."""

    def __init__(self, log: Logger, options=None):
        self.log = log
        self.options = _options(options)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or method.startswith(_SKIP_PREFIX):
            return handler
        inner = handler.unary_unary
        name = method.rsplit("/", 1)[-1]
        log = self.log
        options = self.options

        def wrapper(request, context):
            start = time.perf_counter()
            # an over-long or odd id is not used (the gateway makes a new one; common.request_id)
            request_id, _refused = request_ids.from_metadata(context.invocation_metadata(),
                                                             options.max_request_id_len)
            token = request_id_var.set(request_id)
            raised: BaseException | None = None
            try:
                return inner(request, context)
            except BaseException as exc:  # context.abort raises; anything else is a bug → UNKNOWN
                raised = exc
                raise
            finally:
                details = record_call(name, time.perf_counter() - start, context.code(), context.details(),
                                      raised, log, options)
                if details:
                    context.set_details(details)
                request_id_var.reset(token)

        return grpc.unary_unary_rpc_method_handler(wrapper, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


class AioServerInterceptor(grpc.aio.ServerInterceptor):
    """``ServerInterceptor`` for ``grpc.aio`` servers (``common.aio_server``): the same metrics and logs."""

    def __init__(self, log: Logger, options=None):
        self.log = log
        self.options = _options(options)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or method.startswith(_SKIP_PREFIX):
            return handler
        inner = handler.unary_unary
        name = method.rsplit("/", 1)[-1]
        log = self.log
        options = self.options

        async def wrapper(request, context):
            start = time.perf_counter()
            request_id, _refused = request_ids.from_metadata(context.invocation_metadata(),
                                                             options.max_request_id_len)
            token = request_id_var.set(request_id)
            raised: BaseException | None = None
            try:
                return await inner(request, context)
            except BaseException as exc:  # context.abort raises; anything else is a bug → UNKNOWN
                raised = exc
                raise
            finally:
                details = record_call(name, time.perf_counter() - start, context.code(), context.details(),
                                      raised, log, options)
                if details:
                    context.set_details(details)
                request_id_var.reset(token)

        return grpc.unary_unary_rpc_method_handler(wrapper, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)
