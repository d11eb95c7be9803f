"""The funnel under one deadline: recall → rank → rerank, each with a budget and a fallback (docs/ARCHITECTURE.md §4).

``run_funnel`` is plain logic over three stage callables (``grpc.aio`` stubs in production, whose calls
are awaited; plain functions in tests and in the bench's in-process funnel). Each stage call gets its
adaptive budget as its gRPC timeout (``gateway.budget``: its share of the time *left* before the
request's deadline, so the stage sees the caller's deadline and stops for a caller that has gone). A
stage that errors, times out or returns a malformed reply is recorded in ``degraded`` and replaced:

* recall → the snapshot's popular items, minus every item recall would have dropped (``Promises``)
* rank   → recall order and scores
* rerank → rank order, top k

A fallback keeps every promise the normal path keeps. The popular fallback is the one list the gateway makes up
itself, so it drops what recall drops (``recall_server.recall``): the request's ``exclude_item_ids``, the
snapshot's blocklist, the user's snapshot-seen items, the user's real-time positive items (feedback store)
and, unless the request sets ``include_exposed``, the items impressed to the user within the exposure window.
The rank and rerank fallbacks only reorder or cut candidates recall (or the popular fallback) already cleared.
A request's attribute filter (``common.item_filter``) goes to recall, which applies it in every channel; the
popular fallback is restricted to eligible items, and the final list is checked against it once more.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import grpc
import lmdb
import numpy as np

from common import wire
from common.item_filter import ItemFilter
from common.log import Logger
from common.snapshot import Snapshot
from feedback.realtime import Realtime, SnapshotKeys
from feedback.user_state import UserState
from gateway.budget import stage_timeout
from gateway.config import GatewayConfig
from gateway.experiments import Assignment
from gateway.quality import Level
from recsys.stage.v1 import recall_service_pb2 as recall_pb2
from recsys.stage.v1 import rank_service_pb2 as rank_pb2
from recsys.stage.v1 import rerank_service_pb2 as rerank_pb2

FALLBACK_CHANNEL = "fallback_popular"


@dataclass
class Stages:
    """The three stage calls: ``call(request, timeout=seconds, metadata=...)`` returns the response or an
    awaitable of it (``grpc.aio`` stubs)."""

    recall: Callable
    rank: Callable
    rerank: Callable


@dataclass
class FunnelResult:
    """Final items (dense ids of ``snapshot``) with scores and what happened on the way."""

    item_idx: np.ndarray
    scores: np.ndarray
    task_names: list[str]
    task_scores: np.ndarray          # [k, T]
    channel_names: list[str]
    channel_masks: np.ndarray        # uint32 [k]
    timings_ms: dict[str, float] = field(default_factory=dict)
    degraded: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    relaxed_rules: list[str] = field(default_factory=list)
    snapshot: Snapshot | None = None  # the version the ids belong to (the one that served the request)
    timed_out: list[str] = field(default_factory=list)  # stages that degraded for lack of time
    eligible_items: int = 0           # with a filter: how many catalogue items satisfy it


class StageFailed(Exception):
    """A stage could not be used; ``reason`` goes to the log. ``timed_out``: it ran out of time (its budget
    was too short for it now: the sign of overload that admission control reacts to)."""

    def __init__(self, reason: str, timed_out: bool = False):
        super().__init__(reason)
        self.timed_out = timed_out


@dataclass
class Promises:
    """What recall drops for every user that the gateway must drop itself when it makes up a list (the popular
    fallback), for one snapshot: its ``blocklist`` (sorted int32 dense ids) and, with feedback on, the gateway's
    reader of the feedback store (``realtime``) and the snapshot's item hashes (``keys``, the exposure filter's
    keys). ``realtime`` None: feedback off, only the snapshot's promises apply."""

    blocklist: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))
    realtime: Realtime | None = None
    keys: SnapshotKeys | None = None

    def user_state(self, user_id: str) -> UserState | None:
        """The user's real-time state (one LMDB read), or None (feedback off, or nothing stored for the user)."""
        if self.realtime is None or self.realtime.store is None or self.keys is None:
            return None
        return self.realtime.store.user_state(user_id)

    def exposed(self, state: UserState, dense_ids: np.ndarray) -> np.ndarray:
        """Bool per item of ``dense_ids``: impressed to the user within the exposure window (Bloom filter)."""
        return state.exposed(self.keys.item_hash[dense_ids], time.time(), self.realtime.config.exposure_window_s)


