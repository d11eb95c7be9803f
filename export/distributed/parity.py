"""Checking that two engines built the same i2i tables: the saved files' arrays, by sha256.

``.npz`` files carry zip timestamps, so two identical builds give different file bytes; what must be equal
is every array inside (dtype, shape and bytes). Used by tests/test_ray_parity.py and ``benches.i2i_ray``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from export.data.dataset import Interactions
from export.data.synthetic import make_catalog, make_log


def save_tables(tables: dict[str, object], directory: Path) -> None:
    """Write the tables as a recall build does (``export.recall.build``): one ``.npz`` per table and
    ``popular.npy``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, arrays in tables.items():
        if name == "popular":
            np.save(directory / "popular.npy", arrays, allow_pickle=False)
        else:
            with open(directory / name, "wb") as fh:
                np.savez(fh, **arrays)


def array_digest(a: np.ndarray) -> str:
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def saved_digests(directory: Path) -> dict[str, str]:
    """``{"i2i_itemcf.npz:indptr": sha256, ..., "popular.npy": sha256}`` of the saved files' arrays."""
    out = {}
    for path in sorted(Path(directory).iterdir()):
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                out.update({f"{path.name}:{key}": array_digest(z[key]) for key in sorted(z.files)})
        elif path.suffix == ".npy":
            out[path.name] = array_digest(np.load(path, allow_pickle=False))
    return out


def synthetic_interactions(n_interactions: int, n_items: int, n_users: int, seed: int = 0) -> Interactions:
    """A synthetic log (``export.data.synthetic``: power-law items and users, clustered tastes)."""
    catalog = make_catalog(n_items, dim=8, n_clusters=max(1, n_items // 100), seed=seed)
    user, item, timestamp = make_log(catalog, n_users, n_interactions, seed=seed + 1)
    return Interactions(user=user, item=item, rating=np.ones(user.size, np.float32), timestamp=timestamp)
