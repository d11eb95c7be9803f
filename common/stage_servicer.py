"""What the three stage servicers share: their snapshot reloader, the load → log → self-test sequence, and the
version pin every stage call carries.

A stage call names the snapshot version its item ids belong to (the gateway pins one per request). The stage
answers from that version while it still holds it (the live one, or the previous one during a switch;
``common.reload``) and refuses with FAILED_PRECONDITION otherwise: ids of another snapshot would silently mean
other items. A subclass says how to load its state, what to log about it and how to self-test it; the servicer
methods stay thin (parse, call the plain function, encode).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import grpc

from common.log import Logger
from common.reload import Reloader
from common.server import run_server
from common.snapshot import Snapshot


class StageServicer:
    """Base of ``RecallServicer``, ``RankServicer`` and ``RerankServicer``. Subclasses set what ``load_state``
    needs before calling ``super().__init__``: the reloader loads the first snapshot at once.

    A stage whose state is one plain function of (snapshot, config) names it as ``state_loader``, and its
    self-test (state, config) as ``state_check``; others override ``load_state`` / ``self_test``. A stage
    that reads the feedback store names its reader class as ``feedback_reader`` (``feedback.realtime.Realtime``,
    a package above this one): ``self.realtime`` is then one reader for the process's life, across swaps."""

    state_loader: Callable[[Snapshot, Any], Any] | None = None
    state_check: Callable[[Any, Any], None] | None = None
    feedback_reader: Callable[[Any], Any] | None = None

    def __init__(self, config: Any, log: Logger):
        self.config = config
        self.log = log
        # off when feedback.path is "" (the reader's own rule)
        self.realtime = self.feedback_reader(config.feedback) if self.feedback_reader is not None else None
        self.reloader = Reloader(config.snapshot, self.load, log, config.reload_poll_s)

    def load_state(self, snapshot: Snapshot) -> Any:
        """This stage's state of one verified snapshot (it must carry the snapshot as ``.snapshot``)."""
        if self.state_loader is None:
            raise NotImplementedError(f"{type(self).__name__} sets neither state_loader nor load_state")
        return self.state_loader(snapshot, self.config)

    def describe(self, state: Any) -> dict:
        """Fields of the ``snapshot_loaded`` log line beside the version."""
        return {}

    def self_test(self, state: Any) -> None:
        """Run real calls once before serving ``state`` (compiles kernels); raise to refuse it."""
        if self.state_check is not None:
            self.state_check(state, self.config)

    def load(self, path: Path) -> Any:
        """Open and verify the snapshot at ``path``, load its state and self-test it (start-up and reload)."""
        state = self.load_state(Snapshot.open(path))
        self.log.info("snapshot_loaded", version=state.snapshot.version, **self.describe(state))
        self.self_test(state)
        return state

    def pinned(self, version: str, context: grpc.ServicerContext) -> Any:
        """The state of snapshot ``version`` ("" for the live one); FAILED_PRECONDITION when it is not held."""
        state = self.reloader.get(version)
        if state is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"the request's ids belong to snapshot {version}, this server serves "
                          f"{', '.join(self.reloader.versions)}")
        return state


def serve_stage(component: str, config_cls: type, argv: list[str] | None, description: str,
                add_to_server: Callable, servicer_cls: type, service_name: str) -> int:
    """Run one stage server process: load the config, build the servicer, serve until stopped."""
    return run_server(component, config_cls, argv, description,
                      lambda config, log: [(add_to_server, servicer_cls(config, log), service_name)])
