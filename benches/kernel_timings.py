"""Micro-benchmarks for the kernels: ``python -m benches.kernel_timings``.

Times every kernel on a synthetic workload after a warm-up call (so JIT or
cache loading is excluded; its cost is shown separately as "first call") and
against two peers on the same inputs: ``benches.numpy_peers`` (vectorised
numpy / scipy written for speed, checked equal to the kernels in
tests/test_numpy_peers.py; "vs fast" is the like-for-like ratio) where one
exists, and the test oracles in ``kernels/reference.py`` (written to be
obviously right, not fast; run from the repository root) whose ratio overstates
the kernels' gain. Oracles that would take too long at full size are timed on
a smaller workload, marked in the table.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np

from kernels.csr import build_csr, transpose_csr
from kernels.dpp import dpp_select
from kernels.history_similarity import history_similarity
from kernels.i2i_lookup import i2i_lookup
from kernels.i2i_score import i2i_score, recency_weights
from kernels.itemcf import itemcf_topm
from kernels.merge import merge_quota
from kernels.mmr import mmr_select
from benches import numpy_peers
from kernels.swing import swing_topm

from kernels import reference as refs


def powerlaw_log(n_users: int, n_items: int, n_interactions: int, seed: int = 0,
                 item_exponent: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic user-item log with MovieLens-100k-like shape.

    User activity is log-normal (min 20 items, like ML-100k) scaled to about
    ``n_interactions`` in total; each user picks distinct items with Zipf-like
    popularity ``rank ** -item_exponent``. Ids are shuffled so popularity is
    not sorted by id.
    """
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(mean=0.0, sigma=1.0, size=n_users)
    deg = np.clip(np.round(raw / raw.sum() * n_interactions), 20, n_items // 2).astype(np.int64)
    pop = 1.0 / np.arange(1, n_items + 1) ** item_exponent
    pop /= pop.sum()
    item_perm = rng.permutation(n_items)
    users = np.repeat(np.arange(n_users), deg)
    items = np.concatenate([item_perm[rng.choice(n_items, d, replace=False, p=pop)] for d in deg])
    return users.astype(np.int32), items.astype(np.int32)


def _time(fn, min_total_s: float = 0.2, max_runs: int = 1000) -> float:
    """Median wall time of ``fn()`` in seconds over repeated runs."""
    samples = []
    start = time.perf_counter()
    while len(samples) < max_runs:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        if time.perf_counter() - start > min_total_s and len(samples) >= 3:
            break
    return statistics.median(samples)


def _first_call(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def run(with_refs: bool = True) -> list[tuple[str, str, float, float, float | None, float | None]]:
    """Run all benchmarks; return rows (kernel, workload, first, kernel_s, oracle_s, fast_numpy_s)."""
    use_refs = with_refs and refs is not None
    rows = []

    def bench(name, workload, fn, ref=None, ref_time_budget=2.0, ref_runs=5, fast=None):
        first = _first_call(fn)
        t = _time(fn)
        r = _time(ref, min_total_s=ref_time_budget, max_runs=ref_runs) if (use_refs and ref) else None
        f = _time(fast) if fast is not None else None
        rows.append((name, workload, first, t, r, f))

    n_users, n_items = 943, 1682
    users, items = powerlaw_log(n_users, n_items, 100_000)
    ui = build_csr(users, items, n_users, n_cols=n_items)
    iu = transpose_csr(*ui, n_items)
    nnz = ui[1].shape[0]
    log_desc = f"{n_users}x{n_items}, {nnz} nnz"
    bench("build_csr", f"{users.shape[0]} pairs", lambda: build_csr(users, items, n_users, n_cols=n_items),
          (lambda: refs.ref_build_csr(users, items, n_users)) if use_refs else None)
    bench("transpose_csr", log_desc, lambda: transpose_csr(*ui, n_items),
          (lambda: refs.ref_transpose_csr(*ui, n_items)) if use_refs else None)
    bench("itemcf_topm", f"{log_desc}, M=100",
          lambda: itemcf_topm(ui[0], ui[1], iu[0], iu[1], n_items, 100),
          (lambda: refs.ref_itemcf(ui[0], ui[1], n_items, 100)) if use_refs else None,
          fast=lambda: numpy_peers.itemcf_topm(ui[0], ui[1], n_items, 100))
    bench("swing_topm", f"{log_desc}, M=100",
          lambda: swing_topm(ui[0], ui[1], iu[0], iu[1], n_items, 100))
    # The dense Swing reference is O(sum_i |U(i)|^2 * n_items): compare on a
    # smaller log.
    s_users, s_items = powerlaw_log(300, 500, 12_000, seed=1)
    sui = build_csr(s_users, s_items, 300, n_cols=500)
    siu = transpose_csr(*sui, 500)
    bench("swing_topm", f"300x500, {sui[1].shape[0]} nnz, M=100 (small)",
          lambda: swing_topm(sui[0], sui[1], siu[0], siu[1], 500, 100),
          (lambda: refs.ref_swing(sui[0], sui[1], siu[0], siu[1], 500, 100)) if use_refs else None)

    # ML-100K is 6.3% dense, where the references' dense BLAS products are at their best; a catalogue at
    # 0.66% (still denser than most real ones) shows the sparse kernels' scaling. One reference run each
    # (~6 s, ~2 GB of dense matrices).
    w_users, w_items = powerlaw_log(2000, 8000, 100_000, seed=2)
    wui = build_csr(w_users, w_items, 2000, n_cols=8000)
    wiu = transpose_csr(*wui, 8000)
    wide = f"2000x8000, {wui[1].shape[0]} nnz, M=100"
    bench("itemcf_topm", wide, lambda: itemcf_topm(wui[0], wui[1], wiu[0], wiu[1], 8000, 100),
          (lambda: refs.ref_itemcf(wui[0], wui[1], 8000, 100)) if use_refs else None, ref_runs=1,
          fast=lambda: numpy_peers.itemcf_topm(wui[0], wui[1], 8000, 100))
    bench("swing_topm", wide, lambda: swing_topm(wui[0], wui[1], wiu[0], wiu[1], 8000, 100),
          (lambda: refs.ref_swing(wui[0], wui[1], wiu[0], wiu[1], 8000, 100)) if use_refs else None, ref_runs=1)

    table = itemcf_topm(ui[0], ui[1], iu[0], iu[1], n_items, 100)
    rng = np.random.default_rng(0)
    history = rng.choice(n_items, 50, replace=False).astype(np.int32)
    weights = recency_weights(50, 0.9)
    bench("i2i_score", "50 history x M=100 -> 200",
          lambda: i2i_score(history, weights, *table, 200, history),
          (lambda: refs.ref_i2i_score(history, weights, *table, 200, history)) if use_refs else None)

    # the ranker's candidate features: one user's 50 history items against recall's 1,000 candidates
    cands = rng.choice(n_items, 1000, replace=False).astype(np.int32)
    bench("i2i_lookup", "50 history x M=100, 1000 candidates",
          lambda: i2i_lookup(history, weights, *table, cands),
          fast=lambda: numpy_peers.i2i_lookup(history, weights, *table, cands, n_items))
    unit = rng.standard_normal((n_items, 64)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    recent = history[-20:]
    bench("history_similarity", "20 history x 1000 candidates, D=64",
          lambda: history_similarity(unit, recent, cands),
          fast=lambda: numpy_peers.history_similarity(unit, recent, cands))

    n_ch, per_ch = 6, 300
    ids = np.concatenate([rng.choice(5000, per_ch, replace=False) for _ in range(n_ch)]).astype(np.int32)
    scores = np.tile(np.linspace(1.0, 0.0, per_ch, dtype=np.float32), n_ch)
    channel = np.repeat(np.arange(n_ch, dtype=np.int32), per_ch)
    offsets = (np.arange(n_ch + 1) * per_ch).astype(np.int64)
    quotas = np.full(n_ch, 150, np.int32)
    exclude = rng.choice(5000, 100, replace=False).astype(np.int32)
    bench("merge_quota", f"{n_ch}x{per_ch} cands, quota 150 -> 500",
          lambda: merge_quota(ids, scores, channel, offsets, quotas, exclude, 500),
          (lambda: refs.ref_merge_quota(ids, scores, channel, offsets, quotas, exclude, 500))
          if use_refs else None)

    rel = rng.random(200).astype(np.float32)
    emb = rng.standard_normal((200, 64)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    for window in (0, 10):
        bench("mmr_select", f"200->50, D=64, window={window}",
              lambda: mmr_select(rel, emb, 50, 0.7, window),
              (lambda: refs.ref_mmr(rel, emb, 50, 0.7, window)) if use_refs else None,
              fast=lambda: numpy_peers.mmr_select(rel, emb, 50, 0.7, window))
    for window in (0, 10):
        bench("dpp_select", f"200->50, D=64, window={window}",
              lambda: dpp_select(rel, emb, 50, 2.0, window=window),
              (lambda: refs.ref_dpp(rel, emb, 50, 2.0, window=window)) if use_refs else None,
              fast=(lambda: numpy_peers.dpp_select(rel, emb, 50, 2.0)) if window == 0 else None)
    return rows


def main(argv: list[str] | None = None) -> None:
    """Print the benchmark table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-refs", action="store_true", help="skip the numpy reference timings")
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="numpy's BLAS threads for the numpy peers (servers run 1: server.compute_threads)")
    args = parser.parse_args(argv)
    from common import compute_threads

    compute_threads.limit(args.blas_threads)
    rows = run(with_refs=not args.no_refs)
    print(f"numba {numba.__version__}, {numba.get_num_threads()} threads "
          f"({numba.threading_layer()} layer); numpy BLAS {args.blas_threads} thread(s)")
    header = ("kernel", "workload", "first call", "kernel", "fast numpy", "vs fast", "test oracle", "vs oracle")
    table = [header] + [
        (name, workload, _fmt(first), _fmt(t), _fmt(f), f"{f / t:.1f}x" if f else "-", _fmt(r),
         f"{r / t:.0f}x" if r else "-")
        for name, workload, first, t, r, f in rows
    ]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    for i, row in enumerate(table):
        print("  ".join(cell.ljust(w) if c < 2 else cell.rjust(w)
                        for c, (cell, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    main()
