"""gRPC Rank servicer: validate, call ``rank``, encode."""
from __future__ import annotations

import sys

import grpc
import numpy as np

from common import wire
from common.log import Logger
from common.snapshot import Snapshot
from protos import recsys_pb2, recsys_pb2_grpc
from rank_server.config import RankConfig
from rank_server.rank import load_state, rank


class RankServicer(recsys_pb2_grpc.RankServicer):
    """Thin adapter between the Rank proto and ``rank_server.rank.rank``."""

    def __init__(self, config: RankConfig, log: Logger):
        self.config = config
        self.log = log
        self.state = load_state(Snapshot.open(config.snapshot), config)
        log.info("snapshot_loaded", version=self.state.snapshot.version, model=str(self.state.model.path))
        self.self_test()

    def self_test(self) -> None:
        """Score a real batch once before reporting SERVING; refuse to serve non-finite scores."""
        n = min(self.state.items.n_items, 200)
        result = rank(self.state, self.config, "", np.arange(n, dtype=np.int32), 0)
        if not np.isfinite(result.fused).all() or result.fused.size != n:
            raise ValueError(f"self-test: model {self.state.model.path} produced invalid scores")

    def Rank(self, request, context):
        version = self.state.snapshot.version
        if request.snapshot_version and request.snapshot_version != version:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"candidates belong to snapshot {request.snapshot_version}, this server serves {version}")
        try:
            item_idx = wire.decode(request.item_idx, wire.INT32, "item_idx")
        except wire.WireError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if item_idx.size > self.config.max_candidates:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"item_idx has {item_idx.size} candidates, the limit is {self.config.max_candidates}")
        if request.context.timestamp < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "context.timestamp must be >= 0")
        result = rank(self.state, self.config, request.user_id, item_idx, request.context.timestamp)
        return recsys_pb2.RankResponse(
            item_idx=wire.encode(result.item_idx, wire.INT32),
            fused=wire.encode(result.fused, wire.FLOAT32),
            task_names=result.task_names,
            task_scores=wire.encode(result.task_scores, wire.FLOAT32),
            dropped_unknown=result.dropped_unknown,
            snapshot_version=version,
        )


def build(config: RankConfig, log: Logger):
    return [(recsys_pb2_grpc.add_RankServicer_to_server, RankServicer(config, log), "recsys.v1.Rank")]


def main(argv: list[str] | None = None) -> int:
    from common.server import run_server

    return run_server("rank", RankConfig, argv, "Rank server: ONNX ranking and score fusion", build)


if __name__ == "__main__":
    sys.exit(main())
