"""What a hot reload costs the requests of the server doing it: ``python -m benches.reload_stall``.

One stage server's servicer (recall, rank or rerank) runs in a child process as in a server: its heap
frozen, its reloader's watcher thread polling CURRENT. A serving thread calls the stage's own hot path
(``recall``, ``rank`` over 1,000 candidates, ``rerank`` of 200) every 10 ms and a sleeper thread wakes every
1 ms, while CURRENT is flipped to a new version every few seconds. For calls inside a swap (from the flip
until 0.5 s after the switch) and outside it, it reports call latency and the sleeper's longest wake-up
delay: how long a thread that wants the GIL (and a core) waits while the reload runs.

``--modes`` compares the reloader as it is (``now``) with the reloader before issue 27's swap work
(``full``: a full collection of the frozen heap at each switch), each in its own child process, in turn,
so both see the same machine. The numbers of the swap-tail
report (docs/results/2026-12-06-swap-tail.md) come from it.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benches.loadgen import percentiles
from common.snapshot import MANIFEST, current_version, flip_current

MODES = ("now", "full")


def publish_copies(source_root: Path, n: int, into: Path, suffix: str = "r") -> tuple[Path, list[str]]:
    """A root under ``into`` with the source's current version and ``n`` renamed copies of it (each a valid
    version: the manifest's hashes do not cover the manifest itself), named ``<version>-<suffix><i>``;
    CURRENT names the first. Returns the root and the versions in swap order."""
    version = current_version(source_root)
    root = into / "snapshots"
    root.mkdir(parents=True)
    shutil.copytree(source_root / version, root / version)
    versions = [version]
    for i in range(1, n + 1):
        name = f"{version}-{suffix}{i}"
        shutil.copytree(root / version, root / name)
        manifest = json.loads((root / name / MANIFEST).read_text())
        manifest["version"] = name
        (root / name / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        versions.append(name)
    flip_current(root, version)
    return root, versions


def hot_path(stage: str, root: Path):
    """(servicer, call(state)) for ``stage`` on ``root``: the plain function its gRPC method runs."""
    from common.config import load_config
    from common.log import Logger

    log = Logger(stage, stream=io.StringIO())   # the child reads the reloader's events back from it
    args = [f"snapshot={root}", "reload_poll_s=0.1"]
    rng = np.random.default_rng(0)
    if stage == "recall":
        from recall_server.config import RecallConfig
        from recall_server.recall import recall
        from recall_server.server import RecallServicer
        config = load_config(RecallConfig, None, args)
        servicer = RecallServicer(config, log)
        users = servicer.reloader.current.snapshot.features.array("user_ids")
        return servicer, lambda state: recall(state, config, str(users[rng.integers(users.size)]), config.default_n)
    if stage == "rank":
        from rank_server.config import RankConfig
        from rank_server.rank import rank
        from rank_server.server import RankServicer
        config = load_config(RankConfig, None, args)
        servicer = RankServicer(config, log)
        users = servicer.reloader.current.snapshot.features.array("user_ids")
        n_items = servicer.reloader.current.items.n_items
        return servicer, lambda state: rank(state, config, str(users[rng.integers(users.size)]),
                                            rng.choice(n_items, min(1000, n_items), replace=False).astype(np.int32), 0)
    from rerank_server.config import RerankConfig
    from rerank_server.rerank import rerank, resolve_params
    from rerank_server.server import RerankServicer
    config = load_config(RerankConfig, None, args)
    servicer = RerankServicer(config, log)

    def call(state):
        n = state.item_emb.shape[0]
        idx = rng.choice(n, min(200, n), replace=False).astype(np.int32)
        scores = np.sort(rng.random(idx.size).astype(np.float32))[::-1].copy()
        rerank(state.item_emb, idx, scores, 20, resolve_params(state.config, state.config.method), state.items,
               servicer.rules)
    return servicer, call


def child(stage: str, mode: str, root: Path, versions: list[str], every_s: float) -> dict:
    """Serve and swap through ``versions`` in this process; per-call and per-wake-up records, and events."""
    from common import heap
    from common import reload as reload_module

    if mode == "full":   # the reloader before issue 27: a full collection of the frozen heap at each switch
        reload_module.heap.freeze_new = heap.refreeze
    servicer, call = hot_path(stage, root)
    reloader = servicer.reloader
    for _ in range(50):
        call(reloader.current)
    heap.freeze(servicer.log)
    calls, wakes = [], []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            t0 = time.perf_counter()
            call(reloader.current)
            calls.append((time.time(), (time.perf_counter() - t0) * 1e3))
            time.sleep(0.01)

    def sleeper():
        while not stop.is_set():
            t0 = time.perf_counter()
            time.sleep(0.001)
            wakes.append((time.time(), (time.perf_counter() - t0) * 1e3 - 1.0))

    threads = [threading.Thread(target=serve), threading.Thread(target=sleeper)]
    for thread in threads:
        thread.start()
    reloader.start()
    flips = []
    try:
        time.sleep(every_s)
        for version in versions[1:]:
            flips.append((time.time(), version))
            flip_current(root, version)
            time.sleep(every_s)
    finally:
        stop.set()
        reloader.stop()
        for thread in threads:
            thread.join()
    events = [json.loads(line) for line in servicer.log.stream.getvalue().splitlines() if line.startswith("{")]
    return {"calls": calls, "wakes": wakes, "flips": flips, "events": events}


def windows(run: dict, settle_s: float) -> list[tuple[float, float]]:
    """Each swap's window (wall clock): its flip until ``settle_s`` after the switch."""
    switched = {e["version"]: e["ts"] for e in run["events"] if e["event"] == "snapshot_reloaded"}
    return [(at, switched.get(version, at) + settle_s) for at, version in run["flips"]]


