"""The cluster command: starts all four servers, reports ready, and leaves no process behind on SIGTERM/SIGINT."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cluster_command_stops_everything(snapshot_root, tmp_path, signum):
    proc = subprocess.Popen([sys.executable, "-m", "cluster.launcher", "--snapshot", str(snapshot_root),
                             "--gateway-port", "0", "--set", f"run_dir={tmp_path}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = proc.stdout.readline()
        assert "cluster ready" in ready, proc.stderr.read()
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == 0
        pids = [json.loads(line)["pid"] for line in proc.stderr.read().splitlines()
                if line.startswith("{") and '"process_started"' in line]
        assert len(pids) == 4  # the default topology: recall, rank, rerank and the gateway, one process each
        time.sleep(0.2)
        assert not [pid for pid in pids if _alive(pid)], "orphaned server processes"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cluster_command_without_snapshot_fails_clearly(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cluster.launcher", "--snapshot", str(tmp_path / "none")],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "cannot start" in result.stderr and "Traceback" not in result.stderr


def test_export_bad_config_is_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "export", "--out", str(tmp_path), "--set", "holdout_frac=2"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "holdout_frac" in result.stderr and "Traceback" not in result.stderr


def test_servers_exit_when_the_launcher_is_killed(snapshot_root, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "cluster.launcher", "--snapshot", str(snapshot_root),
                             "--gateway-port", "0", "--set", f"run_dir={tmp_path}",
                             "--set", "local_stages=[]", "--set", "replicas={}"],  # the remote topology
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "cluster ready" in proc.stdout.readline()
        pids = [_pid_of(tmp_path, name) for name in ("recall", "rank", "rerank", "gateway")]
        proc.kill()  # no chance to clean up: the servers' parent-death signal must do it
        proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and [pid for pid in pids if _alive(pid)]:
            time.sleep(0.2)
        assert not [pid for pid in pids if _alive(pid)], "servers outlived a killed launcher"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _pid_of(run_dir: Path, name: str) -> int:
    """The pid a server logged in its own log file when it started listening."""
    for line in (run_dir / f"{name}.log").read_text().splitlines():
        if '"server_started"' in line:
            return json.loads(line)["pid"]
    raise AssertionError(f"{name} never logged server_started")
