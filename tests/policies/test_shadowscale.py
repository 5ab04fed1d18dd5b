"""Scenario tests for the shadowscale policy: step, spike, ramp, lull to zero, periodic timer, memoryless gaps,
flash crowd on a sleeping model, the cold-start budget; right-sizing."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from policy_harness import Load, drive, service

from shadowscale.policies.scaling import Reason, Shadowscale, make_policy
from shadowscale.policies.scaling.rightsize import SpecTable, choose_spec
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


def _requests_at(*times: float) -> Callable[[float], Load]:
    """One request in the 2 s tick that starts at each of ``times``."""
    return lambda t: Load(rate=0.5 if any(s <= t < s + 2.0 for s in times) else 0.0)


def test_lone_requests_let_a_model_sleep_but_two_within_a_cold_start_keep_it_warm() -> None:
    """The small-bursts rule counts requests over one cold start (60 s here). Lone requests ten minutes apart would
    each meet a cold start alone: after ``idle_to_zero_s`` the model goes to zero. Two requests 30 s apart would
    both meet one: that model stays warm.

    Mutations caught: the old measure (peak 10 s rate × cold start, ``burst_window=False``) counts a lone request as
    about 5 and keeps the first model warm; dropping ``BURST_TOLERANCE`` counts the first model's two requests as
    1.00005 and keeps it warm too."""
    pol = replace(Shadowscale(), idle_to_zero_s=600.0)
    lone = drive(pol, SVC, _requests_at(100.0, 700.0), until=2000)
    assert lone.replicas_at(1200) == 1, "warm while idle for less than idle_to_zero_s"
    t_zero = lone.first_time(lambda d: int(d.replicas[0]) == 0)
    assert t_zero is not None and 1300 <= t_zero <= 1400
    assert lone.reason_at(t_zero) == Reason.SCALE_TO_ZERO
    pair = drive(pol, SVC, _requests_at(100.0, 130.0, 700.0), until=2000)
    assert min(pair.between(100, 2000)) >= 1
    old = drive(replace(pol, burst_window=False), SVC, _requests_at(100.0, 700.0), until=2000)
    assert min(old.between(100, 2000)) >= 1, "the old measure keeps even a lone-request model warm"


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


@pytest.mark.parametrize(
    ("burst", "expected"),
    [
        pytest.param(0.0, 0.4, id="no-burst-seen-keeps-the-burst-share"),
        pytest.param(3.0, 0.2, id="three-requests-a-cold-start-fit-a-fifth"),
        pytest.param(390.0, 0.2, id="a-quarter-of-the-fifth-s-cold-start-capacity"),
        pytest.param(500.0, 0.4, id="one-fifth-serves-it-once-not-four-times"),
        pytest.param(5000.0, 0.4, id="a-burst-too-large-for-any-small-share"),
    ],
)
def test_right_sizing_reads_a_measured_burst_in_place_of_the_burst_share(burst: float, expected: float) -> None:
    """One hour of history showing a model's bursts (work within one 60 s cold start) admits a share below
    ``BURST_SHARE`` when one replica serves four times that burst within the cold start (0.2: 26 req/s × 60 s =
    1,560 ≥ 4 × 390); with no burst seen the share keeps half the whole GPU's capacity. Catches ignoring the
    measured burst (3 → 0.4), dropping the margin of four (500 → 0.2) and letting any measured burst admit every
    share whatever its size (5000 → 0.2, where four times the burst is 20,000)."""
    svc = replace(SVC[0], specs=SPECS)
    assert choose_spec(svc, 1.0, burst_work=burst).gpu_fraction == expected


def test_right_sizing_keeps_latency_margin() -> None:
    """A share where a lone request already takes most of the SLO is never chosen."""
    slow_small = _spec(0.4, 54.0, 0.6)
    svc = replace(SVC[0], specs=(_spec(0.2, 26.0, 0.7), slow_small, _spec(1.0, 100.0, 0.1)))
    assert choose_spec(svc, 1.0).gpu_fraction == 1.0


# --- predictive scale to zero (idle-gap histograms, pre-warm, cold-start budget) ---------------------------------

PERIOD_S = 300.0
COLD_S = 60.0
TIMER = [service(capacity_rps=20.0, cold_start_s=COLD_S)]
EAGER = replace(Shadowscale(), miss_cost_gpu_s=2000.0)
"""A miss priced low (the default's is tuned on a day of traffic): plans form after a few gaps, so the scenarios
stay short; the memoryless test is the stronger for it."""


def _timer(t: float) -> Load:
    """One request every ``PERIOD_S`` (a timer every 5 minutes): 0.5 req/s over the 2 s tick ending at the fire."""
    return Load(rate=0.5 if t > 0 and t % PERIOD_S == 10.0 else 0.0)


def _fires(until: float) -> list[float]:
    return [k * PERIOD_S + 10.0 for k in range(1, int(until // PERIOD_S) + 1) if k * PERIOD_S + 10.0 <= until]


def test_periodic_timer_sleeps_between_fires_and_is_prewarmed_for_each() -> None:
    """A function fired every 5 minutes: once its gap histogram has enough gaps it goes to zero after each fire,
    is pre-warmed (reason PREWARM) a cold start ahead of the next one, and every later fire finds a ready replica.

    Mutations caught: no pre-warm (the fire finds no replica), pre-warm planned without subtracting the cold start
    (the replica is still starting at the fire), the lever never going to zero (no zero ticks), and a PREWARM code
    lost to the generic ACTIVATE."""
    until = 12 * PERIOD_S
    run = drive(EAGER, TIMER, _timer, until=until, cold_start_s=COLD_S)
    learned = [t for t in _fires(until) if t > 6 * PERIOD_S]
    assert learned
    for t in learned:
        assert run.seen_at(t)[1] >= 1, f"the fire at t={t} found no ready replica"
    late = run.between(6 * PERIOD_S + 20, until)
    assert late.count(0) >= 0.3 * len(late), "the model should sleep through much of each predicted gap"
    assert any(run.reason_at(t) == Reason.PREWARM for t in run.times if t > 6 * PERIOD_S)


def test_lever_off_keeps_the_timer_warm() -> None:
    """With ``predictive_zero`` off the same timer keeps its replica between fires (only the six-hour rule zeros);
    catches a lever switch that does nothing (the ablation table would compare a policy with itself)."""
    run = drive(replace(EAGER, predictive_zero=False), TIMER, _timer, until=8 * PERIOD_S, cold_start_s=COLD_S)
    assert min(run.between(60, 8 * PERIOD_S)) >= 1


def test_memoryless_gaps_are_not_bet_against() -> None:
    """Requests at exponential gaps (mean 2.5 min): no window of the gap distribution is safe, so the model stays warm.
    Catches a plan that ignores the misses it expects (it would zero after every request and miss most of them)."""
    rng = np.random.default_rng(0)
    times = set()
    t = 0.0
    while t < 5400:
        t += rng.exponential(150.0)
        times.add(round(t / 2.0) * 2.0)

    load = lambda now: Load(rate=0.5 if now in times else 0.0)  # noqa: E731
    run = drive(EAGER, TIMER, load, until=5400, check_purity=False)
    assert min(run.between(600, 5400)) >= 1


def test_no_cold_start_budget_no_predicted_zero() -> None:
    """``cold_budget_share = 0``: requests that may arrive at a cold model are not affordable, so the timer stays warm.
    Catches a budget gate that is not applied."""
    pol = replace(EAGER, cold_budget_share=0.0)
    run = drive(pol, TIMER, _timer, until=10 * PERIOD_S, cold_start_s=COLD_S)
    assert min(run.between(60, 10 * PERIOD_S)) >= 1


def test_min_replicas_one_is_never_zeroed_by_prediction() -> None:
    """The predicted gaps never take a model below its min replicas (the sweep's min-1 runs rely on it)."""
    svc = [service(capacity_rps=20.0, cold_start_s=COLD_S, min_replicas=1)]
    run = drive(EAGER, svc, _timer, until=10 * PERIOD_S, cold_start_s=COLD_S)
    assert min(run.between(0, 10 * PERIOD_S)) >= 1


def test_flash_crowd_on_a_sleeping_model_is_sized_at_the_first_tick() -> None:
    """A timer model asleep between fires is hit by a flash crowd (150 req/s at t = 2,000 s, between fires): the
    first decision that sees it scales from zero to several replicas at once (its fast rate estimate has seen one
    tick of the crowd) and within 10 s to the replicas the crowd needs (ceil(150 / 10) = 15, planned at half of
    20 req/s), not to one replica. Catches an activation that only restores the floor."""

    def load(t: float) -> Load:
        if 2000.0 <= t <= 2100.0:
            return Load(rate=150.0, outstanding=50)
        return _timer(t)

    run = drive(EAGER, TIMER, load, until=2100.0, cold_start_s=COLD_S)
    assert run.replicas_at(1998.0) == 0, "the scenario needs the model asleep when the crowd arrives"
    assert run.replicas_at(2000.0) >= 5
    assert run.reason_at(2000.0) == Reason.ACTIVATE
    assert max(run.between(2000.0, 2010.0)) >= 15


def test_without_prewarm_a_sleeping_timer_waits_for_its_request() -> None:
    """``prewarm`` off (the ablation's lever): a timer priced to sleep (misses cheap, budget unlimited) goes to
    zero and stays there until its next fire, whose request finds no ready replica; with it on the same fire finds
    one (the test above). Catches a ``prewarm`` switch that does nothing."""
    pol = replace(EAGER, prewarm=False, miss_cost_gpu_s=100.0, cold_budget_share=1.0, slo_target=0.0)
    until = 12 * PERIOD_S
    run = drive(pol, TIMER, _timer, until=until, cold_start_s=COLD_S)
    late = [t for t in _fires(until) if t > 6 * PERIOD_S]
    assert all(run.seen_at(t)[1] == 0 for t in late)
    assert not any(run.reason_at(t) == Reason.PREWARM for t in run.times)
    plan = run.states[-1]
    assert math.isfinite(plan.keep_alive[0]) and plan.prewarm_at[0] == math.inf


# --- right-sizing that moves (Decisions.spec) ---------------------------------------------------------------------


def test_spec_table_picks_what_right_sizing_picks() -> None:
    """The policy's vectorised rule (``SpecTable.choose``) and :func:`choose_spec` agree on every peak and burst of a
    grid, latency margin included. Mutations caught: preferring the most capacity where a share fits (peak 1 → 1.0
    instead of 0.2 / 0.4), ignoring the burst (burst 500 → 0.2), dropping the latency rule (the slow 0.4 share)."""
    specs = (*SPECS, _spec(0.6, 70.0, 0.6))
    svc = replace(SVC[0], specs=specs, cold_start_s=60.0)
    table = SpecTable.of([svc])
    assert table is not None
    for peak in (0.0, 1.0, 20.0, 40.0, 50.0, 80.0, 500.0):
        for burst in (0.0, 3.0, 390.0, 500.0, 5000.0):
            want = choose_spec(svc, peak, burst_work=burst)
            got = int(table.choose(np.array([peak]), np.array([burst]), np.array([60.0]))[0])
            assert specs[got] == want, (peak, burst)


def test_a_model_first_called_late_moves_its_spec_an_hour_after_its_first_request() -> None:
    """Three models on the 0.4 share (the burst floor): one called alone every 5 minutes from t = 1,000, one never
    called, one whose first calls are a burst of 10 requests/s for 90 s (a rate one 0.2 replica serves, but about 470
    requests within one cold start). An hour after its first request the quiet one asks for the 0.2 share
    (``Decisions.spec`` 0), the bursty one for the 0.4 it runs (its burst is more than a quarter of the 1,560
    requests a 0.2 replica serves in a cold start), the silent one for nothing (-1). Mutations caught: asking before
    ``spec_learn_s`` of evidence (-1 at 4,598 s fails), judging a never-called model (its -1), ignoring the burst
    (the bursty one asks for 0.2)."""
    svc = replace(SVC[0], profile=SPECS[1], specs=SPECS, cold_start_s=60.0, min_replicas=0)
    services = [replace(svc, model=f"m{i}") for i in range(3)]

    def load(t: float) -> list[Load]:
        quiet = Load(rate=0.5 if t >= 1000.0 and (t - 1000.0) % 300.0 == 0.0 else 0.0)
        burst = Load(rate=10.0 if 1000.0 <= t < 1090.0 else 0.0)
        return [quiet, Load(), burst]

    run = drive(Shadowscale(), services, load, until=5000.0)
    assert run.at(4598.0).spec is not None
    assert list(run.at(4598.0).spec) == [-1, -1, -1]
    assert list(run.at(4600.0).spec) == [0, -1, 1]
    assert list(run.at(5000.0).spec) == [0, -1, 1]
    off = drive(replace(Shadowscale(), move_specs=False), services, load, until=100.0)
    assert off.at(100.0).spec is None
