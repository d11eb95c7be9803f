"""Admission control: refuse early and cheaply the requests that cannot be answered well in time.

Without it, an overloaded gateway accepted every call, queues grew, and at 400 req/s on 2 cores half the
requests failed and the rest arrived 750 ms after a 50 ms deadline. ``Admission`` decides per request,
in O(1), from what the gateway already knows, and a refused request gets RESOURCE_EXHAUSTED at once:

* a hard cap on requests in progress (``max_in_flight``);
* the time requests take now: past ``shed_fraction`` of the request's deadline the request is refused
  instead of joining queues where it would be answered late. Two estimates must both say so: Little's
  law on the queue now (requests in flight / completions per second over the last ``window_s``), and the
  measured time of recent requests (an average smoothed by ``latency_alpha`` per completion). Little's law
  alone divides by the completion rate, which at low load is the arrival rate and not what the servers
  can do: at 100 req/s on 2 cores, three requests in flight for a moment read as 30 ms although requests
  took 14, and it refused 6% of the requests at 40% of capacity;
* adaptive throttling on timed-out stages (the server-side form of the client throttling in Google's
  SRE book, ch. 21): over the window, with ``n`` requests offered and resolved (answered or refused; not
  those still in flight) and ``t`` answered without any stage running out of time, a request is refused
  with probability ``max(0, (n - throttle_k × t) / (n + 1))``, at most ``max_shed_probability``. Under overload the stages
  queue, their budgets run out and replies degrade; refusing the excess lets the rest through whole.
  A stage that is down (UNAVAILABLE) is not a timeout and sheds nothing: its fallback is cheap;
* none of these refuse while fewer than ``min_in_flight`` requests are in progress (a lone slow
  request is no queue);
* ``loop_lag_s``: how late the event loop runs a callback that is due (sampled every ``lag_probe_s``,
  smoothed). A call that arrived waited about that long before its handler ran, so the gateway counts the
  deadline from ``now - loop_lag_s``: from arrival, queueing included.
"""
from __future__ import annotations

import asyncio
import collections
import random
import time
from dataclasses import dataclass


