"""``python -m tools.evaluate``: the funnel table's final row, recomputed from the live cluster's replies.

Sends ``Recommend`` through the public API for every test user the export evaluated (same split, same
user sample, the user's first test timestamp as the request's context, as the export's table does), once
with k = 10 and once with k = 50, and scores the served lists against the held-out items: recall@10,
NDCG@10, recall@50, distinct genres@10, ILS@10 (``export.evaluation.funnel.list_row``), and says how spread the
10-lists are (distinct items, the most common item's share: ``export.evaluation.metrics.concentration``). Then compares
them with the manifest's ``metrics.funnel.test.rows.rerank`` (the export's offline number for the same
lists): every metric must agree within ``--tolerance`` (default 0.002; absolute for the metrics in [0, 1],
relative for genres@10), and every reply must be non-degraded; the exit status is 1 otherwise. The served
and offline lists can differ in a few users where scores tie within float rounding (the int8 model, in
particular), so the tolerance is not zero.

    python -m tools.evaluate --start                 # starts the cluster on the snapshot, evaluates, stops
    python -m tools.evaluate --target 127.0.0.1:50050
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import grpc
import numpy as np

from common.config import load_config
from common.snapshot import Snapshot, SnapshotError
from export.evaluation.recall import truth_subset, truth_users
from export.evaluation.funnel import list_row
from export.evaluation.metrics import concentration

METRICS = ("recall@10", "ndcg@10", "recall@50", "genres@10", "ils@10")


def test_truth(snapshot: Snapshot):
    """``(dataset, test interactions)`` exactly as the export that built ``snapshot`` evaluated them."""
    from export.config import ExportConfig
    from export.pipeline import load_dataset
    from export.recall.build import sample_users
    from export.data.split import make_split

    with tempfile.NamedTemporaryFile("w", suffix=".json") as fh:
        json.dump(snapshot.manifest["config"], fh)
        fh.flush()
        config = load_config(ExportConfig, fh.name)
    ds = load_dataset(config)
    split = make_split(ds, config.holdout_frac, valid_frac=config.valid_frac)
    return ds, sample_users(split.test, ds.n_users, max_users=config.eval_users, seed=2)


def served_lists(recommend, ds, truth, snapshot: Snapshot, deadline_ms: int, k: int = 10,
                 progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Per test user (dense id order): the k and 50 lists ``recommend(user_id, k, timestamp)`` served,
    as dense ids of ``snapshot`` (-1 padded). Returns ``(users, lists_k, lists_50, counts)``."""
    _, _, users, first_ts = truth_users(truth, ds.n_users)
    index = snapshot.item_index
    out = {k: np.full((users.size, k), -1, np.int64), 50: np.full((users.size, 50), -1, np.int64)}
    counts = {"requests": 0, "degraded": 0, "errors": 0, "other_version": 0, "below_level_0": 0}
    for row, u in enumerate(users.tolist()):
        for kk, grid in out.items():
            counts["requests"] += 1
            try:
                rec = recommend(str(ds.user_ids[u]), kk, int(first_ts[u]), deadline_ms)
            except grpc.RpcError:
                counts["errors"] += 1
                continue
            counts["degraded"] += bool(rec.degraded)
            counts["below_level_0"] += rec.quality_level > 0   # served with fewer candidates (gateway.quality)
            counts["other_version"] += rec.snapshot_version != snapshot.version
            ids = [index.get(item.item_id, -1) for item in rec.items[:kk]]
            grid[row, :len(ids)] = ids
        if progress and row % 200 == 0:
            progress(row, users.size)
    return users, out[k], out[50], counts


def served_table(snapshot: Snapshot, truth, n_users: int, lists: np.ndarray, lists50: np.ndarray) -> dict:
    """The final row's metrics of the served lists (the users of ``truth`` in dense id order)."""
    indptr, items, users, _ = truth_users(truth, n_users)
    sub_indptr, sub_items = truth_subset(indptr, items, users)
    bag = snapshot.features.array("item_bag")
    emb = snapshot.load_array("item_emb.npy")
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return {k: round(float(v), 4) for k, v in list_row(lists, sub_indptr, sub_items, bag, unit, lists50).items()}