def without(values: np.ndarray, banned: np.ndarray) -> np.ndarray:
    """``values`` (order kept) minus those in ``banned``: one sort of the small banned set and one binary search
    per value (at 2,000 popular of 10^6 items and 150 banned ids a quarter of ``np.isin``'s time)."""
    if banned.size == 0:
        return values
    ordered = np.sort(banned)
    at = np.minimum(np.searchsorted(ordered, values), ordered.size - 1)
    return values[ordered[at] != values]


def popular_fallback(snapshot: Snapshot, popular: np.ndarray, user_id: str, exclude: np.ndarray,
                     n: int, promises: Promises | None = None, include_exposed: bool = False) -> np.ndarray:
    """The most popular items recall would not have dropped (the module docstring's list): not excluded, not
    on the blocklist, not seen in the snapshot, not clicked, liked or rated since (the whole real-time
    history), and not impressed within the exposure window unless ``include_exposed``. Vectorised: one
    ``without`` over ``popular`` and one Bloom test of what is left; the user's state is one LMDB read."""
    record = snapshot.features.user(user_id)
    banned = [exclude] if record is None else [exclude, record.seen]
    state = None
    if promises is not None:
        banned.append(promises.blocklist)
        state = promises.user_state(user_id)
        if state is not None and state.hist_items:  # at most feedback.history_len ids
            banned.append(snapshot.item_dense(state.hist_items))
    keep = without(popular, np.concatenate(banned))
    if state is not None and not include_exposed and keep.size:
        keep = keep[~promises.exposed(state, keep.astype(np.int32))]
    return keep[:n].astype(np.int32)


async def _call(stage: str, fn: Callable, request, deadline: float, reserve_s: float, shares,
                metadata) -> object:
    remaining = deadline - time.monotonic()
    timeout = stage_timeout(stage, remaining, reserve_s, shares)
    if timeout <= 0.0005:
        raise StageFailed(f"no time left for {stage} ({remaining * 1000:.1f} ms remaining)", timed_out=True)
    try:
        reply = fn(request, timeout=timeout, metadata=metadata)
        return await reply if inspect.isawaitable(reply) else reply
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        raise StageFailed(f"{stage} failed: {code.name if code else 'error'}: "
                          f"{exc.details() if hasattr(exc, 'details') else exc}",
                          timed_out=code == grpc.StatusCode.DEADLINE_EXCEEDED) from None


# experiment config names (gateway.experiments.RERANK_PARAMS) -> RerankParams fields
RERANK_PARAM_FIELDS = {"lambda": "mmr_lambda", "alpha": "alpha", "window": "window", "epsilon": "epsilon"}


def rerank_params(exp: Assignment) -> rerank_pb2.RerankParams:
    """An experiment's rerank parameters as the proto message (unset ones stay unset)."""
    return rerank_pb2.RerankParams(**{RERANK_PARAM_FIELDS[name]: int(v) if name == "window" else v
                                      for name, v in exp.params.items()})


def rerank_method(name: str) -> int:
    """The ``RerankMethod`` value of a config method name ("MMR"); "" is unspecified (the server's own)."""
    return rerank_pb2.RerankMethod.Value(f"RERANK_METHOD_{name}") if name else 0


@dataclass
class _Request:
    """One funnel run's fixed inputs, as the stage functions read them."""

    stages: Stages
    config: GatewayConfig
    user_id: str
    k: int
    context: object
    exclude_ids: list[str]
    deadline: float
    reserve: float                   # seconds kept back from each stage call
    metadata: object
    exp: Assignment
    counts: Level                    # this request's candidate counts (its quality level's, at least k)

    async def call(self, stage: str, request) -> object:
        """Call ``stage`` under its adaptive budget (``_call``)."""
        return await _call(stage, getattr(self.stages, stage), request, self.deadline, self.reserve,
                           self.config.budget, self.metadata)


