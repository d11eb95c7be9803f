"""The i2i tables on Ray against the local build: ``python -m benches.i2i_ray``.

    python -m benches.i2i_ray [--interactions 1000000] [--items 100000] [--users 20000]
                              [--workers 1,2] [--ranges-per-worker 4] [--json PATH]

Generates a seeded synthetic log (``export.data.synthetic``), builds the ItemCF, Swing and next-item tables
and the popular list once locally (``engine = "local"``: one process, ``--threads`` Numba threads) and once
per worker count on a fresh local Ray cluster (``export.distributed.ray_i2i``), and reports:

* parity: whether every saved array's sha256 equals the local build's (``export.distributed.parity``);
* wall seconds of each build (the Ray ones without the cluster's start, which is reported apart);
* the Ray tasks' CPU seconds per worker process, the busiest worker's share of their total, and the
  total against the 1-worker run (issue 29: at most 0.6 and +10% with 2 workers);
* peak RSS: the driver's, and each worker's.

Kernels come from Numba's on-disk cache; run it twice on a fresh checkout so the compile is not timed.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

from benches.report import save_json
from export.config import ExportConfig
from export.distributed.parity import save_tables, saved_digests, synthetic_interactions
from export.recall.i2i import i2i_inputs, local_tables, ray_tables


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benches.i2i_ray", description=__doc__.split("\n")[0])
    p.add_argument("--interactions", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts, each on a fresh local cluster")
    p.add_argument("--ranges-per-worker", type=int, default=4)
    p.add_argument("--threads", type=int, default=2, help="Numba threads of the local build")
    p.add_argument("--object-store-mb", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import numba

    from export.distributed import ray_i2i

    numba.set_num_threads(args.threads)
    t0 = time.perf_counter()
    inter = synthetic_interactions(args.interactions, args.items, args.users, seed=0)
    config = ExportConfig()
    inputs = i2i_inputs(inter, args.users, args.items, config)
    report = {"interactions": len(inter), "items": args.items, "users": args.users,
              "itemcf_csr_entries": int(inputs.itemcf_csrs[1].size), "swing_csr_entries": int(inputs.swing_csrs[1].size),
              "inputs_s": round(time.perf_counter() - t0, 2), "runs": []}
    print(f"log: {len(inter):,} rows, {args.items:,} items, {args.users:,} users; inputs {report['inputs_s']} s",
          file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        save_tables(local_tables(inputs, config), Path(tmp) / "local")
        local = {"engine": "local", "threads": args.threads, "wall_s": round(time.perf_counter() - wall0, 2),
                 "cpu_s": round(time.process_time() - cpu0, 2)}
        want = saved_digests(Path(tmp) / "local")
        report["runs"].append(local)
        print(f"local: {local['wall_s']} s wall, {local['cpu_s']} s CPU", file=sys.stderr)
        one_worker_cpu = None
        for workers in [int(w) for w in args.workers.split(",")]:
            config.engine = "ray"
            config.ray.workers, config.ray.ranges_per_worker = workers, args.ranges_per_worker
            config.ray.object_store_mb = args.object_store_mb
            s0 = time.perf_counter()
            ray_i2i.ray_session(config.ray)
            start_s = time.perf_counter() - s0
            stats: dict = {}
            wall0 = time.perf_counter()
            tables = ray_tables(inputs, config, stats)
            wall = time.perf_counter() - wall0
            save_tables(tables, Path(tmp) / f"ray{workers}")
            got = saved_digests(Path(tmp) / f"ray{workers}")
            ray_i2i.shutdown()
            run = {"engine": "ray", "workers": workers, "ranges_per_table": workers * args.ranges_per_worker,
                   "cluster_start_s": round(start_s, 2), "wall_s": round(wall, 2), "put_s": round(stats["put_s"], 3),
                   "tables_done_s": stats["done_s"], "task_cpu_s": stats["cpu_s"],
                   "cpu_s_per_worker": stats["cpu_s_per_worker"], "busiest_share": stats["busiest_share"],
                   "worker_peak_rss_mb": stats["peak_rss_mb_per_worker"],
                   "sha256_equal": got == want, "arrays": len(want)}
            if workers == 1:
                one_worker_cpu = stats["cpu_s"]
            if one_worker_cpu:
                run["cpu_vs_1_worker"] = round(stats["cpu_s"] / one_worker_cpu - 1.0, 4)
            report["runs"].append(run)
            print(f"ray x{workers}: parity {run['sha256_equal']}, {run['wall_s']} s wall (+{run['cluster_start_s']} s "
                  f"start), task CPU {run['task_cpu_s']} s {run['cpu_s_per_worker']}, busiest {run['busiest_share']}"
                  + (f", CPU vs 1 worker {run['cpu_vs_1_worker']:+.1%}" if "cpu_vs_1_worker" in run else ""),
                  file=sys.stderr)
    report["driver_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    print(f"driver peak RSS {report['driver_peak_rss_mb']} MB", file=sys.stderr)
    save_json(report, args.json)
    return 0 if all(r.get("sha256_equal", True) for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
