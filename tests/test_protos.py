"""The contracts: generated modules current, buf lint clean (STANDARD rules, no exceptions), the public
package compatible with its last release (buf breaking), names registered as importable paths."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.stage.v1 import rank_service_pb2, recall_service_pb2, rerank_service_pb2
from recsys.v1 import recsys_pb2
from recsys.v2 import recommend_service_pb2

PROTOS = Path(__file__).resolve().parent.parent / "protos"
RELEASE = "releases/recsys-v2.0.binpb"  # the public package as released: buf build --path recsys/v2 -o ...


def buf() -> str:
    """The buf binary (buf-bin, a dev extra: installed beside the interpreter)."""
    found = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
    if found is None:
        pytest.fail("buf is not installed: pip install -e '.[dev]' (buf-bin)", pytrace=False)
    return found


def run_buf(*args: str, cwd: Path = PROTOS) -> subprocess.CompletedProcess:
    return subprocess.run([buf(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_generated_modules_are_current():
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) regenerates the modules")
    from protos.generate import stale_files

    assert stale_files() == [], "run: python -m protos.generate"


def test_buf_lint_passes_with_the_standard_rules():
    import yaml

    lint = yaml.safe_load((PROTOS / "buf.yaml").read_text())["lint"]
    assert lint == {"use": ["STANDARD"]}  # no except / ignore: no rule switched off
    got = run_buf("lint")
    assert got.returncode == 0, got.stdout + got.stderr


def test_public_package_is_compatible_with_its_release():
    got = run_buf("breaking", "--path", "recsys/v2", "--against", RELEASE)
    assert got.returncode == 0, got.stdout + got.stderr


def test_buf_breaking_catches_a_removed_field(tmp_path):
    """The check has teeth: dropping a field from a copy of the module fails it."""
    copy = tmp_path / "protos"
    shutil.copytree(PROTOS, copy, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    proto = copy / "recsys/v2/recommend_service.proto"
    text = proto.read_text()
    assert "  bool fewer_than_k = 9;\n" in text
    proto.write_text(text.replace("  bool fewer_than_k = 9;\n", ""))
    got = run_buf("breaking", "--path", "recsys/v2", "--against", RELEASE, cwd=copy)
    assert got.returncode != 0 and "fewer_than_k" in got.stdout + got.stderr


def test_contract_names_are_importable_paths():
    assert recommend_service_pb2.DESCRIPTOR.name == "recsys/v2/recommend_service.proto"
    assert recommend_service_pb2.DESCRIPTOR.package == "recsys.v2"
    assert set(recommend_service_pb2.DESCRIPTOR.services_by_name) == {"RecommendService"}
    for module, service in ((recall_service_pb2, "RecallService"), (rank_service_pb2, "RankService"),
                            (rerank_service_pb2, "RerankService")):
        assert module.DESCRIPTOR.package == "recsys.stage.v1"
        assert module.DESCRIPTOR.name == f"recsys/stage/v1/{module.__name__.rsplit('.', 1)[1][:-4]}.proto"
        assert set(module.DESCRIPTOR.services_by_name) == {service}
    legacy = recsys_pb2.DESCRIPTOR
    assert legacy.name == "recsys/v1/recsys.proto" and set(legacy.services_by_name) == {"Gateway"}
    assert legacy.services_by_name["Gateway"].GetOptions().deprecated


def test_items_are_messages():
    item = recommend_service_pb2.RecommendedItem.DESCRIPTOR
    assert {"item_id", "score", "task_scores", "channels", "title", "attributes"} <= set(item.fields_by_name)
    reply = recommend_service_pb2.RecommendResponse.DESCRIPTOR
    assert reply.fields_by_name["items"].message_type is item
