"""The ``grpc.aio`` server bootstrap, for processes whose calls mostly wait on other calls (the gateway).

A synchronous gRPC server holds a handler thread for the whole of a call, so a gateway waiting on three
stage calls per request paid a thread (and the GIL hand-offs between threads) per request in flight.
On ``grpc.aio`` a call in flight is a coroutine on one event loop: waiting costs nothing, and gRPC's
completion queue hands replies straight to the loop. Same contract as ``common.server.GrpcServer``:
health (NOT_SERVING until ``set_serving``), reflection, metrics, the health-only plaintext port, port
files, drain then graceful stop on SIGTERM/SIGINT, SIGHUP wakes the hot-reload watchers.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Callable

import grpc
import grpc.aio
from grpc_health.v1 import _async as aio_health
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from common import heap
from common.log import Logger
from common.reflection import enable_reflection
from common.request_decoding import add_decoding
from common.metrics import AioServerInterceptor, serve_metrics, track_snapshot
from common.server import ServerOptions, load_server, server_channel_options, write_port_file
from common.tls import AioAllowedClientsInterceptor, ClientAllowList, server_credentials

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class AioGrpcServer:
    """One ``grpc.aio`` server with health and reflection; create it inside the running event loop."""

    def __init__(self, component: str, options: ServerOptions, log: Logger):
        self.component = component
        self.options = options
        self.log = log
        # maximum_concurrent_rpcs: gRPC's core refuses calls past the cap with RESOURCE_EXHAUSTED itself
        self.server = grpc.aio.server(options=server_channel_options(options),
                                      interceptors=[AioServerInterceptor(log, options),
                                                    *([AioAllowedClientsInterceptor(
                                                        ClientAllowList(options.tls_allowed_clients, component))]
                                                      if options.tls_allowed_clients else [])],
                                      maximum_concurrent_rpcs=options.max_concurrent_rpcs or None)
        self.health = aio_health.HealthServicer()
        add_decoding(health_pb2_grpc.add_HealthServicer_to_server, self.health, self.server, log)
        self.service_names: list[str] = []
        self.port = 0
        self.health_server: grpc.aio.Server | None = None
        self._versions: set[str] = set()
        self._stopped = asyncio.Event()
        self._stopping = False

    def add(self, add_to_server: Callable, servicer: object, full_name: str) -> None:
        """Register ``servicer`` (``add_XServicer_to_server``) under its full service name; its unary methods
        decode their own requests, refusing undecodable bytes with INVALID_ARGUMENT (``common.request_decoding``)."""
        add_decoding(add_to_server, servicer, self.server, self.log)
        self.service_names.append(full_name)

    async def start(self, port_file: str | None = None) -> int:
        """Bind, start, enable reflection; write the bound port to ``port_file``; return the port."""
        enable_reflection([*self.service_names, health.SERVICE_NAME], self.server)  # v1 and v1alpha
        o = self.options
        address = f"{o.host}:{o.port}"
        try:
            self.port = (self.server.add_secure_port(address, server_credentials(o.tls_cert, o.tls_key,
                                                                                 o.tls_client_ca))
                         if o.tls_cert else self.server.add_insecure_port(address))
        except RuntimeError:  # gRPC says only "Failed to bind"
            self.port = 0
        if self.port == 0:
            raise OSError(f"could not bind {address}: port {o.port} is in use by another process")
        await self.server.start()
        await self.set_serving(False)
        if port_file:
            write_port_file(port_file, self.port)
        if o.health_port >= 0:
            await self._start_health_port(port_file)
        if o.metrics_port >= 0:
            serve_metrics(o.metrics_bind_host(), o.metrics_port, port_file, self.log)
        self.log.info("server_started", host=o.host, port=self.port, pid=os.getpid(), runtime="grpc.aio")
        return self.port

    async def _start_health_port(self, port_file: str | None) -> None:
        """Serve the same health statuses, and nothing else, in plaintext on ``health_port``."""
        self.health_server = grpc.aio.server()
        add_decoding(health_pb2_grpc.add_HealthServicer_to_server, self.health, self.health_server, self.log)
        address = f"{self.options.host}:{self.options.health_port}"
        port = self.health_server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"could not bind {address} (server.health_port): is the port in use?")
        await self.health_server.start()
        if port_file:
            write_port_file(f"{port_file}.health", port)
        self.log.info("health_port_started", port=port)

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING / NOT_SERVING for the whole server and each service."""
        for name in ("", *self.service_names):
            await self.health.set(name, SERVING if serving else NOT_SERVING)

    async def set_versions(self, versions: list[str]) -> None:
        """Report the snapshot versions held now as health services (``common.reload.version_service``)."""
        from common.reload import version_service

        held = set(versions)
        for version in held | self._versions:
            await self.health.set(version_service(version), SERVING if version in held else NOT_SERVING)
        self._versions = held

    async def stop(self) -> None:
        """NOT_SERVING, keep serving ``drain_s``, stop taking calls, drain in-flight ones for ``grace_s``."""
        if self._stopping:
            return
        self._stopping = True
        await self.set_serving(False)
        if self.options.drain_s > 0:  # still serving, but out of every health-checked rotation
            self.log.info("server_draining", drain_s=self.options.drain_s)
            await asyncio.sleep(self.options.drain_s)
        self.log.info("server_stopping", grace_s=self.options.grace_s)
        await self.server.stop(self.options.grace_s)
        if self.health_server is not None:
            await self.health_server.stop(0)
        self._stopped.set()
        self.log.info("server_stopped")

    async def wait(self) -> None:
        """Until SIGTERM/SIGINT (then stop gracefully) or ``stop``."""
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            self.log.info("signal_received", signal=signal.Signals(signum).name)
            loop.create_task(self.stop())

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        await self._stopped.wait()


