"""The quality factor over the wire: a real gateway asks its stages for fewer candidates while they run slow,
says so in every reply, and goes back to the full funnel when they recover (gateway.quality)."""
from __future__ import annotations

import grpc
import pytest

from recsys.v2 import recommend_service_pb2 as recommend_pb2
from recsys.v2 import recommend_service_pb2_grpc as recommend_grpc
from tests.fake_stages import start_fake_stages, start_gateway, stop


@pytest.fixture(scope="module")
def rig(snapshot, snapshot_root, tmp_path_factory):
    server, fake, port = start_fake_stages(snapshot.version, snapshot.item_ids.shape[0])
    addr = f"127.0.0.1:{port}"
    # a slow stage (500 ms) takes 5% of this 10 s deadline: over step_down_fraction (300 ms), far under
    # shedding's 50%; the fast funnel on a busy 2-core machine (5-60 ms) stays under step_up_fraction (100 ms).
    # Admission's estimate needs 3 completions in its window: 5 s holds 10 of the slow calls
    fake.slow_s = 0.5
    proc, gw_port = start_gateway(snapshot_root, tmp_path_factory.mktemp("quality"), [
        f"recall_addr={addr}", f"rank_addr={addr}", f"rerank_addr={addr}", "deadline_ms=10000",
        "quality.step_down_fraction=0.03", "quality.step_up_fraction=0.01", "quality.hold_s=0.05",
        "admission.min_samples=3", "admission.window_s=5"])
    channel = grpc.insecure_channel(f"127.0.0.1:{gw_port}")
    try:
        yield fake, recommend_grpc.RecommendServiceStub(channel), snapshot
    finally:
        channel.close()
        stop(proc)
        server.stop(0)
    assert proc.poll() is not None


def _levels(stub, n: int) -> list[int]:
    request = recommend_pb2.RecommendRequest(user_id="1", k=10)
    return [stub.Recommend(request, timeout=5).quality_level for _ in range(n)]


def test_levels_step_down_while_slow_and_back_up_after(rig):
    fake, stub, snapshot = rig
    full = snapshot.manifest["stage_counts"]
    fake.mode.update(recall="ok", rank="ok", rerank="ok")
    warm = _levels(stub, 300)   # the first calls (channels connecting, a busy machine) may run slow
    assert warm[-3:] == [0, 0, 0], warm
    assert fake.last["recall"].n == full["recall_n"]

    fake.mode["rank"] = "slow"
    levels = _levels(stub, 20)
    assert max(levels) > 0, levels
    assert levels == sorted(levels[: levels.index(max(levels)) + 1]) + levels[levels.index(max(levels)) + 1:]
    # the last request's counts are its level's: fewer recall candidates, a pre-rank cut sent to rank
    assert fake.last["recall"].n < full["recall_n"]
    assert 0 < fake.last["rank"].prerank_keep < full["prerank_keep"]

    fake.mode["rank"] = "ok"
    recovered = _levels(stub, 200)
    assert recovered[-1] == 0, recovered
    assert fake.last["recall"].n == full["recall_n"]
