"""The gateway's readiness check asks every stage replica on its own address (issue 27 item 6): a Check over
the round_robin channel of an address list or a dns:/// name reached whichever replica the policy picked."""
from __future__ import annotations

import socket
from concurrent import futures
from types import SimpleNamespace

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from common.reload import version_service
from gateway.server import GatewayServicer
from gateway.stage_target import replica_addrs


def test_replica_addrs_names_every_replica_on_its_own():
    assert replica_addrs("a:1,b:2") == ["a:1", "b:2"]
    assert replica_addrs("ipv4:127.0.0.1:1,127.0.0.2:2") == ["127.0.0.1:1", "127.0.0.2:2"]
    resolved = replica_addrs("dns:///localhost:50051")
    expected = {f"[{i[4][0]}]:50051" if i[0] == socket.AF_INET6 else f"{i[4][0]}:50051"
                for i in socket.getaddrinfo("localhost", 50051, type=socket.SOCK_STREAM)}
    assert set(resolved) == expected and resolved
    assert replica_addrs("dns:///no-such-host.invalid:1") == ["dns:///no-such-host.invalid:1"]  # kept whole
    assert replica_addrs("unix:/tmp/sock") == ["unix:/tmp/sock"]


def _replica(holds: bool) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    if holds:
        servicer.set(version_service("v2"), health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def _gateway(addr: str) -> GatewayServicer:
    gateway = GatewayServicer.__new__(GatewayServicer)   # only what stages_hold reads
    gateway.config = SimpleNamespace(recall_addr=addr, rank_addr=addr, rerank_addr=addr, stage_tls_ca="",
                                     stage_tls_cert="", stage_tls_key="")
    gateway.local, gateway._health_channels, gateway.channel_options = {}, {}, []
    return gateway


def test_a_replica_without_the_version_holds_the_switch_whichever_replica_round_robin_would_pick():
    (a, pa), (b, pb) = _replica(holds=True), _replica(holds=False)
    try:
        for addr in (f"127.0.0.1:{pa},127.0.0.1:{pb}", f"ipv4:127.0.0.1:{pa},127.0.0.1:{pb}"):
            gateway = _gateway(addr)
            # asked many times: a single round_robin channel would answer True about half the time
            assert not any(gateway.stages_hold("v2") for _ in range(6)), addr
            assert set(gateway._health_channels) == {f"127.0.0.1:{pa}", f"127.0.0.1:{pb}"}
            assert _gateway(f"ipv4:127.0.0.1:{pa}").stages_hold("v2")
            for channel in gateway._health_channels.values():
                channel.close()
    finally:
        a.stop(0)
        b.stop(0)
