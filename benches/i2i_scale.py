"""ItemCF and Swing builds at scale: ``python -m benches.i2i_scale``.

    python -m benches.i2i_scale [--interactions 10000000] [--items 1000000] [--users 0]
                                  [--top-m 100] [--swing-max-users 1000] [--threads 0] [--json PATH]

Generates a seeded synthetic log (``export.data.synthetic``: power-law item popularity and user activity,
clustered tastes), builds the two interaction CSRs, then times each neighbour-table build and reports
the process's peak resident memory during it (Linux ``VmHWM``, reset before each build through
``/proc/self/clear_refs``; where that is not possible the peak since start is reported and marked).
The first call of each kernel compiles or loads it from the Numba cache and is timed separately on a
small log, so the reported build time is the kernel's own. Issue 6 asks for time and peak memory on a
10^7-interaction log; timings depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import sys
import time

import numba
import numpy as np

from kernels.csr import build_csr, transpose_csr
from kernels.itemcf import itemcf_topm
from kernels.swing import swing_topm
from benches.report import save_json


def _vm_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter for this process; False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure(fn) -> dict:
    """Run ``fn()``; wall seconds, peak RSS (MiB) during it, and the RSS it started from."""
    reset = _reset_peak()
    before = _vm_kib("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = _vm_kib("VmHWM")
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(peak / 1024, 1),
            "rss_before_mib": round(before / 1024, 1), "peak_is_since_start": not reset, "result": out}


def synthetic_csrs(n_items: int, n_users: int, n_interactions: int, seed: int = 0):
    """The user→items and item→users CSRs of a synthetic log (``export.data.synthetic.make_log``)."""
    from export.data.synthetic import make_catalog, make_log

    catalog = make_catalog(n_items, dim=8, n_clusters=min(1000, max(10, n_items // 100)), seed=seed)
    users, items, _ = make_log(catalog, n_users, n_interactions, seed=seed + 2)
    ui = build_csr(users, items, n_users, n_cols=n_items)
    return ui, transpose_csr(*ui, n_items)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benches.i2i_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=int, default=10_000_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=0, help="default: interactions / 50")
    parser.add_argument("--top-m", type=int, default=100)
    parser.add_argument("--swing-max-users", type=int, default=1000, help="Swing's users-per-item cap (0: none)")
    parser.add_argument("--threads", type=int, default=0, help="Numba threads (0: all cores)")
    parser.add_argument("--only", choices=["itemcf", "swing"], help="build just one table")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    if args.interactions < 1 or args.items < 2 or args.users < 0 or args.top_m < 1 or args.swing_max_users < 0:
        print("bench_scale: --interactions, --top-m must be >= 1, --items >= 2, --users and --swing-max-users "
              ">= 0", file=sys.stderr)
        return 2
    if args.threads:
        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    n_users = args.users or max(100, args.interactions // 50)
    swing_cap = args.swing_max_users or None

    # compile / load every kernel once on a small log, so the timed builds are the kernels' own
    (sui, siu) = synthetic_csrs(2000, 200, 10_000)
    t0 = time.perf_counter()
    itemcf_topm(sui[0], sui[1], siu[0], siu[1], 2000, args.top_m)
    swing_topm(sui[0], sui[1], siu[0], siu[1], 2000, args.top_m, max_users_per_item=swing_cap)
    warm_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ui, iu = synthetic_csrs(args.items, n_users, args.interactions)
    gen_s = time.perf_counter() - t0
    deg_u = np.diff(ui[0])
    deg_i = np.diff(iu[0])
    report = {"interactions": int(ui[1].size), "users": n_users, "items": args.items, "top_m": args.top_m,
              "swing_max_users": args.swing_max_users, "threads": numba.get_num_threads(),
              "generate_s": round(gen_s, 2), "compile_or_cache_load_s": round(warm_s, 2),
              "max_user_degree": int(deg_u.max()), "max_item_degree": int(deg_i.max()),
              "itemcf_pair_work": int((deg_u.astype(np.float64) ** 2).sum()),
              "items_with_two_users": int((deg_i > 1).sum())}
    builds = {"itemcf": lambda: itemcf_topm(ui[0], ui[1], iu[0], iu[1], args.items, args.top_m),
              "swing": lambda: swing_topm(ui[0], ui[1], iu[0], iu[1], args.items, args.top_m,
                                          max_users_per_item=swing_cap)}
    for name, fn in builds.items():
        if args.only and name != args.only:
            continue
        m = measure(fn)
        indptr = m.pop("result")[0]
        m["rows_with_neighbours"] = int((np.diff(indptr) > 0).sum())
        report[name] = m
        print(f"{name}: {m['seconds']:.1f} s, peak RSS {m['peak_rss_mib']:.0f} MiB "
              f"(from {m['rss_before_mib']:.0f} MiB), {m['rows_with_neighbours']} items with neighbours",
              flush=True)
    print(f"log: {report['interactions']} interactions, {n_users} users, {args.items} items, "
          f"{report['threads']} threads; generated in {gen_s:.1f} s")
    save_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
