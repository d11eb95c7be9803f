"""gRPC Gateway servicer: validate Recommend, run the funnel under its deadline, build the reply.

The gateway runs on ``grpc.aio`` (``common.aio_server``): a request waiting on its three stage calls is a
coroutine, not a parked thread. Requests are admitted or refused at once (``gateway.admission``); the
deadline counts from arrival (the event loop's lag is subtracted, and the caller's gRPC deadline wins when
tighter); each stage is dialled once, as one target that gRPC balances over its replicas with
``round_robin`` and health checking (``gateway.stage_target``)."""
from __future__ import annotations

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
import time

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import request_id as request_ids
from common.client_text import too_long
from common.item_filter import AttributeTable, FilterError, ItemFilter, compile_filters, load_attribute_table
from common.log import Logger, request_id_var
from common.metrics import SHED, observe_feedback, observe_recommend
from common.reload import Reloader, version_service
from common.server import channel_options
from common.snapshot import Snapshot, check_stage_counts
from common.tls import aio_channel, open_channel
from feedback.ingest import check_batch
from feedback.realtime import Realtime, SnapshotKeys
from feedback.store import FeedbackStoreError
from feedback.writer import FeedbackWriter
from gateway.admission import Admission
from gateway.config import GatewayConfig
from gateway.experiments import assign, check_tasks
from gateway.funnel import Promises, Stages, run_funnel
from gateway.quality import Level, QualityFactor, levels_for
from gateway.local_stages import METHODS, build_local, local_call
from gateway.stage_target import replica_addrs, stage_target
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
    """What the gateway keeps of one snapshot: ids (in ``snapshot``), the popular fallback and what it must
    drop beyond the request's exclusions (``promises``: blocklist, feedback reader, item hashes), titles, the
    filterable item attributes."""

    snapshot: Snapshot
    popular: np.ndarray
    titles: np.ndarray
    attributes: AttributeTable | None = None
    promises: Promises | None = None
    levels: list[Level] | None = None    # the quality factor's candidate counts per level (gateway.quality)


@dataclass
class Served:
    """One Recommend call's outcome, before it becomes a v2 or v1 reply."""

    result: object            # gateway.funnel.FunnelResult
    state: GatewayState
    request_id: str
    timings: dict[str, float]
    arms: list[str]
    level: int = 0            # the quality level it was served at


