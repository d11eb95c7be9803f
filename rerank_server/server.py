"""gRPC Rerank servicer: validate, call ``rerank``, encode."""
from __future__ import annotations

import sys
from dataclasses import dataclass

import grpc
import numpy as np

from common import wire
from common.client_text import too_long
from common.log import Logger
from common.snapshot import Snapshot
from common.stage_servicer import StageServicer, serve_stage
from recsys.stage.v1 import rerank_service_pb2 as rerank_pb2
from recsys.stage.v1 import rerank_service_pb2_grpc as rerank_grpc
from rerank_server.config import RerankConfig
from rerank_server.items import load_item_attributes
from rerank_server.rerank import ParamError, rerank, rerank_ruled, resolve_params

UINT8 = np.dtype("u1")


@dataclass
class RerankState:
    """The rerank server's view of one snapshot: embeddings and rule attributes of every item."""

    snapshot: Snapshot
    item_emb: np.ndarray
    items: object          # rerank_server.items attributes, built once so requests only gather them
    config: RerankConfig   # the server's config with this snapshot's fitted defaults (RerankConfig.for_snapshot)


class RerankServicer(StageServicer, rerank_grpc.RerankServiceServicer):
    """Thin adapter between the Rerank proto and ``rerank_server.rerank.rerank``."""

    def __init__(self, config: RerankConfig, log: Logger):
        self.rules = config.rules.params()
        super().__init__(config, log)

    def load_state(self, snapshot: Snapshot) -> RerankState:
        return RerankState(snapshot, snapshot.load_array("item_emb.npy"),
                           load_item_attributes(snapshot, self.config.rules.blocked_item_ids),
                           self.config.for_snapshot(snapshot))

    def describe(self, state: RerankState) -> dict:
        return {"n_items": int(state.item_emb.shape[0]), "rules": self.config.rules.enabled,
                "method": state.config.method, "mmr_lambda": state.config.mmr_lambda}

    def self_test(self, state: RerankState) -> None:
        """Run every method once before serving a state (compiles the kernels)."""
        n = min(state.item_emb.shape[0], 50)
        idx = np.arange(n, dtype=np.int32)
        scores = np.linspace(1.0, 0.0, n, dtype=np.float32)
        for method in ("NONE", "MMR", "DPP", "DPP_WINDOW"):
            positions = rerank(state.item_emb, idx, scores, min(10, n), resolve_params(state.config, method),
                               state.items, self.rules)
            if np.unique(positions).size != positions.size:
                raise ValueError(f"self-test: {method} returned duplicate positions")

    def Rerank(self, request, context):
        problem = too_long([("snapshot_version", request.snapshot_version)], self.config.server.max_string_len)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        state = self.pinned(request.snapshot_version, context)
        cfg = state.config
        version = state.snapshot.version
        if not 1 <= request.k <= cfg.max_k:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"k must be in 1..{cfg.max_k}, got {request.k}")
        try:
            item_idx = wire.decode(request.item_idx, wire.INT32, "item_idx")
            scores = wire.decode(request.scores, wire.FLOAT32, "scores", length=item_idx.size)
            promoted = (wire.decode(request.promoted, UINT8, "promoted", length=item_idx.size) != 0
                        if request.promoted else None)
            exclude_idx = wire.decode(request.exclude_idx, wire.INT32, "exclude_idx")
        except wire.WireError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if item_idx.size > cfg.max_candidates:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"item_idx has {item_idx.size} candidates, the limit is {cfg.max_candidates}")
        if item_idx.size and (item_idx.min() < 0 or item_idx.max() >= state.item_emb.shape[0]):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"item_idx holds ids outside 0..{state.item_emb.shape[0] - 1} of snapshot {version}")
        if not np.isfinite(scores).all():
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "scores contain NaN or inf")
        if request.method not in rerank_pb2.RerankMethod.values():  # proto3 enums are open: any int32 arrives
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"method: unknown value {request.method}; known: "
                          + ", ".join(rerank_pb2.RerankMethod.keys()))
        p = request.params
        try:
            params = resolve_params(
                cfg, method_name(request.method),
                p.mmr_lambda if p.HasField("mmr_lambda") else None,
                p.alpha if p.HasField("alpha") else None,
                p.window if p.HasField("window") else None,
                p.epsilon if p.HasField("epsilon") else None)
        except ParamError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        result = rerank_ruled(state.item_emb, item_idx, scores, request.k, params, state.items, self.rules,
                              promoted, exclude_idx)
        return rerank_pb2.RerankResponse(positions=wire.encode(result.positions, wire.INT32),
                                         method=method_value(params.method),
                                         snapshot_version=version, relaxed_rules=result.relaxed_rules)


METHOD_PREFIX = "RERANK_METHOD_"


def method_name(value: int) -> str | None:
    """The config name of a ``RerankMethod`` value ("MMR" for ``RERANK_METHOD_MMR``); None when unspecified."""
    return rerank_pb2.RerankMethod.Name(value).removeprefix(METHOD_PREFIX) if value else None


def method_value(name: str) -> int:
    """The ``RerankMethod`` value of a config method name ("MMR" → ``RERANK_METHOD_MMR``)."""
    return rerank_pb2.RerankMethod.Value(METHOD_PREFIX + name)


def main(argv: list[str] | None = None) -> int:
    return serve_stage("rerank", RerankConfig, argv, "Rerank server: MMR / DPP diversity",
                       rerank_grpc.add_RerankServiceServicer_to_server, RerankServicer, "recsys.stage.v1.RerankService")


if __name__ == "__main__":
    sys.exit(main())
