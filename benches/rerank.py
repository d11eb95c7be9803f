"""Rerank kernel benchmark: ``python -m benches.rerank``.

MMR, DPP and DPP_WINDOW picking 50 of 200 candidates with 64-dim embeddings, each without and with
the default business rules (``RulesConfig``: scatter, max run, dedupe, promoted slots over random
categories / titles / promotions), against the numpy references of ``kernels/reference.py`` on the
same inputs. Prints p50 per row and the speedup; JIT compilation is excluded (one warm-up call).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from kernels.dpp import dpp_select
from kernels.mmr import mmr_select
from kernels.rules import dpp_select_ruled, mmr_select_ruled, rule_items
from rerank_server.config import RulesConfig

from kernels import reference as refs


def p50(fn, runs: int, budget_s: float) -> float:
    """Median seconds of ``fn()`` over up to ``runs`` calls (at least 3, stopping after ``budget_s``)."""
    samples = []
    start = time.perf_counter()
    while len(samples) < runs:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        if len(samples) >= 3 and time.perf_counter() - start > budget_s:
            break
    return statistics.median(samples)


def workload(n: int = 200, d: int = 64, n_cat: int = 19, seed: int = 0):
    """Random relevance, unit embeddings and rule attributes (19 categories like ML-100K genres)."""
    rng = np.random.default_rng(seed)
    rel = rng.random(n).astype(np.float32)
    emb = rng.standard_normal((n, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cat = rng.integers(0, n_cat, n)
    items = rule_items(n, category=cat, group=rng.integers(0, int(n * 0.9), n), promoted=rng.random(n) < 0.05)
    return rel, emb, items


def run(k: int = 50, with_refs: bool = True) -> list[dict]:
    """One row per (method, rules): kernel and reference p50 in seconds."""
    rel, emb, items = workload()
    rules = RulesConfig().params()
    alpha, lam, window, eps = 3.0, 0.7, 10, 1e-6
    cases = {
        ("MMR", False): (lambda: mmr_select(rel, emb, k, lam),
                         lambda: refs.ref_mmr(rel, emb, k, lam)),
        ("MMR", True): (lambda: mmr_select_ruled(rel, emb, k, lam, 0, items, rules),
                        lambda: refs.ref_mmr_ruled(rel, emb, k, lam, 0, items, rules)),
        ("DPP", False): (lambda: dpp_select(rel, emb, k, alpha, eps),
                         lambda: refs.ref_dpp(rel, emb, k, alpha, eps)),
        ("DPP", True): (lambda: dpp_select_ruled(rel, emb, k, alpha, eps, 0, items, rules),
                        lambda: refs.ref_dpp_ruled(rel, emb, k, alpha, eps, 0, items, rules)),
        ("DPP_WINDOW", False): (lambda: dpp_select(rel, emb, k, alpha, eps, window),
                                lambda: refs.ref_dpp(rel, emb, k, alpha, eps, window)),
        ("DPP_WINDOW", True): (lambda: dpp_select_ruled(rel, emb, k, alpha, eps, window, items, rules),
                               lambda: refs.ref_dpp_ruled(rel, emb, k, alpha, eps, window, items, rules)),
    }
    rows = []
    for (method, ruled), (kernel, ref) in cases.items():
        kernel()  # compile / load the cache
        t = p50(kernel, runs=500, budget_s=0.5)
        r = p50(ref, runs=5, budget_s=2.0) if (with_refs and refs is not None) else None
        rows.append({"method": method, "rules": ruled, "kernel_s": t, "ref_s": r})
    return rows


def main(argv: list[str] | None = None) -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-refs", action="store_true", help="skip the (slow) numpy references")
    args = parser.parse_args(argv)
    rows = run(with_refs=not args.no_refs)
    print("200 -> 50 candidates, D=64, p50 (DPP_WINDOW window=10)")
    print(f"{'method':<12}{'rules':<7}{'kernel':>11}{'numpy ref':>12}{'speedup':>10}")
    for row in rows:
        ref = f"{row['ref_s'] * 1e3:9.2f} ms" if row["ref_s"] else "-".rjust(12)
        speed = f"{row['ref_s'] / row['kernel_s']:9.0f}x" if row["ref_s"] else "-".rjust(10)
        print(f"{row['method']:<12}{'yes' if row['rules'] else 'no':<7}{row['kernel_s'] * 1e3:8.3f} ms{ref}{speed}")


if __name__ == "__main__":
    main()
