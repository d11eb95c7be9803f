"""Seeded synthetic catalogues and interaction logs for scale benchmarks (docs/ARCHITECTURE.md §9).

* Items fall in ``n_clusters`` clusters (each cluster a contiguous id range); an item's embedding is its
  cluster centre plus noise, L2-normalised, so nearest neighbours are mostly in-cluster as in a trained
  item tower. Each cluster maps to one of ``n_categories`` categories.
* Popularity is a power law (Zipf exponent ``zipf``) over a random permutation of the items.
* Users have power-law activity and one home cluster; each interaction picks, with probability
  ``p_home``, an item of the home cluster (skewed towards the cluster's head), otherwise an item from
  the global popularity distribution. (user, item) pairs are unique; timestamps increase with the row.

Everything is vectorised numpy: 10^7 interactions take a few seconds and ~1 GB.

How the generator decides what a user does (the ceiling of the synthetic benchmark, issue 16)
-----------------------------------------------------------------------------------------------
Each draw of user ``u`` (``make_log``) is independent of time and of the user's earlier draws:

* with probability ``p_home`` an item of ``u``'s home cluster ``h`` (ids ``lo .. lo + s - 1``), at position
  ``floor(s * U ** head_skew)`` for uniform ``U``: position ``j`` has probability
  ``((j + 1) / s) ** (1 / head_skew) - (j / s) ** (1 / head_skew)``;
* otherwise an item from the global popularity distribution ``popularity[i]``.

So ``P(i | u) = p_home * [cluster(i) = h] * P_pos(i - lo) + (1 - p_home) * popularity[i]``, and repeated
(user, item) draws are dropped. Users' profiles matter only through the home cluster (segments prefer some
clusters, ``make_dataset``), ratings and timestamps do not change which items are drawn. Since the test part
is a random subset of a user's draws (timestamps follow a random permutation), the best any recommender can do
is rank the items the user has not interacted with yet by ``P(i | u)``: :func:`oracle_topk`, the oracle row
of the recall table.
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


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """``np.unique`` by sort (numpy 2's hash-based unique is ~10x slower on 10^7 int64 keys)."""
    x = np.sort(x)
    return x[np.concatenate([[True], x[1:] != x[:-1]])] if x.size else x


HEAD_SKEW = 2.0   # make_log's default skew towards a cluster's head (the oracle's P_pos uses it)


def make_log(catalog: SyntheticCatalog, n_users: int, n_interactions: int, p_home: float = 0.7,
             activity_zipf: float = 0.8, head_skew: float = HEAD_SKEW, seed: int = 2,
             home: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(user int32, item int32, timestamp int64)`` of about ``n_interactions`` unique (user, item) rows.

    ``home`` (int [n_users], optional) fixes each user's home cluster; by default it is uniform.
    """
    rng = np.random.default_rng(seed)
    n_items = catalog.cluster.shape[0]
    bounds = np.searchsorted(catalog.cluster, np.arange(catalog.centers.shape[0] + 1))
    drawn = rng.integers(0, catalog.centers.shape[0], n_users)
    home = drawn if home is None else np.asarray(home, np.int64)
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
        key = _sorted_unique(np.concatenate(users).astype(np.int64) * n_items + np.concatenate(items))
        have = key.size
        users, items = [(key // n_items).astype(np.int32)], [(key % n_items).astype(np.int32)]
        if have >= target:
            break
    key = rng.permutation(np.concatenate(users).astype(np.int64) * n_items + np.concatenate(items))[:target]
    return (key // n_items).astype(np.int32), (key % n_items).astype(np.int32), np.arange(key.size, dtype=np.int64)


# --------------------------------------------------------------------------- full datasets for export


@dataclass
class SyntheticConfig:
    """A generated :class:`export.data.dataset.Dataset` (``dataset = "synthetic"`` in ExportConfig).

    Zero means "derived from ``n_items``": users = max(100, n_items / 10), interactions = 50 per user,
    clusters = clamp(n_items / 100, 10, 1000).
    """

    n_items: int = 100_000
    n_users: int = 0
    n_interactions: int = 0
    n_clusters: int = 0
    n_categories: int = 50
    n_tags: int = 20               # multi-hot item_bag columns ("genres")
    zipf: float = 1.0              # item popularity exponent
    p_home: float = 0.7            # share of a user's interactions inside the home cluster
    p_segment_taste: float = 0.6   # share of users whose home cluster is one their segment prefers
    # per-item content vector (Dataset.item_content; issue 28 step 4), standing in for a text or image embedding:
    # the item's latent vector rotated into content_dim dimensions plus Gaussian noise of norm ~content_noise,
    # L2-normalised. 0: none (the catalogue is described by its category, price band and tags only)
    content_dim: int = 32
    content_noise: float = 0.5
    seed: int = 0

    def resolved(self) -> "SyntheticConfig":
        """A copy with every derived (zero) size filled in."""
        users = self.n_users or max(100, self.n_items // 10)
        return SyntheticConfig(**{**self.__dict__, "n_users": users,
                                  "n_interactions": self.n_interactions or 50 * users,
                                  "n_clusters": self.n_clusters or min(1000, max(10, self.n_items // 100))})

    def validate(self) -> None:
        if self.n_items < 10 or self.n_users < 0 or self.n_interactions < 0 or self.n_clusters < 0:
            raise ValueError("synthetic: n_items must be >= 10 and n_users, n_interactions, n_clusters >= 0")
        if self.n_categories < 1 or self.n_tags < 1:
            raise ValueError("synthetic: n_categories and n_tags must be >= 1")
        if not (0 <= self.p_home <= 1 and 0 <= self.p_segment_taste <= 1):
            raise ValueError("synthetic: p_home and p_segment_taste must be in [0, 1]")
        if self.content_dim < 0 or self.content_noise < 0:
            raise ValueError("synthetic: content_dim and content_noise must be >= 0")


AGES = (18, 25, 35, 45, 50, 56)      # numeric, so export's segment edges bucket them as for ML-100K
GENDERS = ("F", "M")
N_REGIONS = 20
PRICE_BANDS = 5


@dataclass
class SyntheticWorld:
    """What the generator decides before drawing the log: the catalogue and each user's profile and home
    cluster (``rng`` continues with the ratings and features in :func:`make_dataset`)."""

    config: SyntheticConfig      # resolved
    catalog: SyntheticCatalog
    age: np.ndarray
    gender: np.ndarray
    region: np.ndarray
    home: np.ndarray             # int64 [n_users] home cluster
    rng: np.random.Generator


def make_world(config: SyntheticConfig) -> SyntheticWorld:
    """The catalogue, user profiles and home clusters of ``config`` (seeded; :func:`make_dataset` uses it)."""
    cfg = config.resolved()
    rng = np.random.default_rng(cfg.seed + 7)
    cat = make_catalog(cfg.n_items, dim=16, n_clusters=cfg.n_clusters, n_categories=cfg.n_categories,
                       zipf=cfg.zipf, seed=cfg.seed)
    n_clusters = cat.centers.shape[0]
    age = rng.choice(len(AGES), cfg.n_users, p=[0.1, 0.3, 0.25, 0.15, 0.1, 0.1])
    gender = rng.integers(0, len(GENDERS), cfg.n_users)
    region = rng.integers(0, N_REGIONS, cfg.n_users)
    segment = age * len(GENDERS) + gender
    n_segments = len(AGES) * len(GENDERS)
    liked = rng.integers(0, n_clusters, (n_segments, max(1, n_clusters // 20)))
    home = np.where(rng.random(cfg.n_users) < cfg.p_segment_taste,
                    liked[segment, rng.integers(0, liked.shape[1], cfg.n_users)],
                    rng.integers(0, n_clusters, cfg.n_users))
    return SyntheticWorld(cfg, cat, age, gender, region, home, rng)


def oracle_topk(world: SyntheticWorld, users: np.ndarray, seen_indptr: np.ndarray, seen_items: np.ndarray,
                k: int) -> np.ndarray:
    """The generator's own ranking: for each user the ``k`` unseen items of highest ``P(i | u)`` (module
    docstring), int64 [len(users), k], -1 padded. ``seen_indptr`` / ``seen_items``: CSR over dense user ids
    of what the user already did (excluded, as the served recall excludes it)."""
    cat, p_home = world.catalog, world.config.p_home
    n_items = cat.cluster.shape[0]
    bounds = np.searchsorted(cat.cluster, np.arange(cat.centers.shape[0] + 1))
    max_seen = int(np.diff(seen_indptr)[users].max()) if len(users) else 0
    top_pop = np.argsort(-cat.popularity, kind="stable")[:min(n_items, k + max_seen)]
    out = np.full((len(users), k), -1, np.int64)
    inv = 1.0 / HEAD_SKEW
    for row, u in enumerate(np.asarray(users).tolist()):   # a few hundred users, vectorised per user
        lo, hi = bounds[world.home[u]], bounds[world.home[u] + 1]
        size = hi - lo
        cand = np.unique(np.concatenate([np.arange(lo, hi), top_pop]))
        j = cand - lo
        in_home = (j >= 0) & (j < size)
        jj = np.where(in_home, j, 0).astype(np.float64)
        p_pos = np.where(in_home, ((jj + 1) / max(size, 1)) ** inv - (jj / max(size, 1)) ** inv, 0.0)
        p = p_home * p_pos + (1.0 - p_home) * cat.popularity[cand]
        keep = ~np.isin(cand, seen_items[seen_indptr[u]:seen_indptr[u + 1]])
        cand, p = cand[keep], p[keep]
        order = np.lexsort((cand, -p))[:k]
        out[row, :order.size] = cand[order]
    return out


def oracle_metrics(config: SyntheticConfig, truth, known, n_users: int, ks: list[int]) -> dict:
    """recall@K and hit-rate@K of :func:`oracle_topk` over the users with rows in ``truth``
    (``export.data.dataset.Interactions``), excluding what they did in ``known``: the ceiling row of the recall
    table, computed as ``export.evaluation.recall.evaluate_recall`` computes the channels'."""
    from export.evaluation.recall import truth_csr, truth_subset, truth_users
    from export.evaluation.metrics import hit_rate_at_k, recall_at_k

    indptr, items, users, _ = truth_users(truth, n_users)
    sub_indptr, sub_items = truth_subset(indptr, items, users)
    seen_indptr, seen_items = truth_csr(known, n_users)
    pred = oracle_topk(make_world(config), users, seen_indptr, seen_items, max(ks))
    out = {f"recall@{k}": round(recall_at_k(pred, sub_indptr, sub_items, k), 4) for k in ks}
    out.update({f"hit_rate@{k}": round(hit_rate_at_k(pred, sub_indptr, sub_items, k), 4) for k in ks})
    return out


def content_vectors(catalog: SyntheticCatalog, dim: int, noise: float, seed: int,
                    block: int = 1 << 18) -> np.ndarray | None:
    """Each item's content vector, float32 [n_items, dim] (None when ``dim`` is 0): its latent vector
    (``catalog.emb``) mapped by a seeded random isometry into ``dim`` dimensions (zero-padded when ``dim`` is
    smaller than the latent's), plus Gaussian noise of expected norm ``noise``, L2-normalised. Its own random
    stream, so the log and every other feature are those of a catalogue without content vectors."""
    if dim <= 0:
        return None
    rng = np.random.default_rng([seed, 0xC0_7E_47])
    latent = catalog.emb.shape[1]
    q, _ = np.linalg.qr(rng.standard_normal((max(dim, latent), latent)))   # orthonormal columns
    proj = q[:dim].T.astype(np.float32)                                      # [latent, dim]
    out = np.empty((catalog.emb.shape[0], dim), np.float32)
    scale = noise / np.sqrt(dim)
    for start in range(0, out.shape[0], block):
        stop = min(start + block, out.shape[0])
        out[start:stop] = _normalise(catalog.emb[start:stop] @ proj
                                     + scale * rng.standard_normal((stop - start, dim)).astype(np.float32))
    return out


def make_dataset(config: SyntheticConfig):
    """A full :class:`export.data.dataset.Dataset` from the generator, ready for ``export.pipeline``.

    * Items: ids ``i<n>``, titles ``item <n>``; ``item_cat`` = category (from the cluster) and a price
      band (cluster-skewed); ``item_bag`` = multi-hot tags (the category's tag, sometimes one more);
      ``item_content`` = :func:`content_vectors` (``content_dim`` 0: none).
    * Users: ids ``u<n>``; ``user_cat`` = age (numeric), gender, region. Each (age, gender) segment
      prefers a few clusters and most users take their home cluster from them, so segment popularity
      and the user profile carry signal.
    * Log: :func:`make_log` (power-law popularity and activity, clustered tastes), ratings 1..5 higher
      inside the home cluster, timestamps increasing with the row (seconds, random gaps).
    """
    from export.data.dataset import Dataset, Interactions

    cfg = config.resolved()
    cfg.validate()
    world = make_world(cfg)
    cat, rng, home = world.catalog, world.rng, world.home
    age, gender, region = world.age, world.gender, world.region
    n_clusters = cat.centers.shape[0]
    user, item, _ = make_log(cat, cfg.n_users, cfg.n_interactions, p_home=cfg.p_home, seed=cfg.seed + 2,
                             home=home)
    in_home = cat.cluster[item] == home[user]
    rating = np.clip(np.rint(rng.normal(np.where(in_home, 4.1, 3.0), 0.9)), 1, 5).astype(np.float32)
    timestamp = 1_600_000_000 + np.cumsum(rng.integers(1, 120, item.size)).astype(np.int64)

    price = np.clip(rng.integers(0, PRICE_BANDS, n_clusters)[cat.cluster]
                    + rng.integers(-1, 2, cfg.n_items), 0, PRICE_BANDS - 1)
    item_cat = np.stack([cat.category + 1, price + 1], axis=1).astype(np.int32)
    bag = np.zeros((cfg.n_items, cfg.n_tags), np.uint8)
    bag[np.arange(cfg.n_items), cat.category % cfg.n_tags] = 1
    extra = np.flatnonzero(rng.random(cfg.n_items) < 0.3)
    bag[extra, rng.integers(0, cfg.n_tags, extra.size)] = 1
    user_cat = np.stack([age + 1, gender + 1, region + 1], axis=1).astype(np.int32)

    def ids(prefix: str, n: int) -> np.ndarray:
        return np.char.add(prefix, np.arange(n).astype(str))

    return Dataset(
        name=f"synthetic-{cfg.n_items}", user_ids=ids("u", cfg.n_users), item_ids=ids("i", cfg.n_items),
        interactions=Interactions(user=user, item=item, rating=rating, timestamp=timestamp),
        user_cat=user_cat, user_cat_names=["age", "gender", "region"],
        user_cat_vocab=[len(AGES) + 1, len(GENDERS) + 1, N_REGIONS + 1],
        item_cat=item_cat, item_cat_names=["category", "price_band"],
        item_cat_vocab=[cfg.n_categories + 1, PRICE_BANDS + 1],
        item_bag=bag, item_bag_names=[f"tag{t:02d}" for t in range(cfg.n_tags)],
        item_titles=ids("item ", cfg.n_items),
        user_cat_values=[[str(a) for a in AGES], list(GENDERS), [f"r{r:02d}" for r in range(N_REGIONS)]],
        item_cat_values=[[f"c{c:02d}" for c in range(cfg.n_categories)], [f"p{p}" for p in range(1, PRICE_BANDS + 1)]],
        item_content=content_vectors(cat, cfg.content_dim, cfg.content_noise, cfg.seed),
    )
