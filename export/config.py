"""Configuration of one export run."""
from __future__ import annotations

from dataclasses import dataclass, field

from export.models.deepfm import DeepFMConfig
from export.data.feedback_fold import FoldConfig
from export.models.mmoe import DistillConfig, MMoEConfig, MMoETeacherConfig
from export.models.prerank import PrerankConfig
from export.models.sequence import SequenceConfig
from export.ranking.replay import ReplayConfig
from export.ranking.ranker import RankerConfig
from export.data.synthetic import SyntheticConfig
from export.models.two_tower import TwoTowerConfig


@dataclass
class HnswConfig:
    """The served ANN index (``export.recall.ann_index``): which items it holds and the HNSW grid searched on the
    validation cut. The chosen ``ef`` goes to the manifest (``ann_index``); the recall server searches with it
    unless its own ``hnsw_ef`` is set."""

    M: int = 16                            # built when M_grid is empty; the validation cut's index uses it too
    ef_construction: int = 200
    ef_eval: int = 200                     # query ef when ef_grid is empty
    min_count: int = 1                     # items with fewer two-tower training rows serve their features-only
    # vector (every item is indexed either way; export.recall.ann_index.served_vectors)
    min_count_grid: list[int] = field(default_factory=lambda: [2, 3, 5])   # no longer read (issue 28)
    # training users' vectors inserted into the HNSW graph as routing nodes, marked deleted (walked, never
    # returned; export.recall.ann_index.build_routing); 0: items only. On the 10^5 synthetic catalogue, user
    # queries held out of the sample, recall@100 vs exact at ef 200 went 0.79 (none) -> 0.85 (250) -> 0.99
    # (2,000); 4,000 cost twice the query time for no gain (docs/results/2026-12-06-catalogue-reachable.md)
    routing_nodes: int = 2000
    M_grid: list[int] = field(default_factory=lambda: [16, 32])
    # 800 and 1600 for large catalogues: at 10^6 synthetic items (M 32, 2,000 routing nodes) user queries reach
    # recall@100 0.89-0.93 at ef 800 and 0.94-0.96 at ef 1600 (docs/results/2026-12-07-ann-1e6-user-queries.md);
    # the choice still takes the fastest point that reaches target_recall, so small catalogues keep a small ef
    ef_grid: list[int] = field(default_factory=lambda: [50, 100, 200, 400, 800, 1600])
    target_recall: float = 0.95            # recall@100 vs exact the chosen point must reach (fastest such point)
    select_users: int = 500                # validation users whose vectors are the queries of the choice

    def validate(self) -> None:
        if self.M < 2 or self.ef_construction < 1 or self.ef_eval < 1 or self.min_count < 0 or self.routing_nodes < 0:
            raise ValueError("hnsw: M must be >= 2, ef_construction and ef_eval >= 1, min_count and routing_nodes >= 0")
        if any(m < 2 for m in self.M_grid) or any(e < 1 for e in self.ef_grid) or any(c < 0 for c in self.min_count_grid):
            raise ValueError("hnsw: M_grid entries must be >= 2, ef_grid entries >= 1, min_count_grid entries >= 0")
        if not 0.0 < self.target_recall <= 1.0 or self.select_users < 1:
            raise ValueError("hnsw: target_recall must be in (0, 1] and select_users >= 1")


@dataclass
class RayConfig:
    """The Ray engine (``engine = "ray"``, ``export.distributed.ray_i2i``): where the i2i tasks run and how many."""

    address: str = "local"                 # "local": start a Ray cluster on this machine; else an existing
                                           # cluster's address ("auto", "HOST:6379")
    workers: int = 2                       # tasks run at once; a local cluster gets this many CPUs
    ranges_per_worker: int = 4             # equal-work anchor-item ranges per worker and table (more: finer
                                           # balance, more per-task scratch set-up)
    object_store_mb: int = 0               # a local cluster's object store (0: Ray's default, 30% of memory)

    def validate(self) -> None:
        if not self.address:
            raise ValueError('ray.address must be "local" or a Ray cluster address')
        if self.workers < 1 or self.ranges_per_worker < 1 or self.object_store_mb < 0:
            raise ValueError("ray.workers and ray.ranges_per_worker must be >= 1, ray.object_store_mb >= 0")