class GatewayServicer(recommend_grpc.RecommendServiceServicer):
    """Thin adapter between ``recsys.v2`` Recommend and ``gateway.funnel.run_funnel``; channels are long-lived."""

    def __init__(self, config: GatewayConfig, log: Logger):
        self.config = config
        self.log = log
        # reconnect within a second once a restarted stage is back (gRPC's default backoff grows to 120 s)
        self.channel_options = [*channel_options(config.server.max_message_mb),
                                ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000)]
        self.channels: dict[str, object] = {}     # stage → its grpc.aio channel (``open``)
        self.stages: Stages | None = None
        # stages.<stage>=local: that stage's servicer in this process (gateway.local_stages), on this snapshot
        # root and feedback store; loaded (and self-tested) before the gateway's own snapshot
        self.local: dict[str, object] = {stage: build_local(stage, local_config(config, stage), log)
                                         for stage in config.stages.local()}
        self._local_pool = (ThreadPoolExecutor(config.local.threads, thread_name_prefix="local-stage")
                            if self.local else None)
        if self.local:
            sys.setswitchinterval(config.local.gil_switch_ms / 1000.0)  # the loop and the stage thread share the GIL
        self.admission = Admission(config.admission)
        self.quality = QualityFactor(config.quality)
        self._health_channels: dict[str, grpc.Channel] = {}   # replica address → sync channel (stages_hold)
        self._lag_probe: asyncio.Task | None = None
        log.info("stages", **{stage: "local" if stage in self.local else getattr(config, f"{stage}_addr")
                              for stage in ("recall", "rank", "rerank")})
        # the one write path of the feedback store (the recall and rank servers read it): a thread that
        # group-commits Feedback calls (feedback.writer), so the event loop never waits on a write or its
        # fsync. The same handle is read (``realtime``) by the popular fallback, which drops the user's
        # real-time clicks and exposures as recall does
        self.realtime = Realtime(config.feedback) if config.feedback.path else None
        self.feedback = self.realtime.store if self.realtime is not None else None
        self._feedback_writer = FeedbackWriter(self.feedback, log) if self.feedback else None
        # the gateway pins each request's version, so it switches last: once the stages hold the new one
        self.reloader = Reloader(config.snapshot, self.load, log, config.reload_poll_s, ready_fn=self.stages_hold,
                                 activate_timeout_s=config.reload_activate_timeout_s)

    async def open(self) -> None:
        """Dial the stages (inside the event loop: ``grpc.aio`` channels belong to it), start the lag probe."""
        cfg = self.config
        stubs = {"recall": recall_grpc.RecallServiceStub, "rank": rank_grpc.RankServiceStub,
                 "rerank": rerank_grpc.RerankServiceStub}
        calls = {}
        for stage in ("recall", "rank", "rerank"):
            if stage in self.local:
                calls[stage] = self.local_stage_call(stage)
                self.local[stage].reloader.start()  # it follows CURRENT like a stage server; the gateway switches last
                continue
            # an address list or dns:/// name: round_robin over the replicas, health checking, retry on UNAVAILABLE
            target, balancing = stage_target(getattr(cfg, f"{stage}_addr"), f"{stage}_addr")
            self.channels[stage] = aio_channel(target, [*self.channel_options, *balancing], cfg.stage_tls_ca,
                                               cfg.stage_tls_cert, cfg.stage_tls_key)
            calls[stage] = getattr(stubs[stage](self.channels[stage]), METHODS[stage])
        self.stages = Stages(calls["recall"], calls["rank"], calls["rerank"])
        self._lag_probe = asyncio.get_running_loop().create_task(self.admission.probe_loop_lag())

    def local_stage_call(self, stage: str):
        """The funnel's call of the local ``stage`` (``gateway.local_stages.local_call`` over its servicer)."""
        servicer = self.local[stage]
        return local_call(stage, getattr(servicer, METHODS[stage]), servicer.config.server.min_remaining_ms / 1000.0,
                          self._local_pool)

    async def close(self) -> None:
        """Close the stage channels (after the server stopped) and the feedback writer."""
        if self._lag_probe is not None:
            self._lag_probe.cancel()
        for channel in self.channels.values():
            await channel.close()
        for channel in self._health_channels.values():
            channel.close()
        for servicer in self.local.values():
            servicer.reloader.stop()
        if self._local_pool is not None:
            self._local_pool.shutdown(wait=True)
        if self._feedback_writer is not None:
            self._feedback_writer.close()  # writes what is queued: every call handed over gets its answer
            self.realtime.close()

    def load(self, path) -> GatewayState:
        """Open and verify the snapshot at ``path`` and what the gateway keeps of it (start-up and reload)."""
        snapshot = Snapshot.open(path)
        check_tasks(self.config.experiments, list(snapshot.schema["rank_tasks"]))  # arms the ranker would refuse
        # more candidates than the export fitted for: refused (start-up fails; a reload keeps the old version)
        check_stage_counts(snapshot.manifest, self.config.stage_counts())
        n_items = snapshot.item_ids.shape[0]
        blocklist = np.unique(snapshot.load_array("blocklist.npy")).astype(np.int32)  # as recall drops it
        promises = Promises(blocklist, self.realtime, SnapshotKeys.of(snapshot) if self.realtime is not None else None)
        levels = levels_for(snapshot.manifest, self.config.recall_n, self.config.rank_n, self.config.quality.max_level)
        state = GatewayState(snapshot, snapshot.load_array("popular.npy").astype(np.int32),
                             snapshot.features.array("item_titles"), load_attribute_table(snapshot), promises, levels)
        if state.popular.size == 0 or state.titles.shape[0] != n_items:
            raise ValueError(f"self-test: {snapshot.path} has no popular items or a title per item missing")
        if blocklist.size and (blocklist[0] < 0 or blocklist[-1] >= n_items):
            raise ValueError(f"self-test: {snapshot.path / 'blocklist.npy'} holds ids outside 0..{n_items - 1}")
        self.log.info("snapshot_loaded", version=snapshot.version, n_items=int(state.titles.shape[0]),
                      quality_levels=[[lv.recall_n, lv.prerank_keep, lv.rank_n,
                                       "skip_rank" if lv.skip_rank else "prerank" if lv.prerank_order else "model"]
                                      for lv in levels])
        return state

    def stages_hold(self, version: str) -> bool:
        """Whether every live stage replica the gateway dials reports holding ``version``, and at least one per
        stage does (run on the reload thread, so over synchronous channels of its own: one per listed replica,
        or one per ``dns:///`` name). A replica that does not answer is out of the rotation and is skipped: a
        stopped one never will, and a restarting one loads the newest version when it comes up."""
        request = health_pb2.HealthCheckRequest(service=version_service(version))
        cfg = self.config
        # each replica on its own address (dns:/// names resolved now), not whichever one round_robin picks
        addrs = {stage: replica_addrs(getattr(cfg, f"{stage}_addr")) for stage in ("recall", "rank", "rerank")
                 if stage not in self.local}
        live = {a for stage_addrs in addrs.values() for a in stage_addrs}
        for gone in [a for a in self._health_channels if a not in live]:   # pods that left the DNS answer
            self._health_channels.pop(gone).close()
        for stage in ("recall", "rank", "rerank"):
            if stage in self.local:  # in this process: its own reloader says
                if self.local[stage].reloader.get(version) is None:
                    return False
                continue
            holding = 0
            for addr in addrs[stage]:
                channel = self._health_channels.get(addr)
                if channel is None:
                    target, balancing = stage_target(addr, f"{stage}_addr")
                    channel = self._health_channels[addr] = open_channel(
                        target, [*self.channel_options, *balancing], cfg.stage_tls_ca, cfg.stage_tls_cert,
                        cfg.stage_tls_key)
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=1.0)
                except grpc.RpcError as exc:
                    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        continue  # not running: out of the rotation
                    return False  # NOT_FOUND: running without this version
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    return False
                holding += 1
            if holding == 0:
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

    async def Recommend(self, request, context):
        served = await self.serve(request, context, list(request.filters))
        return v2_reply(served, request.k, request.debug)

    async def Feedback(self, request, context):
        """Hand the batch to the feedback writer, which checks each event and stores the valid ones durably,
        grouped with other calls (feedback.writer); say what happened to each event."""
        n_events = len(request.events)
        problem = check_batch(n_events, self.config.feedback)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        if self.feedback is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "feedback is off on this gateway: set feedback.path (and the same path on recall and rank)")
        try:  # the request's bytes, not its events: no Python object per event on the event loop
            result = await self._feedback_writer.write(request.SerializeToString(), n_events,
                                                       self.reloader.current.snapshot, time.time())
        except FeedbackStoreError as exc:
            self.log.error("feedback_store_error", error=str(exc))
            # a full store is RESOURCE_EXHAUSTED (retrying fails the same way); other store errors UNAVAILABLE
            await context.abort(getattr(grpc.StatusCode, exc.grpc_status), str(exc))
        observe_feedback(result.accepted, len(result.duplicates), len(result.rejected), len(result.unknown_items))
        self.log.debug("feedback", events=n_events, accepted=result.accepted, rejected=len(result.rejected),
                       duplicates=len(result.duplicates), unknown_items=len(result.unknown_items))
        return recommend_pb2.FeedbackResponse(
            accepted=result.accepted, duplicate_indices=result.duplicates,
            rejected=[recommend_pb2.RejectedEvent(index=i, reason=r) for i, r in result.rejected],
            unknown_item_indices=result.unknown_items)

    async def serve(self, request, context, filters) -> Served:
        """Validate, admit, run the funnel, record metrics: what both API versions share."""
        start = time.monotonic()
        problem = self.validate(request)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        state = self.reloader.current  # the request's version, pinned and named to every stage
        if filters:
            try:  # checked against the pinned snapshot's attributes before any stage is called
                self.compile_filters(filters, state.snapshot)
            except FilterError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        request_id, refused = request_ids.from_metadata(context.invocation_metadata(),
                                                        self.config.server.max_request_id_len)
        if request_id is None:  # none sent, or too long / odd characters: the stages get a plain one
            request_id = request_ids.new()
            if refused is not None:
                self.log.warning("request_id_replaced", request_id=request_id, sent_length=len(refused))
        request_id_var.set(request_id)  # on every log line of this call (the interceptor resets it)
        # the deadline runs from arrival: the call waited about the event loop's current lag before it ran
        deadline = start - self.admission.loop_lag_s + (request.deadline_ms or self.config.deadline_ms) / 1000.0
        now = time.monotonic()
        lag = self.admission.loop_lag_s  # a starved loop answers late by about this much: keep it back too
        remaining = context.time_remaining()
        if remaining is not None:  # the caller's gRPC deadline wins when tighter
            deadline = min(deadline, now + remaining - self.config.reserve_ms / 1000.0 - lag)  # time to reply
        shed = self.admission.admit(now, deadline - start)
        if shed is not None:  # a fast refusal now rather than a late answer (gateway.admission)
            SHED.inc()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"gateway overloaded, request shed: {shed}; retry later or with backoff")
        timed_out = False
        # fewer candidates per request while requests run slow, before admission has to refuse (gateway.quality)
        level = self.quality.update(now, self.admission.expected_s(now), deadline - start, len(state.levels or ()))
        experiment = assign(self.config.experiments, request.user_id)
        stage_filters = [recall_pb2.AttributeFilter.FromString(f.SerializeToString()) for f in filters]  # same shape
        try:
            result = await run_funnel(self.stages, state.snapshot, state.popular, self.config, request.user_id,
                                      request.k, request.context, list(request.exclude_item_ids), deadline,
                                      metadata=(("x-request-id", request_id),), log=self.log,
                                      snapshot_for=self.snapshot_for, experiment=experiment,
                                      extra_reserve_s=lag, filters=stage_filters,
                                      item_filter=(lambda snap: self.filter_for(filters, snap)) if filters else None,
                                      include_exposed=getattr(request, "include_exposed", False),  # v2 only
                                      promises=state.promises,
                                      counts=state.levels[level] if state.levels else None)
            timed_out = bool(result.timed_out)
        finally:
            done = time.monotonic()
            self.admission.release(done, timed_out, done - start + lag)
        if result.snapshot is not state.snapshot:
            state = self.reloader.get(result.snapshot.version) or GatewayState(
                result.snapshot, state.popular, result.snapshot.features.array("item_titles"),
                load_attribute_table(result.snapshot))
        total_ms = (time.monotonic() - start) * 1000.0
        observe_recommend(result.timings_ms, result.degraded, total_ms, level)
        self.log.debug("recommend", request_id=request_id, user_id=request.user_id, k=request.k,
                       degraded=result.degraded, experiments=experiment.arms, n_filters=len(filters), quality_level=level,
                       n_items=int(result.item_idx.size), total_ms=round(total_ms, 3))
        return Served(result, state, request_id, {**result.timings_ms, "total": total_ms}, experiment.arms, level)


