"""Shared fixtures: one quick snapshot exported from ML-100K per test session, and a running cluster."""
from __future__ import annotations

from pathlib import Path

import pytest

from common.config import load_config
from common.snapshot import Snapshot


@pytest.fixture(scope="session")
def snapshot_root(tmp_path_factory) -> Path:
    """A snapshot root with one version exported from ML-100K with short training (CURRENT set)."""
    import os

    reuse = os.environ.get("RECSYS_TEST_SNAPSHOT")  # a root exported earlier: skips the export when iterating
    if reuse:
        return Path(reuse)
    from export.config import ExportConfig
    from export.pipeline import run_export

    from export.data.atomic import DataError, load_movielens_100k

    try:  # ../shared/data, $RECSYS_DATA_DIR, or the recbole wheel from PyPI
        load_movielens_100k()
    except DataError as exc:  # fail, never skip: a suite that skips every integration test must not pass
        pytest.fail(f"ML-100K is not available, so the integration tests cannot run: {exc}", pytrace=False)
    root = tmp_path_factory.mktemp("snapshots")
    config = load_config(ExportConfig, None, [f"out={root}", "two_tower.epochs=3", "deepfm.epochs=2",
                                                  "mmoe.epochs=1", "mmoe_teacher.epochs=1", "prerank.epochs=1",
                                                  "eval_users=300", "rank_replay.max_users=300",
                                                  "ranker.curve_users=100", "rerank_lambdas=[0.9]",
                                                  # one-epoch models: the gate could go either way, and the
                                                  # suite's rank assertions are about the ranker (the gate has
                                                  # its own tests in test_prerank.py)
                                                  "ranker.gate=false"])
    run_export(config)
    return root


def private_root(snapshot_root: Path, tmp_path_factory, name: str) -> Path:
    """A snapshot root of its own holding a copy of the session snapshot's current version, for tests that
    publish or corrupt versions (hot reload, replicas) without touching the shared one."""
    import shutil

    from common.snapshot import current_version, flip_current

    root = tmp_path_factory.mktemp(name)
    version = current_version(snapshot_root)
    shutil.copytree(Path(snapshot_root) / version, root / version)
    flip_current(root, version)
    return root


@pytest.fixture(scope="session")
def snapshot(snapshot_root) -> Snapshot:
    return Snapshot.open(snapshot_root)


def feedback_cluster_config(snapshot_root: Path, tmp_path_factory, name: str, replicas: dict | None = None):
    """A remote-stage cluster with a feedback store of its own under a fresh run dir (2 s deadline: the first
    calls compile and load), for the modules that test the feedback loop end to end."""
    from cluster.launcher import ClusterConfig

    run = tmp_path_factory.mktemp(name)
    return ClusterConfig(snapshot=str(snapshot_root), gateway_port=0, local_stages=[], replicas=replicas or {},
                         run_dir=str(run), feedback_path=str(run / "feedback"),
                         overrides={"gateway": ["deadline_ms=2000"]})
