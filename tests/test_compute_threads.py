"""common.compute_threads: a server process runs its BLAS on server.compute_threads threads, whatever the
environment it was started with (OPENBLAS_NUM_THREADS=2 here, as on any machine with two cores)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# a child process: the limit is process-wide, and the pool size is read when numpy loads
SCRIPT = r"""
import io, json, sys
from dataclasses import dataclass, field
import numpy as np
from common import compute_threads
from common.server import ServerOptions, load_server

assert compute_threads.current().get("openblas") == 2, compute_threads.current()

@dataclass
class Config:
    snapshot: str = ""
    server: ServerOptions = field(default_factory=ServerOptions)

    def validate(self):
        self.server.validate()

loaded = load_server("t", Config, sys.argv[1:], "test", lambda config, log: [])
assert not isinstance(loaded, int), loaded
config = loaded[0]
assert compute_threads.current()["openblas"] == config.server.compute_threads, compute_threads.current()
print(config.server.compute_threads)
"""


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2", "RECSYS_LOG_LEVEL": "error"}
    return subprocess.run([sys.executable, "-c", SCRIPT, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_server_start_caps_blas_threads():
    result = _run()
    assert result.returncode == 0 and result.stdout.strip() == "1", result.stderr


def test_compute_threads_is_configurable_and_validated():
    assert _run("--set", "server.compute_threads=2").stdout.strip() == "2"
    bad = _run("--set", "server.compute_threads=0")
    assert bad.returncode != 0 and "server.compute_threads must be >= 1" in bad.stdout + bad.stderr
