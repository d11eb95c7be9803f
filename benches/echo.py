"""The gRPC echo floor: an empty unary call, in the same run and on the same machine as the sweep.

The distribution tax of the cluster reads as "floor × hops + work": a Recommend pays four hops (client →
gateway, gateway → each of three stages). The floor is measured for both server kinds the cluster runs:
``grpc.aio`` (the gateway) and the synchronous thread-pool server (the stages), each in a process of its
own (``python -m benches.echo --kind aio|sync --port-file F``), called sequentially from the bench
process over one channel, with the echo server's CPU-ms per call.
"""
from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc

from benches.cpu import cpu_seconds
from benches.loadgen import percentiles

METHOD = "/bench.Echo/Echo"


def _identity(data: bytes) -> bytes:
    return data


def _handler(behavior) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(behavior, _identity, _identity)})


def serve_sync(port_file: str) -> None:
    """The echo service on a synchronous server (as the stages run), until killed."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((_handler(lambda request, context: request),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    Path(port_file).write_text(str(port))
    server.wait_for_termination()


async def serve_aio(port_file: str) -> None:
    """The echo service on ``grpc.aio`` (as the gateway runs), until killed."""
    async def echo(request, context):
        return request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handler(echo),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    Path(port_file).write_text(str(port))
    await server.wait_for_termination()


def measure(kind: str, run_dir: Path, calls: int = 2000, warmup: int = 200) -> dict:
    """Start an echo server of ``kind`` (aio or sync), time ``calls`` sequential empty calls, stop it."""
    port_file = run_dir / f"echo-{kind}.port"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "benches.echo", "--kind", kind, "--port-file",
                             str(port_file)], cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"echo server ({kind}) did not start")
            time.sleep(0.05)
        with grpc.insecure_channel(f"127.0.0.1:{port_file.read_text()}") as channel:
            call = channel.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)
            for _ in range(warmup):
                call(b"", timeout=5)
            cpu0 = cpu_seconds(proc.pid)
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                call(b"", timeout=5)
                times.append((time.perf_counter() - t0) * 1000.0)
            server_cpu_ms = (cpu_seconds(proc.pid) - cpu0) * 1000.0
        target = f"127.0.0.1:{port_file.read_text()}"
        clients = {"sync": _sync_client_cpu_ms(target, calls, warmup),
                   "aio": asyncio.run(_aio_client_cpu_ms(target, calls, warmup))}
    finally:
        proc.kill()
        proc.wait()
    return {"server": kind, "calls": calls, "latency_ms": percentiles(times),
            "server_cpu_ms_per_call": server_cpu_ms / calls, "client_cpu_ms_per_call": clients}


# the caller's side of the floor: a Recommend pays it three times in the gateway (one call per stage), on top
# of four server sides; 4 KB is about what 1,000 candidate ids weigh on the wire
PAYLOAD = b"x" * 4096


def _sync_client_cpu_ms(target: str, calls: int, warmup: int) -> float:
    """This process's CPU-ms per sequential call with the synchronous stub."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)
        for _ in range(warmup):
            call(PAYLOAD, timeout=5)
        cpu0 = time.process_time()
        for _ in range(calls):
            call(PAYLOAD, timeout=5)
        return (time.process_time() - cpu0) * 1000.0 / calls


async def _aio_client_cpu_ms(target: str, calls: int, warmup: int) -> float:
    """This process's CPU-ms per sequential call with the ``grpc.aio`` stub (as the gateway calls its stages)."""
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)
        for _ in range(warmup):
            await call(PAYLOAD, timeout=5)
        cpu0 = time.process_time()
        for _ in range(calls):
            await call(PAYLOAD, timeout=5)
        return (time.process_time() - cpu0) * 1000.0 / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="echo server for the bench's gRPC floor")
    parser.add_argument("--kind", choices=("aio", "sync"), required=True)
    parser.add_argument("--port-file", required=True)
    args = parser.parse_args(argv)
    if args.kind == "aio":
        asyncio.run(serve_aio(args.port_file))
    else:
        serve_sync(args.port_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
