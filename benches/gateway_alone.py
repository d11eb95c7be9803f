"""The gateway's own CPU per Recommend, with stages that answer at once: ``python -m benches.gateway_alone``.

    python -m benches.gateway_alone --snapshot snapshots [--requests 2000]

One server in this process plays Recall, Rank and Rerank with fixed small replies (300 candidates, rank's
order, the first k positions), so nothing of the stages' work reaches the number: what is left is the gateway
process itself (its aio server side, its three aio calls, validation, the funnel's glue, the reply), read from
``/proc`` over sequential calls. Set beside the echo floor (``benches.echo``): what the gateway spends above
gRPC's own cost is its glue.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np

from benches.cpu import cpu_seconds
from common import wire
from common.snapshot import Snapshot
from grpc_health.v1 import health_pb2, health_pb2_grpc
from recsys.stage.v1 import rank_service_pb2 as rank_pb2, rank_service_pb2_grpc as rank_grpc
from recsys.stage.v1 import recall_service_pb2 as recall_pb2, recall_service_pb2_grpc as recall_grpc
from recsys.stage.v1 import rerank_service_pb2 as rerank_pb2, rerank_service_pb2_grpc as rerank_grpc
from recsys.v2 import recommend_service_pb2 as recommend_pb2, recommend_service_pb2_grpc as recommend_grpc


class InstantStages(recall_grpc.RecallServiceServicer, rank_grpc.RankServiceServicer,
                    rerank_grpc.RerankServiceServicer):
    """Valid replies built once: the cost of a stage call is gRPC's and the gateway's alone."""

    def __init__(self, version: str, n_items: int, n: int = 300):
        ids = np.arange(min(n, n_items), dtype=np.int32)
        self.recall = recall_pb2.RecallResponse(
            item_idx=wire.encode(ids, wire.INT32), scores=wire.encode(np.linspace(1, 0, ids.size, dtype=np.float32),
                                                                       wire.FLOAT32),
            channel_masks=wire.encode(np.ones(ids.size, np.uint32), wire.UINT32), channel_names=["ann"],
            snapshot_version=version)
        self.version = version

    def Recall(self, request, context):
        return self.recall

    def Rank(self, request, context):
        n = len(request.item_idx) // 4
        fused = wire.encode(np.linspace(1, 0, n, dtype=np.float32), wire.FLOAT32)
        return rank_pb2.RankResponse(item_idx=request.item_idx, fused=fused, task_names=["click"], task_scores=fused,
                                     snapshot_version=self.version)

    def Rerank(self, request, context):
        k = min(request.k, len(request.item_idx) // 4)
        return rerank_pb2.RerankResponse(positions=wire.encode(np.arange(k, dtype=np.int32), wire.INT32),
                                         method=rerank_pb2.RERANK_METHOD_NONE, snapshot_version=self.version)


def start_gateway(snapshot_root: str, run_dir: Path, overrides: list[str], timeout_s: float = 60.0) -> subprocess.Popen:
    """``python -m gateway`` on an OS-picked port with ``overrides``; returned once it reports SERVING."""
    port_file = run_dir / "gateway.port"
    args = [sys.executable, "-m", "gateway", "--snapshot", snapshot_root, "--port", "0", "--port-file", str(port_file)]
    for item in overrides:
        args += ["--set", item]
    with open(run_dir / "gateway.log", "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if port_file.exists() and port_file.read_text():
            with grpc.insecure_channel(f"127.0.0.1:{port_file.read_text()}") as channel:
                try:
                    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return proc
                except grpc.RpcError:
                    pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the gateway did not start; see {run_dir / 'gateway.log'}")


def run(snapshot_root: str, requests: int, k: int, warmup: int = 300) -> dict:
    snapshot = Snapshot.open(snapshot_root)
    stages = InstantStages(snapshot.version, int(snapshot.item_ids.shape[0]))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    for add in (recall_grpc.add_RecallServiceServicer_to_server, rank_grpc.add_RankServiceServicer_to_server,
                rerank_grpc.add_RerankServiceServicer_to_server):
        add(stages, server)
    addr = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    users = [str(u) for u in snapshot.features.array("user_ids")[:500]]
    run_dir = Path(tempfile.mkdtemp(prefix="gateway-alone-"))
    try:
        gateway = start_gateway(snapshot_root, run_dir, [f"recall_addr={addr}", f"rank_addr={addr}",
                                                         f"rerank_addr={addr}", "deadline_ms=500"])
    except BaseException:
        server.stop(0)
        raise
    try:
        with grpc.insecure_channel(f"127.0.0.1:{(run_dir / 'gateway.port').read_text()}") as channel:
            stub = recommend_grpc.RecommendServiceStub(channel)
            for i in range(warmup):
                stub.Recommend(recommend_pb2.RecommendRequest(user_id=users[i % len(users)], k=k))
            cpu0, t0, degraded = cpu_seconds(gateway.pid), time.perf_counter(), 0
            for i in range(requests):
                reply = stub.Recommend(recommend_pb2.RecommendRequest(user_id=users[i % len(users)], k=k))
                degraded += bool(reply.degraded_stages)
            return {"requests": requests, "degraded": degraded,
                    "gateway_cpu_ms_per_request": (cpu_seconds(gateway.pid) - cpu0) * 1000.0 / requests,
                    "wall_ms_per_request": (time.perf_counter() - t0) * 1000.0 / requests}
    finally:
        gateway.terminate()
        gateway.wait()
        server.stop(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benches.gateway_alone", description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", default="snapshots")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--k", type=int, default=20)
    args = parser.parse_args(argv)
    result = run(args.snapshot, args.requests, args.k)
    print(f"gateway CPU-ms per Recommend with instant stages: {result['gateway_cpu_ms_per_request']:.3f} "
          f"({result['requests']} sequential calls, {result['degraded']} degraded, "
          f"{result['wall_ms_per_request']:.2f} ms each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