def local_config(config: GatewayConfig, stage: str):
    """The config of a stage run in the gateway (``config.local.<stage>``) on the gateway's snapshot root,
    reload poll and (recall, rank) feedback store."""
    own = getattr(config.local, stage)
    shared = {"snapshot": config.snapshot, "reload_poll_s": config.reload_poll_s}
    if hasattr(own, "feedback"):
        shared["feedback"] = config.feedback
    return replace(own, **shared)


class LegacyGatewayServicer(recsys_pb2_grpc.GatewayServicer):
    """The deprecated ``recsys.v1.Gateway``: the v2 servicer's funnel, the v1 reply (one more release)."""

    def __init__(self, core: GatewayServicer):
        self.core = core

    async def Recommend(self, request, context):
        served = await self.core.serve(request, context, [])
        return v1_reply(served, request.debug)


def channel_lists(names: list[str], masks: np.ndarray) -> list[list[str]]:
    """Per item, the names of the channels whose bit is set in its mask (each distinct mask decoded once: a
    list of 20 holds a handful of them)."""
    decoded: dict[int, list[str]] = {}
    out = []
    for mask in masks.tolist():
        names_of = decoded.get(mask)
        if names_of is None:
            names_of = decoded[mask] = [name for c, name in enumerate(names) if mask >> c & 1]
        out.append(names_of)
    return out


