"""The bench report as text and a plot, and the ratio of two reports (``python -m benches.latency compare``)."""
from __future__ import annotations

import json
import sys
from pathlib import Path



def save_json(report: dict, path: str | Path | None, indent: int = 2) -> None:
    """Write ``report`` as JSON to ``path`` (its folder made first) and say where; nothing when ``path`` is None."""
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=indent))
    print(f"report: {path}")

def progress_bar(label: str):
    """A callback drawing ``label [####....] i/n`` on stderr."""
    def show(i: int, n: int) -> None:
        if i == n or i % max(1, n // 50) == 0:
            filled = int(30 * i / n)
            sys.stderr.write(f"\r  {label} [{'#' * filled}{'.' * (30 - filled)}] {i}/{n}")
            if i == n:
                sys.stderr.write("\n")
            sys.stderr.flush()
    return show


def _lat(r: dict, key: str) -> float:
    return (r.get("latency_ms") or {}).get(key, float("nan"))


def print_table(report: dict) -> None:
    """The sweep with goodput, the echo floor, the in-process ratio, overload, profile and peers."""
    ds = report.get("dataset") or {}
    if ds:
        print(f"\ndataset {ds.get('name')}: {ds.get('items')} items, {ds.get('users')} users, "
              f"{ds.get('interactions')} interactions (snapshot {report.get('snapshot')})")
    cfg = report["config"]
    print(f"\nopen-loop sweep (k={cfg['k']}, deadline {cfg['deadline_ms']} ms; good = not degraded and within the "
          f"deadline; late = not degraded, after it; errors by gRPC status), ms:")
    print(f"  {'rate':>6} {'sent':>6} {'good':>6} {'degr':>5} {'late':>5} {'err':>5} {'goodput':>8} "
          f"{'p50':>7} {'p99':>7} {'max':>8} {'cpu-ms/req':>10} {'net':>6}")
    for r in report["rates"]:
        cpu = r.get("cpu_ms_per_ok_request")
        net = r.get("net_cpu_ms_per_ok_request")
        print(f"  {r['offered_rate']:>6.0f} {r['sent']:>6} {r['good']:>6} {r['degraded_replies']:>5} {r['late']:>5} "
              f"{r['error_count']:>5} {r['goodput']:>8.1f} {_lat(r, 'p50'):>7.2f} {_lat(r, 'p99'):>7.2f} "
              f"{_lat(r, 'max'):>8.2f} {cpu if cpu is not None else float('nan'):>10.2f} "
              f"{net if net is not None else float('nan'):>6.2f}"
              + (f"  errors {r['errors']}" if r["errors"] else "")
              + (f"  quality levels {r['quality_levels']}" if set(r.get("quality_levels") or {}) - {"0"} else ""))
    for r in report["rates"]:
        stages = "  ".join(f"{s} p50 {v['p50']:.2f}/p99 {v['p99']:.2f}" for s, v in r["stage_ms"].items() if v)
        print(f"  {r['offered_rate']:>6.0f}/s stages: {stages}")
    if "idle_cpu_ms_per_s" in report:
        print(f"  (cpu-ms/req: all cluster processes' CPU over the rate / replies; net: less the idle cluster's "
              f"{report['idle_cpu_ms_per_s']:.1f} CPU-ms/s)")
    for r in report["rates"]:
        by = r.get("net_cpu_ms_per_ok_request_by_process")
        if by:
            print(f"  {r['offered_rate']:>6.0f}/s net CPU-ms per reply by process: "
                  + "  ".join(f"{k} {v:.2f}" for k, v in by.items()))
    for echo in report.get("echo_floor", []):
        lat = echo["latency_ms"]
        print(f"echo floor ({echo['server']} server, empty unary call, sequential): p50 {lat['p50']:.3f} ms, "
              f"p99 {lat['p99']:.3f} ms, server {echo['server_cpu_ms_per_call']:.3f} CPU-ms/call"
              + (f"; caller sync {echo['client_cpu_ms_per_call']['sync']:.3f} / aio "
                 f"{echo['client_cpu_ms_per_call']['aio']:.3f} CPU-ms/call" if "client_cpu_ms_per_call" in echo else ""))
    floor = {e["server"]: e for e in report.get("echo_floor", [])}
    if {"aio", "sync"} <= set(floor):
        # the topology's gRPC floor per Recommend: the gateway's aio server side and its three aio calls, and
        # the three stage servers' sync server sides; what is left of the CPU per reply is the work and glue
        total = (floor["aio"]["server_cpu_ms_per_call"] + 3 * floor["sync"]["server_cpu_ms_per_call"]
                 + 3 * floor["aio"].get("client_cpu_ms_per_call", {}).get("aio", 0.0))
        print(f"gRPC floor per Recommend (1 aio server + 3 aio calls + 3 sync servers): {total:.2f} CPU-ms")
    inproc = report.get("in_process_funnel")
    if inproc:
        print("in-process funnel (the same servicers and funnel, no gRPC): " +
              "  ".join(f"{s} p50 {inproc[s]['p50']:.2f}" for s in ("recall", "rank", "rerank", "total")
                        if inproc.get(s)) + f"  ({inproc['degraded_replies']} of {inproc['requests']} degraded); "
              f"{inproc['cpu_ms_per_request']:.2f} CPU-ms per request")
        if inproc.get("cpu_ms_per_request_by_step"):
            print("  in-process CPU-ms per request by step: "
                  + "  ".join(f"{k} {v:.2f}" for k, v in inproc["cpu_ms_per_request_by_step"].items()))
        at = next((r for r in report["rates"] if r["offered_rate"] == 100), report["rates"][0])
        if at.get("latency_ms"):
            print(f"cluster p50 / in-process p50 at {at['offered_rate']:.0f}/s: "
                  f"{at['latency_ms']['p50'] / inproc['total']['p50']:.2f}x")
    targets = report.get("targets")
    if targets:
        print("targets: " + json.dumps(targets))
    for o in report.get("overload", []):
        ov, h = o["overload"], o["health_check_ms"]
        print(f"overload {o['factor']:.0f}x saturation ({ov['offered_rate']:.0f}/s): good {ov['good']} of {ov['sent']}, "
              f"goodput {ov['goodput']:.1f}/s, degraded {ov['degraded_replies']}, late {ov['late']}, "
              f"over deadline+5ms {ov['late_over_deadline_plus_5ms']}, errors {ov['errors']}, "
              f"replies by quality level {ov.get('quality_levels', {})}, reply p99 "
              f"{_lat(ov, 'p99'):.1f} ms, max {_lat(ov, 'max'):.1f}; Health/Check p99 "
              f"{h.get('p99', float('nan')):.1f} ms; back to the 100/s level after {o['recovered_after_s']} s")
    if report.get("burst"):
        b = report["burst"]
        print(f"burst of {b['calls']} calls at once: {b['by_status']}")
    for stage, prof in report.get("profile", {}).get("stages", {}).items():
        print(f"profile {stage} ({prof['busy_samples']} busy samples): " +
              "; ".join(f"{t['share_of_busy']:.0%} {t['where']}" for t in prof["top"]))
    ann = report.get("ann_vs_exact")
    if ann:
        print(f"hnswlib vs exact numpy ({ann['items']} items x {ann['dim']}, k={ann['k']}, ef={ann['ef']}): "
              f"recall {ann['hnswlib_recall_vs_exact']:.4f}, p50 {ann['hnswlib_ms']['p50']:.3f} ms vs "
              f"{ann['numpy_exact_ms']['p50']:.3f} ms")


def plot(report: dict, path: Path) -> str:
    """Latency percentiles and goodput against offered rate, as a PNG (needs matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install '.[bench]'): no plot"
    rates = [r["offered_rate"] for r in report["rates"]]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for key in ("p50", "p90", "p99", "p99.9"):
        ax.plot(rates, [_lat(r, key) for r in report["rates"]], marker="o", label=key)
    ax.set_xlabel("offered rate (requests/s)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax2.plot(rates, rates, linestyle=":", color="grey", label="offered")
    ax2.plot(rates, [r["goodput"] for r in report["rates"]], marker="o", label="goodput")
    ax2.set_xlabel("offered rate (requests/s)")
    ax2.set_ylabel("requests/s")
    ax2.grid(True, alpha=0.3)
    ax2.legend()
    fig.suptitle(f"Recommend, {(report.get('dataset') or {}).get('name', '')} snapshot {report['snapshot_version']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


def compare(a_path: str, b_path: str) -> int:
    """Print B / A ratios of the end-to-end percentiles, goodput and CPU-ms per request at each common rate."""
    try:
        a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))
    except (OSError, json.JSONDecodeError) as exc:
        print(f"bench compare: {exc}", file=sys.stderr)
        return 2
    by_rate = {r["offered_rate"]: r for r in a["rates"]}
    print(f"B / A  (A = {a_path}, B = {b_path}; < 1 means B is faster)")
    for rb in b["rates"]:
        ra = by_rate.get(rb["offered_rate"])
        if not ra or not ra["latency_ms"] or not rb["latency_ms"]:
            continue
        ratios = "  ".join(f"{key} {rb['latency_ms'][key] / ra['latency_ms'][key]:.2f}"
                           for key in ("p50", "p90", "p99", "max"))
        if ra.get("cpu_ms_per_ok_request") and rb.get("cpu_ms_per_ok_request"):
            ratios += f"  cpu-ms/req {rb['cpu_ms_per_ok_request'] / ra['cpu_ms_per_ok_request']:.2f}"
        if ra.get("goodput") and "goodput" in rb:
            ratios += f"  goodput {rb['goodput'] / ra['goodput']:.2f}"
        print(f"  {rb['offered_rate']:>6.0f}/s  {ratios}")
    return 0

