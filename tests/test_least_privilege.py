"""Issue 31: stages answer the gateway only; metrics stay on loopback under TLS; every launcher log line is JSON and
every log file stays within its bound."""
from __future__ import annotations

import json
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from cluster.launcher import Cluster, ClusterConfig, health_status
from cluster.logs import RotatingLog, as_json_line
from common.config import ConfigError, load_config
from common.log import Logger
from common.server import GrpcServer
from common.server_options import ServerOptions
from common.tls import open_channel, parse_allowed_clients
from gateway.client import RecommendClient
from tests.test_tls import _openssl, make_pki

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")

STAGE_METHODS = {"recall": "/recsys.stage.v1.RecallService/Recall", "rank": "/recsys.stage.v1.RankService/Rank",
                 "rerank": "/recsys.stage.v1.RerankService/Rerank"}
LOG_MAX_MB = 0.0625        # 64 KiB per file in the cluster below
LOG_BACKUPS = 2
HANDSHAKES = 2000


def add_client_cert(d: Path, name: str, ext: str, subject: str) -> tuple[str, str]:
    """One more client certificate from make_pki's CA: (cert, key)."""
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (d / f"{name}.ext").write_text(ext + "extendedKeyUsage=clientAuth\n")
    _openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=d)
    return str(d / f"{name}.pem"), str(d / f"{name}.key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    pki = make_pki(d)
    pki["gateway.pem"], pki["gateway.key"] = add_client_cert(d, "gateway", "subjectAltName=DNS:gateway\n",
                                                             "/CN=gateway")
    # another holder of a certificate from the same CA, even one whose CN says "gateway"
    pki["other.pem"], pki["other.key"] = add_client_cert(d, "other", "subjectAltName=DNS:analytics\n",
                                                         "/CN=gateway")
    return pki


def _call(addr: str, method: str, pki: dict, who: str) -> grpc.StatusCode:
    """Call ``method`` with an empty request, as ``who`` (a certificate of the PKI); the status code."""
    with open_channel(addr, [], pki["ca.pem"], pki[f"{who}.pem"], pki[f"{who}.key"]) as channel:
        try:
            channel.unary_unary(method)(b"", timeout=10)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


@pytest.fixture(scope="module")
def cluster(snapshot_root, pki, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    config = load_config(ClusterConfig, None, [
        f"snapshot={snapshot_root}", "gateway_port=0", "local_stages=[]", "replicas={}", f"run_dir={run}",
        "start_timeout_s=180",
        f"tls_cert={pki['server.pem']}", f"tls_key={pki['server.key']}", f"tls_client_ca={pki['ca.pem']}",
        f"tls_ca={pki['ca.pem']}", f"client_tls_cert={pki['client.pem']}", f"client_tls_key={pki['client.key']}",
        f"gateway_tls_cert={pki['gateway.pem']}", f"gateway_tls_key={pki['gateway.key']}",
        "server.metrics_port=0", f"log_max_mb={LOG_MAX_MB}", f"log_backups={LOG_BACKUPS}",
        'overrides={"gateway": ["deadline_ms=3000"]}'])
    with Cluster(config) as cluster:
        yield cluster


def test_stages_serve_the_gateway_and_refuse_other_identities(cluster, pki):
    for stage, method in STAGE_METHODS.items():
        addr = cluster.addr(stage)
        for who in ("client", "other"):  # the CA signed both; neither is the gateway
            code, details = _call(addr, method, pki, who)
            assert code == grpc.StatusCode.PERMISSION_DENIED, (stage, who, code, details)
            assert "tls_allowed_clients" in details and "CN:" in details, details  # names the identity
        code, details = _call(addr, method, pki, "gateway")
        assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAVAILABLE), (stage, code, details)
        # health checks answer any certificate of the CA (readiness checks); reflection does not
        assert cluster.health(stage) == "SERVING"
    # the whole funnel still answers, caller → gateway → every stage over mutual TLS
    with RecommendClient(cluster.gateway_addr, timeout_s=10.0, tls_ca=pki["ca.pem"], tls_cert=pki["client.pem"],
                         tls_key=pki["client.key"]) as client:
        rec = client.recommend("1", k=5)
    assert rec.degraded == [] and len(rec.items) == 5


def test_metrics_bind_loopback_under_tls_and_server_settings_reach_every_process(cluster):
    for name in ("recall", "rank", "rerank", "gateway"):
        port = int((cluster.run_dir / f"{name}.port.metrics").read_text())  # --set server.metrics_port=0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            assert b"recsys_requests_total" in reply.read()
        started = [json.loads(line) for line in (cluster.run_dir / f"{name}.log").read_text().splitlines()
                   if '"metrics_started"' in line]
        assert started and started[-1]["host"] == "127.0.0.1", started


def test_every_log_line_is_json_and_files_stay_bounded_after_failed_handshakes(cluster):
    gateway = ("127.0.0.1", cluster.ports["gateway"])
    start = time.monotonic()
    for _ in range(HANDSHAKES):  # plaintext HTTP/2 callers at a TLS port: each handshake fails
        with socket.create_connection(gateway, timeout=5) as sock:
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            try:
                sock.recv(64)
            except OSError:
                pass
    assert time.monotonic() - start < 60
    time.sleep(1.0)  # the gateway logs, the launcher's pump copies
    assert health_status(cluster.gateway_addr, timeout=5, ca=cluster.config.tls_ca, cert=cluster.config.client_tls_cert,
                         key=cluster.config.client_tls_key) == "SERVING"
    bound = int(LOG_MAX_MB * 2**20)
    files = sorted(cluster.run_dir.glob("*.log*"))
    wrapped = 0
    for path in files:
        assert path.stat().st_size <= bound, (path, path.stat().st_size)
        for line in path.read_text().splitlines():
            record = json.loads(line)  # every line, the wrapped gRPC core ones included
            assert isinstance(record, dict) and {"level", "component", "event"} <= record.keys(), line
            wrapped += record["event"] == "grpc_core"
    gateway_files = [p.name for p in files if p.name.startswith("gateway.log")]
    assert len(gateway_files) <= 1 + LOG_BACKUPS, gateway_files
    assert wrapped > 0  # gRPC core did write its lines, and they came through as JSON


def test_allow_list_in_process_unit(tmp_path, pki):
    """GrpcServer alone: allow-list entries by type; IP SANs; the health port and check stay open."""
    from grpc_health.v1 import health

    for entries, allowed in ((["DNS:gateway"], {"gateway"}), (["CN:client"], {"client"}),
                             (["gateway", "CN:nobody"], {"gateway"}), (["CN:gateway"], {"gateway", "other"})):
        options = load_config(ServerOptions, None, [
            f"tls_cert={pki['server.pem']}", f"tls_key={pki['server.key']}", f"tls_client_ca={pki['ca.pem']}",
            f"tls_allowed_clients={json.dumps(entries)}"])
        server = GrpcServer("test", options, Logger("test", stream=open(tmp_path / "log", "a")))
        port = server.start()
        server.set_serving(True)
        try:
            for who in ("client", "gateway", "other"):
                code, _ = _call(f"127.0.0.1:{port}", f"/{health.SERVICE_NAME}/Check", pki, who)
                assert code == grpc.StatusCode.OK  # health: exempt from the allow-list
                with open_channel(f"127.0.0.1:{port}", [], pki["ca.pem"], pki[f"{who}.pem"], pki[f"{who}.key"]) as ch:
                    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

                    stream = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
                    try:
                        list(stream)
                        code = grpc.StatusCode.OK
                    except grpc.RpcError as exc:
                        code = exc.code()
                expected = grpc.StatusCode.OK if who in allowed else grpc.StatusCode.PERMISSION_DENIED
                assert code == expected, (entries, who, code)
        finally:
            server.stop()


def test_config_checks():
    with pytest.raises(ValueError, match="needs mutual TLS"):
        load_config(ServerOptions, None, ["tls_allowed_clients=DNS:gateway"])
    with pytest.raises(ValueError, match="empty identity"):
        parse_allowed_clients(["DNS:"])
    assert ServerOptions(host="0.0.0.0").metrics_bind_host() == "0.0.0.0"
    assert ServerOptions(host="0.0.0.0", tls_cert="c", tls_key="k").metrics_bind_host() == "127.0.0.1"
    assert ServerOptions(host="0.0.0.0", tls_cert="c", metrics_host="0.0.0.0").metrics_bind_host() == "0.0.0.0"
    config = load_config(ClusterConfig, None, ["server.metrics_port=0", "server.threads=4"])
    assert config.server == {"metrics_port": 0, "threads": 4}
    for bad in ("server.port=1", "server.host=0.0.0.0", "server.nope=1"):
        with pytest.raises(ValueError, match=bad.split("=")[0]):
            load_config(ClusterConfig, None, [bad])


def test_log_wrapping_and_rotation_unit(tmp_path):
    grpc_line = (b"E0000 00:00:1765000000.123456   12345 ssl_transport_security.cc:1654] Handshake failed with "
                 b"error SSL_ERROR_SSL: error:100000f7:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER\n")
    record = json.loads(as_json_line(grpc_line, "gateway", "gateway"))
    assert record["event"] == "grpc_core" and record["level"] == "warning" and "Handshake failed" in record["message"]
    assert json.loads(as_json_line(b"Traceback (most recent call last):\n", "rank", "rank.1"))["event"] == "stderr"
    ours = b'{"ts":1,"level":"info","component":"rank","event":"serving"}\n'
    assert as_json_line(ours, "rank", "rank") == ours and as_json_line(b"\n", "rank", "rank") == b""
    log = RotatingLog(tmp_path / "x.log", 1000, 2)
    for i in range(100):
        log.write(as_json_line(grpc_line, "gateway", "gateway"))
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["x.log", "x.log.1", "x.log.2"], names
    assert all((tmp_path / n).stat().st_size <= 1000 for n in names)
