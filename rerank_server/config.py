"""Configuration of the rerank server process."""
from __future__ import annotations

from dataclasses import dataclass, field

from common.server import ServerOptions

METHODS = ("NONE", "MMR", "DPP", "DPP_WINDOW")


@dataclass
class RerankConfig:
    """Everything the rerank server reads at start-up; per-request params override the defaults."""

    snapshot: str = "snapshots"
    server: ServerOptions = field(default_factory=ServerOptions)
    method: str = "MMR"
    mmr_lambda: float = 0.7      # weight of relevance against similarity to what is already chosen
    dpp_alpha: float = 3.0       # q_i = exp(alpha * relevance): larger favours relevance
    window: int = 0              # sliding window for MMR / DPP_WINDOW (0: whole list; DPP_WINDOW needs > 0)
    dpp_window: int = 10
    epsilon: float = 1e-6        # DPP stops when the marginal gain falls below this
    max_k: int = 200
    max_candidates: int = 5000

    def validate(self) -> None:
        self.server.validate()
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise ValueError(f"mmr_lambda must be in [0, 1], got {self.mmr_lambda}")
        if self.dpp_alpha < 0:
            raise ValueError(f"dpp_alpha must be >= 0, got {self.dpp_alpha}")
        if self.window < 0 or self.dpp_window < 1:
            raise ValueError("window must be >= 0 and dpp_window >= 1")
