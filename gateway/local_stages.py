"""Stages in the gateway's own process: the co-located topology (``GatewayConfig.stages``).

A stage marked ``local`` is not dialled: the gateway builds that stage's servicer (``RecallServicer``,
``RankServicer``, ``RerankServicer``: the same validation, plain functions and reply the stage server runs)
on its own snapshot and calls it as the funnel's stage call. Each local stage saves two gRPC endpoints per
request (the gateway's client call and the stage's server), the per-call cost that dominated the CPU bill
(``benches.latency``: echo floor × hops). Replicas of a co-located gateway then scale the whole funnel.

The call keeps the remote call's contract, so ``gateway.funnel`` treats both alike:

* it is refused before it runs when the caller's time is gone (``common.deadline_guard.caller_gone`` with
  the stage's ``server.min_remaining_ms``, as the stage server's interceptor does);
* a ``context.abort`` of the servicer becomes a ``grpc.RpcError`` with that status;
* a call that returns after its budget is DEADLINE_EXCEEDED and its reply is dropped: the request degrades
  exactly as it would have when the remote stage's gRPC deadline fired (the work cannot be interrupted
  midway on the gateway's own thread, so the overrun is bounded by one stage's run time).

The gateway runs its local calls on a small thread pool of their own (``local.threads``, default 1), awaited
with the budget as the timeout, not on the event loop's thread. The work is CPU-bound under one GIL, so this
adds no parallelism; it keeps the event loop free to take calls as they arrive, which is what the deadline and
admission control need: a request's clock starts on arrival rather than after the requests queued ahead of it
have run, the requests waiting for the pool count as in flight (so ``gateway.admission`` sees the queue), a
call times out at its budget rather than after it, health checks are answered at once, and a stage call that
waited in the pool past its caller's deadline is not started (as the stage server's deadline guard does).
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from typing import Callable

import grpc

from common.deadline_guard import caller_gone

STAGES = ("recall", "rank", "rerank")
PLACEMENTS = ("remote", "local")


class LocalAbort(grpc.RpcError):
    """A local stage call that ended with a status other than OK (``context.abort``, or its budget ran out):
    the same ``code()`` / ``details()`` as the ``grpc.RpcError`` of a remote call."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class LocalContext:
    """The part of ``grpc.ServicerContext`` the stage servicers use, for a call made in process."""

    def __init__(self, timeout_s: float | None = None, metadata=()):
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._metadata = tuple(metadata or ())
        self.cancelled = False  # the caller stopped waiting (its budget ran out while the call was queued)

    def invocation_metadata(self):
        return self._metadata

    def time_remaining(self):
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def is_active(self) -> bool:
        return not self.cancelled

    def set_trailing_metadata(self, _metadata) -> None:
        pass

    def abort(self, code, details):
        raise LocalAbort(code, details)


class LocalAioContext(LocalContext):
    """``LocalContext`` for the gateway's ``async`` servicer (the bench's in-process driver)."""

    async def abort(self, code, details):
        raise LocalAbort(code, details)


def _run(stage: str, method: Callable, request, context: LocalContext, timeout: float | None,
         min_remaining_s: float):
    """One local call on ``context`` (created when the call was made, so time spent queued counts)."""
    gone = caller_gone(context, min_remaining_s)
    if gone is not None:
        raise LocalAbort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{stage} not started: {gone}")
    start = time.monotonic()
    reply = method(request, context)
    if timeout is not None and time.monotonic() - start > timeout:
        raise LocalAbort(grpc.StatusCode.DEADLINE_EXCEEDED,
                         f"local {stage} took {(time.monotonic() - start) * 1000:.1f} ms of a "
                         f"{timeout * 1000:.1f} ms budget; its reply was dropped")
    return reply


def local_call(stage: str, method: Callable, min_remaining_s: float = 0.0,
               executor: Executor | None = None) -> Callable:
    """``method`` (a stage servicer's unary method) as the funnel's stage call
    ``call(request, timeout=seconds, metadata=...)``, with the remote call's deadline contract.

    With ``executor`` the call returns an awaitable: the work runs on the executor's threads, and the caller
    stops waiting at ``timeout`` (DEADLINE_EXCEEDED; a call still queued then is not started). Without it,
    the call runs at once on the caller's thread."""
    if executor is None:
        def call(request, timeout=None, metadata=()):
            return _run(stage, method, request, LocalContext(timeout, metadata), timeout, min_remaining_s)
        return call

    def expire(future: asyncio.Future, context: LocalContext) -> None:
        context.cancelled = True  # a call still queued is not started; a running one's reply is dropped
        future.cancel()

    async def call_async(request, timeout=None, metadata=()):
        context = LocalContext(timeout, metadata)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(executor, _run, stage, method, request, context, timeout, min_remaining_s)
        # a timer that cancels the future, not asyncio.wait_for: that wraps every call in a task of its own,
        # measurably more CPU per stage call
        timer = loop.call_later(timeout, expire, future, context) if timeout is not None else None
        try:
            return await future
        except asyncio.CancelledError:
            if not context.cancelled:  # the request itself was cancelled (its caller went), not the budget
                context.cancelled = True
                raise
            raise LocalAbort(grpc.StatusCode.DEADLINE_EXCEEDED,
                             f"local {stage} did not answer within its {timeout * 1000:.1f} ms budget") from None
        finally:
            if timer is not None:
                timer.cancel()
    return call_async


def build_local(stage: str, config, log):
    """The servicer of ``stage`` ("recall", "rank" or "rerank") on ``config`` (its stage config): loads the
    snapshot and self-tests, as the stage server does at start-up."""
    if stage == "recall":
        from recall_server.server import RecallServicer

        return RecallServicer(config, log)
    if stage == "rank":
        from rank_server.server import RankServicer

        return RankServicer(config, log)
    if stage == "rerank":
        from rerank_server.server import RerankServicer

        return RerankServicer(config, log)
    raise ValueError(f"unknown stage '{stage}'; stages: {', '.join(STAGES)}")


METHODS = {"recall": "Recall", "rank": "Rank", "rerank": "Rerank"}