@dataclass
class AdmissionConfig:
    """Gateway admission control (``GatewayConfig.admission``)."""

    enabled: bool = True
    max_in_flight: int = 64          # requests in progress past which new ones are refused at once
    shed_fraction: float = 0.5       # refuse when requests take (Little's law) over this share of the deadline
    throttle_k: float = 1.25         # adaptive throttling: refuse while offered > k × answered in time
    max_shed_probability: float = 0.95  # adaptive throttling never refuses more than this share
    window_s: float = 1.0            # completions counted over this window
    min_samples: int = 8             # below this many completions in the window, admit (no estimate yet)
    min_in_flight: int = 2           # with fewer requests in progress, admit
    latency_alpha: float = 0.1       # weight of each completion in the smoothed request time
    lag_probe_s: float = 0.01        # event-loop lag sampled this often (0: off)

    def validate(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError(f"admission.max_in_flight must be >= 1, got {self.max_in_flight}")
        if not 0.0 < self.shed_fraction <= 1.0:
            raise ValueError(f"admission.shed_fraction must be in (0, 1], got {self.shed_fraction}")
        if self.throttle_k < 1.0 or not 0.0 <= self.max_shed_probability <= 1.0:
            raise ValueError("admission.throttle_k must be >= 1 and admission.max_shed_probability in [0, 1]")
        if not 0.0 < self.latency_alpha <= 1.0:
            raise ValueError(f"admission.latency_alpha must be in (0, 1], got {self.latency_alpha}")
        if self.window_s <= 0 or self.min_samples < 1 or self.lag_probe_s < 0 or self.min_in_flight < 0:
            raise ValueError("admission.window_s must be > 0, admission.min_samples >= 1, "
                             "admission.lag_probe_s >= 0, admission.min_in_flight >= 0")


class Admission:
    """In-flight count, recent outcomes and loop lag of one gateway process (one event loop)."""

    def __init__(self, config: AdmissionConfig, rng: random.Random | None = None):
        self.config = config
        self.in_flight = 0
        self.loop_lag_s = 0.0
        self.latency_s = 0.0   # smoothed time of recent requests, arrival to answer
        self._answered = 0
        self.refused = 0
        self._rng = rng or random.Random()
        self._done: collections.deque[tuple[float, bool]] = collections.deque()  # (when, answered in time)
        # refusals in the window: with the answered ones, the offered requests whose outcome is known. Requests
        # still in flight are left out: counting them as offered made slow-but-in-time traffic (a snapshot
        # switch under load) look like timeouts and shed requests although no stage ran out of time
        self._refused_at: collections.deque[float] = collections.deque()
        self._in_time = 0

    def _trim(self, now: float) -> None:
        horizon = now - self.config.window_s
        done, refused = self._done, self._refused_at
        while done and done[0][0] < horizon:
            self._in_time -= done.popleft()[1]
        while refused and refused[0] < horizon:
            refused.popleft()

    def expected_s(self, now: float) -> float | None:
        """Seconds requests take to answer now (None while there is no estimate): the smaller of Little's
        law on the queue now and the measured time of recent requests (see the module docstring)."""
        self._trim(now)
        if len(self._done) < self.config.min_samples:
            return None
        return min(self.in_flight * self.config.window_s / len(self._done), self.latency_s)

    def shed_probability(self, now: float) -> float:
        """The adaptive-throttling refusal probability now (0 without enough completions)."""
        self._trim(now)
        cfg = self.config
        if len(self._done) < cfg.min_samples:
            return 0.0
        n = len(self._done) + len(self._refused_at)
        return min(cfg.max_shed_probability, max(0.0, (n - cfg.throttle_k * self._in_time) / (n + 1)))

    def admit(self, now: float, deadline_s: float) -> str | None:
        """None: admitted (call ``release`` when it is answered); else why it is refused."""
        cfg = self.config
        if not cfg.enabled:
            self.in_flight += 1
            return None
        reason = None
        if self.in_flight >= cfg.max_in_flight:
            reason = f"{self.in_flight} requests in progress (admission.max_in_flight = {cfg.max_in_flight})"
        elif self.in_flight >= cfg.min_in_flight:
            expected = self.expected_s(now)
            p = self.shed_probability(now)
            if expected is not None and expected > cfg.shed_fraction * deadline_s:
                reason = (f"requests take {expected * 1000:.0f} ms now, over "
                          f"{cfg.shed_fraction:g} of the {deadline_s * 1000:.0f} ms deadline")
            elif p > 0.0 and self._rng.random() < p:
                reason = f"stages are running out of time; shedding {p:.0%} of requests"
        if reason is not None:
            self.refused += 1
            self._refused_at.append(now)
            return reason
        self.in_flight += 1
        return None

    def release(self, now: float, timed_out: bool = False, took_s: float = 0.0) -> None:
        """An admitted request was answered at ``now``, ``took_s`` after it arrived; ``timed_out``: some stage
        ran out of time for it."""
        self.in_flight -= 1
        alpha = self.config.latency_alpha if self._answered else 1.0   # the first one sets the level
        self.latency_s += alpha * (took_s - self.latency_s)
        self._answered += 1
        self._done.append((now, not timed_out))
        self._in_time += not timed_out

    async def probe_loop_lag(self) -> None:
        """Run forever on the gateway's loop: sample how late a due callback runs (``loop_lag_s``)."""
        period = self.config.lag_probe_s
        if period <= 0:
            return
        while True:
            due = time.monotonic() + period
            await asyncio.sleep(period)
            # smoothed: one late wake-up (a GC pause) should not shorten every request's deadline
            self.loop_lag_s += 0.2 * (max(0.0, time.monotonic() - due) - self.loop_lag_s)
