"""The gateway's funnel logic without gRPC: budgets, fallbacks, malformed replies."""
from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest

from common import wire
from common.config import load_config
from gateway.config import GatewayConfig
from gateway.funnel import FALLBACK_CHANNEL, Stages, run_funnel
from recsys.stage.v1 import recall_service_pb2 as recall_pb2
from recsys.stage.v1 import rank_service_pb2 as rank_pb2
from recsys.stage.v1 import rerank_service_pb2 as rerank_pb2
from recsys.v1 import recsys_pb2


class FakeRpcError(grpc.RpcError):
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code

    def details(self):
        return "fake"


@pytest.fixture()
def world(snapshot):
    n_items = snapshot.item_ids.shape[0]
    cand = np.arange(0, min(n_items, 600), 2, dtype=np.int32)

    def recall(req, timeout, metadata):
        return recall_pb2.RecallResponse(item_idx=wire.encode(cand, wire.INT32),
                                         scores=wire.encode(np.linspace(1, 0, cand.size), wire.FLOAT32),
                                         channel_masks=wire.encode(np.ones(cand.size), wire.UINT32),
                                         channel_names=["ann"], snapshot_version=snapshot.version)

    def rank(req, timeout, metadata):
        ids = wire.decode(req.item_idx, wire.INT32, "item_idx")
        fused = (ids % 7).astype(np.float32)  # a ranking different from recall's
        return rank_pb2.RankResponse(item_idx=req.item_idx, fused=wire.encode(fused, wire.FLOAT32),
                                       task_names=["like"], task_scores=wire.encode(fused, wire.FLOAT32),
                                       snapshot_version=snapshot.version)

    def rerank(req, timeout, metadata):
        return rerank_pb2.RerankResponse(positions=wire.encode(np.arange(req.k)[::-1], wire.INT32))

    config = load_config(GatewayConfig, None, ["deadline_ms=200"])
    popular = snapshot.load_array("popular.npy")
    return snapshot, popular, config, {"recall": recall, "rank": rank, "rerank": rerank}


def _run(world, deadline_s=0.2, k=10, **replace):
    snapshot, popular, config, stages = world
    stages = Stages(**{**stages, **replace})
    return asyncio.run(run_funnel(stages, snapshot, popular, config, "1", k, recsys_pb2.Context(), [],
                                  time.monotonic() + deadline_s))


def test_all_stages_healthy(world):
    result = _run(world)
    assert result.degraded == [] and result.item_idx.size == 10
    fused_order = result.scores  # rerank reversed the rank top-10
    assert np.all(np.diff(fused_order) >= 0)


def _hang(req, timeout, metadata):
    time.sleep(timeout)
    raise FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED)


@pytest.mark.parametrize("stage", ["recall", "rank", "rerank"])
def test_hanging_stage_degrades_within_deadline(world, stage):
    t0 = time.monotonic()
    result = _run(world, deadline_s=0.15, **{stage: _hang})
    elapsed = time.monotonic() - t0
    assert stage in result.degraded
    assert result.item_idx.size == 10 and np.unique(result.item_idx).size == 10
    assert elapsed < 0.15 + 0.02


def test_recall_down_uses_popular_minus_seen(world):
    snapshot = world[0]
    result = _run(world, recall=lambda *a, **k: (_ for _ in ()).throw(FakeRpcError(grpc.StatusCode.UNAVAILABLE)))
    assert result.degraded == ["recall"] and result.channel_names == [FALLBACK_CHANNEL]
    assert not np.isin(result.item_idx, snapshot.features.user("1").seen).any()