def split(records: list, spans: list[tuple[float, float]], margin_s: float) -> tuple[list[float], list[float]]:
    """Values inside a span, and values at least ``margin_s`` away from every span."""
    inside, outside = [], []
    for at, value in records:
        if any(a <= at < b for a, b in spans):
            inside.append(value)
        elif all(at < a - margin_s or at >= b + margin_s for a, b in spans):
            outside.append(value)
    return inside, outside


def summarize(runs: list[dict], settle_s: float) -> dict:
    calls_in, calls_out, wakes_in, wakes_out, frozen = [], [], [], [], []
    for run in runs:
        spans = windows(run, settle_s)
        a, b = split(run["calls"], spans, 1.0)
        calls_in += a
        calls_out += b
        a, b = split(run["wakes"], spans, 1.0)
        wakes_in += a
        wakes_out += b
        frozen += [e["ms"] for e in run["events"] if e["event"] == "heap_frozen"][1:]   # [0]: start-up
    return {"calls_in_swap_ms": percentiles(calls_in), "calls_outside_ms": percentiles(calls_out),
            "wake_delay_in_swap_ms": percentiles(wakes_in), "wake_delay_outside_ms": percentiles(wakes_out),
            "heap_frozen_ms": percentiles(frozen), "swaps": sum(len(r["flips"]) for r in runs)}


def run(args) -> int:
    stages = args.stages.split(",")
    modes = args.modes.split(",")
    report = {"config": vars(args), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "stages": {}}
    work = Path(tempfile.mkdtemp(prefix="recsys-reload-stall-"))
    try:
        for stage in stages:
            runs: dict[str, list[dict]] = {mode: [] for mode in modes}
            for rep in range(args.repeats):
                for mode in modes[rep % len(modes):] + modes[:rep % len(modes)]:   # each mode first in turn
                    out = work / f"{stage}-{mode}-{rep}.json"
                    result = subprocess.run([sys.executable, "-m", "benches.reload_stall", "--child", stage, mode,
                                             str(args.snapshot), str(args.swaps), str(args.every_s), str(out)],
                                            capture_output=True, text=True)
                    if result.returncode != 0:
                        print(result.stderr[-3000:], file=sys.stderr)
                        return 1
                    runs[mode].append(json.loads(out.read_text()))
            report["stages"][stage] = {mode: summarize(runs[mode], args.settle_s) for mode in modes}
            print_stage(stage, report["stages"][stage])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        from benches.report import save_json
        save_json(report, args.out)
    return 0


def print_stage(stage: str, by_mode: dict) -> None:
    print(f"{stage}: calls of the hot path, and a 1 ms sleeper's wake-up delay, inside swaps and away from them (ms)")
    for mode, s in by_mode.items():
        for key, label in (("calls_outside_ms", "calls outside"), ("calls_in_swap_ms", "calls in swap"),
                           ("wake_delay_outside_ms", "wake outside"), ("wake_delay_in_swap_ms", "wake in swap")):
            p = s[key] or {}
            print(f"  {mode:>4} {label:<14} p50 {p.get('p50', np.nan):7.2f}  p99 {p.get('p99', np.nan):7.2f}  "
                  f"max {p.get('max', np.nan):7.1f}")
        f = s["heap_frozen_ms"] or {}
        print(f"  {mode:>4} heap freeze at the switch (wall): p50 {f.get('p50', np.nan):.1f}  max "
              f"{f.get('max', np.nan):.1f} ms over {s['swaps']} swaps")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        stage, mode, source, swaps, every_s, out = argv[1:7]
        with tempfile.TemporaryDirectory(prefix="recsys-reload-stall-") as tmp:
            root, versions = publish_copies(Path(source), int(swaps), Path(tmp))
            Path(out).write_text(json.dumps(child(stage, mode, root, versions, float(every_s))))
        return 0
    parser = argparse.ArgumentParser(prog="python -m benches.reload_stall", description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", default="snapshots", help="snapshot root whose current version is copied")
    parser.add_argument("--stages", default="recall,rank,rerank")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="now (this reloader), full (a full collection at each switch, before issue 27)")
    parser.add_argument("--swaps", type=int, default=4, help="swaps per child process")
    parser.add_argument("--repeats", type=int, default=2, help="child processes per stage and mode, alternating")
    parser.add_argument("--every-s", type=float, default=2.0, help="seconds between flips")
    parser.add_argument("--settle-s", type=float, default=0.5, help="a swap window ends this long after the switch")
    parser.add_argument("--out", help="JSON report path")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