def run_aio_server(component: str, config_cls: type, argv: list[str] | None, description: str,
                   build: Callable[[object, Logger], list[tuple[Callable, object, str]]]) -> int:
    """``common.server.run_server`` on ``grpc.aio``. A servicer with an ``async def open()`` gets it awaited
    inside the event loop before the port opens (``grpc.aio`` channels belong to the loop that made them)."""
    loaded = load_server(component, config_cls, argv, description, build)
    if isinstance(loaded, int):
        return loaded
    config, services, args, log = loaded
    return asyncio.run(_serve(component, config, services, args.port_file, log))


async def _serve(component: str, config, services, port_file: str | None, log: Logger) -> int:
    loop = asyncio.get_running_loop()
    server = AioGrpcServer(component, config.server, log)
    for add_to_server, servicer, name in services:
        opener = getattr(servicer, "open", None)
        if opener is not None:
            await opener()
        server.add(add_to_server, servicer, name)
        track_snapshot(servicer)
    try:
        await server.start(port_file)
    except OSError as exc:
        log.error("startup_failed", error=str(exc))
        print(f"{component}: cannot start: {exc}", file=sys.stderr)
        return 2
    heap.freeze(log)  # the loaded state out of full GC passes (common.heap)
    await server.set_serving(True)
    log.info("serving", services=server.service_names)
    # hot reload (common.reload) runs watcher threads: their version reports hop onto the loop
    reloaders = [r for _, servicer, _ in services if (r := getattr(servicer, "reloader", None)) is not None]
    for reloader in reloaders:
        reloader.on_versions = lambda versions: asyncio.run_coroutine_threadsafe(server.set_versions(versions), loop)
        await server.set_versions(reloader.versions)
        reloader.start()
    loop.add_signal_handler(signal.SIGHUP, lambda: [r.wake() for r in reloaders])
    try:
        await server.wait()
    finally:
        for reloader in reloaders:
            reloader.stop()
        for _, servicer, _ in services:
            closer = getattr(servicer, "close", None)
            if closer is not None:
                await closer()
    return 0
