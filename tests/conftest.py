"""Shared fixtures: one quick snapshot exported from ML-100K per test session, and a running cluster."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.config import load_config
from common.snapshot import Snapshot

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data" / "ml-100k"


@pytest.fixture(scope="session")
def snapshot_root(tmp_path_factory) -> Path:
    """A snapshot root with one version exported from ML-100K with short training (CURRENT set)."""
    from export.config import ExportConfig
    from export.pipeline import run_export

    if not (SHARED_DATA / "ml-100k.inter").exists() and not os.environ.get("RECSYS_DATA_DIR"):
        pytest.skip(f"ML-100K not found at {SHARED_DATA} and RECSYS_DATA_DIR is unset")
    root = tmp_path_factory.mktemp("snapshots")
    config = load_config(ExportConfig, None, [f"out={root}", "two_tower.epochs=3", "deepfm.epochs=2"])
    run_export(config)
    return root


@pytest.fixture(scope="session")
def snapshot(snapshot_root) -> Snapshot:
    return Snapshot.open(snapshot_root)
