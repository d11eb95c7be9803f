"""The quality factor over the wire: a real gateway asks its stages for fewer candidates while they run slow,
says so in every reply, and goes back to the full funnel when they recover (gateway.quality)."""
from __future__ import annotations

import grpc
import pytest

from recsys.v2 import recommend_service_pb2 as recommend_pb2
from recsys.v2 import recommend_service_pb2_grpc as recommend_grpc
from gateway.quality import levels_for
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


def _levels(stub, n: int, fake=None) -> list[int]:
    """The levels of ``n`` calls; with ``fake``, its ``last["rank"]`` is the last call's rank request (None: the
    call did not reach rank, as at a ``skip_rank`` level)."""
    request = recommend_pb2.RecommendRequest(user_id="1", k=10)
    served = []
    for _ in range(n):
        if fake is not None:
            fake.last["rank"] = None
        served.append(stub.Recommend(request, timeout=5).quality_level)
    return served


def test_levels_step_down_while_slow_and_back_up_after(rig):
    fake, stub, snapshot = rig
    # the snapshot's levels as this gateway serves them (default recall_n 1000, rank_n 200); k = 10 floors them
    levels = levels_for(snapshot.manifest, 1000, 200, 8)
    assert len(levels) > 1, levels   # the pre-rank-order level and the no-rank level, below a ranker-ordered level 0

    def sent_at(level: int) -> None:   # the last request's counts are its level's
        want = levels[level]
        assert fake.last["recall"].n == max(want.recall_n, 10)
        if want.skip_rank:   # the deepest level: recall's order into rerank, no rank call
            assert fake.last["rank"] is None
            return
        assert fake.last["rank"].prerank_keep == (max(want.prerank_keep, 10) if want.prerank_keep else 0)
        assert fake.last["rank"].prerank_order == want.prerank_order

    fake.mode.update(recall="ok", rank="ok", rerank="ok")
    warm = _levels(stub, 300, fake)   # the first calls (channels connecting, a busy machine) may run slow
    assert warm[-3:] == [0, 0, 0], warm
    sent_at(0)

    fake.mode["rank"] = "slow"
    served = _levels(stub, 20, fake)
    assert max(served) > 0, served
    top = served.index(max(served))
    assert served[: top + 1] == sorted(served[: top + 1]), served   # one level at a time, downward
    sent_at(served[-1])

    fake.mode["rank"] = "ok"
    recovered = _levels(stub, 200, fake)
    assert recovered[-1] == 0, recovered
    sent_at(0)
