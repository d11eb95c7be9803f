"""gRPC Rank servicer: validate, call ``rank``, encode."""
from __future__ import annotations

import sys

import grpc
import numpy as np

from common import wire
from common.client_text import too_long
from common.stage_servicer import StageServicer, serve_stage
from feedback.realtime import Realtime
from recsys.stage.v1 import rank_service_pb2 as rank_pb2
from recsys.stage.v1 import rank_service_pb2_grpc as rank_grpc
from rank_server.config import RankConfig
from rank_server.fusion import check_fusion
from rank_server.rank import RankState, RecallInfo, load_state, rank


def self_test(state: RankState, config: RankConfig) -> None:
    """Score real batches once before serving a state (a cold user, and a known one so the history-feature
    kernels are compiled or loaded before the first request needs them, not during it); refuse one that
    produces non-finite scores."""
    n = min(state.items.n_items, config.prerank_keep + 50)   # past the pre-rank cut, so pre-rank runs too
    users = state.snapshot.features.array("user_ids")
    expected = n if state.prerank is None else min(n, config.prerank_keep)
    for user_id in ("", *([str(users[0])] if users.size else [])):
        result = rank(state, config, user_id, np.arange(n, dtype=np.int32), 0)
        if not np.isfinite(result.fused).all() or result.fused.size != expected:
            raise ValueError(f"self-test: model {state.model.path} produced invalid scores")


class RankServicer(StageServicer, rank_grpc.RankServiceServicer):
    """Thin adapter between the Rank proto and ``rank_server.rank.rank``."""

    state_loader = staticmethod(load_state)
    state_check = staticmethod(self_test)
    feedback_reader = Realtime

    def describe(self, state: RankState) -> dict:
        return {"model": str(state.model.path)}

    def Rank(self, request, context):
        problem = too_long([("user_id", request.user_id), ("snapshot_version", request.snapshot_version),
                            ("fusion task names", list(request.fusion))], self.config.server.max_string_len)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        state = self.pinned(request.snapshot_version, context)
        version = state.snapshot.version
        try:
            item_idx = wire.decode(request.item_idx, wire.INT32, "item_idx")
        except wire.WireError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if item_idx.size > self.config.max_candidates:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"item_idx has {item_idx.size} candidates, the limit is {self.config.max_candidates}")
        if request.context.timestamp < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "context.timestamp must be >= 0")
        if request.prerank_keep < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"prerank_keep must be >= 0, got {request.prerank_keep}")
        if request.fusion:  # an experiment's fusion exponents over the configured ones
            problem = check_fusion(dict(request.fusion), state.model.task_names, self.config.server.max_echo_chars)
            if problem:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            recall = recall_info(request, item_idx.size)
        except wire.WireError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        result = rank(state, self.config, request.user_id, item_idx, request.context.timestamp, recall,
                      dict(request.fusion), self.realtime, request.prerank_keep, request.prerank_order)
        return rank_pb2.RankResponse(
            item_idx=wire.encode(result.item_idx, wire.INT32),
            fused=wire.encode(result.fused, wire.FLOAT32),
            task_names=result.task_names,
            task_scores=wire.encode(result.task_scores, wire.FLOAT32),
            dropped_unknown=result.dropped_unknown,
            snapshot_version=version,
        )


def recall_info(request, n: int) -> RecallInfo:
    """The request's optional recall arrays, each empty or one entry per candidate (WireError otherwise)."""
    masks = wire.decode(request.channel_masks, wire.UINT32, "channel_masks", n) if request.channel_masks else None
    scores = wire.decode(request.recall_scores, wire.FLOAT32, "recall_scores", n) if request.recall_scores else None
    if scores is not None and not np.isfinite(scores).all():
        raise wire.WireError("recall_scores must be finite")
    if len(request.channel_names) > 32:
        raise wire.WireError(f"channel_names has {len(request.channel_names)} names, at most 32 (one bit each)")
    return RecallInfo(masks, list(request.channel_names) or None, scores)


def main(argv: list[str] | None = None) -> int:
    return serve_stage("rank", RankConfig, argv, "Rank server: ONNX ranking and score fusion",
                       rank_grpc.add_RankServiceServicer_to_server, RankServicer, "recsys.stage.v1.RankService")


if __name__ == "__main__":
    sys.exit(main())
