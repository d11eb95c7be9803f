"""Start the whole cluster from a snapshot, wait for health, stop it cleanly: ``python -m cluster``.

Each stage is its own process on its own port. Stages bind port 0 and report the port through a file
in the run directory, so tests and demos never collide; the gateway is then started with their
addresses. Children get SIGTERM when the launcher exits for any reason (Linux parent-death signal, armed by the
child itself: a preexec_fn would make Python fork the launcher, whose gRPC fork handlers then
sometimes abort the child with 'epoll_wait error: Bad file descriptor' before it can exec).

A stage may run several replicas (``replicas``), each a process binding its own port, as pods do behind a
Kubernetes headless Service (docs/ARCHITECTURE.md §8): the gateway gets them as one address list and dials it with gRPC's
``round_robin`` policy, client-side health checking and one retry on UNAVAILABLE (``gateway.stage_target``),
so a dead or draining replica is skipped and calls are balanced per call, not per connection. (This replaced
SO_REUSEPORT workers sharing one port: the kernel balanced connections, not calls, and the readiness check of
worker i probed whichever worker the kernel picked.) A supervisor thread restarts a replica that exits unasked
on its own port, with exponential backoff, and logs ``process_exited`` / ``process_restarted``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.config import add_config_flags, load_config
from common.log import get_logger
from common.snapshot import Snapshot, SnapshotError
from cluster.logs import RotatingLog, start_pump
from common.server_options import ServerOptions
from common.tls import certificate_identities, check_pair, open_channel, parse_allowed_clients

STAGES = ("recall", "rank", "rerank")
MODULES = {"recall": "recall_server", "rank": "rank_server", "rerank": "rerank_server", "gateway": "gateway"}
ROOT = Path(__file__).resolve().parent.parent
log = get_logger("cluster")


@dataclass
class ClusterConfig:
    """What the launcher needs; each server's own settings come from its config file or ``--set``."""

    snapshot: str = "snapshots"
    host: str = "127.0.0.1"
    gateway_port: int = 50050
    run_dir: str = ""                      # logs and port files; empty: a fresh temporary directory
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 10.0
    configs: dict[str, str] = field(default_factory=dict)           # stage → config file
    overrides: dict[str, list[str]] = field(default_factory=dict)   # stage → ["key=value", ...]
    # stage → replica processes, each on its own OS-picked port; the gateway dials them as one list with
    # round_robin + health checking, the topology deploy/k8s runs. Default 1. Python has one GIL per process,
    # so on a dedicated machine give the stages about as many replicas in all as cores (e.g. 8 cores: recall 3,
    # rank 3, rerank 1, gateway 1), each with onnx_threads=1 (NUMBA_NUM_THREADS=1 and OMP_NUM_THREADS=1 are
    # set here) so replicas do not oversubscribe the cores.
    # With the co-located topology (below), replicate the gateway instead: about one gateway per core.
    replicas: dict[str, int] = field(default_factory=dict)
    # stages run inside the gateway process instead of their own (the co-located topology, GatewayConfig.stages
    # and gateway.local_stages): each saves two gRPC endpoints per request. Their overrides go to the gateway
    # as local.<stage>.*; scale the funnel with replicas.gateway (each gateway on its own port). [] runs every
    # stage as servers of its own behind round_robin (the remote topology, as deploy/k8s runs it). Default []
    # (README "Co-located or remote stages"): co-located costs a quarter less CPU per request at 100 req/s, but
    # at 3x overload its replies came up to 1 s late and Health p99 reached 419 ms, where remote stayed near
    # 100 ms: deadlines that hold under overload come first
    local_stages: list[str] = field(default_factory=list)
    # the feedback store (feedback.path of the gateway, which writes it, and of recall and rank, which read
    # it); empty: feedback off. It lives beside the snapshots and outlives snapshot swaps and restarts
    feedback_path: str = ""
    restart: bool = True                   # restart a crashed process, with exponential backoff:
    restart_backoff_s: float = 0.5         # first delay, doubled per attempt
    restart_backoff_max_s: float = 10.0    # up to this
    restart_reset_s: float = 60.0          # a process up this long starts again from the first delay
    # TLS on every server and hop (common.tls); empty: plaintext. tls_cert / tls_key: each server's certificate;
    # tls_client_ca: servers also require a client certificate it signed (mutual TLS); tls_ca verifies the
    # servers; client_tls_cert / client_tls_key: the certificate the gateway (to the stages) and the
    # launcher's readiness checks present
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    tls_ca: str = ""
    client_tls_cert: str = ""
    client_tls_key: str = ""
    # the gateway's own client certificate to the stages (mutual TLS; default: client_tls_cert / client_tls_key).
    # Give it an identity of its own: the stages serve that identity only (stage_allowed_clients)
    gateway_tls_cert: str = ""
    gateway_tls_key: str = ""
    # mutual TLS: the client identities the stages serve (server.tls_allowed_clients of recall, rank, rerank;
    # health checks excepted). []: the gateway's certificate's own (its subjectAltNames, else its CN), so a
    # certificate from the same CA with another identity is refused (PERMISSION_DENIED); ["*"]: any certificate
    # tls_client_ca signed (as before issue 31)
    stage_allowed_clients: list[str] = field(default_factory=list)
    # server.* settings applied to every process started (gateway and stages), before each one's own overrides:
    # ``--set server.metrics_port=0``. server.port and server.host are the launcher's (gateway_port, host)
    server: dict[str, Any] = field(default_factory=dict)
    # <worker>.log in run_dir: each line JSON (non-JSON output, e.g. gRPC core's, is wrapped: cluster.logs),
    # rotated before it passes log_max_mb into log_backups older files (.1 the newest); 0: never rotated
    log_max_mb: float = 64.0
    log_backups: int = 3

    def validate(self) -> None:
        check_pair(self.tls_cert, self.tls_key, "", "tls_client_ca", self.tls_client_ca)
        check_pair(self.client_tls_cert, self.client_tls_key, "client_", "tls_ca", self.tls_ca)
        if self.tls_cert and not self.tls_ca:
            raise ValueError("tls_ca must name the CA that signed tls_cert (the gateway and the launcher verify it)")
        if self.tls_client_ca and not (self.tls_cert and self.client_tls_cert):
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert / tls_key and client_tls_cert / client_tls_key")
        unknown = (set(self.configs) | set(self.overrides)) - set(MODULES)
        if unknown:
            raise ValueError(f"configs/overrides: unknown stage '{sorted(unknown)[0]}'; "
                             f"stages: {', '.join(MODULES)}")
        for stage in self.local_stages:
            if stage not in STAGES:
                raise ValueError(f"local_stages: '{stage}' is not a stage; stages: {', '.join(STAGES)}")
        for stage, n in self.replicas.items():
            if stage not in MODULES:
                raise ValueError(f"replicas: '{stage}' is not a server; servers: {', '.join(MODULES)}")
            if n < 1:
                raise ValueError(f"replicas.{stage} must be >= 1, got {n}")
            if stage in self.local_stages:
                raise ValueError(f"replicas.{stage}: {stage} runs in the gateway (local_stages); "
                                 f"replicate the gateway instead (replicas.gateway), or set local_stages=[]")
        check_pair(self.gateway_tls_cert, self.gateway_tls_key, "gateway_")
        if self.stage_allowed_clients and self.stage_allowed_clients != ["*"]:
            parse_allowed_clients(self.stage_allowed_clients)
        if (self.stage_allowed_clients or self.gateway_tls_cert) and not self.tls_client_ca:
            raise ValueError("stage_allowed_clients and gateway_tls_cert need mutual TLS (tls_client_ca)")
        known = {f.name for f in fields(ServerOptions)} - {"port", "host"}
        for key in self.server:
            if key not in known:
                raise ValueError(f"server.{key}: not a server setting the launcher passes on (server.port and "
                                 f"server.host are its own: gateway_port, host); settings: {', '.join(sorted(known))}")
        if self.log_max_mb < 0 or self.log_backups < 0:
            raise ValueError(f"log_max_mb and log_backups must be >= 0, got {self.log_max_mb} and {self.log_backups}")
        if not 0 < self.restart_backoff_s <= self.restart_backoff_max_s:
            raise ValueError("need 0 < restart_backoff_s <= restart_backoff_max_s")


