"""The gateway's public services: validate Recommend, run the funnel under its deadline, build the reply.

``recsys.v2.RecommendService`` is the API; the deprecated ``recsys.v1.Gateway`` is served beside it for one
release (same funnel, the old parallel-array reply, no filters). Only these two public services (plus health and
reflection) are registered here, so the gateway's reflection never lists the internal stage services.
"""
from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
import time

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import request_id as request_ids
from common.client_text import too_long
from common.item_filter import AttributeTable, FilterError, ItemFilter, compile_filters, load_attribute_table
from common.log import Logger, request_id_var
from common.metrics import observe_feedback, observe_recommend
from common.reload import Reloader, version_service
from common.server import channel_options
from common.snapshot import Snapshot
from common.tls import open_channel
from feedback.events import Event
from feedback.ingest import check_batch, ingest
from feedback.store import FeedbackStore, FeedbackStoreError
from gateway.config import GatewayConfig
from gateway.experiments import assign, check_tasks
from gateway.funnel import Stages, run_funnel
from gateway.stage_target import stage_target
from recsys.stage.v1 import recall_service_pb2 as recall_pb2
from recsys.stage.v1 import recall_service_pb2_grpc as recall_grpc
from recsys.stage.v1 import rank_service_pb2_grpc as rank_grpc
from recsys.stage.v1 import rerank_service_pb2_grpc as rerank_grpc
from recsys.v1 import recsys_pb2
from recsys.v1 import recsys_pb2_grpc
from recsys.v2 import recommend_service_pb2 as recommend_pb2
from recsys.v2 import recommend_service_pb2_grpc as recommend_grpc


@dataclass
class GatewayState:
    """What the gateway keeps of one snapshot: ids (in ``snapshot``), the popular fallback, titles, the
    filterable item attributes."""

    snapshot: Snapshot
    popular: np.ndarray
    titles: np.ndarray
    attributes: AttributeTable | None = None


@dataclass
class Served:
    """One Recommend call's outcome, before it becomes a v2 or v1 reply."""

    result: object            # gateway.funnel.FunnelResult
    state: GatewayState
    request_id: str
    timings: dict[str, float]
    arms: list[str]


class RoundRobin:
    """Calls one stage method through several channels in turn (``next`` on a count is atomic under the GIL)."""

    def __init__(self, methods: list):
        self.methods = methods
        self._turn = itertools.count()

    def __call__(self, request, **kwargs):
        return self.methods[next(self._turn) % len(self.methods)](request, **kwargs)


