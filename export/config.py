"""Configuration of one export run."""
from __future__ import annotations

from dataclasses import dataclass, field

from export.deepfm import DeepFMConfig
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
    dataset: str = "ml-100k"               # "ml-100k", or the file stem of a generic atomic dataset
    data_dir: str = ""                     # empty: ../shared/data/ml-100k, $RECSYS_DATA_DIR or the recbole wheel
    holdout_frac: float = 0.2              # per user, the latest fraction of interactions is held out
    itemcf_top_m: int = 100
    popular_n: int = 2000
    eval_k: list[int] = field(default_factory=lambda: [50, 200])
    make_current: bool = True
    threads: int = 2
    two_tower: TwoTowerConfig = field(default_factory=TwoTowerConfig)
    deepfm: DeepFMConfig = field(default_factory=DeepFMConfig)
    hnsw: HnswConfig = field(default_factory=HnswConfig)

    def validate(self) -> None:
        if not 0.0 < self.holdout_frac < 1.0:
            raise ValueError(f"holdout_frac must be in (0, 1), got {self.holdout_frac}")
        if self.itemcf_top_m < 1 or self.popular_n < 1:
            raise ValueError("itemcf_top_m and popular_n must be >= 1")
        if not self.eval_k or min(self.eval_k) < 1:
            raise ValueError("eval_k must list positive cut-offs")
