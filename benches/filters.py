"""Request-time filters under load: ``python -m benches.filters --snapshot DIR``.

    python -m benches.filters [--snapshot DIR] [--shares 0.05,0.001] [--rate 100] [--duration 20]
                                    [--k 20] [--recall-requests 300] [--quality] [--json PATH]

For each target share of the catalogue it picks the filter over the snapshot's attributes whose eligible share
is closest (one ``any_of`` value, or two ANDed on different attributes), then starts the cluster and measures
with and without it:

* recall stage: sequential Recall RPCs straight to the recall server (latency, candidates returned);
* end to end: open-loop Recommend at ``--rate`` req/s (``benches.loadgen``): latency from the scheduled send,
  fill rate (items returned / k), replies whose every item satisfies the filter (checked here);
* with ``--quality``: recall@k on the snapshot's test users (``tools.evaluate.test_truth``), unfiltered and
  filtered (the truth restricted to eligible items, users with at least one eligible test item).

Timings depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from benches.report import save_json


def _singles(table) -> list[tuple[str, object, str]]:
    """(attribute, one public condition, label): every categorical value, numeric lower bounds at the deciles."""
    from recsys.v2 import recommend_service_pb2 as pb2

    out = []
    for a in table.attributes.values():
        if a.kind == "categorical":
            out += [(a.name, pb2.AttributeFilter(attribute=a.name, any_of=pb2.ValueSet(values=[v])), f"{a.name} {v}")
                    for v in a.values]
        else:
            out += [(a.name, pb2.AttributeFilter(attribute=a.name, range=pb2.Range(min=float(q))), f"{a.name} >={q:g}")
                    for q in np.unique(np.nanpercentile(a.numbers, np.arange(10, 100, 10)))]
    return out


def pick_filter(table, share: float) -> tuple[list, np.ndarray, str]:
    """The filter whose eligible share is closest to ``share`` (log ratio, at least one item): one condition, or
    two ANDed on different attributes. Returns (public filters, eligible mask, label)."""
    from common.item_filter import FilterLimits, compile_filters

    singles = _singles(table)
    masks = [compile_filters([f], table, FilterLimits()).mask() for _, f, _ in singles]
    best, best_gap = None, np.inf
    for i, (name, f, label) in enumerate(singles):
        candidates = [((i,), masks[i].sum())]
        candidates += [((i, j), np.count_nonzero(masks[i] & masks[j])) for j in range(i + 1, len(singles))
                       if singles[j][0] != name]
        for members, count in candidates:
            if count and abs(np.log(count / table.n_items / share)) < best_gap:
                best, best_gap = members, abs(np.log(count / table.n_items / share))
    filters = [singles[m][1] for m in best]
    mask = np.logical_and.reduce([masks[m] for m in best])
    return filters, mask, " & ".join(singles[m][2] for m in best)


def recall_latency(addr: str, users: list[str], filters, n: int) -> dict:
    """Sequential Recall RPCs (one in flight): latency percentiles and mean candidates."""
    import grpc

    from common import wire
    from benches.loadgen import percentiles
    from recsys.stage.v1 import recall_service_pb2 as recall_pb2
    from recsys.stage.v1 import recall_service_pb2_grpc as recall_grpc

    stage = [recall_pb2.AttributeFilter.FromString(f.SerializeToString()) for f in filters]
    ms, sizes = [], []
    with grpc.insecure_channel(addr) as channel:
        stub = recall_grpc.RecallServiceStub(channel)
        for i, user in enumerate(users):
            t0 = time.perf_counter()
            reply = stub.Recall(recall_pb2.RecallRequest(user_id=user, n=n, filters=stage), timeout=10.0)
            elapsed = (time.perf_counter() - t0) * 1000.0
            if i >= 20:  # warm-up
                ms.append(elapsed)
                sizes.append(wire.decode(reply.item_idx, wire.INT32, "item_idx").size)
    return {"latency_ms": percentiles(ms), "mean_candidates": float(np.mean(sizes))}


def all_items_eligible(client, users: list[str], k: int, filters, mask, index) -> float:
    """Share of replies whose every item satisfies the filter (checked against the mask here)."""
    good = 0
    for user in users:
        rec = client.recommend(user, k=k, filters=filters, timeout_s=10.0)
        good += all(mask[index[item.item_id]] for item in rec.items)
    return good / max(1, len(users))


def recall_at_k(client, snapshot, k: int, filters, mask) -> dict:
    """recall@k over the test users, the truth restricted to eligible items when filtered."""
    from tools.evaluate import test_truth

    ds, truth = test_truth(snapshot)
    index = snapshot.item_index
    per_user: dict[int, set] = {}
    for u, i in zip(truth.user.tolist(), truth.item.tolist()):
        item = index.get(str(ds.item_ids[i]), -1)
        if item >= 0 and (mask is None or mask[item]):
            per_user.setdefault(u, set()).add(item)
    scores = []
    for u, items in per_user.items():
        rec = client.recommend(str(ds.user_ids[u]), k=k, filters=filters or (), timeout_s=10.0)
        got = {index.get(it.item_id, -1) for it in rec.items}
        scores.append(len(got & items) / min(len(items), k))
    return {"recall@k": float(np.mean(scores)) if scores else 0.0, "users": len(scores), "k": k}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benches.filters", description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", default="snapshots")
    parser.add_argument("--shares", default="0.05,0.001", help="target eligible shares, comma separated")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--deadline-ms", type=int, default=50)
    parser.add_argument("--recall-requests", type=int, default=300)
    parser.add_argument("--quality", action="store_true", help="also recall@k on the test split")
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    from common.item_filter import load_attribute_table
    from common.snapshot import Snapshot, SnapshotError
    from benches.peers import machine_info
    from gateway.client import RecommendClient
    from cluster.launcher import Cluster, ClusterConfig
    from benches.loadgen import run_rate

    try:
        shares = [float(s) for s in args.shares.split(",")]
        snapshot = Snapshot.open(args.snapshot, verify=False)
    except (ValueError, SnapshotError) as exc:
        print(f"bench_filters: {exc}", file=sys.stderr)
        return 2
    table = load_attribute_table(snapshot)
    index = snapshot.item_index
    rng = np.random.default_rng(0)
    users = [str(u) for u in rng.choice(snapshot.features.array("user_ids"), args.recall_requests + 20)]
    cases = [("unfiltered", [], np.ones(table.n_items, bool), "none")]
    for share in shares:
        filters, mask, label = pick_filter(table, share)
        cases.append((f"share {share:g}", filters, mask, label))
    report = {"machine": machine_info(), "snapshot": str(snapshot.path), "n_items": table.n_items,
              "rate": args.rate, "duration_s": args.duration, "k": args.k, "cases": []}
    config = ClusterConfig(snapshot=str(snapshot.path.parent), overrides={"gateway": [f"deadline_ms={args.deadline_ms}"]})
    with Cluster(config) as cluster, RecommendClient(cluster.gateway_addr, timeout_s=10.0) as client:
        for name, filters, mask, label in cases:
            row = {"case": name, "filter": label, "eligible": int(mask.sum()), "eligible_share": float(mask.mean())}
            row["recall_stage"] = recall_latency(cluster.addr("recall"), users, filters, 1000)
            result = run_rate(cluster.gateway_addr, users, args.rate, args.duration, args.k, args.deadline_ms,
                              filters=filters)
            summary = result.summary()
            row["e2e"] = {key: summary[key] for key in ("ok", "error_count", "degraded", "latency_ms",
                                                        "achieved_rate", "mean_items")}
            row["fill_rate"] = summary["mean_items"] / args.k
            row["all_items_eligible"] = all_items_eligible(client, users[:100], args.k, filters, mask, index)
            if args.quality:
                row["quality"] = recall_at_k(client, snapshot, args.k, filters, None if not filters else mask)
            report["cases"].append(row)
            lat, rs = row["e2e"]["latency_ms"], row["recall_stage"]["latency_ms"]
            print(f"{name:>12} [{label}] eligible {row['eligible']} ({row['eligible_share']:.4%}): recall stage "
                  f"p50 {rs['p50']:.2f} p99 {rs['p99']:.2f} ms ({row['recall_stage']['mean_candidates']:.0f} cand) | "
                  f"e2e @{args.rate:g}/s p50 {lat['p50']:.2f} p99 {lat['p99']:.2f} ms, fill {row['fill_rate']:.3f}, "
                  f"all eligible {row['all_items_eligible']:.2f}, degraded {row['e2e']['degraded']}"
                  + (f", recall@{args.k} {row['quality']['recall@k']:.4f} ({row['quality']['users']} users)"
                     if args.quality else ""), flush=True)
    save_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