@dataclass
class _Trace:
    """What happened on the way: the stages that degraded, their errors, those that ran out of time, timings."""

    degraded: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    timed_out: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def failed(self, stage: str, exc: Exception) -> None:
        self.degraded.append(stage)
        self.errors[stage] = str(exc)
        self.timed_out += [stage] if getattr(exc, "timed_out", False) else []


@dataclass
class _Recalled:
    """Recall's answer (or the popular fallback): candidates of ``snapshot``, the version the rest runs on."""

    snapshot: Snapshot
    cand: np.ndarray
    scores: np.ndarray
    masks: np.ndarray
    channel_names: list[str]
    eligible_items: int


@dataclass
class _Ranked:
    """Rank's best ``rank_n`` (or recall's first ``rank_n`` when rank failed), with the task scores."""

    cand: np.ndarray
    scores: np.ndarray
    masks: np.ndarray
    task_names: list[str]
    task_scores: np.ndarray          # [cand.size, len(task_names)]


async def recall_stage(req: _Request, trace: _Trace, snapshot: Snapshot, popular: np.ndarray, exclude: np.ndarray,
                       snapshot_for: Callable[[str], Snapshot | None] | None, filters,
                       item_filter: Callable[[Snapshot], ItemFilter | None] | None,
                       include_exposed: bool, promises: Promises | None = None) -> _Recalled:
    """Stage 1: ``req.counts.recall_n`` candidates from recall. When recall answered from another version the
    gateway holds (``snapshot_for``), the result is on that snapshot. On failure: the popular fallback
    (eligible items only, with a filter) minus everything recall would have dropped (``popular_fallback`` with
    ``promises``), in popularity order. When the feedback store cannot be read, the fallback drops what the
    snapshot and the request say and records the error under ``errors["fallback"]``."""
    exclude_ids, version = req.exclude_ids, snapshot.version
    try:
        reply = await req.call("recall", recall_pb2.RecallRequest(
            user_id=req.user_id, n=req.counts.recall_n, exclude_item_ids=exclude_ids, quotas=req.exp.quotas,
            snapshot_version=version, filters=filters, include_exposed=include_exposed))
        served = snapshot
        if reply.snapshot_version != version:
            other = snapshot_for(reply.snapshot_version) if snapshot_for and reply.snapshot_version else None
            if other is None:
                raise StageFailed(f"recall serves snapshot {reply.snapshot_version}, gateway {version}")
            served = other
        cand = wire.decode(reply.item_idx, wire.INT32, "recall.item_idx")
        cand_scores = wire.decode(reply.scores, wire.FLOAT32, "recall.scores", cand.size)
        masks = wire.decode(reply.channel_masks, wire.UINT32, "recall.channel_masks", cand.size)
        if cand.size and (cand.min() < 0 or cand.max() >= served.item_ids.shape[0]):
            raise StageFailed("recall returned ids outside the snapshot")
        return _Recalled(served, cand, cand_scores, masks, list(reply.channel_names), int(reply.eligible_items))
    except (StageFailed, wire.WireError) as exc:
        trace.failed("recall", exc)
        compiled = item_filter(snapshot) if item_filter is not None else None
        pool = popular if compiled is None else popular[compiled.matches(popular)]
        eligible_items = 0 if compiled is None else int(compiled.mask().sum())
        try:
            cand = popular_fallback(snapshot, pool, req.user_id, exclude, req.counts.recall_n, promises,
                                    include_exposed)
        except (lmdb.Error, ValueError) as err:  # the store unreadable, or a malformed state: still answer
            trace.errors["fallback"] = f"feedback store not read, real-time exclusions not applied: {err!r}"
            cand = popular_fallback(snapshot, pool, req.user_id, exclude, req.counts.recall_n,
                                    replace(promises, realtime=None) if promises is not None else None)
        cand_scores = np.linspace(1.0, 0.0, cand.size, endpoint=False, dtype=np.float32)
        return _Recalled(snapshot, cand, cand_scores, np.ones(cand.size, np.uint32), [FALLBACK_CHANNEL],
                         eligible_items)