class GatewayServicer(recommend_grpc.RecommendServiceServicer):
    """Thin adapter between ``recsys.v2`` Recommend and ``gateway.funnel.run_funnel``; channels are long-lived."""

    def __init__(self, config: GatewayConfig, log: Logger):
        self.config = config
        self.log = log
        # reconnect within a second once a restarted stage is back (gRPC's default backoff grows to 120 s)
        options = [*channel_options(config.server.max_message_mb), ("grpc.initial_reconnect_backoff_ms", 200),
                   ("grpc.max_reconnect_backoff_ms", 1000)]
        # one connection per channel (local subchannel pool): the kernel balances SO_REUSEPORT workers by
        # connection, so a stage with N workers gets N channels and calls go round-robin over them
        pooled = [*options, ("grpc.use_local_subchannel_pool", 1)]
        self.channels = {}
        for stage in ("recall", "rank", "rerank"):
            # an address list or dns:/// name: round_robin over the replicas with health checking
            addr = getattr(config, f"{stage}_addr")
            target, balancing = stage_target(addr, f"{stage}_addr")
            self.channels[addr] = [open_channel(target, [*pooled, *balancing], config.stage_tls_ca,
                                                config.stage_tls_cert, config.stage_tls_key)
                                   for _ in range(config.channels_per_stage)]
        self.stages = Stages(
            RoundRobin([recall_grpc.RecallServiceStub(c).Recall for c in self.channels[config.recall_addr]]),
            RoundRobin([rank_grpc.RankServiceStub(c).Rank for c in self.channels[config.rank_addr]]),
            RoundRobin([rerank_grpc.RerankServiceStub(c).Rerank for c in self.channels[config.rerank_addr]]))
        log.info("stages", recall=config.recall_addr, rank=config.rank_addr, rerank=config.rerank_addr)
        # the one write path of the feedback store (the recall and rank servers read it)
        self.feedback = FeedbackStore.open(config.feedback) if config.feedback.path else None
        # the gateway pins each request's version, so it switches last: once the stages hold the new one
        self.reloader = Reloader(config.snapshot, self.load, log, config.reload_poll_s, ready_fn=self.stages_hold,
                                 activate_timeout_s=config.reload_activate_timeout_s)

    def load(self, path) -> GatewayState:
        """Open and verify the snapshot at ``path`` and what the gateway keeps of it (start-up and reload)."""
        snapshot = Snapshot.open(path)
        check_tasks(self.config.experiments, list(snapshot.schema["rank_tasks"]))  # arms the ranker would refuse
        state = GatewayState(snapshot, snapshot.load_array("popular.npy").astype(np.int32),
                             snapshot.features.array("item_titles"), load_attribute_table(snapshot))
        if state.popular.size == 0 or state.titles.shape[0] != snapshot.item_ids.shape[0]:
            raise ValueError(f"self-test: {snapshot.path} has no popular items or a title per item missing")
        self.log.info("snapshot_loaded", version=snapshot.version, n_items=int(state.titles.shape[0]))
        return state

    def stages_hold(self, version: str) -> bool:
        """Whether every stage worker behind the gateway's channels reports holding ``version``."""
        request = health_pb2.HealthCheckRequest(service=version_service(version))
        for channels in self.channels.values():
            for channel in channels:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=1.0)
                except grpc.RpcError:
                    return False
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    return False
        return True

    def snapshot_for(self, version: str) -> Snapshot | None:
        """A snapshot the gateway still holds for ``version`` (recall switched before or after us)."""
        state = self.reloader.get(version)
        if state is None:
            self.reloader.wake()  # recall serves a version we do not hold: check CURRENT now
        return None if state is None else state.snapshot

    def validate(self, request) -> str | None:
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
        legacy = [("context.device", request.context.device), ("context.page", request.context.page)] \
            if isinstance(request, recsys_pb2.RecommendRequest) else []
        return too_long([("exclude_item_ids", request.exclude_item_ids), *legacy], cfg.server.max_string_len)

    def compile_filters(self, filters, snapshot: Snapshot) -> ItemFilter | None:
        """The request's filters compiled for ``snapshot`` (FilterError naming the field)."""
        state = self.reloader.get(snapshot.version)
        table = state.attributes if state is not None else load_attribute_table(snapshot)
        return compile_filters(filters, table, self.config.filters, self.config.server.max_echo_chars)

    def filter_for(self, filters, snapshot: Snapshot) -> ItemFilter:
        """The filters compiled for the snapshot that served the request. They were checked against the pinned
        one; when recall answered from another version (a reload) whose attributes cannot express them, no item
        is eligible rather than every item."""
        try:
            return self.compile_filters(filters, snapshot)
        except FilterError as exc:
            self.log.warning("filter_not_expressible", version=snapshot.version, error=str(exc))
            return ItemFilter((), int(snapshot.item_ids.shape[0]), nothing=True)

    def Recommend(self, request, context):
        served = self.serve(request, context, list(request.filters))
        return v2_reply(served, request.k, request.debug)

    def Feedback(self, request, context):
        """Validate the batch, store its valid events durably (feedback.ingest), say what happened to each."""
        problem = check_batch(len(request.events), self.config.feedback)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        if self.feedback is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "feedback is off on this gateway: set feedback.path (and the same path on recall and rank)")
        events = [Event(e.user_id, e.item_id, int(e.type), e.value, e.timestamp, e.request_id, e.event_id)
                  for e in request.events]
        index = self.reloader.current.snapshot.item_index
        try:
            result = ingest(self.feedback, events, index.__contains__, time.time())
        except FeedbackStoreError as exc:
            self.log.error("feedback_store_error", error=str(exc))
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        observe_feedback(result.accepted, len(result.duplicates), len(result.rejected), len(result.unknown_items))
        self.log.debug("feedback", events=len(events), accepted=result.accepted, rejected=len(result.rejected),
                       duplicates=len(result.duplicates), unknown_items=len(result.unknown_items))
        return recommend_pb2.FeedbackResponse(
            accepted=result.accepted, duplicate_indices=result.duplicates,
            rejected=[recommend_pb2.RejectedEvent(index=i, reason=r) for i, r in result.rejected],
            unknown_item_indices=result.unknown_items)

    def serve(self, request, context, filters) -> Served:
        """Validate, run the funnel, record metrics: what both API versions share."""
        start = time.monotonic()
        problem = self.validate(request)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        state = self.reloader.current  # the request's version, pinned and named to every stage
        if filters:
            try:  # checked against the pinned snapshot's attributes before any stage is called
                self.compile_filters(filters, state.snapshot)
            except FilterError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        request_id, refused = request_ids.from_metadata(context.invocation_metadata(),
                                                        self.config.server.max_request_id_len)
        if request_id is None:  # none sent, or too long / odd characters: the stages get a plain one
            request_id = request_ids.new()
            if refused is not None:
                self.log.warning("request_id_replaced", request_id=request_id, sent_length=len(refused))
        request_id_var.set(request_id)  # on every log line of this call (the interceptor resets it)
        deadline = start + (request.deadline_ms or self.config.deadline_ms) / 1000.0
        remaining = context.time_remaining()
        if remaining is not None:  # the caller's gRPC deadline wins when tighter
            deadline = min(deadline, start + remaining - self.config.reserve_ms / 1000.0)  # time to reply
        experiment = assign(self.config.experiments, request.user_id)
        stage_filters = [recall_pb2.AttributeFilter.FromString(f.SerializeToString()) for f in filters]  # same shape
        result = run_funnel(self.stages, state.snapshot, state.popular, self.config, request.user_id, request.k,
                            request.context, list(request.exclude_item_ids), deadline,
                            metadata=(("x-request-id", request_id),), log=self.log,
                            snapshot_for=self.snapshot_for, experiment=experiment, filters=stage_filters,
                            item_filter=(lambda snap: self.filter_for(filters, snap)) if filters else None,
                            include_exposed=getattr(request, "include_exposed", False))  # v2 only
        if result.snapshot is not state.snapshot:
            state = self.reloader.get(result.snapshot.version) or GatewayState(
                result.snapshot, state.popular, result.snapshot.features.array("item_titles"),
                load_attribute_table(result.snapshot))
        total_ms = (time.monotonic() - start) * 1000.0
        observe_recommend(result.timings_ms, result.degraded, total_ms)
        self.log.debug("recommend", request_id=request_id, user_id=request.user_id, k=request.k,
                       degraded=result.degraded, experiments=experiment.arms, n_filters=len(filters),
                       n_items=int(result.item_idx.size), total_ms=round(total_ms, 3))
        return Served(result, state, request_id, {**result.timings_ms, "total": total_ms}, experiment.arms)