FEEDBACK_STAGES = ("gateway", "recall", "rank")  # the writer and the readers of the feedback store


def worker_name(stage: str, index: int) -> str:
    """Key of a replica process in ``Cluster.procs``: the stage for replica 0, ``stage.i`` for the others."""
    return stage if index == 0 else f"{stage}.{index}"


class Cluster:
    """The four server processes of one cluster."""

    def __init__(self, config: ClusterConfig):
        self.config = config
        self.run_dir = Path(config.run_dir or tempfile.mkdtemp(prefix="recsys-cluster-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}
        self.worker_ports: dict[str, int] = {}  # replica key → its port
        self._logs: dict[str, RotatingLog] = {}    # worker → its <worker>.log, kept across restarts
        self._pumps: list[threading.Thread] = []    # one per process started: its output → its log, as JSON
        self._pump_of: dict[str, threading.Thread] = {}  # worker → the pump of its latest process
        self._spawned: dict[str, tuple[str, list[str], int, float]] = {}  # worker → stage, extra, index, start
        self._held: set[str] = set()            # workers stopped on purpose: never restarted
        self._attempts: dict[str, int] = {}
        self._restart_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()       # stopping: no more restarts
        self._finished = threading.Event()      # every process stopped: the supervisor thread may end
        self._supervisor: threading.Thread | None = None

    @property
    def gateway_addr(self) -> str:
        """The first gateway's address (``gateway_port``)."""
        return f"{self.config.host}:{self.ports['gateway']}"

    @property
    def gateway_target(self) -> str:
        """Every gateway replica's address as one list (one address with a single gateway): what a client
        dials with round_robin (``gateway.stage_target``) to spread calls over the gateways."""
        return self.stage_addr("gateway")

    @property
    def remote_stages(self) -> tuple[str, ...]:
        """The stages that run as servers of their own (not inside the gateway)."""
        return tuple(s for s in STAGES if s not in self.config.local_stages)

    def addr(self, name: str) -> str:
        return f"{self.config.host}:{self.ports[name]}"

    def addrs(self, stage: str) -> list[str]:
        """Every address serving ``stage``: one per replica."""
        ports = dict.fromkeys(port for key, port in self.worker_ports.items() if key.partition(".")[0] == stage)
        return [f"{self.config.host}:{port}" for port in ports]

    def stage_addr(self, stage: str) -> str:
        """What the gateway dials for ``stage``: its address, or its replicas' as a comma-separated list."""
        return ",".join(self.addrs(stage))

    def _spawn(self, name: str, port: int, extra: list[str], index: int = 0, restart: bool = False) -> None:
        key = worker_name(name, index)
        port_file = self.run_dir / f"{key}.port"
        port_file.unlink(missing_ok=True)
        args = [sys.executable, "-m", MODULES[name], "--snapshot", str(self.config.snapshot),
                "--port", str(port), "--port-file", str(port_file), "--set", f"server.host={self.config.host}"]
        if name in self.config.configs:
            args += ["--config", self.config.configs[name]]
        if self.config.feedback_path and name in FEEDBACK_STAGES:
            args += ["--set", f"feedback.path={Path(self.config.feedback_path).resolve()}"]
        own = self.config.overrides.get(name, [])
        if name == "gateway":  # the stages it runs itself take their settings under local.<stage>
            own = [*(f"stages.{s}=local" for s in self.config.local_stages),
                   *(f"local.{s}.{item}" for s in self.config.local_stages for item in self.config.overrides.get(s, [])),
                   *own]
        shared = [f"server.{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in self.config.server.items()]
        for item in [*self._tls_overrides(name), *shared, *extra, *own]:
            args += ["--set", item]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                   OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                   RECSYS_PARENT_PID=str(os.getpid()))
        logfile = self._logs.get(key)
        if logfile is None:
            logfile = self._logs[key] = RotatingLog(self.run_dir / f"{key}.log", int(self.config.log_max_mb * 2**20),
                                                    self.config.log_backups)
        self.procs[key] = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                           cwd=ROOT, start_new_session=True)
        self._pumps.append(start_pump(self.procs[key].stdout, logfile, name, key))
        self._pump_of[key] = self._pumps[-1]
        self._spawned[key] = (name, extra, index, time.monotonic())
        if not restart:
            log.info("process_started", stage=name, worker=key, pid=self.procs[key].pid,
                     log=str(self.run_dir / f"{key}.log"))

    def _log_tail(self, name: str, lines: int = 8) -> str:
        try:
            return "\n".join((self.run_dir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _wait_ready(self, key: str, deadline: float) -> None:
        """Wait for worker ``key``: its port file (written after loading and the self-test), then SERVING."""
        name = key.partition(".")[0]
        port_file = self.run_dir / f"{key}.port"
        while True:
            proc = self.procs[key]
            if proc.poll() is not None:
                if key in self._pump_of:  # its last words (the reason it stopped) into the log first
                    self._pump_of[key].join(timeout=2.0)
                raise RuntimeError(f"{key} exited with status {proc.returncode} during start-up:\n"
                                   f"{self._log_tail(key)}")
            if port_file.exists() and key not in self.worker_ports:
                self.worker_ports[key] = int(port_file.read_text())
                self.ports.setdefault(name, self.worker_ports[key])
            if (key in self.worker_ports
                    and self.health_at(f"{self.config.host}:{self.worker_ports[key]}", timeout=1.0) == "SERVING"):
                log.info("process_ready", stage=name, worker=key, port=self.worker_ports[key])
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not SERVING after {self.config.start_timeout_s} s; "
                                   f"log: {self.run_dir / (name + '.log')}")
            time.sleep(0.1)

    def _tls_overrides(self, name: str) -> list[str]:
        """``--set`` items giving server ``name`` the cluster's TLS (and the gateway TLS to the stages)."""
        c = self.config
        if not c.tls_cert:
            return []
        items = [f"server.tls_cert={c.tls_cert}", f"server.tls_key={c.tls_key}"]
        items += [f"server.tls_client_ca={c.tls_client_ca}"] if c.tls_client_ca else []
        cert, key = self.gateway_identity
        if name == "gateway":
            items.append(f"stage_tls_ca={c.tls_ca}")
            items += [f"stage_tls_cert={cert}", f"stage_tls_key={key}"] if cert else []
        elif c.tls_client_ca:
            items.append(f"server.tls_allowed_clients={json.dumps(self.stage_allowed_clients())}")
        return items

    @property
    def gateway_identity(self) -> tuple[str, str]:
        """The certificate and key the gateway presents to the stages."""
        c = self.config
        return (c.gateway_tls_cert, c.gateway_tls_key) if c.gateway_tls_cert else (c.client_tls_cert, c.client_tls_key)

    def stage_allowed_clients(self) -> list[str]:
        """The stages' ``server.tls_allowed_clients``: ``stage_allowed_clients``, else the gateway certificate's
        identities; [] (any certificate the CA signed) for ``["*"]``."""
        c = self.config
        if c.stage_allowed_clients == ["*"]:
            return []
        if c.stage_allowed_clients:
            return list(c.stage_allowed_clients)
        cert = self.gateway_identity[0]
        names = certificate_identities(cert, "gateway_tls_cert" if c.gateway_tls_cert else "client_tls_cert")
        if not names:
            raise ValueError(f"{cert} names no identity (no subjectAltName, no CN): set stage_allowed_clients")
        return names

    def health(self, name: str, timeout: float = 1.0) -> str:
        """The health status name of server ``name``, dialled with the cluster's TLS settings."""
        return self.health_at(self.addr(name), timeout)

    def health_at(self, addr: str, timeout: float = 1.0) -> str:
        """The health status name of the server at ``addr`` (one worker or replica), with the cluster's TLS."""
        c = self.config
        if not c.tls_cert:
            return health_status(addr, timeout)
        return health_status(addr, timeout, ca=c.tls_ca, cert=c.client_tls_cert, key=c.client_tls_key)

    def start(self) -> "Cluster":
        """Start the stages that run on their own, then the gateway(s); return once all report SERVING."""
        Snapshot.open(self.config.snapshot, verify=False)  # fail fast, in one line, without a snapshot
        deadline = time.monotonic() + self.config.start_timeout_s
        try:
            self._start_group(self.remote_stages, 0, [], deadline)
            self._start_group(("gateway",), self.config.gateway_port,
                              [f"{s}_addr={self.stage_addr(s)}" for s in self.remote_stages], deadline)
        except BaseException:
            self.stop()
            raise
        self._supervise()
        return self

    def _start_group(self, names, port: int, extra: list[str], deadline: float) -> None:
        """Every replica of each named stage, all loading at once: replica 0 binds ``port`` (0: the OS picks),
        the others a port the OS picks each (``replicas``)."""
        group = [(name, i) for name in names for i in range(self.config.replicas.get(name, 1))]
        for name, i in group:
            self._spawn(name, port if i == 0 else 0, extra, i)
        for name, i in group:
            self._wait_ready(worker_name(name, i), deadline)

    def _supervise(self) -> None:
        if self.config.restart and self._supervisor is None:
            self._supervisor = threading.Thread(target=self._supervise_loop, name="cluster-supervisor", daemon=True)
            self._supervisor.start()

    def _supervise_loop(self) -> None:
        """Restart crashed replicas on their port with exponential backoff; log every exit and restart.

        The loop outlives ``_closing`` until ``stop`` has stopped every process: a restarted worker's
        parent-death signal fires when the thread that spawned it (this one) ends, not the launcher, so
        ending it early would SIGTERM restarted workers together with the gateway instead of after it.
        """
        while not self._finished.wait(0.1):
            if self._closing.is_set():
                continue
            with self._lock:
                for key, proc in list(self.procs.items()):
                    if key in self._held or proc.poll() is None or self._closing.is_set():
                        continue
                    self.check_restart(key, proc, time.monotonic())

    def check_restart(self, key: str, proc: subprocess.Popen, now: float) -> None:
        """One supervision step for an exited worker: schedule its restart, or restart it when due."""
        cfg = self.config
        name, extra, index, started = self._spawned[key]
        due = self._restart_at.get(key)
        if due is None:
            attempt = 1 if now - started >= cfg.restart_reset_s else self._attempts.get(key, 0) + 1
            self._attempts[key] = attempt
            delay = restart_delay(attempt, cfg.restart_backoff_s, cfg.restart_backoff_max_s)
            self._restart_at[key] = now + delay
            log.error("process_exited", stage=name, worker=key, pid=proc.pid, status=proc.returncode,
                      attempt=attempt, restart_in_s=delay, log=str(self.run_dir / f"{key}.log"))
        elif now >= due:
            del self._restart_at[key]
            self._spawn(name, self.worker_ports.get(key, self.ports[name]), extra, index, restart=True)
            log.warning("process_restarted", stage=name, worker=key, pid=self.procs[key].pid, old_pid=proc.pid,
                        status=proc.returncode, attempt=self._attempts[key])

    def start_stages(self, names: list[str] | tuple[str, ...]) -> "Cluster":
        """Start only the named stages (no gateway), e.g. to benchmark one server; return once all are SERVING."""
        unknown = sorted(set(names) - set(STAGES))
        if unknown:
            raise ValueError(f"unknown stage '{unknown[0]}'; stages: {', '.join(STAGES)}")
        Snapshot.open(self.config.snapshot, verify=False)
        deadline = time.monotonic() + self.config.start_timeout_s
        try:
            self._start_group(names, 0, [], deadline)
        except BaseException:
            self.stop()
            raise
        self._supervise()
        return self

    def stop_process(self, name: str, timeout: float | None = None) -> None:
        """SIGTERM a stage's replicas (or one replica, ``stage.i``); they drain; SIGKILL what does not exit.

        A process stopped here is not restarted by the supervisor.
        """
        with self._lock:
            keys = [k for k in self.procs if k == name or (name in MODULES and k.startswith(name + "."))]
            self._held.update(keys)
            procs = [(k, self.procs[k]) for k in keys if self.procs[k].poll() is None]
        for _, proc in procs:
            proc.terminate()
        for key, proc in procs:
            try:
                proc.wait(timeout or self.config.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("process_killed", stage=name, worker=key, pid=proc.pid)
                proc.kill()
                proc.wait()
            log.info("process_stopped", stage=name, worker=key, status=proc.returncode)

    def stop(self) -> None:
        """Stop restarting, then stop the gateway first (it drains in-flight requests), then the stages
        (restarted workers included), then the supervisor thread that spawned the restarted ones."""
        with self._lock:  # a restart in progress finishes first; none starts after this
            self._closing.set()
        for name in ("gateway", *STAGES):
            self.stop_process(name)
        self._finished.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5.0)
        for pump in self._pumps:  # each ends at its process's EOF; what the process wrote last is in its log
            pump.join(timeout=5.0)
        self._pumps.clear()
        for fh in self._logs.values():
            fh.close()
        self._logs.clear()

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def restart_delay(attempt: int, first_s: float, max_s: float) -> float:
    """Backoff before restart ``attempt`` (1-based): ``first_s`` doubled per attempt, capped at ``max_s``."""
    return min(first_s * 2.0 ** (attempt - 1), max_s)


def health_status(addr: str, timeout: float = 1.0, service: str = "", ca: str = "", cert: str = "",
                  key: str = "") -> str:
    """The health status name of the server at ``addr`` (``UNREACHABLE`` when it does not answer);
    ``ca`` (+ ``cert`` / ``key``) dial it with TLS (mutual TLS)."""
    with open_channel(addr, [], ca, cert, key) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=timeout)
        except grpc.RpcError:
            return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    """Run the cluster in the foreground until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        description="Start recall, rank, rerank and the gateway from a snapshot",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="settings (--set KEY=VALUE, or a --config file): the fields of ClusterConfig (cluster/launcher.py), e.g.\n"
               "  --set replicas.recall=2 --set local_stages=[]\n"
               "  --set server.KEY=VALUE      a server setting for every process started (gateway and stages),\n"
               "                              e.g. --set server.metrics_port=0 (server.port/host are the launcher's)\n"
               "  --set overrides.rank=[\"server.threads=4\"]   settings of one process only (win over server.*)\n"
               "  --set log_max_mb=64 --set log_backups=3   <run_dir>/<worker>.log: JSON lines, rotated\n"
               "  TLS: tls_cert, tls_key, tls_ca, tls_client_ca (mutual TLS), client_tls_cert/key (readiness checks),\n"
               "       gateway_tls_cert/key (the gateway's identity to the stages), stage_allowed_clients (default:\n"
               "       that certificate's identities; the stages refuse any other client, PERMISSION_DENIED)")
    add_config_flags(parser)
    parser.add_argument("--snapshot", help="snapshot root or version directory")
    parser.add_argument("--gateway-port", type=int, help="gateway port (0: the OS picks)")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.snapshot:
        overrides.append(f"snapshot={args.snapshot}")
    if args.gateway_port is not None:
        overrides.append(f"gateway_port={args.gateway_port}")
    try:
        config = load_config(ClusterConfig, args.config, overrides)
        cluster = Cluster(config)
        # the handlers only record the signal (no lock taken inside a signal handler; see GrpcServer.wait)
        received: list[int] = []
        signal.signal(signal.SIGTERM, lambda signum, _: received.append(signum))
        signal.signal(signal.SIGINT, lambda signum, _: received.append(signum))
        cluster.start()
    except (SnapshotError, ValueError, RuntimeError, TimeoutError) as exc:
        print(f"cluster: cannot start: {exc}", file=sys.stderr)
        return 2
    stages = [f"{s} {cluster.stage_addr(s)}" for s in cluster.remote_stages]
    stages += [f"{s} in the gateway" for s in config.local_stages]
    print(f"cluster ready: gateway {cluster.gateway_target} ({', '.join(stages)}); logs in {cluster.run_dir}; "
          f"Ctrl-C stops", flush=True)
    try:
        while not received:  # the supervisor thread restarts crashed workers and logs it
            time.sleep(0.1)
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