async def rank_stage(req: _Request, trace: _Trace, recalled: _Recalled) -> _Ranked:
    """Stage 2: rank scores recall's candidates (its pre-rank keeping ``req.counts.prerank_keep``); the best
    ``req.counts.rank_n`` by fused score go on. On failure (or
    with nothing to rank): recall's first ``rank_n`` in recall order, no task scores."""
    rank_n = req.counts.rank_n
    cand, cand_scores, masks = recalled.cand, recalled.scores, recalled.masks
    try:
        if req.counts.skip_rank:  # a quality level, not a failure: recall's order, nothing degraded
            cand = cand[:rank_n]
            return _Ranked(cand, cand_scores[:rank_n], masks[:rank_n], [], np.zeros((cand.size, 0), np.float32))
        if cand.size == 0:
            raise StageFailed("nothing to rank")
        reply = await req.call("rank", rank_pb2.RankRequest(
            user_id=req.user_id, context=rank_pb2.RankContext(timestamp=req.context.timestamp),
            item_idx=wire.encode(cand, wire.INT32), snapshot_version=recalled.snapshot.version,
            fusion=req.exp.fusion, channel_masks=wire.encode(masks, wire.UINT32),
            channel_names=recalled.channel_names, recall_scores=wire.encode(cand_scores, wire.FLOAT32),
            prerank_keep=req.counts.prerank_keep, prerank_order=req.counts.prerank_order))
        ranked = wire.decode(reply.item_idx, wire.INT32, "rank.item_idx")
        fused = wire.decode(reply.fused, wire.FLOAT32, "rank.fused", ranked.size)
        names = list(reply.task_names)
        ts = wire.decode(reply.task_scores, wire.FLOAT32, "rank.task_scores", ranked.size * len(names))
        if not np.isfinite(fused).all():
            raise StageFailed("rank returned NaN or inf scores")
        if not np.array_equal(cand, ranked):  # usual case: nothing dropped, no set lookup needed
            keep = np.isin(cand, ranked)  # rank keeps request order and drops only unknown ids
            if not np.array_equal(cand[keep], ranked):
                raise StageFailed("rank reply does not match the candidates it was given")
            masks = masks[keep]
        top = np.lexsort((np.arange(fused.size), -fused))[:rank_n]
        return _Ranked(ranked[top], fused[top], masks[top], names, ts.reshape(ranked.size, len(names))[top])
    except (StageFailed, wire.WireError) as exc:
        if cand.size:
            trace.failed("rank", exc)
        cand, cand_scores, masks = cand[:rank_n], cand_scores[:rank_n], masks[:rank_n]
        return _Ranked(cand, cand_scores, masks, [], np.zeros((cand.size, 0), np.float32))


async def rerank_stage(req: _Request, trace: _Trace, ranked: _Ranked, version: str) -> tuple[np.ndarray, list[str]]:
    """Stage 3: rerank picks the final ``k`` of rank's list: ``(positions in ranked.cand, relaxed rules)``. On
    failure (or with nothing to rerank): the first ``k`` in rank order (or recall order)."""
    cand, k = ranked.cand, req.k
    try:
        if cand.size == 0:
            raise StageFailed("nothing to rerank")
        reply = await req.call("rerank", rerank_pb2.RerankRequest(
            item_idx=wire.encode(cand, wire.INT32), scores=wire.encode(ranked.scores, wire.FLOAT32),
            k=min(k, cand.size), snapshot_version=version, method=rerank_method(req.exp.method),
            params=rerank_params(req.exp)))
        positions = wire.decode(reply.positions, wire.INT32, "rerank.positions")
        if (positions.size > min(k, cand.size) or (positions.size and (positions.min() < 0 or
                positions.max() >= cand.size)) or np.unique(positions).size != positions.size):
            raise StageFailed("rerank returned invalid positions")
        return positions, list(reply.relaxed_rules)
    except (StageFailed, wire.WireError) as exc:
        if cand.size:
            trace.failed("rerank", exc)
        return np.arange(min(k, cand.size), dtype=np.int32), []  # rank order (or recall order)


def final_filter(trace: _Trace, snapshot: Snapshot, cand: np.ndarray, positions: np.ndarray,
                 item_filter: Callable[[Snapshot], ItemFilter | None] | None) -> np.ndarray:
    """The final list checked against the request's filter once more: a stage that ignored the filter never
    leaks items (they are dropped, and the drop recorded under ``errors["filter"]``)."""
    if item_filter is not None:
        compiled = item_filter(snapshot)
        if compiled is not None:
            ok = compiled.matches(cand[positions])
            if not ok.all():
                trace.errors["filter"] = f"{int((~ok).sum())} final items broke the request's filter and were dropped"
                positions = positions[ok]
    return positions


