"""Seeded synthetic catalogues and interaction logs for scale benchmarks (DESIGN §7).

* Items fall in ``n_clusters`` clusters (each cluster a contiguous id range); an item's embedding is its
  cluster centre plus noise, L2-normalised, so nearest neighbours are mostly in-cluster as in a trained
  item tower. Each cluster maps to one of ``n_categories`` categories.
* Popularity is a power law (Zipf exponent ``zipf``) over a random permutation of the items.
* Users have power-law activity and one home cluster; each interaction picks, with probability
  ``p_home``, an item of the home cluster (skewed towards the cluster's head), otherwise an item from
  the global popularity distribution. (user, item) pairs are unique; timestamps increase with the row.

Everything is vectorised numpy: 10^7 interactions take a few seconds and ~1 GB.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SyntheticCatalog:
    emb: np.ndarray          # float32 [n_items, dim], L2-normalised
    cluster: np.ndarray      # int32 [n_items]
    category: np.ndarray     # int32 [n_items]
    popularity: np.ndarray   # float64 [n_items], sums to 1
    centers: np.ndarray      # float32 [n_clusters, dim], L2-normalised


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    return rng.permutation(w) / w.sum()


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def make_catalog(n_items: int, dim: int = 64, n_clusters: int = 1000, n_categories: int = 50,
                 zipf: float = 1.0, noise: float = 0.6, seed: int = 0,
                 block: int = 1 << 18) -> SyntheticCatalog:
    """A clustered catalogue of ``n_items`` item vectors with categories and power-law popularity."""
    if n_items < 1 or dim < 1 or n_clusters < 1 or n_categories < 1:
        raise ValueError("n_items, dim, n_clusters and n_categories must be >= 1")
    rng = np.random.default_rng(seed)
    n_clusters = min(n_clusters, n_items)
    centers = _normalise(rng.standard_normal((n_clusters, dim)))
    cluster = np.sort(rng.integers(0, n_clusters, n_items)).astype(np.int32)  # contiguous id ranges
    emb = np.empty((n_items, dim), np.float32)
    scale = noise / np.sqrt(dim)
    for start in range(0, n_items, block):  # bounded float64 temporaries
        stop = min(start + block, n_items)
        emb[start:stop] = _normalise(centers[cluster[start:stop]]
                                     + scale * rng.standard_normal((stop - start, dim)))
    category = rng.integers(0, n_categories, n_clusters).astype(np.int32)[cluster]
    return SyntheticCatalog(emb, cluster, category, _zipf_weights(n_items, zipf, rng), centers)


def make_queries(catalog: SyntheticCatalog, n: int, noise: float = 0.8, seed: int = 1) -> np.ndarray:
    """User-like query vectors: a random cluster centre plus noise, L2-normalised, float32 [n, dim]."""
    rng = np.random.default_rng(seed)
    dim = catalog.centers.shape[1]
    c = rng.integers(0, catalog.centers.shape[0], n)
    return _normalise(catalog.centers[c] + noise / np.sqrt(dim) * rng.standard_normal((n, dim)))


def make_log(catalog: SyntheticCatalog, n_users: int, n_interactions: int, p_home: float = 0.7,
             activity_zipf: float = 0.8, head_skew: float = 2.0, seed: int = 2
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(user int32, item int32, timestamp int64)`` of about ``n_interactions`` unique (user, item) rows."""
    rng = np.random.default_rng(seed)
    n_items = catalog.cluster.shape[0]
    bounds = np.searchsorted(catalog.cluster, np.arange(catalog.centers.shape[0] + 1))
    home = rng.integers(0, catalog.centers.shape[0], n_users)
    sizes = bounds[home + 1] - bounds[home]
    home = np.where(sizes > 0, home, catalog.cluster[rng.integers(0, n_items, n_users)])
    activity = _zipf_weights(n_users, activity_zipf, rng)
    cdf = np.cumsum(catalog.popularity)
    users, items = [], []
    target = int(n_interactions)
    have = 0
    for attempt in range(8):  # top up after dedupe (repeats are common in the head)
        m = int((target - have) * (1.3 + 0.5 * attempt)) + 16
        user = rng.choice(n_users, m, p=activity).astype(np.int32)
        from_home = rng.random(m) < p_home
        h = home[user]
        lo, size = bounds[h], bounds[h + 1] - bounds[h]
        in_cluster = lo + np.minimum((size * rng.random(m) ** head_skew).astype(np.int64), size - 1)
        global_pick = np.minimum(np.searchsorted(cdf, rng.random(m) * cdf[-1]), n_items - 1)
        users.append(user)
        items.append(np.where(from_home, in_cluster, global_pick).astype(np.int32))
        key = np.unique(np.concatenate(users).astype(np.int64) * n_items + np.concatenate(items))
        have = key.size
        users, items = [(key // n_items).astype(np.int32)], [(key % n_items).astype(np.int32)]
        if have >= target:
            break
    key = rng.permutation(np.concatenate(users).astype(np.int64) * n_items + np.concatenate(items))[:target]
    return (key // n_items).astype(np.int32), (key % n_items).astype(np.int32), np.arange(key.size, dtype=np.int64)
