"""py-spy every server process while one rate runs, and name the costliest places (``--profile``)."""
from __future__ import annotations

import sys
from pathlib import Path

from cluster.launcher import Cluster


def start_profilers(cluster: Cluster, duration_s: float, out_dir: Path) -> dict:
    """Sample every server with py-spy (``pip install py-spy``) while load runs; collapsed stacks per stage."""
    import shutil
    import subprocess

    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        return {}
    procs = {}
    for name, proc in cluster.procs.items():
        out = out_dir / f"profile-{name}.txt"
        procs[name] = (subprocess.Popen([exe, "record", "--pid", str(proc.pid), "--duration", str(int(duration_s)),
                                         "--format", "raw", "--rate", "200", "--output", str(out), "--nonblocking"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out)
    return procs


_IDLE = ("_serve (grpc/_server.py", "_blocking (grpc/_channel.py", "wait (threading.py", "_worker (concurrent",
         "select (", "poll (")  # a thread parked in one of these is waiting, not working
_OURS = ("common/", "kernels/", "recall_server/", "rank_server/", "rerank_server/", "gateway/", "export/")


def top_costs(profilers: dict, n: int = 3) -> dict:
    """Wait for the profilers; per stage, the ``n`` costliest places while busy.

    Idle samples (threads waiting in gRPC's completion queue or on a stage reply) are dropped. Each
    busy sample is charged to the deepest frame of this project's code and the library call under
    it, e.g. ``rank (rank_server/rank.py:65) > Session.run``: that names what to change.
    """
    out = {}
    for name, (proc, path) in profilers.items():
        proc.wait(timeout=120)
        counts: dict[str, int] = {}
        busy = idle = 0
        for line in path.read_text().splitlines() if path.exists() else []:
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            if any(marker in frames[-1] for marker in _IDLE):
                idle += int(count)
                continue
            busy += int(count)
            ours = [i for i, f in enumerate(frames) if any(f"({p}" in f for p in _OURS)]
            if ours:
                i = ours[-1]
                key = frames[i] + (f" > {frames[-1].split(' (')[0]}" if i < len(frames) - 1 else "")
            else:
                key = "grpc/runtime: " + frames[-1]
            counts[key] = counts.get(key, 0) + int(count)
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
        out[name] = {"busy_samples": busy, "idle_samples": idle,
                     "top": [{"where": k, "share_of_busy": round(c / max(busy, 1), 3)} for k, c in top],
                     "collapsed_stacks": str(path)}
    return out
