"""The gRPC server bootstrap every process shares: health, reflection, port reporting, graceful stop.

A server process builds its servicer (loading its snapshot first), then ``GrpcServer`` binds it,
serves ``grpc.health.v1`` (NOT_SERVING until ``set_serving``) and server reflection, writes the bound
port to ``--port-file`` when asked (port 0 lets the OS pick), and on SIGTERM/SIGINT reports
NOT_SERVING, stops accepting new calls and drains in-flight ones for ``grace_s``.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from common.reflection import enable_reflection
from common.request_decoding import add_decoding
from common.log import Logger
from common.metrics import ServerInterceptor, serve_metrics, track_snapshot
from common import compute_threads, heap
from common.call_pools import CallPools
from common.deadline_guard import DeadlineGuard
from common.server_options import ServerOptions
from common.tls import AllowedClientsInterceptor, ClientAllowList, add_port


def channel_options(max_message_mb: int) -> list[tuple[str, int]]:
    """gRPC options setting the message size limits, for servers and clients alike."""
    size = max_message_mb << 20
    return [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]


def connection_age_options(options: ServerOptions) -> list[tuple[str, int]]:
    """gRPC server options closing connections after ``max_connection_age_s`` (none when 0)."""
    if options.max_connection_age_s <= 0:
        return []
    return [("grpc.max_connection_age_ms", int(options.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(options.grace_s * 1000))]


def server_channel_options(options: ServerOptions) -> list[tuple[str, int]]:
    """The gRPC options of a server's main port. SO_REUSEPORT is off: a port belongs to one process, so a
    stray process cannot silently join a live port (replicas each bind their own, docs/ARCHITECTURE.md §8)."""
    backlog = [(key, value) for key, value in (("grpc.server.max_pending_requests", options.max_pending_calls),
                                              ("grpc.server.max_pending_requests_hard_limit",
                                               options.max_pending_calls_hard)) if value]
    return [*channel_options(options.max_message_mb), ("grpc.so_reuseport", 0), *connection_age_options(options),
            *backlog]


def allowed_clients(component: str, options: ServerOptions) -> list[AllowedClientsInterceptor]:
    """The allow-list check of ``server.tls_allowed_clients`` (none when empty). It sits after the metrics
    interceptor, so refusals are counted and logged as PERMISSION_DENIED like any failed call."""
    if not options.tls_allowed_clients:
        return []
    return [AllowedClientsInterceptor(ClientAllowList(options.tls_allowed_clients, component))]


def write_port_file(port_file: str, port: int) -> None:
    """Write ``port`` to ``port_file`` atomically (the launcher polls for it)."""
    tmp = f"{port_file}.tmp"
    Path(tmp).write_text(str(port))
    os.replace(tmp, port_file)


class GrpcServer:
    """One gRPC server with health and reflection; add services, then ``start`` and ``wait``."""

    def __init__(self, component: str, options: ServerOptions, log: Logger):
        self.component = component
        self.options = options
        self.log = log
        # health checks and streams run on pools of their own (common.call_pools)
        self.pools = CallPools(component, options.health_threads, options.max_streams)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=options.threads,
                                                             thread_name_prefix=component),
                                  options=server_channel_options(options),
                                  interceptors=[self.pools, ServerInterceptor(log, options),  # + metrics, ids
                                                *allowed_clients(component, options),
                                                DeadlineGuard(options.min_remaining_ms / 1000.0)],
                                  maximum_concurrent_rpcs=options.max_concurrent_rpcs or None)
        self.health = health.HealthServicer()
        add_decoding(health_pb2_grpc.add_HealthServicer_to_server, self.health, self.server, log)
        self.service_names: list[str] = []
        self.port = 0
        self.health_server: grpc.Server | None = None  # the health-only plaintext port (health_port)
        self._versions: set[str] = set()
        self._stopped = threading.Event()

    def add(self, add_to_server: Callable, servicer: object, full_name: str) -> None:
        """Register ``servicer`` (``add_XServicer_to_server``) under its full service name; its unary methods
        decode their own requests, refusing undecodable bytes with INVALID_ARGUMENT (``common.request_decoding``)."""
        add_decoding(add_to_server, servicer, self.server, self.log)
        self.service_names.append(full_name)

    def start(self, port_file: str | None = None) -> int:
        """Bind, start, enable reflection; write the bound port to ``port_file``; return the port."""
        enable_reflection([*self.service_names, health.SERVICE_NAME], self.server)  # v1 and v1alpha
        address = f"{self.options.host}:{self.options.port}"
        try:
            self.port = add_port(self.server, address, self.options.tls_cert, self.options.tls_key,
                                 self.options.tls_client_ca)
        except RuntimeError:  # gRPC says only "Failed to bind"
            self.port = 0
        if self.port == 0:
            raise OSError(f"could not bind {address}: port {self.options.port} is in use by another process")
        self.server.start()
        self.set_serving(False)
        if port_file:
            write_port_file(port_file, self.port)
        if self.options.health_port >= 0:
            self._start_health_port(port_file)
        if self.options.metrics_port >= 0:
            serve_metrics(self.options.metrics_bind_host(), self.options.metrics_port, port_file, self.log)
        self.log.info("server_started", host=self.options.host, port=self.port, pid=os.getpid())
        return self.port

    def _start_health_port(self, port_file: str | None) -> None:
        """Serve the same health statuses, and nothing else, in plaintext on ``health_port``."""
        self.health_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2,
                                                                    thread_name_prefix=f"{self.component}-health"))
        add_decoding(health_pb2_grpc.add_HealthServicer_to_server, self.health, self.health_server, self.log)
        address = f"{self.options.host}:{self.options.health_port}"
        port = self.health_server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"could not bind {address} (server.health_port): is the port in use?")
        self.health_server.start()
        if port_file:
            write_port_file(f"{port_file}.health", port)
        self.log.info("health_port_started", port=port)

    def set_serving(self, serving: bool) -> None:
        """Report SERVING / NOT_SERVING for the whole server and each service."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.service_names):
            self.health.set(name, status)

    def set_versions(self, versions: list[str]) -> None:
        """Report the snapshot versions held now as health services (``common.reload.version_service``):
        the gateway switches to a new version once every stage reports it."""
        from common.reload import version_service

        held = set(versions)
        for version in held | self._versions:
            self.health.set(version_service(version), health_pb2.HealthCheckResponse.SERVING if version in held
                            else health_pb2.HealthCheckResponse.NOT_SERVING)
        self._versions = held

    def stop(self) -> None:
        """Stop taking calls, drain in-flight ones for ``grace_s``, and release ``wait``."""
        if self._stopped.is_set():
            return
        self.set_serving(False)
        if self.options.drain_s > 0:  # still serving, but out of every health-checked rotation
            self.log.info("server_draining", drain_s=self.options.drain_s)
            time.sleep(self.options.drain_s)
        self.log.info("server_stopping", grace_s=self.options.grace_s)
        self.server.stop(self.options.grace_s).wait()
        if self.health_server is not None:  # probes saw NOT_SERVING throughout the drain
            self.health_server.stop(0).wait()
        self.pools.shutdown()
        self._stopped.set()
        self.log.info("server_stopped")

    def wait(self) -> None:
        """Block until SIGTERM/SIGINT (then stop gracefully) or until ``stop`` is called."""
        # The handler only records the signal: it runs on the main thread between two bytecodes, possibly
        # inside a log write or an Event's lock, and taking that lock again there deadlocks (a recall server
        # once hung in its exit handlers on a second SIGTERM). The loop below acts on it.
        received: list[int] = []

        def on_signal(signum, _frame):
            received.append(signum)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not self._stopped.wait(0.1):
            if received:
                self.log.info("signal_received", signal=signal.Signals(received[0]).name)
                self.stop()


