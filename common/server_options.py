"""The network options every server process embeds as ``server`` in its config (``common.server`` binds them).

A module of its own so that what reads the options (the metrics interceptor, the aio bootstrap, each config)
does not import the server bootstrap, and the bootstrap can import them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from common.tls import check_pair, parse_allowed_clients


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
    # where /metrics listens (plain HTTP, no authentication): "" = loopback (127.0.0.1) when this server speaks
    # TLS, else server.host. A TLS deployment that is scraped over the network sets it (deploy/k8s/mtls: 0.0.0.0,
    # with a NetworkPolicy letting only the scraper reach the metrics port)
    metrics_host: str = ""
    tls_cert: str = ""               # PEM paths (common.tls); cert + key: TLS; + tls_client_ca: mutual TLS
    tls_key: str = ""
    tls_client_ca: str = ""
    # mutual TLS only: the client identities allowed to call (health checks excepted), matched against the
    # verified client certificate: "DNS:gateway", "URI:spiffe://...", "IP:10.0.0.1", "CN:name", or a bare value
    # matching any subjectAltName. Others get PERMISSION_DENIED naming their identity. [] = any certificate
    # tls_client_ca signed. The stages allow only the gateway (cluster.launcher, deploy/k8s/mtls)
    tls_allowed_clients: list[str] = field(default_factory=list)
    # bounds on what a client controls (common.client_text, common.request_id)
    max_string_len: int = 256        # longest id / name / version string a request may carry
    max_echo_chars: int = 200        # client text quoted in error details and logs is cut to this
    max_details_chars: int = 1000    # longest error detail sent back or logged (gRPC metadata is ~8 KB)
    max_request_id_len: int = 128    # longer x-request-id values (or odd characters) are not used

    def metrics_bind_host(self) -> str:
        """Where /metrics listens: ``metrics_host``, or loopback when this server speaks TLS, else ``host``."""
        if self.metrics_host:
            return self.metrics_host
        return "127.0.0.1" if self.tls_cert else self.host

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"server.port must be in 0..65535, got {self.port}")
        if not -1 <= self.metrics_port <= 65535:
            raise ValueError(f"server.metrics_port must be in -1..65535, got {self.metrics_port}")
        check_pair(self.tls_cert, self.tls_key, "server.", "server.tls_client_ca", self.tls_client_ca)
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("server.tls_client_ca needs server.tls_cert and server.tls_key")
        if self.tls_allowed_clients and not self.tls_client_ca:
            raise ValueError("server.tls_allowed_clients needs mutual TLS (server.tls_client_ca): without client "
                             "certificates there is no identity to check")
        parse_allowed_clients(self.tls_allowed_clients)
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
