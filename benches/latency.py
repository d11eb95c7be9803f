"""Latency benchmark: ``python -m benches.latency`` (``make bench``).

Builds or reuses a snapshot, starts the cluster, warms it, then drives the gateway open-loop
(``benches.loadgen``) over a sweep of request rates, counting good replies (not degraded, within the
deadline), degraded, late and failed ones separately, goodput, and the cluster's CPU-ms per request
(``benches.cpu``). In the same run: the gRPC echo floor (``benches.echo``), 2× and 3× the
saturation rate with Health/Check latency and the recovery after it (``benches.overload``), the
in-process funnel on the cluster's own code path (``benches.funnel``), optional py-spy profiles
(``benches.profiles``) and component peers (``benches.peers``). Writes a JSON report, prints
a table (``benches.report``), plots latency and goodput against offered rate when matplotlib is
installed. ``python -m benches.latency compare A.json B.json`` prints the ratios of two reports.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common.snapshot import Snapshot, SnapshotError
from export.__main__ import ensure_snapshot, synthetic_root
from benches.cpu import CpuMeter
from benches.report import compare, plot, print_table, progress_bar
from cluster.launcher import STAGES, Cluster, ClusterConfig
from benches.loadgen import run_rate


def saturation_rate(rates: list[dict]) -> float:
    """The highest swept rate still served in full: goodput >= 95% of offered and no errors (else the lowest)."""
    served = [r["offered_rate"] for r in rates if r["goodput"] >= 0.95 * r["offered_rate"] and not r["error_count"]]
    return max(served) if served else rates[0]["offered_rate"]


def targets(report: dict) -> dict:
    """The issue's targets, read off this run (each against this run's own baselines)."""
    rates = report["rates"]
    fast = [r["offered_rate"] for r in rates if r["latency_ms"] and r["latency_ms"]["p99"] <= 25.0
            and r["degraded_replies"] == 0 and r["error_count"] == 0 and r["late"] == 0]
    out = {"highest_rate_p99_le_25ms_0_degraded": max(fast) if fast else None}
    at100 = next((r for r in rates if r["offered_rate"] == 100), None)
    inproc = report.get("in_process_funnel")
    if at100 and at100["latency_ms"] and inproc:
        out["cluster_p50_over_in_process_p50_at_100"] = at100["latency_ms"]["p50"] / inproc["total"]["p50"]
        if at100.get("net_cpu_ms_per_ok_request"):
            out["cluster_cpu_ms_over_in_process_cpu_ms_at_100"] = (at100["net_cpu_ms_per_ok_request"]
                                                                   / inproc["cpu_ms_per_request"])
    overload = report.get("overload", [])
    if overload:
        peak = max(r["goodput"] for r in rates)
        out["overload"] = [{"factor": o["factor"],
                            "replies_after_deadline_plus_5ms": o["overload"]["late_over_deadline_plus_5ms"],
                            "goodput_over_peak": o["overload"]["goodput"] / peak if peak else None,
                            "recovered_after_s": o["recovered_after_s"],
                            "health_check_p99_ms": o["health_check_ms"].get("p99")} for o in overload]
    return out


def run(args) -> int:
    if args.synthetic and args.snapshot is None:
        args.snapshot = synthetic_root(args.synthetic)  # one root per catalogue size, reused by later runs
    root = Path(args.snapshot or "snapshots")
    if not ensure_snapshot(str(root), quick=args.quick, synthetic=args.synthetic):
        return 2
    try:
        snapshot = Snapshot.open(root, verify=False)
    except SnapshotError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    from benches.echo import measure as echo_floor
    from benches.funnel import in_process_funnel
    from benches.overload import burst, overload_and_recovery
    from benches.peers import ann_vs_exact, kernel_peers, machine_info
    from benches.profiles import start_profilers, top_costs

    users = snapshot.features.array("user_ids").tolist()
    rates = [float(r) for r in args.rates.split(",")]
    out = Path(args.out or f"reports/bench-{time.strftime('%Y%m%dT%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    defaults = ClusterConfig()
    replicas = json.loads(args.replicas) if args.replicas else defaults.replicas
    local_stages = ([] if args.local_stages == "none" else [s for s in args.local_stages.split(",") if s]
                    if args.local_stages is not None else defaults.local_stages)
    report = {"machine": machine_info(), "snapshot_version": snapshot.version, "snapshot": str(root),
              "dataset": snapshot.manifest.get("dataset", {}),
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "config": {"rates": rates, "duration_s": args.duration, "k": args.k, "deadline_ms": args.deadline_ms,
                         "warmup": args.warmup, "quick": args.quick, "replicas": replicas,
                         "local_stages": local_stages}, "rates": []}
    report["echo_floor"] = [echo_floor(kind, out.parent, calls=300 if args.quick else 2000) for kind in ("aio", "sync")]
    overrides: dict[str, list[str]] = {"gateway": [f"deadline_ms={args.deadline_ms}"]}
    for item in args.set:  # STAGE:key=value, e.g. gateway:admission.shed_fraction=0.5
        stage, sep, setting = item.partition(":")
        if not sep or "=" not in setting:
            print(f"bench: --set wants STAGE:key=value, got '{item}'", file=sys.stderr)
            return 2
        overrides.setdefault(stage, []).append(setting)
    report["config"]["overrides"] = overrides
    with Cluster(ClusterConfig(snapshot=str(root), gateway_port=0, overrides=overrides,
                               replicas=replicas, local_stages=local_stages)) as cluster:
        pids = {name: proc.pid for name, proc in cluster.procs.items()}
        run_rate(cluster.gateway_target, users, min(rates[0], 100.0), args.warmup / min(rates[0], 100.0), args.k,
                 args.deadline_ms)
        # what the idle cluster burns (health watches, reload polls, the gateway's lag probe): subtracted from
        # each rate's CPU to give the CPU-ms a request itself costs
        meter = CpuMeter(pids)
        meter.start()
        t0 = time.monotonic()
        time.sleep(1.0 if args.quick else 3.0)
        idle = meter.stop()
        idle_s = time.monotonic() - t0
        report["idle_cpu_ms_per_s"] = idle["total"] / idle_s
        report["idle_cpu_ms_per_s_by_process"] = {k: v / idle_s for k, v in idle.items()}
        for rate in rates:
            profilers = (start_profilers(cluster, args.duration, out.parent)
                         if args.profile and rate == args.profile_rate else {})
            meter = CpuMeter(pids)
            meter.start()
            t0 = time.monotonic()
            result = run_rate(cluster.gateway_target, users, rate, args.duration, args.k, args.deadline_ms,
                              progress=progress_bar(f"{rate:>5.0f}/s"))
            cpu = meter.stop()
            result.cpu_ms = cpu["total"]
            summary = result.summary()
            if summary["ok"]:
                idle_ms = report["idle_cpu_ms_per_s"] * (time.monotonic() - t0)
                summary["net_cpu_ms_per_ok_request"] = (cpu["total"] - idle_ms) / summary["ok"]
                # each process's own share, net of what it burns idle: where a request's CPU goes
                elapsed = time.monotonic() - t0
                summary["net_cpu_ms_per_ok_request_by_process"] = {
                    k: round((v - report["idle_cpu_ms_per_s_by_process"].get(k, 0.0) * elapsed) / summary["ok"], 3)
                    for k, v in cpu.items()}
            summary["cpu_ms_by_process"] = {k: round(v, 1) for k, v in cpu.items()}
            report["rates"].append(summary)
            if profilers:
                report["profile"] = {"rate": rate, "stages": top_costs(profilers)}
        if not args.no_overload:
            sat = saturation_rate(report["rates"])
            base = next((r for r in report["rates"] if r["offered_rate"] == 100), report["rates"][0])
            report["saturation_rate"] = sat
            # the sweep ends at its highest rate: let that queue drain and admission control's window (1 s)
            # forget it, or the 2x phase starts shedding for the last rate's sake (the 3x phase follows the
            # 2x phase's recovery at 100/s)
            time.sleep(1.0 if args.quick else 3.0)
            report["overload"] = overload_and_recovery(
                cluster.gateway_target, users, sat, base["latency_ms"].get("p99", args.deadline_ms), args.k,
                args.deadline_ms, pids, overload_s=2.0 if args.quick else 5.0,
                recovery_len_s=2.0 if args.quick else 4.0)
            time.sleep(1.0)  # let the recovery phase's last replies drain
            report["burst"] = burst(cluster.gateway_target, users, 300 if args.quick else 3000, args.k,
                                    args.deadline_ms)
    report["in_process_funnel"] = in_process_funnel(str(root), users, 100 if args.quick else 500, args.k,
                                                    args.deadline_ms, overrides)
    report["ann_vs_exact"] = ann_vs_exact(snapshot, users, n_queries=100 if args.quick else 300)
    if not args.quick and not args.no_kernels:
        report["kernels"] = kernel_peers()
        # said in the report itself, so no one reads these ratios as like for like
        report["kernels_note"] = ("speedup_vs_fast_numpy is like for like (benches.numpy_peers, checked equal to "
                                  "the kernels); speedup_vs_oracle is against kernels/reference.py, written for "
                                  "clarity not speed, and overstates the kernels' gain")
    report["targets"] = targets(report)
    out.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"report: {out}\nplot: {plot(report, out.with_suffix('.png'))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except (RuntimeError, TimeoutError) as exc:  # a server could not start: its log tail is in the message
        print(f"bench: cannot start the cluster: {exc}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "compare":
        if len(argv) != 3:
            print("usage: python -m benches.latency compare A.json B.json", file=sys.stderr)
            return 2
        return compare(argv[1], argv[2])
    parser = argparse.ArgumentParser(prog="python -m benches.latency", description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", help="snapshot root (default: snapshots, or snapshots-synthetic-N "
                                           "with --synthetic N)")
    parser.add_argument("--synthetic", type=int, metavar="N_ITEMS",
                        help="bench on a synthetic catalogue of N_ITEMS items (exported on first use)")
    parser.add_argument("--rates", default="50,100,200,300,400,500,600", help="comma-separated requests/s")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    parser.add_argument("--warmup", type=float, default=200, help="warm-up requests")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--deadline-ms", type=int, default=50)
    parser.add_argument("--replicas", help=f"JSON server → replica processes, e.g. '{{\"rank\": 2}}' "
                                           f"(gateway, {', '.join(STAGES)}; default: the launcher's)")
    parser.add_argument("--local-stages", metavar="STAGES",
                        help="comma-separated stages run inside the gateway process, or 'none': every stage a "
                             "server of its own (the remote topology, with e.g. --replicas '{}'); default: the "
                             "launcher's (ClusterConfig: none, the remote topology); co-located on 2 cores: "
                             "--local-stages recall,rank,rerank --replicas '{\"gateway\": 2}'")
    parser.add_argument("--set", action="append", default=[], metavar="STAGE:KEY=VALUE",
                        help="a server config override, e.g. gateway:admission.shed_fraction=0.5 (repeatable)")
    parser.add_argument("--no-kernels", action="store_true", help="skip the Numba kernels vs numpy table")
    parser.add_argument("--no-overload", action="store_true", help="skip the 2x / 3x overload and recovery runs")
    parser.add_argument("--out", help="report path (default reports/bench-<time>.json)")
    parser.add_argument("--profile", action="store_true", help="py-spy every server during --profile-rate")
    parser.add_argument("--profile-rate", type=float, default=100.0)
    parser.add_argument("--quick", action="store_true", help="smoke check: two short rates, under a minute")
    args = parser.parse_args(argv)
    if args.quick:
        args.rates, args.duration, args.warmup = "20,50", 2.0, 40
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
