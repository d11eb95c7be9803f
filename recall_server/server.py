"""gRPC Recall servicer: validate the request, call ``recall``, encode the reply."""
from __future__ import annotations

import os
import sys

import grpc
import numpy as np

from common import wire
from common.client_text import too_long
from common.item_filter import FilterError, compile_filters
from common.stage_servicer import StageServicer, serve_stage
from feedback.realtime import Realtime
from recsys.stage.v1 import recall_service_pb2 as recall_pb2
from recsys.stage.v1 import recall_service_pb2_grpc as recall_grpc
from recall_server.config import RecallConfig, check_quotas
from recall_server.filtering import Eligible, eligible_items
from recall_server.recall import recall
from recall_server.state import RecallState, load_state


def self_test(state: RecallState, config: RecallConfig) -> None:
    """Run real queries once before serving a state: compiles kernels, checks the artifacts agree."""
    known = str(state.snapshot.features.array("user_ids")[0])
    for user_id in (known, "\x00self-test-unknown-user"):
        result = recall(state, config, user_id, config.default_n)
        if result.ids.size == 0 or np.unique(result.ids).size != result.ids.size:
            raise ValueError(f"self-test recall for user {user_id!r} returned no or duplicate candidates")


class RecallServicer(StageServicer, recall_grpc.RecallServiceServicer):
    """Thin adapter between the Recall proto and ``recall_server.recall.recall``."""

    state_loader = staticmethod(load_state)
    state_check = staticmethod(self_test)
    feedback_reader = Realtime

    def describe(self, state: RecallState) -> dict:
        return {"n_items": state.n_items}

    def validate(self, request: recall_pb2.RecallRequest) -> str | None:
        """The first problem with ``request``, or None."""
        cfg = self.config
        if not request.user_id:
            return "user_id must not be empty"
        if not 0 <= request.n <= cfg.max_n:
            return f"n must be in 1..{cfg.max_n} (0 for the default {cfg.default_n}), got {request.n}"
        if len(request.exclude_item_ids) > cfg.max_exclude:
            return f"exclude_item_ids has {len(request.exclude_item_ids)} ids, the limit is {cfg.max_exclude}"
        if len(request.history_item_ids) > cfg.max_exclude:
            return f"history_item_ids has {len(request.history_item_ids)} ids, the limit is {cfg.max_exclude}"
        return (too_long([("user_id", request.user_id), ("history_item_ids", request.history_item_ids),
                          ("exclude_item_ids", request.exclude_item_ids), ("snapshot_version", request.snapshot_version),
                          ("quotas channel names", list(request.quotas))],
                         cfg.server.max_string_len)
                or check_quotas(dict(request.quotas), cfg.channels, cfg.max_quota, cfg.server.max_echo_chars))

    def Recall(self, request, context):
        problem = self.validate(request)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        state = self.pinned(request.snapshot_version, context)
        try:
            eligible = self.eligible(state, request.filters)
        except FilterError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        context.set_trailing_metadata((("x-worker-pid", str(os.getpid())),))  # which worker served (SO_REUSEPORT)
        result = recall(state, self.config, request.user_id, request.n or self.config.default_n,
                        history_override=list(request.history_item_ids) if request.override_history else None,
                        exclude_ids=list(request.exclude_item_ids), quotas=dict(request.quotas), eligible=eligible,
                        realtime=self.realtime, exposure_filter=not request.include_exposed)
        return recall_pb2.RecallResponse(
            item_idx=wire.encode(result.ids, wire.INT32),
            scores=wire.encode(result.scores, wire.FLOAT32),
            channel_masks=wire.encode(result.channel_masks, wire.UINT32),
            channel_names=result.channel_names,
            snapshot_version=state.snapshot.version,
            cold_start=result.cold_start,
            eligible_items=result.eligible_items,
        )

    def eligible(self, state: RecallState, filters) -> Eligible | None:
        """The eligible set of the request's filters (cached per distinct filter); FilterError naming the field."""
        if not filters:
            return None
        key = b"".join(len(b).to_bytes(4, "little") + b for b in (f.SerializeToString(deterministic=True)
                                                                  for f in filters))
        opts = self.config.server
        return state.eligible_cache.get(key, lambda: eligible_items(
            compile_filters(filters, state.attributes, self.config.filters, opts.max_echo_chars)))


def main(argv: list[str] | None = None) -> int:
    return serve_stage("recall", RecallConfig, argv, "Recall server: multi-channel candidate generation",
                       recall_grpc.add_RecallServiceServicer_to_server, RecallServicer, "recsys.stage.v1.RecallService")


if __name__ == "__main__":
    sys.exit(main())
