"""Start the whole cluster from a snapshot, wait for health, stop it cleanly: ``python -m gateway.cluster``.

Each stage is its own process on its own port. Stages bind port 0 and report the port through a file
in the run directory, so tests and demos never collide; the gateway is then started with their
addresses. Children get SIGTERM when the launcher exits for any reason (Linux parent-death signal), so
no process is orphaned even if the launcher itself is killed.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.config import add_config_flags, load_config
from common.log import get_logger
from common.snapshot import Snapshot, SnapshotError

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

    def validate(self) -> None:
        unknown = (set(self.configs) | set(self.overrides)) - set(MODULES)
        if unknown:
            raise ValueError(f"configs/overrides: unknown stage '{sorted(unknown)[0]}'; stages: {', '.join(MODULES)}")


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the launcher dies (prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass
    os.setpgrp()  # Ctrl-C in a terminal goes to the launcher only; it stops the children in order


class Cluster:
    """The four server processes of one cluster."""

    def __init__(self, config: ClusterConfig):
        self.config = config
        self.run_dir = Path(config.run_dir or tempfile.mkdtemp(prefix="recsys-cluster-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}
        self._logs: list = []

    @property
    def gateway_addr(self) -> str:
        return f"{self.config.host}:{self.ports['gateway']}"

    def addr(self, name: str) -> str:
        return f"{self.config.host}:{self.ports[name]}"

    def _spawn(self, name: str, port: int, extra: list[str]) -> None:
        port_file = self.run_dir / f"{name}.port"
        port_file.unlink(missing_ok=True)
        args = [sys.executable, "-m", MODULES[name], "--snapshot", str(self.config.snapshot),
                "--port", str(port), "--port-file", str(port_file), "--set", f"server.host={self.config.host}"]
        if name in self.config.configs:
            args += ["--config", self.config.configs[name]]
        for item in [*extra, *self.config.overrides.get(name, [])]:
            args += ["--set", item]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                   OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        logfile = open(self.run_dir / f"{name}.log", "ab")
        self._logs.append(logfile)
        self.procs[name] = subprocess.Popen(args, stdout=logfile, stderr=subprocess.STDOUT, env=env,
                                            cwd=ROOT, preexec_fn=_die_with_parent)
        log.info("process_started", stage=name, pid=self.procs[name].pid, log=str(self.run_dir / f"{name}.log"))

    def _log_tail(self, name: str, lines: int = 8) -> str:
        try:
            return "\n".join((self.run_dir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _wait_ready(self, name: str, deadline: float) -> None:
        port_file = self.run_dir / f"{name}.port"
        while True:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode} during start-up:\n"
                                   f"{self._log_tail(name)}")
            if name not in self.ports and port_file.exists():
                self.ports[name] = int(port_file.read_text())
            if name in self.ports and health_status(self.addr(name), timeout=1.0) == "SERVING":
                log.info("process_ready", stage=name, port=self.ports[name])
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not SERVING after {self.config.start_timeout_s} s; "
                                   f"log: {self.run_dir / (name + '.log')}")
            time.sleep(0.1)

    def start(self) -> "Cluster":
        """Start the stages, then the gateway; return once all four report SERVING."""
        Snapshot.open(self.config.snapshot, verify=False)  # fail fast, in one line, without a snapshot
        deadline = time.monotonic() + self.config.start_timeout_s
        try:
            for name in STAGES:
                self._spawn(name, 0, [])
            for name in STAGES:
                self._wait_ready(name, deadline)
            self._spawn("gateway", self.config.gateway_port,
                        [f"{s}_addr={self.addr(s)}" for s in STAGES])
            self._wait_ready("gateway", deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop_process(self, name: str, timeout: float | None = None) -> None:
        """SIGTERM one process (it drains), SIGKILL it if it does not exit in time."""
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout or self.config.stop_timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("process_killed", stage=name, pid=proc.pid)
            proc.kill()
            proc.wait()
        log.info("process_stopped", stage=name, status=proc.returncode)

    def stop(self) -> None:
        """Stop the gateway first (no new requests), then the stages."""
        for name in ("gateway", *STAGES):
            self.stop_process(name)
        for fh in self._logs:
            fh.close()
        self._logs.clear()

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def health_status(addr: str, timeout: float = 1.0, service: str = "") -> str:
    """The health status name of the server at ``addr`` (``UNREACHABLE`` when it does not answer)."""
    with grpc.insecure_channel(addr) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=timeout)
        except grpc.RpcError:
            return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    """Run the cluster in the foreground until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description="Start recall, rank, rerank and the gateway from a snapshot")
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
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        cluster.start()
    except (SnapshotError, ValueError, RuntimeError, TimeoutError) as exc:
        print(f"cluster: cannot start: {exc}", file=sys.stderr)
        return 2
    print(f"cluster ready: gateway {cluster.gateway_addr} "
          f"({', '.join(f'{s} {cluster.addr(s)}' for s in STAGES)}); logs in {cluster.run_dir}; Ctrl-C stops",
          flush=True)
    try:
        while not stop.wait(0.5):
            for name, proc in cluster.procs.items():
                if proc.poll() is not None and not getattr(proc, "_reported", False):
                    proc._reported = True
                    log.error("process_exited", stage=name, status=proc.returncode,
                              log=str(cluster.run_dir / f"{name}.log"))
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