@dataclass
class ExportConfig:
    """Everything ``python -m export`` reads; load with ``common.config.load_config``."""

    out: str = "snapshots"                 # snapshot root; the new version lands in out/<version>
    dataset: str = "ml-100k"               # "ml-100k", "synthetic" (see [synthetic]), or a generic atomic file stem
    data_dir: str = ""                     # empty: ../shared/data/ml-100k, $RECSYS_DATA_DIR or the recbole wheel
    holdout_frac: float = 0.2              # per user, the latest fraction of interactions is the test part
    valid_frac: float = 0.1                # per user, the fraction just before it is the validation part
    itemcf_top_m: int = 100
    # ItemCF pairs each user's items with each other (time sum_u |I(u)|^2): only a user's latest rows enter.
    # Chosen on validation (itemcf channel alone, 2,000 users): at 10^6 items cap 200 builds in 12 s instead
    # of 26 s at equal recall@50/200/1000 (0.042/0.133/0.401 vs 0.043/0.131/0.403); on ML-100K it lifts
    # recall@50 0.442 -> 0.451. One synthetic user has 15,737 rows: 1.55e9 pair steps uncapped.
    itemcf_max_user_items: int = 200       # 0: no cap
    swing_top_m: int = 100
    swing_alpha: float = 1.0               # 1 / (alpha + |I(u) & I(v)|)
    swing_user_damping: float = 0.5        # user weight |I(u)| ** -damping
    swing_max_users: int = 1000            # users per item entering Swing's pair loop (0: no cap)
    popular_n: int = 2000
    next_top_m: int = 50                   # i2i_next.npz: next-item transitions kept per item
    recent_days: float = 30.0              # item_stats.npz recent_count: interactions in the data's last days
    content_top_m: int = 50                # i2i_content.npz: cold items nearest in content space per row
    # cold start: popular items per demographic segment (user profile fields; numeric ones bucketed by edges)
    segment_fields: list[str] = field(default_factory=lambda: ["age", "gender"])
    segment_edges: list[float] = field(default_factory=lambda: [18, 25, 35, 45, 56])
    segment_popular_n: int = 500
    blocklist: list[str] = field(default_factory=list)  # external item ids never recalled
    eval_k: list[int] = field(default_factory=lambda: [50, 200, 1000])
    eval_users: int = 0                    # offline metrics on a seeded sample of this many held-out users (0: all)
    max_train_rows: int = 0                # two-tower / DeepFM / MMoE train on a seeded sample of users with at most
                                           # this many training rows in all (0: all); i2i tables use every row
    # the served funnel the choices and the funnel table are made for (the gateway's recall_n and rank_n,
    # k = 10); rerank defaults: the most diverse MMR lambda within rerank_max_cost of the rank order's
    # validation NDCG@10 (NONE when none is)
    recall_n: int = 1000
    rank_n: int = 200
    k: int = 10
    rerank_lambdas: list[float] = field(default_factory=lambda: [0.95, 0.9, 0.85, 0.8, 0.7])
    rerank_max_cost: float = 0.02
    # the candidate counts served and the quality factor's levels (export.evaluation.stage_counts): the final
    # list's validation NDCG@10 at these fractions of recall_n, prerank_keep and rank_n; level 0 is the cheapest
    # point within stage_count_max_cost of the full counts (issue 26: at most 0.5%)
    stage_count_fractions: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25, 0.125])
    stage_count_max_cost: float = 0.005
    recall_fit_users: int = 2000           # recall merge weights fitted on this many validation users (0: keep
                                           # recall_server's configured weights); export.recall.merge_fit
    make_current: bool = True
    threads: int = 2
    engine: str = "local"                  # the i2i tables (ItemCF, Swing, next-item) and popularity: "local"
                                           # (this process) or "ray" (tasks over item ranges; needs the
                                           # `distributed` extra); the tables are bit-identical
    ray: RayConfig = field(default_factory=RayConfig)
    two_tower: TwoTowerConfig = field(default_factory=TwoTowerConfig)
    deepfm: DeepFMConfig = field(default_factory=DeepFMConfig)
    mmoe: MMoEConfig = field(default_factory=MMoEConfig)              # the distilled student (served)
    mmoe_teacher: MMoETeacherConfig = field(default_factory=MMoETeacherConfig)  # the large teacher
    distill: DistillConfig = field(default_factory=DistillConfig)
    prerank: PrerankConfig = field(default_factory=PrerankConfig)  # pre-rank distilled from the teacher
    hnsw: HnswConfig = field(default_factory=HnswConfig)
    rank_replay: ReplayConfig = field(default_factory=ReplayConfig)   # the ranker's examples (export.ranking.replay)
    ranker: RankerConfig = field(default_factory=RankerConfig)        # choices on validation (export.ranking.ranker)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # used when dataset = "synthetic"
    feedback: FoldConfig = field(default_factory=FoldConfig)  # logged feedback folded in (export.data.feedback_fold)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)  # the seq_score rank feature (export.ranking.sequence)

    def validate(self) -> None:
        if not 0.0 < self.holdout_frac < 1.0:
            raise ValueError(f"holdout_frac must be in (0, 1), got {self.holdout_frac}")
        if self.itemcf_top_m < 1 or self.popular_n < 1:
            raise ValueError("itemcf_top_m and popular_n must be >= 1")
        if self.itemcf_max_user_items < 0:
            raise ValueError(f"itemcf_max_user_items must be >= 0 (0: no cap), got {self.itemcf_max_user_items}")
        if self.swing_top_m < 1 or self.segment_popular_n < 1:
            raise ValueError("swing_top_m and segment_popular_n must be >= 1")
        if self.swing_alpha < 0 or self.swing_user_damping < 0 or self.swing_max_users < 0:
            raise ValueError("swing_alpha, swing_user_damping and swing_max_users must be >= 0")
        if list(self.segment_edges) != sorted(self.segment_edges):
            raise ValueError("segment_edges must be ascending")
        if not self.eval_k or min(self.eval_k) < 1:
            raise ValueError("eval_k must list positive cut-offs")
        if self.eval_users < 0 or self.max_train_rows < 0 or self.two_tower.max_train_rows < 0 or self.content_top_m < 1:
            raise ValueError("eval_users and max_train_rows must be >= 0, content_top_m >= 1")
        if not 0.0 <= self.valid_frac < 1.0 or self.holdout_frac + self.valid_frac >= 1.0:
            raise ValueError(f"valid_frac must be in [0, 1) with holdout_frac + valid_frac < 1, got {self.valid_frac}")
        if self.valid_frac == 0.0:
            raise ValueError("valid_frac must be > 0: every choice is made on the validation part")
        if not 1 <= self.k <= self.rank_n <= self.recall_n:
            raise ValueError("need 1 <= k <= rank_n <= recall_n")
        if (not self.stage_count_fractions or any(not 0.0 < f <= 1.0 for f in self.stage_count_fractions)
                or 1.0 not in self.stage_count_fractions or not 0.0 <= self.stage_count_max_cost < 1.0):
            raise ValueError("stage_count_fractions must lie in (0, 1] and hold 1.0; stage_count_max_cost in [0, 1)")
        if any(not 0.0 <= x <= 1.0 for x in self.rerank_lambdas) or not 0.0 <= self.rerank_max_cost < 1.0:
            raise ValueError("rerank_lambdas must lie in [0, 1] and rerank_max_cost in [0, 1)")
        if self.recall_fit_users < 0:
            raise ValueError(f"recall_fit_users must be >= 0, got {self.recall_fit_users}")
        if self.next_top_m < 1 or self.recent_days <= 0:
            raise ValueError("next_top_m must be >= 1 and recent_days > 0")
        if self.engine not in ("local", "ray"):
            raise ValueError(f'engine must be "local" or "ray", got {self.engine!r}')
        self.ray.validate()
        self.rank_replay.validate()
        self.ranker.validate()
        self.prerank.validate()
        self.hnsw.validate()
        self.sequence.validate()
        if self.dataset == "synthetic":
            self.synthetic.validate()
        for name in ("two_tower", "deepfm", "mmoe", "mmoe_teacher", "prerank"):
            try:
                getattr(self, name).sparse.validate()
            except ValueError as exc:
                raise ValueError(f"{name}.{exc}") from None
