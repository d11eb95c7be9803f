"""Configuration of the rank server process."""
from __future__ import annotations

from dataclasses import dataclass, field

from common.server import ServerOptions


@dataclass
class RankConfig:
    """Everything the rank server reads at start-up."""

    snapshot: str = "snapshots"
    server: ServerOptions = field(default_factory=ServerOptions)
    model: str = "models/rank_deepfm.onnx"   # path inside the snapshot
    max_candidates: int = 5000
    onnx_threads: int = 1
    # fused = prod_t p_t ** fusion[t]; tasks missing here get exponent 0 (ignored)
    fusion: dict[str, float] = field(default_factory=lambda: {"like": 1.0})

    def validate(self) -> None:
        self.server.validate()
        if self.max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {self.max_candidates}")
        if self.onnx_threads < 1:
            raise ValueError(f"onnx_threads must be >= 1, got {self.onnx_threads}")
        for task, weight in self.fusion.items():
            if weight < 0:
                raise ValueError(f"fusion.{task} must be >= 0, got {weight}")