def server_arg_parser(description: str):
    """The flags every server process takes: config file, overrides, snapshot, port, port file."""
    import argparse

    from common.config import add_config_flags

    parser = argparse.ArgumentParser(description=description)
    add_config_flags(parser)
    parser.add_argument("--snapshot", help="snapshot root or version directory (overrides config)")
    parser.add_argument("--port", type=int, help="port to bind (0: the OS picks; overrides config)")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    return parser


def die_with_parent() -> None:
    """SIGTERM this process when the launcher that started it dies (Linux ``PR_SET_PDEATHSIG``).

    The launcher passes its pid in ``RECSYS_PARENT_PID``; if it is already gone, stop now.
    """
    parent = os.environ.get("RECSYS_PARENT_PID")
    if not parent:
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):
        os.kill(os.getpid(), signal.SIGTERM)


def load_server(component: str, config_cls: type, argv: list[str] | None, description: str,
                build: Callable[[object, Logger], list[tuple[Callable, object, str]]]):
    """Parse flags, load the config and ``build`` the servicers: ``(config, services, args, log)``, or an
    exit status (2) after printing one clear line when the config or the snapshot is bad."""
    import sys

    from common.config import ConfigError, load_config
    from common.log import get_logger
    from common.snapshot import SnapshotError

    die_with_parent()
    args = server_arg_parser(description).parse_args(argv)
    overrides = list(args.overrides)
    if args.snapshot:
        overrides.append(f"snapshot={args.snapshot}")
    if args.port is not None:
        overrides.append(f"server.port={args.port}")
    log = get_logger(component)
    try:
        config = load_config(config_cls, args.config, overrides)
        compute_threads.limit(config.server.compute_threads, log)   # before build: loading runs numpy too
        services = build(config, log)
    except (ConfigError, SnapshotError, ValueError, KeyError) as exc:
        log.error("startup_failed", error=str(exc))
        print(f"{component}: cannot start: {exc}", file=sys.stderr)
        return 2
    return config, services, args, log


def run_server(component: str, config_cls: type, argv: list[str] | None, description: str,
               build: Callable[[object, Logger], list[tuple[Callable, object, str]]]) -> int:
    """Main of a server process: config → ``build`` (loads artifacts) → serve until signalled.

    ``build(config, log)`` returns ``(add_to_server, servicer, full_service_name)`` triples. Start-up
    failures (bad config, missing or corrupted snapshot) print one clear line and exit with status 2.
    """
    import sys

    loaded = load_server(component, config_cls, argv, description, build)
    if isinstance(loaded, int):
        return loaded
    config, services, args, log = loaded
    server = GrpcServer(component, config.server, log)
    for add_to_server, servicer, name in services:
        server.add(add_to_server, servicer, name)
        track_snapshot(servicer)
    try:
        server.start(args.port_file)
    except OSError as exc:
        log.error("startup_failed", error=str(exc))
        print(f"{component}: cannot start: {exc}", file=sys.stderr)
        return 2
    heap.freeze(log)  # the loaded state out of full GC passes (common.heap)
    server.set_serving(True)
    log.info("serving", services=server.service_names)
    # hot reload (common.reload): servicers holding a Reloader watch CURRENT; SIGHUP checks at once
    reloaders = [r for _, servicer, _ in services if (r := getattr(servicer, "reloader", None)) is not None]
    for reloader in reloaders:
        reloader.on_versions = server.set_versions
        server.set_versions(reloader.versions)
        reloader.start()
    signal.signal(signal.SIGHUP, lambda *_: [r.wake() for r in reloaders])
    try:
        server.wait()
    finally:
        for reloader in reloaders:
            reloader.stop()
    return 0
