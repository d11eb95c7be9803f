"""Configuration of the rank server process."""
from __future__ import annotations

from dataclasses import dataclass, field

from common.server_options import ServerOptions
from feedback.config import FeedbackConfig


RANK_ORDERS = ("auto", "model", "prerank", "recall")


@dataclass
class RankConfig:
    """Everything the rank server reads at start-up."""

    snapshot: str = "snapshots"
    server: ServerOptions = field(default_factory=ServerOptions)
    # path inside the snapshot; "auto": the manifest's rank_serving_model (the int8 MMoE student when
    # quantization kept quality, else the fp32 student: export records the choice)
    model: str = "auto"
    max_candidates: int = 5000
    # pre-rank (docs/ARCHITECTURE.md §1): when more than prerank_keep candidates arrive, this cheap model (path inside
    # the snapshot) scores them all and only its top prerank_keep go to the ranker. A model with the rank
    # tasks as outputs (the pre-rank distilled from the MMoE teacher) is fused with `fusion` like the ranker;
    # a single-output one (e.g. models/rank_deepfm.onnx, label-trained) is used as is. "auto": the manifest's
    # prerank_serving_model (models/prerank.onnx, or its int8 copy when that was faster at equal quality);
    # "" turns pre-rank off
    prerank_model: str = "auto"
    prerank_keep: int = 200
    onnx_threads: int = 1
    reload_poll_s: float = 2.0           # check snapshot CURRENT this often (common.reload); 0: only on SIGHUP
    # score fusion (rank_server.fusion): "auto" takes the form and weights export fitted on the validation
    # split (manifest rank_fusion); a form named here uses only the weights below. `fusion` overrides
    # per-task weights either way (e.g. {"like": 0.5}); rating is the model's rating / 5 in [0, 1]
    fusion_form: str = "auto"
    fusion: dict[str, float] = field(default_factory=dict)
    # what orders the candidates that pre-rank keeps: "model" (the ranker), "prerank" (the pre-rank's own fused
    # scores; the ranker is not run), "recall" (recall's own order, its first prerank_keep candidates scored by
    # recall's merged score; task outputs from the pre-rank), or "auto": the manifest's rank_order, which export
    # sets to the best of the three on validation, the later stage on ties (export.ranking.ranker.choose_rank_order)
    order: str = "auto"
    # the real-time state (feedback.realtime): the candidate features read the history with the user's
    # clicks since the snapshot; feedback.path "" is off. Must name the gateway's feedback.path
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)

    def validate(self) -> None:
        self.server.validate()
        self.feedback.validate()
        if self.max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {self.max_candidates}")
        if self.prerank_keep < 1:
            raise ValueError(f"prerank_keep must be >= 1, got {self.prerank_keep}")
        if self.onnx_threads < 1:
            raise ValueError(f"onnx_threads must be >= 1, got {self.onnx_threads}")
        from rank_server.fusion import FORMS

        if self.order not in RANK_ORDERS:
            raise ValueError(f"order must be one of {', '.join(RANK_ORDERS)}, got {self.order!r}")
        if self.fusion_form not in ("auto", *FORMS):
            raise ValueError(f"fusion_form must be auto or one of {', '.join(FORMS)}, got {self.fusion_form!r}")
        for task, weight in self.fusion.items():
            if weight < 0:
                raise ValueError(f"fusion.{task} must be >= 0, got {weight}")
