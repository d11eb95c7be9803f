"""Admission control and adaptive budgets as plain logic (gateway.admission, gateway.budget)."""
from __future__ import annotations

import random

import pytest

from common.config import load_config
from gateway.admission import Admission, AdmissionConfig
from gateway.budget import stage_timeout
from gateway.config import Budget, GatewayConfig


def test_stage_budgets_share_the_time_left():
    shares = Budget(recall=0.3, rank=0.4, rerank=0.2)
    assert stage_timeout("recall", 0.050, 0.002, shares) == pytest.approx(0.048 * 0.3 / 0.9)
    # recall answered early: rank gets its share of what is left, not of the whole deadline
    assert stage_timeout("rank", 0.045, 0.002, shares) == pytest.approx(0.043 * 0.4 / 0.6)
    assert stage_timeout("rerank", 0.010, 0.002, shares) == pytest.approx(0.008)  # the last stage: all that is left
    assert stage_timeout("rerank", 0.001, 0.002, shares) < 0


def test_in_flight_cap_refuses_at_once():
    adm = Admission(AdmissionConfig(max_in_flight=3, min_in_flight=10))
    assert [adm.admit(0.0, 0.05) for _ in range(3)] == [None, None, None]
    assert "max_in_flight = 3" in adm.admit(0.0, 0.05)
    adm.release(0.01)
    assert adm.admit(0.01, 0.05) is None and adm.refused == 1


def test_littles_law_sheds_when_requests_take_most_of_the_deadline():
    adm = Admission(AdmissionConfig(min_in_flight=2, min_samples=4, window_s=1.0, throttle_k=1000.0,
                                    max_shed_probability=0.0))
    for i in range(10):  # 10 completions in the last second: 10 req/s served, each took 200 ms
        adm.admit(i * 0.1, 0.05)
        adm.release(i * 0.1 + 0.001, took_s=0.2)
    assert adm.admit(1.0, 0.05) is None and adm.admit(1.0, 0.05) is None  # 1 then 2 in flight: under min
    reason = adm.admit(1.0, 0.05)  # 2 in flight / 10 per s = 200 ms > 0.5 × 50 ms, and requests took ~200 ms
    assert reason is not None and "over 0.5 of the 50 ms deadline" in reason


def test_a_momentary_queue_of_fast_requests_at_low_load_is_admitted():
    """Little's law divides by the completion rate, which at low load is the arrival rate: three in flight
    at 10 req/s reads as 300 ms. Requests that measurably take 1 ms are not refused for it."""
    adm = Admission(AdmissionConfig(min_in_flight=2, min_samples=4, window_s=1.0, throttle_k=1000.0,
                                    max_shed_probability=0.0))
    for i in range(10):
        adm.admit(i * 0.1, 0.05)
        adm.release(i * 0.1 + 0.001, took_s=0.001)
    assert [adm.admit(1.0, 0.05) for _ in range(5)] == [None] * 5
    assert adm.expected_s(1.0) == pytest.approx(0.001, rel=0.5)


def test_throttle_refuses_in_proportion_to_timed_out_replies():
    cfg = AdmissionConfig(min_in_flight=0, min_samples=4, window_s=1.0, shed_fraction=1.0, max_in_flight=10_000,
                          throttle_k=2.0,
                          max_shed_probability=0.0)  # no refusals while the history fills
    adm = Admission(cfg, random.Random(0))
    for i in range(100):
        assert adm.admit(i * 0.005, 10.0) is None
        adm.release(i * 0.005, timed_out=i % 2 == 0)  # half the stages run out of time
    cfg.max_shed_probability = 0.95
    p = adm.shed_probability(0.5)
    assert p == pytest.approx(0.0)  # half in time: within k = 2
    cfg.throttle_k = 1.25
    p = adm.shed_probability(0.5)
    assert p == pytest.approx((100 - 1.25 * 50) / 101)
    # refused requests count as offered, so the probability rises while the overload lasts, up to the cap
    refused = sum(adm.admit(0.5, 10.0) is not None for _ in range(200))
    assert 0.3 * 200 < refused < 0.95 * 200
    assert p < adm.shed_probability(0.5) <= 0.95


def test_stage_down_is_no_reason_to_shed():
    adm = Admission(AdmissionConfig(min_in_flight=0, min_samples=4, shed_fraction=1.0), random.Random(0))
    for i in range(50):
        adm.admit(i * 0.01, 10.0)
        adm.release(i * 0.01, timed_out=False)  # degraded by UNAVAILABLE, answered in time
    assert adm.shed_probability(0.5) == 0.0


def test_slow_requests_still_in_flight_are_no_reason_to_shed():
    """Requests that take long but are answered in time (a snapshot switch under load) count once answered,
    not as offered-and-missing while they are in flight."""
    adm = Admission(AdmissionConfig(min_in_flight=0, min_samples=4, shed_fraction=1.0, max_in_flight=10_000),
                    random.Random(0))
    for i in range(40):          # 40 req/s, each answered in time 0.5 s after it arrived
        assert adm.admit(i * 0.025, 100.0) is None
        if i >= 20:
            adm.release(i * 0.025, timed_out=False)
    assert adm.in_flight == 20 and adm.shed_probability(1.0) == 0.0


@pytest.mark.parametrize("override, key", [("admission.max_in_flight=0", "admission.max_in_flight"),
                                           ("admission.shed_fraction=1.5", "admission.shed_fraction"),
                                           ("admission.throttle_k=0.5", "admission.throttle_k")])
def test_admission_config_is_checked(override, key):
    with pytest.raises(ValueError, match=key):
        load_config(GatewayConfig, None, [override])
