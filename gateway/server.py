"""gRPC Gateway servicer: validate Recommend, run the funnel under its deadline, build the reply."""
from __future__ import annotations

import sys
import time
import uuid

import grpc
import numpy as np

from common.log import Logger
from common.server import channel_options
from common.snapshot import Snapshot
from gateway.config import GatewayConfig
from gateway.funnel import Stages, run_funnel
from protos import recsys_pb2, recsys_pb2_grpc


class GatewayServicer(recsys_pb2_grpc.GatewayServicer):
    """Thin adapter between Recommend and ``gateway.funnel.run_funnel``; channels are long-lived."""

    def __init__(self, config: GatewayConfig, log: Logger):
        self.config = config
        self.log = log
        self.snapshot = Snapshot.open(config.snapshot)
        self.popular = self.snapshot.load_array("popular.npy").astype(np.int32)
        self.titles = self.snapshot.features.array("item_titles")
        options = channel_options(config.server.max_message_mb)
        self.channels = [grpc.insecure_channel(addr, options=options)
                         for addr in (config.recall_addr, config.rank_addr, config.rerank_addr)]
        recall, rank, rerank = self.channels
        self.stages = Stages(recsys_pb2_grpc.RecallStub(recall).Recall, recsys_pb2_grpc.RankStub(rank).Rank,
                             recsys_pb2_grpc.RerankStub(rerank).Rerank)
        log.info("snapshot_loaded", version=self.snapshot.version, recall=config.recall_addr,
                 rank=config.rank_addr, rerank=config.rerank_addr)

    def validate(self, request: recsys_pb2.RecommendRequest) -> str | None:
        """The first problem with ``request``, naming the field, or None."""
        cfg = self.config
        if not request.user_id:
            return "user_id must not be empty"
        if len(request.user_id) > cfg.max_user_id_len:
            return f"user_id is longer than {cfg.max_user_id_len} characters"
        if not 1 <= request.k <= cfg.max_k:
            return f"k must be in 1..{cfg.max_k}, got {request.k}"
        if len(request.exclude_item_ids) > cfg.max_exclude:
            return f"exclude_item_ids has {len(request.exclude_item_ids)} ids, the limit is {cfg.max_exclude}"
        if not 0 <= request.deadline_ms <= cfg.max_deadline_ms:
            return f"deadline_ms must be in 0..{cfg.max_deadline_ms}, got {request.deadline_ms}"
        if request.context.timestamp < 0:
            return "context.timestamp must be >= 0"
        return None

    def Recommend(self, request, context):
        start = time.monotonic()
        problem = self.validate(request)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        request_id = dict(context.invocation_metadata()).get("x-request-id") or uuid.uuid4().hex
        deadline = start + (request.deadline_ms or self.config.deadline_ms) / 1000.0
        remaining = context.time_remaining()
        if remaining is not None:  # the caller's gRPC deadline wins when tighter
            deadline = min(deadline, start + remaining)
        result = run_funnel(self.stages, self.snapshot, self.popular, self.config, request.user_id, request.k,
                            request.context, list(request.exclude_item_ids), deadline,
                            metadata=(("x-request-id", request_id),), log=self.log)
        total_ms = (time.monotonic() - start) * 1000.0
        timings = [recsys_pb2.StageTiming(stage=s, ms=ms) for s, ms in result.timings_ms.items()]
        timings.append(recsys_pb2.StageTiming(stage="total", ms=total_ms))
        self.log.debug("recommend", request_id=request_id, user_id=request.user_id, k=request.k,
                       degraded=result.degraded, total_ms=round(total_ms, 3))
        return recsys_pb2.RecommendResponse(
            item_ids=self.snapshot.item_ids[result.item_idx].tolist(),
            scores=result.scores.tolist(),
            task_names=result.task_names,
            task_scores=result.task_scores.reshape(-1).tolist(),
            channel_names=result.channel_names,
            channel_masks=result.channel_masks.tolist(),
            stage_timings=timings,
            degraded=result.degraded,
            snapshot_version=self.snapshot.version,
            request_id=request_id,
            titles=self.titles[result.item_idx].tolist() if request.debug else [],
            relaxed_rules=result.relaxed_rules,
        )


def build(config: GatewayConfig, log: Logger):
    return [(recsys_pb2_grpc.add_GatewayServicer_to_server, GatewayServicer(config, log), "recsys.v1.Gateway")]


def main(argv: list[str] | None = None) -> int:
    from common.server import run_server

    return run_server("gateway", GatewayConfig, argv, "Gateway: Recommend under a deadline", build)


if __name__ == "__main__":
    sys.exit(main())