def test_garbage_replies_degrade(world):
    snapshot = world[0]

    def bad_rank(req, timeout, metadata):  # one score short
        return rank_pb2.RankResponse(item_idx=req.item_idx, fused=b"\x00" * 8, task_names=["like"],
                                       snapshot_version=snapshot.version)

    def bad_rerank(req, timeout, metadata):  # positions out of range
        return rerank_pb2.RerankResponse(positions=wire.encode(np.array([10_000]), wire.INT32))

    def bad_recall(req, timeout, metadata):
        return recall_pb2.RecallResponse(item_idx=b"\x01\x02\x03", snapshot_version=snapshot.version)

    assert _run(world, rank=bad_rank).degraded == ["rank"]
    assert _run(world, rerank=bad_rerank).degraded == ["rerank"]
    assert _run(world, recall=bad_recall).degraded == ["recall"]


def test_snapshot_version_mismatch_is_not_trusted(world):
    snapshot, _, _, stages = world

    def other_version(req, timeout, metadata):
        reply = stages["recall"](req, timeout, metadata)
        reply.snapshot_version = "some-other-version"
        return reply

    assert _run(world, recall=other_version).degraded == ["recall"]


def _genre_filter(snapshot, genre="Comedy"):
    from common.item_filter import FilterLimits, compile_filters, load_attribute_table

    f = recall_pb2.AttributeFilter(attribute="genre", any_of=recall_pb2.ValueSet(values=[genre]))
    return [f], compile_filters([f], load_attribute_table(snapshot), FilterLimits())


def test_final_list_is_checked_against_the_filter(world):
    """A recall that ignores the filter (the fake one does) cannot leak ineligible items into the reply."""
    snapshot, popular, config, stages = world
    filters, compiled = _genre_filter(snapshot)
    seen = {}

    def recall(req, timeout, metadata):
        seen["filters"] = list(req.filters)
        return stages["recall"](req, timeout, metadata)

    result = asyncio.run(run_funnel(Stages(**{**stages, "recall": recall}), snapshot, popular, config, "1", 10,
                                    recsys_pb2.Context(), [], time.monotonic() + 0.2, filters=filters,
                                    item_filter=lambda snap: compiled))
    assert seen["filters"] == filters  # recall was asked to filter
    assert compiled.matches(result.item_idx).all() and result.item_idx.size < 10
    assert "filter" in result.errors


def test_popular_fallback_keeps_only_eligible_items(world):
    snapshot, popular, config, stages = world
    filters, compiled = _genre_filter(snapshot)

    def down(req, timeout, metadata):
        raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)

    result = asyncio.run(run_funnel(Stages(**{**stages, "recall": down}), snapshot, popular, config, "1", 10,
                                    recsys_pb2.Context(), [], time.monotonic() + 0.2, filters=filters,
                                    item_filter=lambda snap: compiled))
    assert "recall" in result.degraded and result.item_idx.size == 10
    assert compiled.matches(result.item_idx).all()
    assert result.eligible_items == int(compiled.mask().sum())


def test_skip_rank_level_serves_recall_order_without_calling_rank(world):
    """The quality factor's deepest level (``Level.skip_rank``): no rank call, recall's first ``rank_n`` go to
    rerank in recall's order with recall's scores, and the reply is not degraded (a level, not a failure)."""
    from gateway.quality import Level

    snapshot, popular, config, stages = world
    called = []

    def rank(req, timeout, metadata):
        called.append(req)
        return stages["rank"](req, timeout, metadata)

    seen = []

    def rerank(req, timeout, metadata):
        seen.append(wire.decode(req.item_idx, wire.INT32, "item_idx"))
        return stages["rerank"](req, timeout, metadata)

    result = asyncio.run(run_funnel(Stages(**{**stages, "rank": rank, "rerank": rerank}), snapshot, popular, config,
                                    "1", 10, recsys_pb2.Context(), [], time.monotonic() + 0.2,
                                    counts=Level(200, 30, 30, skip_rank=True)))
    assert called == [] and result.degraded == [] and result.task_names == []
    recalled = np.arange(0, min(snapshot.item_ids.shape[0], 600), 2, dtype=np.int32)[:200]
    assert np.array_equal(seen[0], recalled[:30])                  # recall's order, cut to rank_n
    assert np.array_equal(result.item_idx, recalled[:10][::-1])   # the fake rerank reverses its first k