def v2_reply(served: Served, k: int, debug: bool) -> recommend_pb2.RecommendResponse:
    """The ``recsys.v2`` reply: one RecommendedItem per item; titles and attributes only with ``debug``.

    Items are added in place (``items.add``) and their task scores set key by key: a ``task_scores=dict``
    constructor argument goes through the map's pure-Python ``update`` and took twice the time (0.18 ms of
    the gateway's CPU per 20-item reply, ``benches.stage_cost`` era measurements)."""
    result, state = served.result, served.state
    ids = state.snapshot.item_ids[result.item_idx].tolist()
    scores = result.scores.tolist()
    tasks = result.task_scores.tolist()
    names = result.task_names
    channels = channel_lists(result.channel_names, result.channel_masks)
    reply = recommend_pb2.RecommendResponse(
        stage_timings=[recommend_pb2.StageTiming(stage=s, ms=ms) for s, ms in served.timings.items()],
        degraded_stages=result.degraded,
        snapshot_version=state.snapshot.version,
        request_id=served.request_id,
        relaxed_rules=result.relaxed_rules,
        experiments=served.arms,
        eligible_items=result.eligible_items,
        fewer_than_k=len(ids) < k,
        quality_level=served.level,
    )
    add = reply.items.add
    for i, item in enumerate(result.item_idx.tolist()):
        rec = add(item_id=ids[i], score=scores[i], channels=channels[i])
        task_scores = rec.task_scores
        for name, value in zip(names, tasks[i]):
            task_scores[name] = value
        if debug:
            rec.title = str(state.titles[item])
            if state.attributes is not None:
                for name, values, number in state.attributes.item_attributes(item):
                    attr = rec.attributes.add(name=name, values=values)
                    if number is not None:
                        attr.number = number
    return reply


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
    from common.aio_server import run_aio_server

    return run_aio_server("gateway", GatewayConfig, argv, "Gateway: Recommend under a deadline", build)


if __name__ == "__main__":
    sys.exit(main())
