"""Replicas on their own ports behind one round_robin target: the topology deploy/k8s runs, rehearsed here.

Every stage runs two replica processes, each on its own OS-picked port; the gateway dials each stage as
one ``ipv4:`` address list with gRPC's ``round_robin`` policy and client-side health checking, as it dials
``dns:///recall.<ns>.svc.cluster.local`` behind a headless Service. Under a bounded load (about 20 s at
about 50 requests/s, 127.0.0.1 only) one replica of each stage is SIGKILLed (the launcher restarts them;
the gateway's retry on UNAVAILABLE sends the calls they held to the other replica), one rank
replica is drained like a terminating pod (SIGTERM: NOT_SERVING for ``server.drain_s``, then stop), every
stage recycles its connections every 2 s (``server.max_connection_age_s``), and a new snapshot version is
published the way the export Job publishes it (copy, then flip CURRENT); no
request may fail, the drain must degrade none, and every running replica must switch to the new version.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from common.snapshot import current_version, flip_current
from cluster.launcher import STAGES, Cluster, ClusterConfig
from gateway.stage_target import SERVICE_CONFIG, stage_target
from recsys.v1 import recsys_pb2
from recsys.v1 import recsys_pb2_grpc
from tests.conftest import private_root

LOAD_S = float(os.environ.get("RECSYS_REHEARSAL_S", "20"))
RATE = 50.0
POLL = ["reload_poll_s=0.2"]


def test_address_list_becomes_a_round_robin_ipv4_target():
    target, options = stage_target("127.0.0.1:5001, 10.0.0.2:5002", "recall_addr")
    assert target == "ipv4:127.0.0.1:5001,10.0.0.2:5002"
    assert dict(options)["grpc.service_config"] == SERVICE_CONFIG
    assert dict(options)["grpc.default_authority"] == "127.0.0.1:5001"  # what TLS verifies (tests/test_tls.py)
    config = json.loads(SERVICE_CONFIG)
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"] == {"serviceName": ""}
    assert config["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert stage_target("[::1]:5001,[::1]:5002")[0] == "ipv6:[::1]:5001,[::1]:5002"
    assert stage_target("dns:///recall.recsys.svc.cluster.local:50051") == (
        "dns:///recall.recsys.svc.cluster.local:50051", [("grpc.service_config", SERVICE_CONFIG)])
    assert stage_target("127.0.0.1:5001") == ("127.0.0.1:5001", [])  # one address: dialled as before


@pytest.mark.parametrize("addr, message", [
    ("recall-a:5001,recall-b:5001", "must be an IP address; for a name use dns:///recall-a:5001"),
    ("127.0.0.1:5001,[::1]:5002", "all IPv4 or all IPv6"),
    ("127.0.0.1:5001,127.0.0.1", "is not host:port"),
])
def test_bad_address_lists_name_the_key(addr, message):
    from common.config import load_config
    from gateway.config import GatewayConfig

    with pytest.raises(ValueError, match="rank_addr") as info:
        load_config(GatewayConfig, None, [f"rank_addr={addr}"])
    assert message in str(info.value)


def test_replicas_config_is_checked():
    with pytest.raises(ValueError, match="replicas.rank must be >= 1"):
        ClusterConfig(replicas={"rank": 0}).validate()
    with pytest.raises(ValueError, match="'ranker' is not a server"):
        ClusterConfig(replicas={"ranker": 2}).validate()
    ClusterConfig(replicas={"gateway": 2}).validate()  # gateways scale too (each on its own port)
    with pytest.raises(TypeError):  # SO_REUSEPORT workers are gone: replicas on their own ports replace them
        ClusterConfig(workers={"recall": 2})


@pytest.fixture(scope="module")
def root(snapshot_root, tmp_path_factory) -> Path:
    return private_root(snapshot_root, tmp_path_factory, "replica-snapshots")


@pytest.fixture(scope="module")
def cluster(root, tmp_path_factory):
    # as the manifests set: drain before refusing calls; recycled connections (here every 2 s, so the
    # rehearsal crosses many GOAWAYs under load) so dns:/// clients re-resolve
    stage = ["server.drain_s=1.0", "server.max_connection_age_s=2", *POLL]
    config = ClusterConfig(snapshot=str(root), gateway_port=0, local_stages=[], run_dir=str(tmp_path_factory.mktemp("cluster")),
                           replicas={s: 2 for s in STAGES},
                           overrides={"gateway": ["deadline_ms=3000", *POLL],
                                      "recall": stage,
                                      "rank": stage, "rerank": stage})
    with Cluster(config) as running:
        yield running
    for proc in running.procs.values():
        assert proc.poll() is not None, "a server process outlived the cluster"


def log_events(cluster: Cluster, worker: str, event: str) -> list[dict]:
    path = cluster.run_dir / f"{worker}.log"
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return [rec for line in lines if line.startswith("{") and (rec := json.loads(line))["event"] == event]


def serves_version(cluster: Cluster, worker: str, version: str) -> bool:
    """Whether ``worker`` switched to ``version`` (or, restarted after the flip, loaded it at start-up)."""
    return any(e.get("version") == version
               for event in ("snapshot_reloaded", "snapshot_loaded") for e in log_events(cluster, worker, event))


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_each_replica_has_its_own_port_and_the_gateway_gets_the_list(cluster):
    for stage in STAGES:
        addrs = cluster.addrs(stage)
        assert len(addrs) == 2 and addrs[0] != addrs[1], addrs
    dialled = log_events(cluster, "gateway", "stages")[0]
    for stage in STAGES:
        assert dialled[stage] == ",".join(cluster.addrs(stage))


def test_gateway_spreads_calls_over_every_replica(cluster):
    keys = [f"{s}{suffix}" for s in STAGES for suffix in ("", ".1")]
    before = {k: _cpu_ticks(cluster.procs[k].pid) for k in keys}
    with grpc.insecure_channel(cluster.gateway_addr) as channel:
        stub = recsys_pb2_grpc.GatewayStub(channel)
        for i in range(300):
            stub.Recommend(recsys_pb2.RecommendRequest(user_id=str(1 + i % 900), k=10), timeout=10)
    gained = {k: _cpu_ticks(cluster.procs[k].pid) - before[k] for k in keys}
    # each replica does ~0.3-1 ms per request: an idle one gains ~0 ticks over 150 calls, a busy one several
    assert min(gained.values()) >= 2, f"CPU ticks gained per replica: {gained}"


def test_kill_drain_and_rollout_under_load_fail_no_request(cluster, root):
    """The rehearsal: SIGKILL a replica of each stage, drain a rank replica, publish a version, all under load."""
    v1 = current_version(root)
    v2 = v1 + "-r2"
    replies: list[tuple[int, str, tuple[str, ...]]] = []  # (phase, version, degraded)
    errors: list[str] = []
    phase = [0]
    stop = threading.Event()

    def load(offset: int) -> None:
        with grpc.insecure_channel(cluster.gateway_addr) as channel:
            stub = recsys_pb2_grpc.GatewayStub(channel)
            next_at = time.monotonic()
            n = 0
            while not stop.is_set():  # paced, open loop: two threads at RATE / 2 each
                next_at += 2.0 / RATE
                n += 1
                try:
                    reply = stub.Recommend(recsys_pb2.RecommendRequest(user_id=str(offset + n % 900), k=10),
                                           timeout=10)
                    replies.append((phase[0], reply.snapshot_version, tuple(reply.degraded)))
                except grpc.RpcError as exc:
                    errors.append(f"{exc.code()}: {exc.details()}")
                stop.wait(max(0.0, next_at - time.monotonic()))

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in (1, 2)]
    killed = {key: cluster.procs[key] for key in ("recall.1", "rank", "rerank.1")}
    start = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        stop.wait(LOAD_S * 0.15)
        phase[0] = 1
        for proc in killed.values():  # crashed pods: the launcher restarts each on its port
            os.kill(proc.pid, signal.SIGKILL)
        stop.wait(LOAD_S * 0.2)
        # before draining rank.1, its peer (killed above) must be back: a bounded wait, not a speed assertion
        back = time.monotonic() + 60
        while cluster.health_at(cluster.addr("rank")) != "SERVING":
            assert time.monotonic() < back, "the killed rank replica did not come back"
            time.sleep(0.1)
        ticks = _cpu_ticks(cluster.procs["rank"].pid)  # ... and back in the gateway's rotation (it reconnects)
        while _cpu_ticks(cluster.procs["rank"].pid) - ticks < 3:
            assert time.monotonic() < back, "the gateway did not take the restarted rank replica back"
            time.sleep(0.1)
        phase[0] = 2
        cluster.stop_process("rank.1")  # a terminating pod: NOT_SERVING, drain_s, then drain in-flight calls
        stop.wait(LOAD_S * 0.25)
        phase[0] = 3
        shutil.copytree(root / v1, root / v2)  # the export Job's publish: a whole version, then CURRENT
        manifest = json.loads((root / v2 / "manifest.json").read_text())
        manifest["version"] = v2
        (root / v2 / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        flip_current(root, v2)
        stop.wait(max(0.0, LOAD_S - (time.monotonic() - start)))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
    elapsed = time.monotonic() - start
    degraded: dict[str, int] = {}
    for _, _, stages in replies:
        for stage in stages:
            degraded[stage] = degraded.get(stage, 0) + 1
    counts = {"seconds": round(elapsed, 1), "requests": len(replies) + len(errors), "failed": len(errors),
              "degraded_requests": sum(1 for r in replies if r[2]), "degraded_by_stage": degraded,
              "degraded_while_killing": sum(1 for r in replies if r[0] == 1 and r[2]),
              "versions": sorted({v for _, v, _ in replies})}
    print("rehearsal", json.dumps(counts))
    assert errors == [], errors[:5]
    assert counts["requests"] >= RATE * LOAD_S * 0.5  # the load really ran
    assert not [r for r in replies if r[0] == 2 and "rank" in r[2]], "the drained rank replica degraded requests"
    assert {v for _, v, _ in replies} <= {v1, v2}
    for key, proc in killed.items():
        assert cluster.procs[key].pid != proc.pid, f"the launcher did not restart the killed replica {key}"
    running = [k for k, p in cluster.procs.items() if p.poll() is None and k != "gateway"]
    assert "rank.1" not in running and len(running) == 5
    deadline = time.monotonic() + 60  # bounded wait, not a speed assertion: every replica reloads v2
    while not all(serves_version(cluster, k, v2) for k in running):
        assert time.monotonic() < deadline, "not every replica switched to the new version"
        time.sleep(0.2)
    # the restarted recall replica is back in the rotation (round_robin reconnects to it)
    pid = cluster.procs["recall.1"].pid
    before = _cpu_ticks(pid)
    with grpc.insecure_channel(cluster.gateway_addr) as channel:
        stub = recsys_pb2_grpc.GatewayStub(channel)
        for i in range(200):
            assert stub.Recommend(recsys_pb2.RecommendRequest(user_id=str(1 + i), k=10),
                                  timeout=10).snapshot_version == v2
    assert _cpu_ticks(pid) - before >= 2
