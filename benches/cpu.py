"""CPU time of server processes, read from ``/proc/<pid>/stat`` (Linux): what one request costs in CPU.

Latency on a shared machine is noisy; CPU-ms per request is what sets the saturation rate (2 cores
give 2,000 CPU-ms per second), and it is much steadier under noise.
"""
from __future__ import annotations

import os
from pathlib import Path

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (all its threads); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * _TICK_S


class CpuMeter:
    """CPU milliseconds a set of processes used between ``start`` and ``stop``."""

    def __init__(self, pids: dict[str, int]):
        self.pids = dict(pids)
        self._start: dict[str, float] = {}

    def start(self) -> None:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        """CPU ms per process since ``start`` (and ``total``)."""
        used = {name: (cpu_seconds(pid) - self._start[name]) * 1000.0 for name, pid in self.pids.items()}
        used["total"] = sum(used.values())
        return used
