"""TLS and mutual TLS, caller → gateway and gateway → stages, with certificates made by the openssl CLI."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from common.config import load_config
from common.server_options import ServerOptions
from gateway.client import RecommendClient
from cluster.launcher import Cluster, ClusterConfig, health_status
from gateway.config import GatewayConfig
from tests.fake_stages import start_fake_stages, start_gateway, stop

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all P-256, valid 1 day."""
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test-ca",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign", cwd=d)
    for name, ext in [("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")]:
        (d / f"{name}.ext").write_text(ext)
        _openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=d)
    return {n: str(d / n) for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def test_mutual_tls_end_to_end(snapshot, snapshot_root, tmp_path):
    pki = make_pki(tmp_path)
    server_tls = (pki["server.pem"], pki["server.key"], pki["ca.pem"])  # cert, key, client CA: mTLS
    server, fake, port = start_fake_stages(snapshot.version, snapshot.item_ids.shape[0], tls=server_tls)
    addr = f"127.0.0.1:{port}"
    client_tls = (pki["ca.pem"], pki["client.pem"], pki["client.key"])
    proc, gw_port = start_gateway(snapshot_root, tmp_path, [
        f"recall_addr={addr}", f"rank_addr={addr}", f"rerank_addr={addr}", "deadline_ms=2000",
        f"server.tls_cert={pki['server.pem']}", f"server.tls_key={pki['server.key']}",
        f"server.tls_client_ca={pki['ca.pem']}",
        f"stage_tls_ca={pki['ca.pem']}", f"stage_tls_cert={pki['client.pem']}", f"stage_tls_key={pki['client.key']}",
    ], tls_client=client_tls)
    try:
        with RecommendClient(f"127.0.0.1:{gw_port}", timeout_s=5.0, tls_ca=pki["ca.pem"], tls_cert=pki["client.pem"],
                             tls_key=pki["client.key"]) as client:
            rec = client.recommend("1", k=5)
        assert rec.degraded == [] and len(rec.items) == 5  # both hops worked over mutual TLS
        # a caller without a client certificate, or speaking plaintext, is refused
        for kwargs in ({"tls_ca": pki["ca.pem"]}, {}):
            with RecommendClient(f"127.0.0.1:{gw_port}", timeout_s=2.0, retries=0, **kwargs) as client:
                with pytest.raises(grpc.RpcError) as info:
                    client.recommend("1", k=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        stop(proc)
        server.stop(0)


def test_mutual_tls_over_a_round_robin_address_list(snapshot, snapshot_root, tmp_path):
    """The gateway verifies each replica of an ``ipv4:`` list target against the certificate's SAN."""
    pki = make_pki(tmp_path)
    server_tls = (pki["server.pem"], pki["server.key"], pki["ca.pem"])
    replicas = [start_fake_stages(snapshot.version, snapshot.item_ids.shape[0], tls=server_tls) for _ in range(2)]
    addrs = ",".join(f"127.0.0.1:{port}" for _, _, port in replicas)
    proc, gw_port = start_gateway(snapshot_root, tmp_path, [
        f"recall_addr={addrs}", f"rank_addr={addrs}", f"rerank_addr={addrs}", "deadline_ms=2000",
        f"stage_tls_ca={pki['ca.pem']}", f"stage_tls_cert={pki['client.pem']}", f"stage_tls_key={pki['client.key']}",
    ])
    try:
        with RecommendClient(f"127.0.0.1:{gw_port}", timeout_s=5.0) as client:
            for _ in range(6):
                assert client.recommend("1", k=5).degraded == []
        assert all("recall" in fake.last for _, fake, _ in replicas)  # round_robin reached both replicas
    finally:
        stop(proc)
        for server, _, _ in replicas:
            server.stop(0)


def test_health_port_answers_probes_in_plaintext_beside_a_tls_port(tmp_path):
    """Kubelet gRPC probes speak plaintext only: ``server.health_port`` serves health and nothing else."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from common.log import get_logger
    from common.server import GrpcServer

    pki = make_pki(tmp_path)
    options = load_config(ServerOptions, None, [f"tls_cert={pki['server.pem']}", f"tls_key={pki['server.key']}",
                                                f"tls_client_ca={pki['ca.pem']}", "health_port=0"])
    server = GrpcServer("test", options, get_logger("test"))
    port = server.start(str(tmp_path / "test.port"))
    health_port = int((tmp_path / "test.port.health").read_text())

    def check(addr: str) -> str:
        with grpc.insecure_channel(addr) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    try:
        assert check(f"127.0.0.1:{health_port}") == "NOT_SERVING"
        server.set_serving(True)
        assert check(f"127.0.0.1:{health_port}") == "SERVING"
        with pytest.raises(grpc.RpcError) as info:  # the main port still refuses plaintext callers
            check(f"127.0.0.1:{port}")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:  # health only: no reflection
            from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

            stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
            with pytest.raises(grpc.RpcError) as info:
                list(stream)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop()
    with pytest.raises(grpc.RpcError):
        check(f"127.0.0.1:{health_port}")


def test_tls_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="tls_cert and server.tls_key"):
        load_config(ServerOptions, None, ["tls_cert=/nope.pem"])
    with pytest.raises(ValueError, match="server.tls_cert: cannot read"):
        load_config(ServerOptions, None, ["tls_cert=/nope.pem", "tls_key=/nope.key"])
    with pytest.raises(ValueError, match="stage_tls_ca"):
        load_config(GatewayConfig, None, [f"stage_tls_ca={tmp_path / 'missing.pem'}"])


def test_no_pickle_or_eval_in_serving_code():
    """Nothing received or read from a snapshot is unpickled or evaluated (issue 5, security)."""
    root = Path(__file__).resolve().parent.parent
    # builtins eval/exec (not torch's Module.eval()), pickle and anything that unpickles under the hood
    banned = re.compile(r"(?<![\w.])(eval|exec)\(|import pickle|pickle\.loads?|allow_pickle=True|marshal\.loads?"
                        r"|torch\.load\(")
    hits = []
    for package in ("common", "gateway", "recall_server", "rank_server", "rerank_server", "kernels", "protos",
                    "recsys"):
        for path in (root / package).rglob("*.py"):
            hits += [f"{path.relative_to(root)}: {m.group(0)}" for m in banned.finditer(path.read_text())]
    assert not hits, hits


def test_mutual_tls_through_the_real_launcher(snapshot_root, tmp_path):
    """Issue 12: the launcher's readiness checks dialled plaintext, so a TLS cluster never became ready."""
    pki = make_pki(tmp_path)
    config = load_config(ClusterConfig, None, [
        f"snapshot={snapshot_root}", "gateway_port=0", "local_stages=[]", "replicas={}", f"run_dir={tmp_path / 'run'}", "start_timeout_s=180",
        f"tls_cert={pki['server.pem']}", f"tls_key={pki['server.key']}", f"tls_client_ca={pki['ca.pem']}",
        f"tls_ca={pki['ca.pem']}", f"client_tls_cert={pki['client.pem']}", f"client_tls_key={pki['client.key']}",
        'overrides={"gateway": ["deadline_ms=3000"]}'])
    with Cluster(config) as cluster:
        with RecommendClient(cluster.gateway_addr, timeout_s=10.0, tls_ca=pki["ca.pem"], tls_cert=pki["client.pem"],
                             tls_key=pki["client.key"]) as client:
            rec = client.recommend("1", k=5)
        assert rec.degraded == [] and len(rec.items) == 5  # caller → gateway → every stage over mutual TLS
        for name in ("recall", "rank", "rerank", "gateway"):
            assert cluster.health(name) == "SERVING"
            assert health_status(cluster.addr(name), timeout=2.0) == "UNREACHABLE"  # plaintext is refused
            assert health_status(cluster.addr(name), timeout=2.0, ca=pki["ca.pem"]) == "UNREACHABLE"  # no client cert
