"""The funnel's candidate counts (recall_n, prerank_keep, rank_n): the export records them in the manifest, and
the gateway refuses a snapshot exported for fewer candidates than it asks for (issue 25). No cluster, no export."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from common.config import load_config
from common.snapshot import STAGE_COUNTS, check_stage_counts
from gateway.config import GatewayConfig

VERSION = "20261206T210359040Z"


def manifest(**counts) -> dict:
    return {"version": VERSION, "stage_counts": counts}


def test_equal_or_smaller_counts_pass():
    exported = manifest(recall_n=1000, prerank_keep=200, rank_n=200)
    check_stage_counts(exported, {"recall_n": ("gateway.recall_n", 1000), "rank_n": ("gateway.rank_n", 200),
                                  "prerank_keep": ("gateway.local.rank.prerank_keep", 200)})
    # fewer candidates: the same lists cut shorter (an operator's choice, e.g. under load)
    check_stage_counts(exported, {"recall_n": ("gateway.recall_n", 500), "rank_n": ("gateway.rank_n", 100),
                                  "prerank_keep": ("gateway.local.rank.prerank_keep", 50)})


@pytest.mark.parametrize("key,setting,value", [("recall_n", "gateway.recall_n", 2000),
                                               ("rank_n", "gateway.rank_n", 300),
                                               ("prerank_keep", "gateway.local.rank.prerank_keep", 400)])
def test_more_candidates_than_exported_is_refused_naming_the_key(key, setting, value):
    exported = manifest(recall_n=1000, prerank_keep=200, rank_n=200)
    with pytest.raises(ValueError) as info:
        check_stage_counts(exported, {key: (setting, value)})
    message = str(info.value)
    limit = exported["stage_counts"][key]
    assert message.startswith(f"{setting}={value} but snapshot {VERSION} was exported with {key}={limit}")
    assert "\n" not in message


def test_snapshots_without_recorded_counts_are_not_checked():
    settings = {"recall_n": ("gateway.recall_n", 10 ** 6), "rank_n": ("gateway.rank_n", 10 ** 5)}
    check_stage_counts({"version": VERSION}, settings)             # exported before the manifest recorded them
    check_stage_counts(manifest(rank_n=200), {"recall_n": ("gateway.recall_n", 10 ** 6)})   # a count not listed
    with pytest.raises(ValueError, match="rank_n=200"):
        check_stage_counts(manifest(rank_n=200), settings)


def test_gateway_settings_by_manifest_key():
    remote = load_config(GatewayConfig, None, ["recall_n=800", "rank_n=150"])
    assert remote.stage_counts() == {"recall_n": ("gateway.recall_n", 800), "rank_n": ("gateway.rank_n", 150)}
    # the pre-rank cut is the gateway's own setting only when rank runs in its process
    local = load_config(GatewayConfig, None, ["stages.rank=local", "local.rank.prerank_keep=120"])
    assert local.stage_counts()["prerank_keep"] == ("gateway.local.rank.prerank_keep", 120)
    assert set(local.stage_counts()) == set(STAGE_COUNTS)


def test_default_gateway_fits_a_default_export():
    """What a default export records (export.pipeline.stage_counts) admits a default gateway, local rank too."""
    from export.config import ExportConfig
    from export.pipeline import FunnelChoice, stage_counts
    from rank_server.config import RankConfig

    # the validation funnel (export.evaluation.funnel) runs with the rank server's default prerank_keep
    funnel = FunnelChoice(order={"order": "model"}, rerank_choice="NONE", rerank_params={},
                          validation={"config": {"recall_n": 1000, "prerank_keep": RankConfig().prerank_keep,
                                                 "rank_n": 200, "k": 10}})
    counts = stage_counts(ExportConfig(), funnel)
    assert counts == {"recall_n": ExportConfig().recall_n, "prerank_keep": RankConfig().prerank_keep,
                      "rank_n": ExportConfig().rank_n}
    for overrides in ([], ["stages.rank=local"]):
        check_stage_counts({"version": VERSION, "stage_counts": counts},
                           load_config(GatewayConfig, None, overrides).stage_counts())
    bigger = load_config(GatewayConfig, None, [f"recall_n={counts['recall_n'] + 1}"])
    with pytest.raises(ValueError, match=r"^gateway\.recall_n="):
        check_stage_counts({"version": VERSION, "stage_counts": counts}, bigger.stage_counts())


def test_gateway_load_refuses_the_snapshot(monkeypatch):
    """GatewayServicer.load (start-up and reload) runs the check before it reads anything else of the snapshot:
    start-up fails with the one-line error; a reload keeps the old version (common.reload)."""
    import gateway.server as server

    opened = SimpleNamespace(manifest=manifest(recall_n=500, prerank_keep=200, rank_n=200),
                             schema={"rank_tasks": ["click", "like"]}, path="/nowhere", version=VERSION)
    monkeypatch.setattr(server.Snapshot, "open", staticmethod(lambda path: opened))
    servicer = SimpleNamespace(config=load_config(GatewayConfig, None, ["recall_n=1000"]), log=None)
    with pytest.raises(ValueError, match=f"^gateway.recall_n=1000 but snapshot {VERSION} was exported with "
                                         "recall_n=500"):
        server.GatewayServicer.load(servicer, "/nowhere")
