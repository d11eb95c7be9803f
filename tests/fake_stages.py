"""A real gRPC server in the test process that plays Recall, Rank and Rerank, and a real gateway process.

Each stage behaves as ``FakeStages.mode[stage]`` says: ``ok`` (a small valid reply), ``hang`` (never
answers: waits until the caller gives up), ``slow`` (``ok`` after ``slow_s``) or ``garbage`` (arrays of the wrong length / out of range).
The last request each stage received and its metadata are kept for assertions.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import wire
from common.tls import add_port, open_channel
from recsys.stage.v1 import recall_service_pb2 as recall_pb2
from recsys.stage.v1 import recall_service_pb2_grpc as recall_grpc
from recsys.stage.v1 import rank_service_pb2 as rank_pb2
from recsys.stage.v1 import rank_service_pb2_grpc as rank_grpc
from recsys.stage.v1 import rerank_service_pb2 as rerank_pb2
from recsys.stage.v1 import rerank_service_pb2_grpc as rerank_grpc

ROOT = Path(__file__).resolve().parent.parent


class FakeStages(recall_grpc.RecallServiceServicer, rank_grpc.RankServiceServicer, rerank_grpc.RerankServiceServicer):
    def __init__(self, version: str, n_items: int):
        self.version = version
        self.n_items = n_items
        self.mode = {"recall": "ok", "rank": "ok", "rerank": "ok"}
        self.slow_s = 0.03
        self.last: dict[str, object] = {}
        self.metadata: dict[str, dict[str, str]] = {}

    def _enter(self, stage: str, request, context) -> str:
        self.last[stage] = request
        self.metadata[stage] = dict(context.invocation_metadata())
        mode = self.mode[stage]
        if mode == "slow":  # a valid reply after slow_s: a stage that runs long under load
            time.sleep(self.slow_s)
            return "ok"
        if mode == "hang":  # until the caller's deadline cancels the call (or 5 s)
            done = threading.Event()
            context.add_callback(done.set)
            done.wait(5.0)
        return mode

    def Recall(self, request, context):
        mode = self._enter("recall", request, context)
        n = min(self.n_items, 300)
        ids = np.arange(n, dtype=np.int32)
        scores = np.linspace(1.0, 0.0, n - 1 if mode == "garbage" else n, dtype=np.float32)
        return recall_pb2.RecallResponse(item_idx=wire.encode(ids, wire.INT32), scores=wire.encode(scores, wire.FLOAT32),
                                         channel_masks=wire.encode(np.ones(n, np.uint32), wire.UINT32),
                                         channel_names=["ann"], snapshot_version=self.version)

    def Rank(self, request, context):
        mode = self._enter("rank", request, context)
        ids = wire.decode(request.item_idx, wire.INT32, "item_idx")
        fused = ((ids * 7919) % 101).astype(np.float32) / 101.0
        if mode == "garbage":
            fused = fused[:-3]
        return rank_pb2.RankResponse(item_idx=request.item_idx, fused=wire.encode(fused, wire.FLOAT32),
                                       task_names=["click"], task_scores=wire.encode(fused, wire.FLOAT32),
                                       snapshot_version=self.version)

    def Rerank(self, request, context):
        mode = self._enter("rerank", request, context)
        n = len(request.item_idx) // 4
        positions = np.arange(request.k, dtype=np.int32)
        if mode == "garbage":
            positions = positions + n  # every position out of range
        return rerank_pb2.RerankResponse(positions=wire.encode(positions, wire.INT32), method=rerank_pb2.RERANK_METHOD_NONE,
                                         snapshot_version=self.version)


def start_fake_stages(version: str, n_items: int, tls: tuple[str, str, str] = ("", "", "")):
    """(server, servicer, port): one server on 127.0.0.1 playing all three stages; tls = (cert, key, client_ca)."""
    servicer = FakeStages(version, n_items)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    recall_grpc.add_RecallServiceServicer_to_server(servicer, server)
    rank_grpc.add_RankServiceServicer_to_server(servicer, server)
    rerank_grpc.add_RerankServiceServicer_to_server(servicer, server)
    port = add_port(server, "127.0.0.1:0", *tls)
    server.start()
    return server, servicer, port


def start_gateway(snapshot_root, run_dir: Path, overrides: list[str], tls_client: tuple[str, str, str] = ("", "", ""),
                  timeout_s: float = 60.0) -> tuple[subprocess.Popen, int]:
    """Start ``python -m gateway`` with ``--set`` overrides; return once it reports SERVING."""
    port_file = run_dir / "gateway.port"
    args = [sys.executable, "-m", "gateway", "--snapshot", str(snapshot_root), "--port", "0",
            "--port-file", str(port_file)]
    for item in overrides:
        args += ["--set", item]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    log = open(run_dir / "gateway.log", "ab")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    log.close()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited {proc.returncode}: {(run_dir / 'gateway.log').read_text()[-2000:]}")
        if port_file.exists():
            port = int(port_file.read_text())
            with open_channel(f"127.0.0.1:{port}", [], *tls_client) as channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return proc, port
                except grpc.RpcError:
                    pass
        time.sleep(0.1)
    stop(proc)
    raise TimeoutError("gateway not SERVING in time")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
