"""Snapshot swaps the tail does not see (issue 27 item 2; docs/results/2026-12-06-swap-tail.md).

A swap used to end, on every server, with a full collection of the frozen heap (``heap.refreeze``): one GIL
hold of 0.2-1 s per server on the 2-core VM, right after its switch, which degraded the requests in flight.
``heap.freeze_new`` walks only what the reload added; that is safe because a retired state is freed by
reference count alone, which the first test checks for every server's state. The reloader frees the retired
version on its own thread and falls back to one full collection, logged, for a version a cycle keeps alive.
The last test runs a real cluster at the production deadline (50 ms) and swaps versions under load.
The issue's target, 0 failed and 0 degraded across swaps at 50% of saturation over 10^4 requests, is
measured by ``python -m benches.swap``.
"""
from __future__ import annotations

import gc
import io
import json
import shutil
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import grpc
import pytest

from cluster.launcher import Cluster, ClusterConfig
from common.config import load_config
from common.log import Logger
from common.snapshot import MANIFEST, current_version, flip_current
from recsys.v2 import recommend_service_pb2 as recommend_pb2
from recsys.v2 import recommend_service_pb2_grpc as recommend_grpc
from tests.conftest import private_root

ROOT = Path(__file__).resolve().parent.parent


def publish_copy(root: Path, source: str, version: str) -> None:
    """Publish version ``source`` again as ``version`` (the manifest's hashes do not cover the manifest)."""
    shutil.copytree(root / source, root / version)
    manifest = json.loads((root / version / MANIFEST).read_text())
    manifest["version"] = version
    (root / version / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    flip_current(root, version)


def servicer(stage: str, snapshot_root: Path):
    """One server's servicer on ``snapshot_root``, loaded, watching nothing."""
    args = [f"snapshot={snapshot_root}", "reload_poll_s=0"]
    log = Logger(stage, stream=io.StringIO())
    if stage == "recall":
        from recall_server.config import RecallConfig
        from recall_server.server import RecallServicer
        return RecallServicer(load_config(RecallConfig, None, args), log)
    if stage == "rank":
        from rank_server.config import RankConfig
        from rank_server.server import RankServicer
        return RankServicer(load_config(RankConfig, None, args), log)
    if stage == "rerank":
        from rerank_server.config import RerankConfig
        from rerank_server.server import RerankServicer
        return RerankServicer(load_config(RerankConfig, None, args), log)
    from gateway.config import GatewayConfig
    from gateway.server import GatewayServicer
    return GatewayServicer(load_config(GatewayConfig, None, args), log)


@pytest.mark.parametrize("stage", ["recall", "rank", "rerank", "gateway"])
def test_a_retired_state_is_freed_by_reference_count(snapshot_root, stage):
    """What lets a swap skip the full collection: no server's state (nor its snapshot) is kept alive by a
    reference cycle, so dropping the last reference frees it at once, collector or not."""
    server = servicer(stage, Path(snapshot_root))
    path = Path(snapshot_root) / current_version(snapshot_root)
    state = server.load(path)
    state.snapshot.item_index  # noqa: B018 - as the reloader builds it
    snapshot, held = weakref.ref(state.snapshot), weakref.ref(state)
    gc.collect()
    gc.disable()
    try:
        del state
        assert held() is None and snapshot() is None, f"a reference cycle keeps the {stage} state alive"
    finally:
        gc.enable()


RELOADER_SCRIPT = r"""
import gc, io, json, sys, types
from pathlib import Path
from common import heap
from common.log import Logger
from common.reload import Reloader
from common.snapshot import Snapshot, flip_current

root, versions, cyclic = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3] == "1"

def load(path):
    state = types.SimpleNamespace(snapshot=Snapshot.open(path, verify=False))
    if cyclic:
        state.me = state       # a cycle someone added to a state
    return state

out = io.StringIO()
log = Logger("t", stream=out)
reloader = Reloader(root, load, log, poll_s=0, retire_grace_s=0.0)
heap.freeze(log)
for version in versions[1:]:
    flip_current(root, version)
    assert reloader.check()
reloader.check()                # the retired versions' grace (0 s) is over
gc.collect()                    # a young collection frees nothing frozen
print(out.getvalue())
"""


def events(text: str, name: str) -> list[dict]:
    return [rec for line in text.splitlines() if line.startswith("{") and (rec := json.loads(line))["event"] == name]


@pytest.mark.parametrize("cyclic", [False, True], ids=["acyclic", "cyclic"])
def test_swaps_freeze_only_the_new_state_and_free_the_old_one(snapshot_root, tmp_path_factory, cyclic):
    """In a frozen process (a child: freezing pytest would keep other tests' cycles), a swap walks only what
    the reload added, and the version it retires is freed there and then. A state a cycle keeps alive is
    still freed: by one full collection once its grace is over, with a warning naming it."""
    root = private_root(snapshot_root, tmp_path_factory, "freeze-new")
    v1 = current_version(root)
    versions = [v1, v1 + "-b", v1 + "-c"]
    for version in versions[1:]:
        publish_copy(root, v1, version)
    flip_current(root, v1)
    result = subprocess.run([sys.executable, "-c", RELOADER_SCRIPT, str(root), ",".join(versions), str(int(cyclic))],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    frozen = events(result.stdout, "heap_frozen")
    swaps = [e for e in frozen if "full" in e]
    assert len(swaps) == 2 and not any(e["full"] for e in swaps)
    assert all(e["walked"] < 10_000 for e in swaps), swaps  # the reload's objects, not the frozen heap's
    retired = events(result.stdout, "snapshot_retired")
    assert [e["version"] for e in retired] == [v1]          # the second swap retires the first version
    retained = events(result.stdout, "snapshot_retained")
    closed = [e["version"] for e in events(result.stdout, "snapshot_closed")]
    if not cyclic:
        assert retired[0]["freed"] and retained == [] and closed == [v1]
    else:
        assert not retired[0]["freed"] and [e["version"] for e in retained] == [v1]
        assert retained[0]["freed_by_full_collection"] and closed == [v1]


# -- a real cluster at the production deadline ---------------------------------------------------------------

DEADLINE_MS = 50
SWAPS = 3               # swaps judged: each one between quiet control windows
MAX_ATTEMPTS = 8        # versions published at most, looking for quiet control windows
CONTROL_S = 3.0         # the control window before each swap: the same traffic, no swap
SETTLE_S = 1.0          # a swap window ends this long after the gateway's switch (heap freeze, first requests)
# of a judged swap window's requests, at most this share may degrade. The target is none, and
# benches.swap measures it; on the shared 2-core VM a server's own load (verify, load, self-test: 30-200 ms)
# still pushed 9 of 596 requests sent during swaps past a stage's share of the deadline, where the full
# collection at each switch had degraded 131 of 606 (docs/results/2026-12-06-swap-tail.md). In this test's
# windows the full collection degraded 12-27% of the requests and this reloader 0-2%: the line is the one
# this work drew, with room for that remainder, not the target
MAX_DEGRADED = 0.05


@pytest.fixture(scope="module")
def root(snapshot_root, tmp_path_factory) -> Path:
    return private_root(snapshot_root, tmp_path_factory, "swap-tail-snapshots")


@pytest.fixture(scope="module")
def cluster(root, tmp_path_factory):
    # every server polls CURRENT at its default (2 s), as in production: their loads land at different moments
    config = ClusterConfig(snapshot=str(root), gateway_port=0, local_stages=[],
                           run_dir=str(tmp_path_factory.mktemp("swap-tail-cluster")),
                           overrides={"gateway": [f"deadline_ms={DEADLINE_MS}"]})
    with Cluster(config) as running:
        yield running
    for proc in running.procs.values():
        assert proc.poll() is not None, "a server process outlived the cluster"


def log_events(cluster: Cluster, worker: str, event: str) -> list[dict]:
    path = cluster.run_dir / f"{worker}.log"
    return events(path.read_text(errors="replace") if path.exists() else "", event)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def test_swaps_under_load_at_the_production_deadline(cluster, root):
    """Swaps while two senders keep ~35 requests/s going against a 50 ms deadline: no request fails, and of
    the requests sent during a swap (from CURRENT's flip until 1 s after the gateway's switch) at most
    ``MAX_DEGRADED`` degrade.

    A shared machine can push a request past 50 ms with no swap at all (other processes' CPU). So a swap is
    judged only when the control windows around it (the same traffic, no swap: the 3 s before its flip and
    the 3 s after its window) degraded nothing; a swap with a noisy control is not judged, and another
    version is published instead. When the machine gives too few quiet stretches, the test cannot judge
    swaps and says so (a skip naming the counts), rather than pass or fail on noise."""
    v1 = current_version(root)
    versions = [f"{v1}-swap{i}" for i in range(1, MAX_ATTEMPTS + 1)]
    for version in versions:              # copied before the load starts: the copy's disk work is not a swap's
        shutil.copytree(root / v1, root / version)
        manifest = json.loads((root / version / MANIFEST).read_text())
        manifest["version"] = version
        (root / version / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    workers = tuple(cluster.procs)
    replies: list[tuple[float, str, tuple[str, ...]]] = []   # (sent at, version, degraded stages)
    errors: list[tuple[float, str]] = []
    windows: list[tuple[str, float, float]] = []             # (version, flipped at, window end)

    def quiet(start: float, end: float) -> bool:
        return not degraded_in(replies, start, end)

    def judged() -> list[tuple[str, float, float]]:
        return [(v, a, b) for v, a, b in windows if quiet(a - CONTROL_S, a) and quiet(b, b + CONTROL_S)]

    with grpc.insecure_channel(cluster.gateway_addr) as channel:
        stub = recommend_grpc.RecommendServiceStub(channel)
        users = ["1", "2", "3", "42", "196", "somebody-new"]

        def ask(i: int):
            request = recommend_pb2.RecommendRequest(user_id=users[i % len(users)], k=10)
            return stub.Recommend(request, timeout=5)

        for i in range(100):              # first calls on this channel and every server: not a swap's cost
            ask(i)
        stop = threading.Event()

        def send(offset: int):
            i = offset
            while not stop.wait(0.05):    # ~20 requests/s per sender, less the replies' own time
                i += 1
                sent = time.monotonic()
                try:
                    reply = ask(i)
                    replies.append((sent, reply.snapshot_version, tuple(reply.degraded_stages)))
                except grpc.RpcError as exc:
                    errors.append((sent, f"{exc.code().name}: {exc.details()}"))

        senders = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(2)]
        for thread in senders:
            thread.start()
        try:
            time.sleep(CONTROL_S)         # the first swap's control window
            for version in versions:
                flipped = time.monotonic()
                flip_current(root, version)
                wait_for(lambda: all(any(e["version"] == version for e in log_events(cluster, w, "snapshot_reloaded"))
                                     for w in workers), 30, f"every server to switch to {version}")
                time.sleep(SETTLE_S)
                windows.append((version, flipped, time.monotonic()))
                time.sleep(CONTROL_S + 0.2)   # this swap's control after, the next one's before
                if len(judged()) >= SWAPS:
                    break
        finally:
            stop.set()
            for thread in senders:
                thread.join(timeout=10)
    assert errors == [], f"{len(errors)} of {len(replies) + len(errors)} requests failed: {errors[:5]}"
    served = [w[0] for w in windows]
    assert {v for _, v, _ in replies} == {v1, *served}
    counts = ", ".join(f"{v[-6:]}: before {len(degraded_in(replies, a - CONTROL_S, a))}/{len(sent_in(replies, a - CONTROL_S, a))}"
                       f" swap {len(degraded_in(replies, a, b))}/{len(sent_in(replies, a, b))}"
                       f" after {len(degraded_in(replies, b, b + CONTROL_S))}/{len(sent_in(replies, b, b + CONTROL_S))}"
                       for v, a, b in windows)
    print(f"swap windows at {DEADLINE_MS} ms, degraded/sent: {counts}")   # shown by pytest -s, and on failure
    if len(judged()) < SWAPS:
        pytest.skip(f"the machine degraded requests at {DEADLINE_MS} ms with no swap running around "
                    f"{len(windows) - len(judged())} of {len(windows)} swaps, so {SWAPS} could not be judged "
                    f"(degraded/sent: {counts})")
    dirty = [(v, degraded_in(replies, a, b)) for v, a, b in judged()
             if len(degraded_in(replies, a, b)) > MAX_DEGRADED * len(sent_in(replies, a, b))]
    assert dirty == [], f"swaps between quiet control windows degraded requests ({counts}): {dirty}"
    for worker in workers:
        assert [e["version"] for e in log_events(cluster, worker, "snapshot_reloaded")] == served, worker
        frozen = [e for e in log_events(cluster, worker, "heap_frozen") if "full" in e]
        assert len(frozen) == len(served) and not any(e["full"] for e in frozen), worker   # no full walk at a swap
        assert log_events(cluster, worker, "snapshot_retained") == [], worker
        retired = log_events(cluster, worker, "snapshot_retired")   # at each swap after the first
        assert [e["version"] for e in retired] == [v1, *served][:len(served) - 1], worker
        assert all(e["freed"] for e in retired), worker


def sent_in(replies, start: float, end: float) -> list:
    return [r for r in replies if start <= r[0] < end]


def degraded_in(replies, start: float, end: float) -> list:
    return [(v, d) for t, v, d in sent_in(replies, start, end) if d]
