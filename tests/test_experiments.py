"""Layered A/B assignment: determinism, orthogonality, holdout, config checks, overrides in the stage requests."""
from __future__ import annotations

import asyncio
import time
from collections import Counter

import numpy as np
import pytest

from common import wire
from common.config import ConfigError, load_config
from gateway.config import GatewayConfig
from gateway.experiments import HOLDOUT, Arm, Experiments, Layer, assign, bucket
from gateway.funnel import Stages, run_funnel
from recsys.stage.v1 import recall_service_pb2 as recall_pb2
from recsys.stage.v1 import rank_service_pb2 as rank_pb2
from recsys.stage.v1 import rerank_service_pb2 as rerank_pb2
from recsys.v1 import recsys_pb2

LAYERS = [
    Layer("recall_q", "salt-recall", "recall", [Arm("more_ann", [0, 500], quotas={"ann": 900}),
                                                Arm("less_ann", [500, 1000], quotas={"ann": 300})]),
    Layer("fusion", "salt-rank", "rank", [Arm("like_heavy", [0, 500], fusion={"like": 2.0})]),
    Layer("rerank", "salt-rerank", "rerank", [Arm("dpp", [0, 300], method="DPP", params={"alpha": 2.0}),
                                              Arm("mmr", [300, 600], method="MMR", params={"lambda": 0.5,
                                                                                           "window": 10})]),
]
USERS = [f"u{i}" for i in range(20000)]


def _config(holdout=(0, 0)) -> Experiments:
    config = Experiments(buckets=1000, holdout=list(holdout), layers=LAYERS)
    config.validate()
    return config


def test_bucket_is_stable_and_in_range():
    assert bucket("salt", "196", 1000) == bucket("salt", "196", 1000)
    assert bucket("salt", "196", 1000) == 709  # pinned: a change would reshuffle every running experiment
    assert all(0 <= bucket("s", u, 1000) < 1000 for u in USERS[:1000])


def test_assignment_is_deterministic():
    config = _config()
    assert [assign(config, u) for u in USERS[:500]] == [assign(config, u) for u in USERS[:500]]


def test_arm_shares_follow_bucket_ranges():
    config = _config()
    counts = Counter(arm for u in USERS for arm in assign(config, u).arms)
    n = len(USERS)
    for arm, share in [("recall_q:more_ann", 0.5), ("fusion:like_heavy", 0.5), ("rerank:dpp", 0.3),
                       ("rerank:mmr", 0.3)]:
        assert abs(counts[arm] / n - share) < 4 * np.sqrt(share * (1 - share) / n), (arm, counts[arm])


def test_layers_are_orthogonal():
    """Chi-square test of independence between two layers' arms (baseline counted as an arm)."""
    config = _config()
    table = Counter()
    for u in USERS:
        arms = dict(a.split(":") for a in assign(config, u).arms)
        table[(arms.get("fusion", "base"), arms.get("rerank", "base"))] += 1
    rows, cols = ["like_heavy", "base"], ["dpp", "mmr", "base"]
    observed = np.array([[table[(r, c)] for c in cols] for r in rows], float)
    expected = observed.sum(1, keepdims=True) * observed.sum(0, keepdims=True) / observed.sum()
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert chi2 < 13.8  # 2 degrees of freedom, p = 0.001


def test_same_salt_would_not_be_orthogonal_and_is_refused():
    bad = Experiments(layers=[Layer("a", "s", "recall", []), Layer("b", "s", "rank", [])])
    with pytest.raises(ValueError, match=r"layers\[1\].salt"):
        bad.validate()


def test_holdout_gets_baseline_everywhere():
    config = _config(holdout=(0, 100))
    held = [u for u in USERS if bucket(config.holdout_salt, u, 1000) < 100]
    assert abs(len(held) / len(USERS) - 0.1) < 0.01
    for u in held[:300]:
        a = assign(config, u)
        assert a.arms == [HOLDOUT] and not (a.quotas or a.fusion or a.method or a.params)
    others = [u for u in USERS[:2000] if u not in set(held)]
    assert all(HOLDOUT not in assign(config, u).arms for u in others)


def test_no_layers_no_arms():
    assert assign(Experiments(), "196").arms == []


