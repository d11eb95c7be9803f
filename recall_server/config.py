"""Configuration of the recall server process."""
from __future__ import annotations

from dataclasses import dataclass, field

from common.server import ServerOptions


@dataclass
class RecallConfig:
    """Everything the recall server reads at start-up; load with ``common.config.load_config``."""

    snapshot: str = "snapshots"          # snapshot root (follows CURRENT) or a version directory
    server: ServerOptions = field(default_factory=ServerOptions)
    default_n: int = 1000                # candidates returned when the request leaves n at 0
    max_n: int = 5000
    max_exclude: int = 10000             # longest exclude / history list a request may carry
    channels: list[str] = field(default_factory=lambda: ["ann", "itemcf", "swing", "popular", "segment_popular",
                                                         "content"])
    quotas: dict[str, int] = field(default_factory=lambda: {"ann": 600, "itemcf": 300, "swing": 200, "popular": 100,
                                                            "segment_popular": 100, "content": 50})
    # merge: weighted reciprocal-rank fusion (kernels.merge); tuned on ML-100K's held-out split so that the
    # merged list beats every single channel at recall@50/200; popular channels mostly fill the tail
    fusion: str = "rrf"                  # "rrf" (sum of w / (rrf_k + rank)) or "max" (best w * (1 - rank/quota))
    rrf_k: float = 30.0
    weights: dict[str, float] = field(default_factory=lambda: {"ann": 1.0, "itemcf": 0.25, "swing": 0.25,
                                                               "popular": 0.05, "segment_popular": 0.05,
                                                               "content": 0.05})
    hnsw_ef: int = 200                   # query-time ef; raised to k when k is larger
    recency_decay: float = 0.9           # i2i weight of the item t steps before the latest: decay**t
    onnx_threads: int = 1
    reload_poll_s: float = 2.0           # check snapshot CURRENT this often (common.reload); 0: only on SIGHUP
    # recall switches last (its reply names the version the gateway, rank and rerank then use): it holds a
    # loaded new version back this long, > the other servers' reload_poll_s + load time (common.reload)
    reload_activate_delay_s: float = 5.0

    def validate(self) -> None:
        """Reject inconsistent settings with a message naming the key."""
        from recall_server.channels import known_channels

        self.server.validate()
        known = known_channels()
        for name in self.channels:
            if name not in known:
                raise ValueError(f"channels: unknown channel '{name}'; known: {', '.join(known)}")
            if self.quotas.get(name, 0) < 0:
                raise ValueError(f"quotas.{name} must be >= 0")
            if not 0.0 <= self.weights.get(name, 1.0) < float("inf"):
                raise ValueError(f"weights.{name} must be a finite number >= 0")
        if self.fusion not in ("rrf", "max"):
            raise ValueError(f"fusion must be 'rrf' or 'max', got {self.fusion!r}")
        if not self.rrf_k > 0:
            raise ValueError(f"rrf_k must be > 0, got {self.rrf_k}")
        if not 1 <= self.default_n <= self.max_n:
            raise ValueError(f"default_n must be in 1..max_n ({self.max_n}), got {self.default_n}")
        if not 0.0 < self.recency_decay <= 1.0:
            raise ValueError(f"recency_decay must be in (0, 1], got {self.recency_decay}")
