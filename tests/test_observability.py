"""Prometheus /metrics on every server, request ids in the JSON logs of every stage, experiment arms in replies."""
from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster.launcher import Cluster, ClusterConfig
from gateway.experiments import assign
from gateway.config import GatewayConfig
from common.config import load_config
from recsys.stage.v1 import recall_service_pb2 as recall_pb2
from recsys.stage.v1 import recall_service_pb2_grpc as recall_grpc
from recsys.stage.v1 import rank_service_pb2 as rank_pb2
from recsys.stage.v1 import rank_service_pb2_grpc as rank_grpc
from recsys.v1 import recsys_pb2
from recsys.v1 import recsys_pb2_grpc

SERVERS = ("recall", "rank", "rerank", "gateway")
EXPERIMENTS = ('experiments={"holdout": [0, 100], "layers": ['
               '{"name": "rr", "salt": "obs-rerank", "stage": "rerank", "arms": ['
               '{"name": "dpp", "buckets": [0, 500], "method": "DPP", "params": {"alpha": 2.0}},'
               '{"name": "mmr", "buckets": [500, 1000], "method": "MMR", "params": {"lambda": 0.5}}]},'
               '{"name": "fu", "salt": "obs-rank", "stage": "rank", "arms": ['
               '{"name": "like2", "buckets": [0, 1000], "fusion": {"like": 2.0}}]},'
               '{"name": "rq", "salt": "obs-recall", "stage": "recall", "arms": ['
               '{"name": "ann_heavy", "buckets": [0, 1000], "quotas": {"ann": 800}}]}]}')


@pytest.fixture(scope="module")
def cluster(snapshot_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("observed")
    overrides = {name: ["server.metrics_port=0"] for name in SERVERS}
    overrides["gateway"] += ["deadline_ms=2000", EXPERIMENTS]
    config = ClusterConfig(snapshot=str(snapshot_root), gateway_port=0, local_stages=[], replicas={}, run_dir=str(run_dir), overrides=overrides)
    old = os.environ.get("RECSYS_LOG_LEVEL")
    os.environ["RECSYS_LOG_LEVEL"] = "debug"  # the servers inherit it: per-request debug lines
    try:
        with Cluster(config) as running:
            yield running
    finally:
        if old is None:
            os.environ.pop("RECSYS_LOG_LEVEL", None)
        else:
            os.environ["RECSYS_LOG_LEVEL"] = old


def scrape(cluster, name: str) -> dict[tuple[str, tuple], float]:
    port = int((Path(cluster.run_dir) / f"{name}.port.metrics").read_text())
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def log_lines(cluster, name: str) -> list[dict]:
    out = []
    for line in (Path(cluster.run_dir) / f"{name}.log").read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_metrics_move_and_request_ids_travel(cluster, snapshot):
    before = {name: scrape(cluster, name) for name in SERVERS}
    with grpc.insecure_channel(cluster.gateway_addr) as channel:
        stub = recsys_pb2_grpc.GatewayStub(channel)
        for i in range(3):
            reply = stub.Recommend(recsys_pb2.RecommendRequest(user_id="1", k=5), timeout=10,
                                   metadata=(("x-request-id", f"obs-{i}"),))
            assert reply.request_id == f"obs-{i}" and list(reply.degraded) == []
        with pytest.raises(grpc.RpcError):
            stub.Recommend(recsys_pb2.RecommendRequest(user_id="1", k=0), timeout=10)
        # deadline_ms=1 leaves no time for any stage: every stage degrades
        reply = stub.Recommend(recsys_pb2.RecommendRequest(user_id="1", k=5, deadline_ms=1), timeout=10)
        assert set(reply.degraded) == {"recall", "rank", "rerank"}
    with grpc.insecure_channel(cluster.addr("recall")) as channel:
        with pytest.raises(grpc.RpcError):
            recall_grpc.RecallServiceStub(channel).Recall(recall_pb2.RecallRequest(user_id=""), timeout=10,
                                                       metadata=(("x-request-id", "obs-bad"),))
    after = {name: scrape(cluster, name) for name in SERVERS}

    def moved(name, metric, **labels):
        return value(after[name], metric, **labels) - value(before[name], metric, **labels)

    for name, method in [("recall", "Recall"), ("rank", "Rank"), ("rerank", "Rerank")]:
        assert moved(name, "recsys_requests_total", method=method) >= 3, name
        assert moved(name, "recsys_request_seconds_count", method=method) >= 3, name
        assert value(after[name], "recsys_snapshot_info", version=snapshot.version) == 1.0, name
    assert moved("recall", "recsys_request_errors_total", method="Recall", code="INVALID_ARGUMENT") == 1
    assert moved("gateway", "recsys_requests_total", method="Recommend") == 5
    assert moved("gateway", "recsys_request_errors_total", method="Recommend", code="INVALID_ARGUMENT") == 1
    assert moved("gateway", "recsys_gateway_recommend_seconds_count") == 4
    for stage in ("recall", "rank", "rerank"):
        assert moved("gateway", "recsys_gateway_stage_seconds_count", stage=stage) == 4
        assert moved("gateway", "recsys_gateway_degraded_total", stage=stage) == 1
    assert value(after["gateway"], "recsys_snapshot_info", version=snapshot.version) == 1.0

    # the caller's request id is on the stages' per-request debug lines and on their warnings
    for name in ("recall", "rank", "rerank"):
        lines = log_lines(cluster, name)
        assert any(r.get("event") == "request" and r.get("request_id") == "obs-2" for r in lines), name
    bad = [r for r in log_lines(cluster, "recall") if r.get("request_id") == "obs-bad"]
    assert bad and bad[0]["level"] == "warning" and bad[0]["code"] == "INVALID_ARGUMENT"
    assert "user_id" in bad[0]["details"]


def test_reply_names_experiment_arms(cluster):
    config = load_config(GatewayConfig, None, [EXPERIMENTS]).experiments
    users = [str(u) for u in range(1, 400)]
    in_arms = next(u for u in users if len(assign(config, u).arms) == 3)
    held = next(u for u in users if assign(config, u).arms == ["holdout"])
    with grpc.insecure_channel(cluster.gateway_addr) as channel:
        stub = recsys_pb2_grpc.GatewayStub(channel)
        reply = stub.Recommend(recsys_pb2.RecommendRequest(user_id=in_arms, k=5), timeout=10)
        assert list(reply.experiments) == assign(config, in_arms).arms
        assert list(reply.degraded) == []  # every stage accepted its overrides
        reply = stub.Recommend(recsys_pb2.RecommendRequest(user_id=held, k=5), timeout=10)
        assert list(reply.experiments) == ["holdout"] and list(reply.degraded) == []


def test_rank_rejects_bad_fusion_override(cluster):
    with grpc.insecure_channel(cluster.addr("rank")) as channel:
        stub = rank_grpc.RankServiceStub(channel)
        for fusion, needle in [({"nope": 1.0}, "unknown task 'nope'"), ({"like": -1.0}, "fusion.like")]:
            with pytest.raises(grpc.RpcError) as info:
                stub.Rank(rank_pb2.RankRequest(user_id="1", item_idx=b"\x01\x00\x00\x00", fusion=fusion), timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in info.value.details()
