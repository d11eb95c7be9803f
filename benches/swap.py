"""Snapshot swaps under load: ``python -m benches.swap --snapshot ROOT`` (issue 27 item 2).

Starts the cluster on a private copy of ROOT's current version, finds the saturation rate with a short
open-loop sweep (or takes ``--rate``), then offers half of it open loop (``benches.loadgen``) for
``--requests`` requests at the production deadline while CURRENT is flipped ``--swaps`` times to new
versions (copies made before the load starts, so the copy's disk work is not in the measurement). Every
server reloads as it would in production: it polls CURRENT, loads and warms the new version beside the
live one and switches.

Each request is classed by when it was scheduled: **before** the first flip, **during** a swap (from a
flip until ``--settle-s`` after the gateway's switch: the stages load and switch first, the gateway
last), or **after** (the rest). For each class it prints sent, failed, degraded, late and the
latency percentiles. For each swap it prints the servers' reload events (``snapshot_loaded``,
``snapshot_reloaded``, ``heap_frozen``, ``snapshot_retired``, ``snapshot_closed``) against the flip,
and the slowest requests of the swap window with the event each one overlapped; and requests by whether a
stage's load or a heap freeze ran while they did: what the tail of a swap is made of. The JSON report
(``--out``) holds every sample and event.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benches.loadgen import Sample, percentiles, run_rate, run_schedule
from benches.peers import machine_info
from benches.reload_stall import publish_copies
from benches.report import save_json
from cluster.launcher import Cluster, ClusterConfig
from common.snapshot import Snapshot, SnapshotError, flip_current

EVENTS = ("snapshot_staged", "snapshot_loaded", "snapshot_reloaded", "heap_frozen", "snapshot_closed",
          "snapshot_retired", "snapshot_retained")


def find_saturation(addr: str, users: list[str], rates: list[float], seconds: float, k: int,
                    deadline_ms: int) -> tuple[float, list[dict]]:
    """The highest of ``rates`` served in full (goodput >= 95% of offered, no errors), as
    ``benches.latency.saturation_rate`` reads a sweep; stops at the first rate that is not."""
    sweep = []
    for rate in rates:
        summary = run_rate(addr, users, rate, seconds, k, deadline_ms).summary()
        sweep.append(summary)
        print(f"  saturation sweep {rate:>5.0f}/s: goodput {summary['goodput']:.1f}, errors "
              f"{summary['error_count']}, p99 {summary['latency_ms'].get('p99', float('nan')):.1f} ms", flush=True)
        if summary["goodput"] < 0.95 * rate or summary["error_count"]:
            break
        time.sleep(1.0)  # let admission control's window forget the step
    served = [s["offered_rate"] for s in sweep if s["goodput"] >= 0.95 * s["offered_rate"] and not s["error_count"]]
    return (max(served) if served else rates[0]), sweep


def read_events(run_dir: Path) -> list[dict]:
    """Every reload event of every server log in ``run_dir``, in time order, with the worker's name."""
    out = []
    for log in sorted(run_dir.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") in EVENTS:
                out.append({"worker": log.stem, **record})
    return sorted(out, key=lambda r: r["ts"])


def classify(samples: list[Sample], start_wall: float, flips: list[tuple[float, str]], events: list[dict],
             settle_s: float) -> tuple[list[str], list[tuple[float, float]]]:
    """Each sample's class ("before", "during", "after") and the swap windows (wall-clock start, end):
    a window runs from a flip until ``settle_s`` after the gateway switched to that flip's version."""
    windows = []
    for flip_at, version in flips:
        switched = [e["ts"] for e in events if e["worker"] == "gateway" and e["event"] == "snapshot_reloaded"
                    and e.get("version") == version]
        windows.append((flip_at, (switched[0] if switched else flip_at) + settle_s))
    first = flips[0][0] if flips else float("inf")
    classes = []
    for s in samples:
        at = start_wall + s.at_s
        if any(a <= at < b for a, b in windows):
            classes.append("during")
        else:
            classes.append("before" if at < first else "after")
    return classes, windows


def summarize(samples: list[Sample], deadline_ms: float) -> dict:
    ok = [s for s in samples if s.status == "OK"]
    failed: dict[str, int] = {}
    for s in samples:
        if s.status != "OK":
            failed[s.status] = failed.get(s.status, 0) + 1
    degraded: dict[str, int] = {}
    for s in ok:
        for stage in s.degraded:
            degraded[stage] = degraded.get(stage, 0) + 1
    return {"sent": len(samples), "failed": sum(failed.values()), "failed_by_status": failed,
            "degraded": sum(1 for s in ok if s.degraded), "degraded_by_stage": degraded,
            "late": sum(1 for s in ok if not s.degraded and s.ms > deadline_ms),
            "latency_ms": percentiles([s.ms for s in ok])}


BINS_S = (-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0)


def around_switch(samples: list[Sample], start_wall: float, flips: list[tuple[float, str]], events: list[dict],
                  deadline_ms: float) -> list[dict]:
    """Requests by when they were sent relative to the gateway's switch to a new version, over every swap:
    where in a swap the tail sits (the stages load and switch before the gateway, which switches last)."""
    switches = [e["ts"] for e in events if e["worker"] == "gateway" and e["event"] == "snapshot_reloaded"
                and e.get("version") in {v for _, v in flips}]
    rows = []
    for lo, hi in zip(BINS_S, BINS_S[1:]):
        inside = [s for s in samples if any(lo <= start_wall + s.at_s - t < hi for t in switches)]
        rows.append({"from_s": lo, "to_s": hi, **summarize(inside, deadline_ms)})
    return rows


def overlapping(samples: list[Sample], start_wall: float, events: list[dict], deadline_ms: float) -> dict:
    """Requests by what of a reload ran while they did: a stage server's load (``snapshot_reloaded`` minus
    its ``ms``: verify, load, self-test), a heap freeze at a switch (``heap_frozen`` after start-up), or
    neither. Which part of a swap the degraded requests overlap names what costs the tail."""
    loads = [(e["ts"] - e["ms"] / 1e3, e["ts"]) for e in events
             if e["event"] == "snapshot_reloaded" and e["worker"] != "gateway"]
    started = {e["worker"]: e["ts"] for e in reversed(events) if e["event"] == "heap_frozen"}  # the first each
    freezes = [(e["ts"] - e["ms"] / 1e3, e["ts"]) for e in events
               if e["event"] == "heap_frozen" and e["ts"] > started[e["worker"]]]
    classes: dict[str, list[Sample]] = {"a_stage_load": [], "a_heap_freeze": [], "neither": []}
    for s in samples:
        a = start_wall + s.at_s
        b = a + s.ms / 1e3
        if any(x < b and a < y for x, y in freezes):
            classes["a_heap_freeze"].append(s)
        elif any(x < b and a < y for x, y in loads):
            classes["a_stage_load"].append(s)
        else:
            classes["neither"].append(s)
    return {name: summarize(group, deadline_ms) for name, group in classes.items()}


def nearest_event(at: float, events: list[dict]) -> str:
    """The reload event nearest before ``at`` (wall clock), as ``worker:event +ms``."""
    before = [e for e in events if e["ts"] <= at]
    if not before:
        return "-"
    e = before[-1]
    return f"{e['worker']}:{e['event']} +{(at - e['ts']) * 1e3:.0f}ms"


def run(args) -> int:
    source = Path(args.snapshot)
    try:
        snapshot = Snapshot.open(source, verify=False)
    except SnapshotError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    users = snapshot.features.array("user_ids").tolist()
    overrides: dict[str, list[str]] = {"gateway": [f"deadline_ms={args.deadline_ms}"]}
    for item in args.set:  # STAGE:key=value
        stage, sep, setting = item.partition(":")
        if not sep or "=" not in setting:
            print(f"bench: --set wants STAGE:key=value, got '{item}'", file=sys.stderr)
            return 2
        overrides.setdefault(stage, []).append(setting)
    work = Path(tempfile.mkdtemp(prefix="recsys-swap-bench-"))
    try:
        root, versions = publish_copies(source, args.swaps, work, suffix="swap")
        config = ClusterConfig(snapshot=str(root), gateway_port=0, run_dir=str(work / "run"), overrides=overrides)
        with Cluster(config) as cluster:
            addr = cluster.gateway_target
            run_rate(addr, users, 50.0, args.warmup / 50.0, args.k, args.deadline_ms)   # first calls, JIT
            if args.rate:
                rate, sweep = args.rate, []
            else:
                saturation, sweep = find_saturation(addr, users, [float(r) for r in args.sweep.split(",")],
                                                    args.sweep_s, args.k, args.deadline_ms)
                rate = args.fraction * saturation
                time.sleep(2.0)
            duration = args.requests / rate
            print(f"offering {rate:.0f} req/s for {duration:.0f} s ({args.requests} requests), "
                  f"{args.swaps} swaps", flush=True)
            started = threading.Event()
            start_wall = [0.0]
            flips: list[tuple[float, str]] = []

            def first_send(i: int, n: int) -> None:
                if i == 1:  # the request scheduled at offset 0 has just been sent
                    start_wall[0] = time.time()
                    started.set()

            def flipper() -> None:
                started.wait()
                for j, version in enumerate(versions[1:], 1):
                    at = start_wall[0] + duration * j / (args.swaps + 1)
                    time.sleep(max(0.0, at - time.time()))
                    flip_current(root, version)
                    flips.append((time.time(), version))

            thread = threading.Thread(target=flipper, daemon=True)
            thread.start()
            result = run_schedule(addr, users, [(rate, duration)], args.k, args.deadline_ms, progress=first_send)[0]
            thread.join()
            time.sleep(args.settle_s + 1.0)
            events = read_events(cluster.run_dir)
        samples = sorted(result.samples, key=lambda s: s.at_s)
        classes, windows = classify(samples, start_wall[0], flips, events, args.settle_s)
        report = {"machine": machine_info(), "snapshot": str(source), "snapshot_version": versions[0],
                  "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "config": {"requests": args.requests, "rate": rate, "deadline_ms": args.deadline_ms, "k": args.k,
                             "swaps": args.swaps, "settle_s": args.settle_s, "overrides": overrides},
                  "saturation_sweep": sweep, "all": summarize(samples, args.deadline_ms)}
        for name in ("before", "during", "after"):
            report[name] = summarize([s for s, c in zip(samples, classes) if c == name], args.deadline_ms)
        report["swaps"] = []
        for (flip_at, version), (a, b) in zip(flips, windows):
            inside = [s for s in samples if a <= start_wall[0] + s.at_s < b]
            swap_events = [e for e in events if a <= e["ts"] < b]
            slow = sorted(inside, key=lambda s: -s.ms)[:args.show]
            report["swaps"].append({
                "version": version, "window_s": round(b - a, 2), **summarize(inside, args.deadline_ms),
                "events": [{"worker": e["worker"], "event": e["event"], "after_flip_ms": round((e["ts"] - a) * 1e3),
                            **{k: e[k] for k in ("ms", "objects") if k in e}} for e in swap_events],
                "slowest": [{"after_flip_ms": round((start_wall[0] + s.at_s - a) * 1e3), "ms": round(s.ms, 1),
                             "status": s.status, "degraded": list(s.degraded),
                             "last_event": nearest_event(start_wall[0] + s.at_s + s.ms / 1e3, events)}
                            for s in slow]})
        report["around_switch"] = around_switch(samples, start_wall[0], flips, events, args.deadline_ms)
        report["overlapping"] = overlapping(samples, start_wall[0], events, args.deadline_ms)
        report["start_wall"] = start_wall[0]
        report["samples"] = [[round(s.at_s, 4), round(s.ms, 2), s.status, list(s.degraded)] for s in samples]
        report["events"] = events
        print_report(report)
        save_json(report, args.out)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_report(report: dict) -> None:
    cfg = report["config"]
    print(f"\n{cfg['requests']} requests at {cfg['rate']:.0f} req/s, deadline {cfg['deadline_ms']} ms, "
          f"{cfg['swaps']} swaps (window: flip to gateway switch + {cfg['settle_s']} s)")
    print(f"  {'':>7} {'sent':>6} {'failed':>6} {'degr':>5} {'late':>5} {'p50':>7} {'p99':>7} {'p99.9':>7} {'max':>7}")
    for name in ("all", "before", "during", "after"):
        r = report[name]
        lat = r["latency_ms"] or {}
        print(f"  {name:>7} {r['sent']:>6} {r['failed']:>6} {r['degraded']:>5} {r['late']:>5} "
              f"{lat.get('p50', np.nan):>7.1f} {lat.get('p99', np.nan):>7.1f} {lat.get('p99.9', np.nan):>7.1f} "
              f"{lat.get('max', np.nan):>7.1f}"
              + (f"  failed {r['failed_by_status']}" if r["failed"] else "")
              + (f"  degraded {r['degraded_by_stage']}" if r["degraded"] else ""))
    print("by send time relative to the gateway's switch, all swaps together (s):")
    for r in report["around_switch"]:
        lat = r["latency_ms"] or {}
        print(f"  [{r['from_s']:+.1f}, {r['to_s']:+.1f}) {r['sent']:>5} sent {r['failed']:>3} failed {r['degraded']:>3} "
              f"degraded  p50 {lat.get('p50', np.nan):6.1f}  p99 {lat.get('p99', np.nan):6.1f}  max "
              f"{lat.get('max', np.nan):6.1f}")
    print("by what of a reload ran while a request did:")
    for name, r in report["overlapping"].items():
        lat = r["latency_ms"] or {}
        print(f"  {name:<14} {r['sent']:>6} sent {r['failed']:>4} failed {r['degraded']:>5} degraded  "
              f"p99 {lat.get('p99', np.nan):6.1f}")
    for i, swap in enumerate(report["swaps"], 1):
        lat = swap["latency_ms"] or {}
        print(f"swap {i} ({swap['version']}): window {swap['window_s']} s, {swap['sent']} sent, {swap['failed']} "
              f"failed, {swap['degraded']} degraded, p99 {lat.get('p99', np.nan):.1f} ms, max "
              f"{lat.get('max', np.nan):.1f} ms")
        print("   events: " + ", ".join(
            f"{e['worker']}:{e['event']}@{e['after_flip_ms']}" + (f"({e['ms']}ms)" if "ms" in e else "")
            for e in swap["events"]))
        print("   slowest: " + ", ".join(f"{s['ms']}ms@{s['after_flip_ms']}"
                                        + (f"[{s['status']}]" if s["status"] != "OK" else "")
                                        + (f"{s['degraded']}" if s["degraded"] else "") + f" ({s['last_event']})"
                                        for s in swap["slowest"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benches.swap", description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", default="snapshots", help="snapshot root whose current version is served")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--swaps", type=int, default=4, help="snapshot swaps, evenly spread over the load")
    parser.add_argument("--rate", type=float, default=0.0, help="req/s to offer (default: --fraction of the "
                                                                "saturation rate the sweep finds)")
    parser.add_argument("--fraction", type=float, default=0.5, help="of the saturation rate")
    parser.add_argument("--sweep", default="40,60,80,100,120,140,160,200", help="rates tried for saturation")
    parser.add_argument("--sweep-s", type=float, default=4.0, help="seconds per sweep rate")
    parser.add_argument("--warmup", type=int, default=200, help="requests before anything is measured")
    parser.add_argument("--settle-s", type=float, default=2.0, help="a swap window ends this long after the "
                                                                     "gateway's switch")
    parser.add_argument("--deadline-ms", type=int, default=50)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--show", type=int, default=8, help="slowest requests listed per swap")
    parser.add_argument("--set", action="append", default=[], metavar="STAGE:KEY=VALUE")
    parser.add_argument("--out", help="JSON report path")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except (RuntimeError, TimeoutError) as exc:  # a server could not start: its log tail is in the message
        print(f"bench: cannot start the cluster: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
