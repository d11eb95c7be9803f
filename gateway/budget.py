"""Adaptive stage budgets: each stage call may use its share of the time *left*, not of the whole deadline.

With fixed fractions of the deadline, time an early stage leaves unused was lost: recall answering in
3 ms of its 15 ms did not give rank one more millisecond. Here a stage gets ``share / (its share + the
shares of the stages after it)`` of what remains (minus the gateway's reserve), when it starts: recall's
saving goes to rank and rerank in proportion, and the last stage may use everything that is left.
"""
from __future__ import annotations

STAGE_ORDER = ("recall", "rank", "rerank")


def stage_timeout(stage: str, remaining_s: float, reserve_s: float, shares) -> float:
    """Seconds the ``stage`` call may take now, ``remaining_s`` before the request's deadline.

    ``shares`` has a positive attribute per stage (``gateway.config.Budget``); ``reserve_s`` is kept back
    for the gateway's own work after the last stage. Zero or less means no time is left for the stage.
    """
    later = STAGE_ORDER[STAGE_ORDER.index(stage):]
    share = getattr(shares, stage) / sum(getattr(shares, s) for s in later)
    return (remaining_s - reserve_s) * share
