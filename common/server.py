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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from common.reflection import enable_reflection
from common.log import Logger
from common.metrics import ServerInterceptor, serve_metrics, track_snapshot
from common import compute_threads, heap
from common.call_pools import CallPools
from common.deadline_guard import DeadlineGuard
from common.tls import add_port, check_pair


@dataclass
class ServerOptions:
    """Network options shared by every server config (embedded as ``server`` in each)."""

    host: str = "127.0.0.1"          # loopback unless configured otherwise
    port: int = 0                    # 0: the OS picks; see port_file
    threads: int = 8                 # gRPC handler threads for unary calls
    # threads of the numeric libraries (BLAS, OpenMP) per process: replicas, not threads, use the cores
    # (common.compute_threads has the measurement)
    compute_threads: int = 1
    health_threads: int = 1          # Health/Check has threads of its own: answered while requests saturate
    # open streams (server reflection, Health/Watch) each hold a thread until the client closes them: they get
    # max_streams threads of their own and a stream past that is refused (RESOURCE_EXHAUSTED); common.call_pools
    max_streams: int = 4
    # calls in progress (queued for a handler thread included) past which new ones get RESOURCE_EXHAUSTED at
    # once from gRPC's core, before any Python runs: a bounded queue instead of work nobody waits for; 0: no cap
    max_concurrent_rpcs: int = 0
    # gRPC core's backlog of calls that arrived but that no handler has taken yet (in a burst, or while the
    # process is busy): past max_pending_calls it drops new calls at random, more often as the backlog grows,
    # and past max_pending_calls_hard every one, answering CANCELLED (details "CANCELLED") without running any
    # Python. Those are a burst's CANCELLED replies (gRPC's random early detection, soft 1,000 / hard 3,000
    # unless set here; an aio server with a 0.3 ms handler took 3,000 calls at once with 546 CANCELLED under
    # gRPC's limits, 0 under 5,000 / 10,000; tests/test_pending_backlog.py). 0 and 0: gRPC's own; both or neither
    max_pending_calls: int = 0
    max_pending_calls_hard: int = 0
    # a call that starts with less than this left of its caller's gRPC deadline (or whose caller is gone) is
    # answered DEADLINE_EXCEEDED without running (common.deadline_guard); 0: only calls already expired
    min_remaining_ms: float = 0.5
    max_message_mb: int = 16
    grace_s: float = 2.0             # drain time on shutdown
    # on SIGTERM, report NOT_SERVING and keep serving this long before draining, so clients' health watches
    # (gateway round_robin) and Kubernetes readiness take this replica out before it refuses calls
    drain_s: float = 0.0
    # close each connection after this long (GOAWAY, then grace_s): a dns:/// client re-resolves only when a
    # connection ends, so this is how the gateway finds replicas added by scale-up; 0: never
    max_connection_age_s: float = 0.0
    # plaintext port serving grpc.health.v1 only (same statuses): kubelet gRPC probes cannot speak TLS, so
    # with TLS on the main port they probe this one; -1 off, 0 the OS picks (written to <port_file>.health)
    health_port: int = -1
    metrics_port: int = -1           # Prometheus /metrics over HTTP: -1 off, 0 the OS picks (<port_file>.metrics)
    tls_cert: str = ""               # PEM paths (common.tls); cert + key: TLS; + tls_client_ca: mutual TLS
    tls_key: str = ""
    tls_client_ca: str = ""
    # bounds on what a client controls (common.client_text, common.request_id)
    max_string_len: int = 256        # longest id / name / version string a request may carry
    max_echo_chars: int = 200        # client text quoted in error details and logs is cut to this
    max_details_chars: int = 1000    # longest error detail sent back or logged (gRPC metadata is ~8 KB)
    max_request_id_len: int = 128    # longer x-request-id values (or odd characters) are not used

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"server.port must be in 0..65535, got {self.port}")
        if not -1 <= self.metrics_port <= 65535:
            raise ValueError(f"server.metrics_port must be in -1..65535, got {self.metrics_port}")
        check_pair(self.tls_cert, self.tls_key, "server.", "server.tls_client_ca", self.tls_client_ca)
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("server.tls_client_ca needs server.tls_cert and server.tls_key")
        if self.max_pending_calls < 0 or self.max_pending_calls_hard < 0:
            raise ValueError("server.max_pending_calls and server.max_pending_calls_hard must be >= 0 (0: gRPC's own)")
        if bool(self.max_pending_calls) != bool(self.max_pending_calls_hard) or \
                self.max_pending_calls_hard < self.max_pending_calls:
            raise ValueError(f"set server.max_pending_calls and server.max_pending_calls_hard together, soft <= hard "
                             f"(got {self.max_pending_calls} and {self.max_pending_calls_hard})")
        if self.max_concurrent_rpcs < 0:
            raise ValueError(f"server.max_concurrent_rpcs must be >= 0 (0: no cap), got {self.max_concurrent_rpcs}")
        if self.min_remaining_ms < 0:
            raise ValueError(f"server.min_remaining_ms must be >= 0, got {self.min_remaining_ms}")
        if self.threads < 1:
            raise ValueError(f"server.threads must be >= 1, got {self.threads}")
        if self.compute_threads < 1:
            raise ValueError(f"server.compute_threads must be >= 1, got {self.compute_threads}")
        if not -1 <= self.health_port <= 65535:
            raise ValueError(f"server.health_port must be in -1..65535, got {self.health_port}")
        if self.drain_s < 0 or self.max_connection_age_s < 0:
            raise ValueError("server.drain_s and server.max_connection_age_s must be >= 0")
        if self.max_streams < 0 or self.health_threads < 1:
            raise ValueError(f"server.max_streams must be >= 0 and server.health_threads >= 1, got "
                             f"{self.max_streams} and {self.health_threads}")
        for name in ("max_string_len", "max_echo_chars", "max_details_chars", "max_request_id_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"server.{name} must be >= 1, got {getattr(self, name)}")


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
    stray process cannot silently join a live port (replicas each bind their own, DESIGN §6)."""
    backlog = [(key, value) for key, value in (("grpc.server.max_pending_requests", options.max_pending_calls),
                                              ("grpc.server.max_pending_requests_hard_limit",
                                               options.max_pending_calls_hard)) if value]
    return [*channel_options(options.max_message_mb), ("grpc.so_reuseport", 0), *connection_age_options(options),
            *backlog]


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
                                                DeadlineGuard(options.min_remaining_ms / 1000.0)],
                                  maximum_concurrent_rpcs=options.max_concurrent_rpcs or None)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names: list[str] = []
        self.port = 0
        self.health_server: grpc.Server | None = None  # the health-only plaintext port (health_port)
        self._versions: set[str] = set()
        self._stopped = threading.Event()

    def add(self, add_to_server: Callable, servicer: object, full_name: str) -> None:
        """Register ``servicer`` (``add_XServicer_to_server``) under its full service name."""
        add_to_server(servicer, self.server)
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
            serve_metrics(self.options.host, self.options.metrics_port, port_file, self.log)
        self.log.info("server_started", host=self.options.host, port=self.port, pid=os.getpid())
        return self.port

    def _start_health_port(self, port_file: str | None) -> None:
        """Serve the same health statuses, and nothing else, in plaintext on ``health_port``."""
        self.health_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2,
                                                                    thread_name_prefix=f"{self.component}-health"))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
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
