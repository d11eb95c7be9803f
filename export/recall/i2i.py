"""The item-item tables of one recall build (ItemCF, Swing, next-item) and the popular list, on either engine.

Their cost is what grows past one machine (time ~ sum_u |I(u)|^2), so they are built in one place from one
set of inputs, on the configured engine:

* ``local`` (the default): each kernel once over every item, in this process, on its Numba threads;
* ``ray``: the same kernels as Ray tasks over ranges of anchor items of equal work
  (:func:`ray_tables` on ``export.distributed.ray_i2i``), imported only then, so the default export never
  needs Ray.

Both engines read the same :class:`I2IInputs` and produce bit-identical tables, because every kernel's rows
depend only on these arrays (``kernels.i2i_ranges``). The CSRs are built once per build: Swing's serve ItemCF
too when ItemCF's per-user cap (``itemcf_max_user_items``) cuts nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.candidate_features import NEXT_FILE
from export.config import ExportConfig
from export.data.dataset import Interactions
from export.data.history import latest_rows
from export.recall.tables import sequence_tables
from kernels.csr import build_csr, transpose_csr
from kernels.i2i_ranges import item_work
from kernels.itemcf import itemcf_topm
from kernels.next_item import next_item_topm
from kernels.swing import swing_topm

ITEMCF_FILE = "i2i_itemcf.npz"
SWING_FILE = "i2i_swing.npz"
NEXT_SPAN = 3   # steps counted by the next-item table (kernels.next_item)


@dataclass
class I2IInputs:
    """Every array the i2i kernels read, as plain arrays (what a distributed engine ships once per build)."""

    n_users: int
    n_items: int
    itemcf_csrs: tuple[np.ndarray, ...]   # (user_indptr, user_items, item_indptr, item_users) of ItemCF's rows
    swing_csrs: tuple[np.ndarray, ...]    # the same over every row; the same arrays when ItemCF's cap cuts nothing
    sequences: tuple[np.ndarray, ...]     # (seq_indptr, seq_items, occ_indptr, occ_user, occ_off): kernels.next_item

    @property
    def shared_csrs(self) -> bool:
        return self.itemcf_csrs is self.swing_csrs


def interaction_csrs(inter: Interactions, n_users: int, n_items: int) -> tuple[np.ndarray, ...]:
    """user->items and its transpose item->users (sorted, duplicate-free rows) of the log's rows."""
    u_indptr, u_items, data = build_csr(inter.user.astype(np.int32, copy=False),
                                        inter.item.astype(np.int32, copy=False), n_users, n_cols=n_items)
    i_indptr, i_users, _ = transpose_csr(u_indptr, u_items, data, n_items)
    return u_indptr, u_items, i_indptr, i_users


def _read_only(arrays: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    for a in arrays:
        a.flags.writeable = False
    return arrays


def i2i_inputs(known: Interactions, n_users: int, n_items: int, config: ExportConfig) -> I2IInputs:
    """The kernels' inputs from the log slice a build may see.

    The arrays are made read-only: Ray hands tasks read-only arrays from its object store, and Numba
    compiles (and caches) one specialisation per array flavour, so both engines share one compile.
    """
    swing = _read_only(interaction_csrs(known, n_users, n_items))
    capped = latest_rows(known, config.itemcf_max_user_items)
    itemcf = swing if len(capped) == len(known) else _read_only(interaction_csrs(capped, n_users, n_items))
    return I2IInputs(n_users, n_items, itemcf, swing, _read_only(sequence_tables(known, n_users, n_items)))


def itemcf_params(config: ExportConfig) -> dict:
    return {"top_m": config.itemcf_top_m}


def swing_params(config: ExportConfig) -> dict:
    return {"top_m": config.swing_top_m, "alpha": config.swing_alpha, "user_damping": config.swing_user_damping,
            "max_users_per_item": config.swing_max_users or None}


def next_params(config: ExportConfig) -> dict:
    return {"top_m": config.next_top_m, "span": NEXT_SPAN}


def popular_order(counts: np.ndarray, n: int) -> np.ndarray:
    """Dense ids by interaction count, most popular first (ties: smaller id), the first ``n``."""
    return np.lexsort((np.arange(counts.size), -counts))[:n].astype(np.int32)


def as_table(csr: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    indptr, indices, scores = csr
    return {"indptr": indptr, "indices": indices, "scores": scores}


def local_tables(inputs: I2IInputs, config: ExportConfig) -> dict[str, object]:
    """The tables in this process, each kernel over every item (its Numba threads share the work)."""
    n = inputs.n_items
    seq = inputs.sequences
    return {ITEMCF_FILE: as_table(itemcf_topm(*inputs.itemcf_csrs, n, **itemcf_params(config))),
            SWING_FILE: as_table(swing_topm(*inputs.swing_csrs, n, **swing_params(config))),
            NEXT_FILE: as_table(next_item_topm(*seq, n, **next_params(config))),
            "popular": popular_order(np.bincount(seq[1], minlength=n), config.popular_n)}


def ray_jobs(inputs: I2IInputs, config: ExportConfig) -> dict:
    """What the Ray engine runs per table: kernel, inputs, parameters and the work per anchor item its
    ranges are cut by (``export.distributed.ray_i2i.RangeJob``)."""
    from export.distributed.ray_i2i import RangeJob   # Ray only when asked for

    n = inputs.n_items
    ui, _, ii, iu = inputs.itemcf_csrs
    su, _, si, sus = inputs.swing_csrs
    sw = swing_params(config)
    return {ITEMCF_FILE: RangeJob("itemcf", inputs.itemcf_csrs, n, itemcf_params(config), item_work(ui, ii, iu)),
            SWING_FILE: RangeJob("swing", inputs.swing_csrs, n, sw,
                                 item_work(su, si, sus, sw["max_users_per_item"], pair_term=True)),
            # next-item: a source item's cost is its occurrences (each looks span steps ahead)
            NEXT_FILE: RangeJob("next", inputs.sequences, n, next_params(config), np.diff(inputs.sequences[2]))}


def ray_tables(inputs: I2IInputs, config: ExportConfig, stats: dict | None = None,
               jobs: dict | None = None) -> dict[str, object]:
    """The tables of :func:`local_tables`, built by Ray tasks over ranges of equal work
    (``export.distributed.ray_i2i``); ``jobs`` defaults to :func:`ray_jobs`; ``stats`` (when given)
    receives the ranges and the per-task CPU."""
    from export.distributed.ray_i2i import run_ranges

    jobs = jobs if jobs is not None else ray_jobs(inputs, config)
    tables, counts = run_ranges(jobs, config.ray, count_arrays=inputs.sequences, n_items=inputs.n_items,
                                stats=stats)
    return {**{name: as_table(t) for name, t in tables.items()}, "popular": popular_order(counts, config.popular_n)}


def i2i_tables(known: Interactions, n_users: int, n_items: int, config: ExportConfig) -> dict[str, object]:
    """``{i2i_itemcf.npz, i2i_swing.npz, i2i_next.npz: CSR table arrays, "popular": int32 ids}`` of ``known``
    on ``config.engine``."""
    inputs = i2i_inputs(known, n_users, n_items, config)
    return ray_tables(inputs, config) if config.engine == "ray" else local_tables(inputs, config)
