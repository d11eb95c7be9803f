"""Lifecycle without a cluster: graceful drain on SIGTERM, restart backoff, the Reloader's switch rules."""
from __future__ import annotations

import gc
import io
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from common.log import Logger
from common.reload import Reloader
from common.server import GrpcServer, ServerOptions
from common.snapshot import SnapshotError, flip_current
from cluster.launcher import ClusterConfig, restart_delay


def test_sigterm_drains_an_in_flight_request():
    server = GrpcServer("test", ServerOptions(grace_s=5.0), Logger("test", stream=io.StringIO()))
    started = threading.Event()

    def slow(request, context):
        started.set()
        time.sleep(1.0)
        return b"done:" + request

    server.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "test.Slow", {"Call": grpc.unary_unary_rpc_method_handler(slow)}),))
    port = server.start()
    replies: list[bytes] = []

    def client():
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            replies.append(channel.unary_unary("/test.Slow/Call")(b"x", timeout=10))

    def sigterm_once_installed():  # SIGTERM only after wait() has installed its handler
        assert started.wait(10)
        while signal.getsignal(signal.SIGTERM) is placeholder:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    placeholder = lambda *_: None  # noqa: E731 - keeps pytest alive if the signal came early
    saved = signal.signal(signal.SIGTERM, placeholder), signal.getsignal(signal.SIGINT)
    threads = [threading.Thread(target=client), threading.Thread(target=sigterm_once_installed)]
    try:
        for thread in threads:
            thread.start()
        t0 = time.monotonic()
        server.wait()  # returns once stop() drained
        elapsed = time.monotonic() - t0
    finally:
        signal.signal(signal.SIGTERM, saved[0])
        signal.signal(signal.SIGINT, saved[1])
        for thread in threads:
            thread.join(timeout=10)
    assert replies == [b"done:x"], "the in-flight request did not complete"
    assert elapsed < 5.0
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError):
        channel.unary_unary("/test.Slow/Call")(b"y", timeout=1)


def test_restart_backoff_doubles_up_to_the_cap():
    assert [restart_delay(a, 0.5, 10.0) for a in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    with pytest.raises(ValueError, match="replicas.recall"):
        ClusterConfig(replicas={"recall": 0}, local_stages=[]).validate()
    with pytest.raises(ValueError, match="unknown stage"):
        ClusterConfig(overrides={"ranker": []}).validate()


class FakeFeatures:
    closed = False

    def close(self):
        self.closed = True


@dataclass
class FakeSnapshot:
    version: str
    features: FakeFeatures = field(default_factory=FakeFeatures)
    item_index: dict = field(default_factory=dict)

    def close(self):
        self.features.close()


@dataclass
class FakeState:
    snapshot: FakeSnapshot


def test_reloader_switches_keeps_previous_and_refuses_bad_versions(tmp_path: Path):
    for version in ("v1", "v2", "v3"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "manifest.json").write_text("{}")
    flip_current(tmp_path, "v1")

    def load(path: Path) -> FakeState:
        path = path if (path / "manifest.json").is_file() else path / (path / "CURRENT").read_text().strip()
        if path.name == "v3":
            raise SnapshotError(f"snapshot file {path / 'items.hnsw'} is corrupted (sha256 mismatch); re-run export")
        return FakeState(FakeSnapshot(path.name))

    out = io.StringIO()
    reloader = Reloader(tmp_path, load, Logger("test", stream=out), poll_s=0)
    first = reloader.current
    assert reloader.check() is False and reloader.versions == ["v1"]
    flip_current(tmp_path, "v2")
    assert reloader.check() is True
    assert reloader.versions == ["v2", "v1"]
    assert reloader.get("v1") is first and reloader.get("") is reloader.current and reloader.get("v0") is None
    flip_current(tmp_path, "v3")
    assert reloader.check() is False and reloader.check() is False  # refused once, not retried
    assert reloader.current.snapshot.version == "v2"
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    refused = [e for e in events if e["event"] == "snapshot_refused"]
    assert len(refused) == 1 and refused[0]["file"] == str(tmp_path / "v3" / "items.hnsw")
    assert refused[0]["serving"] == "v2"
    reloader.keep_previous_s = 0.0
    flip_current(tmp_path, "v2")
    reloader.check()  # expires the previous state: once no request holds it, its snapshot is closed
    snapshot = first.snapshot
    features = snapshot.features
    del first
    gc.collect()
    # issue 12: a request holding only the snapshot (the gateway's funnel does) must still read its LMDB
    assert reloader.get("v1") is None and not features.closed
    del snapshot
    gc.collect()
    assert features.closed


def test_reloader_builds_lazy_lookups_before_the_swap(snapshot_root):
    """Issue 12: Snapshot.item_index used to be built by the first request after a reload."""
    from types import SimpleNamespace

    from common.snapshot import Snapshot

    reloader = Reloader(snapshot_root, lambda path: SimpleNamespace(snapshot=Snapshot.open(path, verify=False)),
                        Logger("test", stream=io.StringIO()), poll_s=0)
    assert "item_index" in vars(reloader.current.snapshot)
