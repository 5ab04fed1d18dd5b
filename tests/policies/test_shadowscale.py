"""Scenario tests for the shadowscale policy: a step, a spike, a ramp, a lull to zero; right-sizing."""

from __future__ import annotations

from dataclasses import replace

import pytest
from policy_harness import Load, drive, service

from shadowscale.policies.scaling import Reason, Shadowscale, make_policy
from shadowscale.policies.scaling.rightsize import choose_spec
from shadowscale.policies.types import ModelProfile

SVC = [service(capacity_rps=20.0)]  # one replica serves 20 req/s at the SLO; planned at 50 % = 10 req/s


def test_step_scales_up_at_the_first_tick_that_shows_it() -> None:
    """Demand steps from 5 to 100 req/s at t=60: the very next decision (t=62) adds replicas, no window to wait."""
    run = drive(Shadowscale(), SVC, lambda t: Load(rate=100.0 if t > 60 else 5.0), until=900)
    assert run.replicas_at(60) == 1
    assert run.replicas_at(62) > 1
    assert run.reason_at(62) == Reason.SCALE_UP
    # once the step is past the scale-down window it settles where capacity covers 100 req/s: ceil(100 / 10) = 10
    assert 10 <= run.replicas_at(900) <= 11


def test_spike_is_remembered_then_released_with_hysteresis() -> None:
    """A 20 s spike to 200 req/s raises replicas at once; afterwards the peak memory and the scale-down window keep
    capacity for a while instead of dropping straight back."""
    pol = replace(Shadowscale(), peak_tau_s=300.0)
    run = drive(pol, SVC, lambda t: Load(rate=200.0 if 100 <= t < 120 else 2.0), until=3000)
    peak = max(run.between(100, 130))
    assert peak >= 8
    assert run.replicas_at(200) >= peak // 2, "not dropped within the scale-down window"
    assert run.replicas_at(3000) <= 2, "released once the spike is long past"


def test_ramp_is_anticipated_by_the_trend() -> None:
    """A linear ramp (+0.5 req/s per second): the trend over the cold-start horizon puts replicas ahead of the
    current rate."""
    run = drive(Shadowscale(headroom=0.0), SVC, lambda t: Load(rate=0.5 * t), until=300)
    rate_now = 0.5 * 300
    assert run.replicas_at(300) * 10.0 > rate_now * 1.1


def test_lull_to_zero_and_back() -> None:
    """Traffic stops at t=100: the model keeps a warm replica during the idle period, goes to zero after
    ``idle_to_zero_s`` (its bursts were small), and comes back at once when requests are queued again."""
    pol = replace(Shadowscale(), idle_to_zero_s=600.0)
    run = drive(pol, SVC, lambda t: Load(rate=0.01 if t < 100 else 0.0, outstanding=1 if t >= 1500 else 0), until=1600)
    assert run.replicas_at(400) == 1
    t_zero = run.first_time(lambda d: int(d.replicas[0]) == 0)
    assert t_zero is not None and 600 <= t_zero <= 700
    assert run.reason_at(t_zero) == Reason.SCALE_TO_ZERO
    assert run.replicas_at(1500) >= 1
    assert run.reason_at(1500) == Reason.ACTIVATE


def test_bursty_model_is_not_scaled_to_zero() -> None:
    """A model that once burst to 50 req/s would miss a whole cold start's worth of requests at zero: it stays warm."""
    pol = replace(Shadowscale(), idle_to_zero_s=600.0)
    run = drive(pol, SVC, lambda t: Load(rate=50.0 if 20 <= t < 40 else 0.0), until=2000)
    assert min(run.between(40, 2000)) >= 1


def test_model_without_traffic_is_judged_by_the_others_bursts() -> None:
    """A model that has had no traffic at all has shown no burst either: next to models whose bursts would cost
    many requests at zero it stays warm; when every model is quiet it goes to zero after the idle time."""
    pol = replace(Shadowscale(), idle_to_zero_s=600.0)
    two = [service("busy"), service("unseen")]
    run = drive(pol, two, lambda t: [Load(rate=50.0 if 20 <= t < 40 else 0.0), Load(rate=0.0)], until=2000)
    assert min(run.between(0, 2000, model=1)) >= 1
    quiet = drive(pol, two, lambda t: [Load(rate=0.0), Load(rate=0.0)], until=2000)
    assert quiet.replicas_at(2000, model=1) == 0


def test_headroom_knob_adds_capacity_for_bursty_traffic() -> None:
    """Same mean (20 req/s), alternating 0/40 every tick: more headroom, more replicas."""

    def bursty(t: float) -> Load:
        return Load(rate=40.0 if int(t / 2) % 2 else 0.0)

    low = drive(make_policy("shadowscale", knob=0.0), SVC, bursty, until=400)
    high = drive(make_policy("shadowscale", knob=4.0), SVC, bursty, until=400)
    assert high.replicas_at(400) > low.replicas_at(400)


def test_reason_carries_forecast_and_capacity() -> None:
    run = drive(Shadowscale(), SVC, lambda t: Load(rate=30.0), until=20)
    text = run.at(20).explain(0)
    assert text.startswith("shadowscale:")
    assert "metric=" in text and "target=" in text


def _spec(fraction: float, capacity: float, l1: float, slo: float = 1.0) -> ModelProfile:
    lat8 = 8.0 / capacity
    return ModelProfile(f"s{fraction}", "test", (1, 8), (l1, lat8), slo, 8, gpu_fraction=fraction)


SPECS = (_spec(0.2, 26.0, 0.1), _spec(0.4, 54.0, 0.1), _spec(1.0, 100.0, 0.1))


@pytest.mark.parametrize(
    ("peak", "expected"),
    [
        pytest.param(1.0, 0.4, id="light-model-smallest-share-keeping-half-the-capacity"),
        pytest.param(40.0, 0.4, id="peak-fits-one-0.4-replica"),
        pytest.param(80.0, 1.0, id="peak-needs-a-whole-gpu"),
        pytest.param(500.0, 1.0, id="beyond-one-replica-most-capacity-per-replica"),
    ],
)
def test_right_sizing_picks_the_smallest_share_that_serves_the_peak(peak: float, expected: float) -> None:
    svc = replace(SVC[0], specs=SPECS)
    assert choose_spec(svc, peak).gpu_fraction == expected


def test_right_sizing_keeps_latency_margin() -> None:
    """A share where a lone request already takes most of the SLO is never chosen."""
    slow_small = _spec(0.4, 54.0, 0.6)
    svc = replace(SVC[0], specs=(_spec(0.2, 26.0, 0.7), slow_small, _spec(1.0, 100.0, 0.1)))
    assert choose_spec(svc, 1.0).gpu_fraction == 1.0