async def run_funnel(stages: Stages, snapshot: Snapshot, popular: np.ndarray, config: GatewayConfig,
               user_id: str, k: int, context, exclude_ids: list[str],
               deadline: float, metadata=(), log: Logger | None = None,
               snapshot_for: Callable[[str], Snapshot | None] | None = None,
               experiment: Assignment | None = None, extra_reserve_s: float = 0.0, filters=(),
               item_filter: Callable[[Snapshot], ItemFilter | None] | None = None,
               include_exposed: bool = False, promises: Promises | None = None,
               counts: Level | None = None) -> FunnelResult:
    """Run the funnel for one request; never raises for a stage failure, degrades instead.

    ``snapshot_for(version)`` (hot reload, ``common.reload``) returns another snapshot the gateway still
    holds: when recall answers from that version, the rest of the funnel runs on it and the result's
    ``snapshot`` is that one, so a rolling switch of the stages does not degrade the request.
    ``experiment`` (``gateway.experiments.assign``) carries the stage overrides of the user's arms.
    ``extra_reserve_s`` is kept back on top of ``config.reserve_ms`` (the gateway passes its event loop's
    lag: on a starved process a timed-out call and the reply after it come back that much later).
    ``context`` is anything with a ``timestamp``. ``filters`` (``recsys.stage.v1.AttributeFilter``) go to
    recall; ``item_filter(snapshot)`` compiles them for a snapshot, for the fallback and the final check.
    ``include_exposed``: recall keeps items the feedback store's exposure filter would drop (and so does the
    popular fallback). ``promises`` (for ``snapshot``): what the popular fallback drops beyond the request's
    exclusions and the user's snapshot-seen items (blocklist; real-time clicks and exposures); None: only those.
    ``counts``: the request's candidate counts (its quality level, ``gateway.quality``); None: the config's
    ``recall_n`` and ``rank_n`` with the rank server's own pre-rank cut. Each is raised to ``k`` at least.
    """
    counts = counts or Level(config.recall_n, 0, config.rank_n)
    counts = replace(counts, recall_n=max(counts.recall_n, k),
                     prerank_keep=max(counts.prerank_keep, k) if counts.prerank_keep else 0,
                     rank_n=max(counts.rank_n, k))
    req = _Request(stages, config, user_id, k, context, exclude_ids, deadline,
                   config.reserve_ms / 1000.0 + extra_reserve_s, metadata, experiment or Assignment(), counts)
    budget_ms = (deadline - time.monotonic()) * 1000.0
    trace = _Trace()
    exclude = snapshot.item_dense(exclude_ids) if exclude_ids else np.empty(0, np.int32)

    t0 = time.perf_counter()
    recalled = await recall_stage(req, trace, snapshot, popular, exclude, snapshot_for, filters, item_filter,
                                  include_exposed, promises)
    snapshot = recalled.snapshot   # another version the gateway holds, when recall answered from it
    trace.timings["recall"] = (time.perf_counter() - t0) * 1000.0

    t0 = time.perf_counter()
    ranked = await rank_stage(req, trace, recalled)
    trace.timings["rank"] = (time.perf_counter() - t0) * 1000.0

    t0 = time.perf_counter()
    positions, relaxed = await rerank_stage(req, trace, ranked, snapshot.version)
    trace.timings["rerank"] = (time.perf_counter() - t0) * 1000.0

    positions = final_filter(trace, snapshot, ranked.cand, positions, item_filter)
    if log is not None and trace.errors:
        log.warning("stage_degraded", user_id=user_id, errors=trace.errors, budget_ms=round(budget_ms, 2))
    return FunnelResult(ranked.cand[positions], ranked.scores[positions], ranked.task_names,
                        ranked.task_scores[positions], recalled.channel_names, ranked.masks[positions],
                        trace.timings, trace.degraded, trace.errors, relaxed, snapshot, trace.timed_out,
                        recalled.eligible_items)
