"""The generated gRPC modules must match the .proto sources."""
import pytest

from recsys.v1 import recsys_pb2


def test_generated_modules_are_current():
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) regenerates the modules")
    from protos.generate import stale_files

    assert stale_files() == [], "run: python -m protos.generate"


def test_contract_names():
    assert recsys_pb2.DESCRIPTOR.package == "recsys.v1"
    assert set(recsys_pb2.DESCRIPTOR.services_by_name) == {"Gateway", "Recall", "Rank", "Rerank"}
