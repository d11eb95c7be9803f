"""Configuration of one export run."""
from __future__ import annotations

from dataclasses import dataclass, field

from export.deepfm import DeepFMConfig
from export.mmoe import DistillConfig, MMoEConfig, MMoETeacherConfig
from export.prerank import PrerankConfig
from export.synthetic import SyntheticConfig
from export.two_tower import TwoTowerConfig


@dataclass
class HnswConfig:
    """hnswlib build parameters (query-time ef lives in the recall server's config)."""

    M: int = 16
    ef_construction: int = 200
    ef_eval: int = 200


@dataclass
class ExportConfig:
    """Everything ``python -m export`` reads; load with ``common.config.load_config``."""

    out: str = "snapshots"                 # snapshot root; the new version lands in out/<version>
    dataset: str = "ml-100k"               # "ml-100k", "synthetic" (see [synthetic]), or a generic atomic file stem
    data_dir: str = ""                     # empty: ../shared/data/ml-100k, $RECSYS_DATA_DIR or the recbole wheel
    holdout_frac: float = 0.2              # per user, the latest fraction of interactions is held out
    itemcf_top_m: int = 100
    swing_top_m: int = 100
    swing_alpha: float = 1.0               # 1 / (alpha + |I(u) & I(v)|)
    swing_user_damping: float = 0.5        # user weight |I(u)| ** -damping
    swing_max_users: int = 1000            # users per item entering Swing's pair loop (0: no cap)
    popular_n: int = 2000
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
    make_current: bool = True
    threads: int = 2
    two_tower: TwoTowerConfig = field(default_factory=TwoTowerConfig)
    deepfm: DeepFMConfig = field(default_factory=DeepFMConfig)
    mmoe: MMoEConfig = field(default_factory=MMoEConfig)              # the distilled student (served)
    mmoe_teacher: MMoETeacherConfig = field(default_factory=MMoETeacherConfig)  # the large teacher
    distill: DistillConfig = field(default_factory=DistillConfig)
    prerank: PrerankConfig = field(default_factory=PrerankConfig)  # pre-rank distilled from the teacher
    hnsw: HnswConfig = field(default_factory=HnswConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # used when dataset = "synthetic"

    def validate(self) -> None:
        if not 0.0 < self.holdout_frac < 1.0:
            raise ValueError(f"holdout_frac must be in (0, 1), got {self.holdout_frac}")
        if self.itemcf_top_m < 1 or self.popular_n < 1:
            raise ValueError("itemcf_top_m and popular_n must be >= 1")
        if self.swing_top_m < 1 or self.segment_popular_n < 1:
            raise ValueError("swing_top_m and segment_popular_n must be >= 1")
        if self.swing_alpha < 0 or self.swing_user_damping < 0 or self.swing_max_users < 0:
            raise ValueError("swing_alpha, swing_user_damping and swing_max_users must be >= 0")
        if list(self.segment_edges) != sorted(self.segment_edges):
            raise ValueError("segment_edges must be ascending")
        if not self.eval_k or min(self.eval_k) < 1:
            raise ValueError("eval_k must list positive cut-offs")
        if self.eval_users < 0 or self.max_train_rows < 0 or self.content_top_m < 1:
            raise ValueError("eval_users and max_train_rows must be >= 0, content_top_m >= 1")
        if self.dataset == "synthetic":
            self.synthetic.validate()
        for name in ("two_tower", "deepfm", "mmoe", "mmoe_teacher", "prerank"):
            try:
                getattr(self, name).sparse.validate()
            except ValueError as exc:
                raise ValueError(f"{name}.{exc}") from None
