"""How the gateway dials one stage: a gRPC target plus the load-balancing service config (docs/ARCHITECTURE.md §8).

A stage address in ``GatewayConfig`` (``recall_addr``, ...) is one of:

* ``host:port``: one server; dialled as one connection.
* ``10.0.0.1:50051,10.0.0.2:50051``: replicas on their own ports; dialled as the ``ipv4:`` (or ``ipv6:``)
  address-list target.
* a target with a scheme, e.g. ``dns:///recall.recsys.svc.cluster.local:50051`` (a Kubernetes headless
  Service resolves to one A record per ready pod), ``ipv4:...``, ``ipv6:...``.

The last two get gRPC's ``round_robin`` policy (one subchannel per address, calls spread over the READY
ones) and client-side health checking on ``grpc.health.v1`` service ``""``: a replica that is draining
(NOT_SERVING, see ``ServerOptions.drain_s``) or dead leaves the rotation before calls reach it. A call
that fails with UNAVAILABLE (its replica died under it) is retried once on another replica, within the
call's own deadline (gRPC's retry policy), so a killed replica costs no request.
"""
from __future__ import annotations

import ipaddress
import json

# every server reports the whole-server status under "" (common.server.GrpcServer.set_serving)
HEALTH_SERVICE = ""
# "name": [{}] is the default method config: every method of every service on the channel
RETRY_POLICY = {"maxAttempts": 2, "initialBackoff": "0.001s", "maxBackoff": "0.005s", "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"]}
SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}],
                             "healthCheckConfig": {"serviceName": HEALTH_SERVICE},
                             "methodConfig": [{"name": [{}], "retryPolicy": RETRY_POLICY}]})
SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:")


def is_balanced(addr: str) -> bool:
    """True when ``addr`` names several replicas (a list or a scheme target) and so gets round_robin."""
    return "," in addr or addr.startswith(SCHEMES)


def _split_host_port(item: str, key: str) -> tuple[str, int]:
    host, sep, port = item.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{key}: '{item}' is not host:port")
    return host.strip("[]"), int(port)


def stage_target(addr: str, key: str = "addr") -> tuple[str, list[tuple[str, str]]]:
    """The gRPC target for ``addr`` and the channel options that go with it (``key`` names it in errors).

    An address list must be IP literals of one family: gRPC's ``ipv4:``/``ipv6:`` targets take no names
    (use ``dns:///name:port`` for a name that resolves to every replica).
    """
    if not addr:
        raise ValueError(f"{key} must not be empty")
    if not is_balanced(addr):
        return addr, []
    options = [("grpc.service_config", SERVICE_CONFIG)]
    if addr.startswith(SCHEMES):
        return addr, options
    families = set()
    items = []
    for item in addr.split(","):
        host, port = _split_host_port(item, key)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{key}: '{host}' in an address list must be an IP address; "
                             f"for a name use dns:///{host}:{port}") from None
        families.add(ip.version)
        items.append(f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}")
    if len(families) > 1:
        raise ValueError(f"{key}: an address list must be all IPv4 or all IPv6")
    # the authority (and so the name TLS verifies) of an ipv4:/ipv6: list target would be the whole list:
    # use the first replica's, so certificates carrying that IP verify (with TLS prefer a dns:/// name)
    return f"ipv{families.pop()}:{','.join(items)}", [*options, ("grpc.default_authority", items[0])]


def replica_addrs(addr: str) -> list[str]:
    """The replicas ``addr`` names, each as its own ``host:port`` address, so a health check can reach every
    one (a Check over a ``round_robin`` channel reaches whichever replica the policy picks). A list is split;
    an ``ipv4:``/``ipv6:`` target is split into its addresses; a ``dns:`` target is resolved now, one address
    per record (a Kubernetes headless Service: one per ready pod), and stays whole if it does not resolve, as
    do ``unix:`` targets."""
    if addr.startswith(("ipv4:", "ipv6:")):
        return [item.strip() for item in addr.split(":", 1)[1].split(",") if item.strip()]
    if addr.startswith("dns:"):
        return _resolve(addr) or [addr]
    if addr.startswith(SCHEMES) or "," not in addr:
        return [addr]
    return [item.strip() for item in addr.split(",")]


def _resolve(addr: str) -> list[str]:
    """``dns:[//authority]/host:port`` as the sorted ``ip:port`` addresses it resolves to ([] when it does not)."""
    import socket

    name = addr[len("dns:"):].lstrip("/")
    if addr.startswith("dns://") and "/" in addr[len("dns://"):]:   # dns://authority/host:port
        name = addr[len("dns://"):].split("/", 1)[1]
    host, sep, port = name.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return []
    try:
        infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    except OSError:
        return []
    found = {(f"[{info[4][0]}]" if info[0] == socket.AF_INET6 else info[4][0]) + f":{port}" for info in infos}
    return sorted(found)