class LegacyGatewayServicer(recsys_pb2_grpc.GatewayServicer):
    """The deprecated ``recsys.v1.Gateway``: the v2 servicer's funnel, the v1 reply (one more release)."""

    def __init__(self, core: GatewayServicer):
        self.core = core

    def Recommend(self, request, context):
        served = self.core.serve(request, context, [])
        return v1_reply(served, request.debug)


def channel_lists(names: list[str], masks: np.ndarray) -> list[list[str]]:
    """Per item, the names of the channels whose bit is set in its mask."""
    bits = (masks.astype(np.uint64)[:, None] >> np.arange(len(names), dtype=np.uint64)) & np.uint64(1)
    return [[names[c] for c in np.flatnonzero(row)] for row in bits]


def v2_reply(served: Served, k: int, debug: bool) -> recommend_pb2.RecommendResponse:
    """The ``recsys.v2`` reply: one RecommendedItem per item; titles and attributes only with ``debug``."""
    result, state = served.result, served.state
    ids = state.snapshot.item_ids[result.item_idx].tolist()
    scores = result.scores.tolist()
    tasks = result.task_scores.tolist()
    channels = channel_lists(result.channel_names, result.channel_masks)
    items = []
    for i, item in enumerate(result.item_idx.tolist()):
        rec = recommend_pb2.RecommendedItem(item_id=ids[i], score=scores[i],
                                            task_scores=dict(zip(result.task_names, tasks[i])), channels=channels[i])
        if debug:
            rec.title = str(state.titles[item])
            if state.attributes is not None:
                for name, values, number in state.attributes.item_attributes(item):
                    attr = rec.attributes.add(name=name, values=values)
                    if number is not None:
                        attr.number = number
        items.append(rec)
    return recommend_pb2.RecommendResponse(
        items=items,
        stage_timings=[recommend_pb2.StageTiming(stage=s, ms=ms) for s, ms in served.timings.items()],
        degraded_stages=result.degraded,
        snapshot_version=state.snapshot.version,
        request_id=served.request_id,
        relaxed_rules=result.relaxed_rules,
        experiments=served.arms,
        eligible_items=result.eligible_items,
        fewer_than_k=len(items) < k,
    )


def v1_reply(served: Served, debug: bool) -> recsys_pb2.RecommendResponse:
    """The deprecated ``recsys.v1`` reply: parallel arrays."""
    result, state = served.result, served.state
    return recsys_pb2.RecommendResponse(
            item_ids=state.snapshot.item_ids[result.item_idx].tolist(),
            scores=result.scores.tolist(),
            task_names=result.task_names,
            task_scores=result.task_scores.reshape(-1).tolist(),
            channel_names=result.channel_names,
            channel_masks=result.channel_masks.tolist(),
            stage_timings=[recsys_pb2.StageTiming(stage=s, ms=ms) for s, ms in served.timings.items()],
            degraded=result.degraded,
            snapshot_version=state.snapshot.version,
            request_id=served.request_id,
            titles=state.titles[result.item_idx].tolist() if debug else [],
            relaxed_rules=result.relaxed_rules,
            experiments=served.arms,
        )


def build(config: GatewayConfig, log: Logger):
    """The public services: v2, and the deprecated v1 over the same funnel."""
    core = GatewayServicer(config, log)
    return [(recommend_grpc.add_RecommendServiceServicer_to_server, core, "recsys.v2.RecommendService"),
            (recsys_pb2_grpc.add_GatewayServicer_to_server, LegacyGatewayServicer(core), "recsys.v1.Gateway")]


def main(argv: list[str] | None = None) -> int:
    from common.server import run_server

    return run_server("gateway", GatewayConfig, argv, "Gateway: Recommend under a deadline", build)


if __name__ == "__main__":
    sys.exit(main())