def compare(served: dict, offline: dict, tolerance: float) -> list[str]:
    """The metrics on which the served and offline rows differ by more than ``tolerance`` times
    max(1, |offline value|): absolute for the metrics in [0, 1], relative for genres@10 (a count up to the
    number of genres)."""
    return [m for m in METRICS if not abs(served[m] - offline[m]) <= tolerance * max(1.0, abs(offline[m]))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", default="snapshots", help="snapshot root or version directory")
    parser.add_argument("--target", default="127.0.0.1:50050", help="gateway address (without --start)")
    parser.add_argument("--start", action="store_true", help="start the cluster on --snapshot, stop it after")
    parser.add_argument("--deadline-ms", type=int, default=2000,
                        help="per request: generous, so the table measures the lists, not the machine's load")
    parser.add_argument("--tolerance", type=float, default=0.002)
    parser.add_argument("--set", action="append", default=[], metavar="SERVER:KEY=VALUE",
                        help="with --start: a server setting, e.g. gateway:quality.enabled=false (the full funnel "
                             "on every request even when a busy machine runs slow)")
    args = parser.parse_args(argv)
    overrides: dict[str, list[str]] = {}
    for item in args.set:
        server, sep, setting = item.partition(":")
        if not sep or "=" not in setting:
            print(f"evaluate: --set {item!r} must look like SERVER:KEY=VALUE", file=sys.stderr)
            return 2
        overrides.setdefault(server, []).append(setting)
    try:
        snapshot = Snapshot.open(args.snapshot)
        offline = snapshot.manifest["metrics"]["funnel"]["test"]["rows"]["rerank"]
    except (SnapshotError, KeyError) as exc:
        print(f"evaluate: {args.snapshot} has no funnel table to compare with ({exc}); run `python -m export`",
              file=sys.stderr)
        return 2
    ds, truth = test_truth(snapshot)
    cluster = None
    target = args.target
    if args.start:
        from cluster.launcher import Cluster, ClusterConfig

        cluster = Cluster(ClusterConfig(snapshot=str(snapshot.path.parent)
                                        if (snapshot.path.parent / "CURRENT").exists() else str(snapshot.path),
                                        overrides=overrides))
        try:
            cluster.start()
        except (RuntimeError, TimeoutError) as exc:
            print(f"evaluate: cannot start the cluster: {exc}", file=sys.stderr)
            return 2
        target = cluster.gateway_addr
    from gateway.client import RecommendClient

    try:
        with RecommendClient(target, timeout_s=args.deadline_ms / 1000 + 1) as client:
            t0 = time.perf_counter()
            users, lists, lists50, counts = served_lists(
                lambda user, k, ts, dl: client.recommend(user, k=k, timestamp=ts, deadline_ms=dl),
                ds, truth, snapshot, args.deadline_ms,
                progress=lambda i, n: print(f"  {i}/{n} users", file=sys.stderr, flush=True))
            seconds = time.perf_counter() - t0
    finally:
        if cluster is not None:
            cluster.stop()
    served = served_table(snapshot, truth, ds.n_users, lists, lists50)
    bad = compare(served, offline, args.tolerance)
    print(f"snapshot {snapshot.version}: {users.size} test users, {counts['requests']} requests in {seconds:.1f} s, "
          f"{counts['degraded']} degraded, {counts['errors']} errors, {counts['other_version']} other version, "
          f"{counts['below_level_0']} below quality level 0")
    print("list".ljust(26) + "".join(m.rjust(11) for m in METRICS))
    for name, row in (("served (gateway)", served), ("manifest (export, test)", offline)):
        print(name.ljust(26) + "".join(f"{row[m]:11.4f}" for m in METRICS))
    spread = concentration(lists)
    print(f"spread of the 10-lists: {spread['distinct']} distinct items over {spread['lists']} lists, the most "
          f"common item in {spread['top_share']:.1%} of them")
    ok = not bad and counts["degraded"] == 0 and counts["errors"] == 0
    print(("agree" if ok else "DISAGREE") + f" within {args.tolerance} on every metric"
          + (f"; differ on {', '.join(bad)}" if bad else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