@pytest.mark.parametrize("override, key", [
    ('{"layers": [{"name": "x", "salt": "s", "stage": "rank", "arms": [{"name": "a", "buckets": [0, 10], '
     '"quotas": {"ann": 5}}]}]}', "arms[0].quotas"),
    ('{"layers": [{"name": "x", "salt": "s", "stage": "rerank", "arms": [{"name": "a", "buckets": [0, 10]}, '
     '{"name": "b", "buckets": [5, 20]}]}]}', "overlaps"),
    ('{"layers": [{"name": "x", "salt": "s", "stage": "rerank", "arms": [{"name": "a", "buckets": [0, 2000]}]}]}',
     "arms[0].buckets"),
    ('{"layers": [{"name": "x", "salt": "s", "stage": "rerank", "arms": [{"name": "a", "buckets": [0, 1], '
     '"method": "FOO"}]}]}', "method"),
    ('{"layers": [{"name": "x", "salt": "s", "stage": "rerank", "arms": [{"name": "a", "buckets": [0, 1], '
     '"params": {"beta": 1}}]}]}', "params"),
    ('{"layers": [{"name": "x", "salt": "s", "stage": "ranker"}]}', "stage"),
    ('{"holdout": [10, 5]}', "holdout"),
    # issue 12: arms the stages would reject on every request refuse to start, naming the key
    ('{"layers": [{"name": "x", "salt": "s", "stage": "rerank", "arms": [{"name": "a", "buckets": [0, 1], '
     '"method": "DPP", "params": {"epsilon": 0}}]}]}', "arms[0].params.epsilon"),
    ('{"layers": [{"name": "x", "salt": "s", "stage": "rerank", "arms": [{"name": "a", "buckets": [0, 1], '
     '"params": {"window": 4294967296}}]}]}', "arms[0].params.window"),
    ('{"layers": [{"name": "x", "salt": "s", "stage": "rank", "arms": [{"name": "a", "buckets": [0, 1], '
     '"fusion": {"click": 500}}]}]}', "arms[0].fusion.click"),
    ('{"layers": [{"name": "x", "salt": "s", "stage": "recall", "arms": [{"name": "a", "buckets": [0, 1], '
     '"quotas": {"itemfc": 50}}]}]}', "arms[0].quotas: unknown channel 'itemfc'"),
    ('{"layers": [{"name": "x", "salt": "s", "stage": "recall", "arms": [{"name": "a", "buckets": [0, 1], '
     '"quotas": {"ann": 2147483648}}]}]}', "arms[0].quotas.ann"),
])
def test_bad_experiment_config_names_the_key(override, key):
    with pytest.raises((ValueError, ConfigError), match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config(GatewayConfig, None, [f"experiments={override}"])


def test_arm_with_an_unknown_rank_task_refuses_to_start(snapshot_root, capsys):
    """Task names are the snapshot's: the gateway checks them when it loads it, and does not start."""
    from gateway.server import main

    arms = ('experiments={"layers": [{"name": "fx", "salt": "s", "stage": "rank", "arms": [{"name": "a", '
            '"buckets": [0, 10], "fusion": {"clik": 1.0}}]}]}')
    assert main(["--snapshot", str(snapshot_root), "--set", arms]) == 2
    assert "experiments.layers[0].arms[0].fusion: unknown task 'clik'" in capsys.readouterr().err


def test_config_loads_layers_from_overrides():
    config = load_config(GatewayConfig, None, [
        'experiments={"holdout": [0, 10], "layers": [{"name": "rr", "salt": "s1", "stage": "rerank", '
        '"arms": [{"name": "dpp", "buckets": [0, 1000], "method": "DPP", "params": {"alpha": 3}}]}]}'])
    layer = config.experiments.layers[0]
    assert isinstance(layer, Layer) and isinstance(layer.arms[0], Arm) and layer.arms[0].params == {"alpha": 3.0}


def test_overrides_reach_the_stage_requests(snapshot):
    """run_funnel puts the arm's overrides into RecallRequest.quotas, RankRequest.fusion, RerankRequest.method/params."""
    config = _config()
    user = next(u for u in USERS if {"recall_q:more_ann", "fusion:like_heavy", "rerank:mmr"} <= set(assign(config, u).arms))
    seen = {}
    n = 100

    def recall(req, timeout, metadata):
        seen["recall"] = req
        return recall_pb2.RecallResponse(item_idx=wire.encode(np.arange(n), wire.INT32),
                                         scores=wire.encode(np.linspace(1, 0, n), wire.FLOAT32),
                                         channel_masks=wire.encode(np.ones(n), wire.UINT32), channel_names=["ann"],
                                         snapshot_version=snapshot.version)

    def rank(req, timeout, metadata):
        seen["rank"] = req
        fused = wire.encode(np.linspace(1, 0, n), wire.FLOAT32)
        return rank_pb2.RankResponse(item_idx=req.item_idx, fused=fused, task_names=["like"], task_scores=fused,
                                       snapshot_version=snapshot.version)

    def rerank(req, timeout, metadata):
        seen["rerank"] = req
        return rerank_pb2.RerankResponse(positions=wire.encode(np.arange(req.k), wire.INT32))

    gw = load_config(GatewayConfig, None, ["deadline_ms=1000"])
    result = asyncio.run(run_funnel(Stages(recall, rank, rerank), snapshot, snapshot.load_array("popular.npy"), gw,
                                    user, 5, recsys_pb2.Context(), [], time.monotonic() + 1.0,
                                    experiment=assign(config, user)))
    assert result.degraded == []
    assert dict(seen["recall"].quotas) == {"ann": 900}
    assert dict(seen["rank"].fusion) == {"like": 2.0}
    assert seen["rerank"].method == rerank_pb2.RERANK_METHOD_MMR
    assert seen["rerank"].params.HasField("mmr_lambda") and seen["rerank"].params.window == 10
    assert not seen["rerank"].params.HasField("alpha")
    # a user in no arm: nothing overridden
    plain = asyncio.run(run_funnel(Stages(recall, rank, rerank), snapshot, snapshot.load_array("popular.npy"), gw,
                                   user, 5, recsys_pb2.Context(), [], time.monotonic() + 1.0))
    assert plain.degraded == [] and not seen["recall"].quotas and not seen["rank"].fusion
    assert seen["rerank"].method == rerank_pb2.RERANK_METHOD_UNSPECIFIED
