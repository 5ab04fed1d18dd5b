"""KPA baseline: Knative's pod autoscaler in concurrency mode (tick 2 s, stable window 60 s, panic window 6 s).

Target per replica = container-concurrency-target-default 100 × target utilization 0.7 = 70. Stable desired =
ceil(average concurrency over 60 s / 70); panic when the 6 s desired count is at least 2× the ready count;
scale-down at most ÷2 per tick; scale to zero after the stable average reaches 0 plus a 30 s grace period.
Concurrency here is the ``inflight_s`` counter's rate; ``outstanding`` is what the activator buffers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from policy_harness import Load, drive, service

from shadowscale.policies.scaling import KPA, Reason, make_policy

SVC = [service()]
UP, DOWN, HOLD = int(Reason.SCALE_UP), int(Reason.SCALE_DOWN), int(Reason.HOLD)
PANIC, RATE_LIMITED, NO_METRICS = int(Reason.PANIC), int(Reason.RATE_LIMITED), int(Reason.NO_METRICS)
COOLDOWN, TO_ZERO, ACTIVATE = int(Reason.COOLDOWN), int(Reason.SCALE_TO_ZERO), int(Reason.ACTIVATE)


def conc(c: float, replicas: int | None = None, outstanding: int = 0) -> Load:
    return Load(concurrency=c, replicas=replicas, outstanding=outstanding)


def settled(load: Callable[[float], Load]) -> Callable[[float], Load]:
    """``load`` with one replica at t=0: the autoscaler starts over a single ready replica, so it does not start
    in panic mode (an autoscaler created over more than one ready replica does, as Knative's newAutoscaler; see
    test_ported_kpa.py). These tests are about the steady state from t=2 on."""

    def wrapped(t: float) -> Load:
        ld = load(t)
        return replace(ld, replicas=1, ready=None) if t == 0 and ld.replicas is not None else ld

    return wrapped


def test_defaults_match_config_autoscaler() -> None:
    """Target 100 × 70 %, stable 60 s, panic 10 % (6 s), threshold 200 %, rates 1000 / 2, grace 30 s, tick 2 s."""
    kpa = KPA()
    assert kpa.target_concurrency * kpa.target_utilization == pytest.approx(70.0)
    assert (kpa.stable_window_s, kpa.panic_window_s, kpa.panic_threshold) == (60.0, 6.0, 2.0)
    assert (kpa.max_scale_up_rate, kpa.max_scale_down_rate) == (1000.0, 2.0)
    assert (kpa.scale_to_zero_grace_s, kpa.tick_s, kpa.initial_scale) == (30.0, 2.0, 1)
    assert kpa.hindsight is False


def test_first_tick_has_no_window_and_holds() -> None:
    """With a single counter sample there is no window yet: keep the current scale (NO_METRICS)."""
    run = drive(KPA(), SVC, lambda t: conc(500, replicas=3), until=0)
    assert run.replicas_at(0) == 3
    assert run.reason_at(0) == NO_METRICS


# (concurrency over time, forced ready replicas, expected replicas at t=60, expected reason)
STABLE = [
    pytest.param(lambda t: 70.0, 1, 1, HOLD, id="70/70->1"),
    pytest.param(lambda t: 140.0, 2, 2, HOLD, id="140/70->2"),
    pytest.param(lambda t: 200.0, 2, 3, UP, id="200/70->ceil(2.86)=3"),
    pytest.param(lambda t: 350.0, 4, 5, UP, id="350/70->5"),
    pytest.param(lambda t: 100.0, 3, 2, DOWN, id="100/70->ceil(1.43)=2"),
    pytest.param(lambda t: 210.0 if t <= 30 else 0.0, 3, 2, DOWN, id="210-for-half-the-window->avg-105->2"),
]


@pytest.mark.parametrize(("concurrency", "ready", "expected", "reason"), STABLE)
def test_stable_mode_desired_is_ceil_average_concurrency_over_target(
    concurrency, ready: int, expected: int, reason: int
) -> None:
    """Stable mode: desired = ceil(average concurrency over the last 60 s / 70) (no panic in these rows)."""
    run = drive(KPA(), SVC, settled(lambda t: conc(concurrency(t), replicas=ready)), until=60)
    assert run.replicas_at(60) == expected
    assert run.reason_at(60) == reason
    assert all(run.reason_at(t) != PANIC for t in run.times)


@pytest.mark.parametrize(
    ("c", "ready", "panics", "expected"),
    [
        pytest.param(70.0, 1, False, 1, id="dppc-1/ready-1"),
        pytest.param(71.0, 1, True, 2, id="dppc-2/ready-1-exactly-2x"),
        pytest.param(141.0, 1, True, 3, id="dppc-3/ready-1"),
        pytest.param(490.0, 4, False, 7, id="dppc-7/ready-4-1.75x"),
        pytest.param(500.0, 4, True, 8, id="dppc-8/ready-4-exactly-2x"),
    ],
)
def test_panic_when_panic_window_desired_is_at_least_twice_ready(
    c: float, ready: int, panics: bool, expected: int
) -> None:
    """Panic mode starts when ceil(6 s average / 70) >= 2 × ready replicas."""
    run = drive(KPA(), SVC, settled(lambda t: conc(c, replicas=ready)), until=2)
    assert (run.reason_at(2) == PANIC) is panics
    assert run.replicas_at(2) == expected


def burst(t: float) -> float:
    """70 in flight until t=60, a burst of 400 over (60, 66], then 70 again."""
    return 400.0 if 60 < t <= 66 else 70.0


def test_panic_window_reacts_before_the_stable_window() -> None:
    """A burst shows in the 6 s window first: at t=64 the panic average is (2×70 + 4×400)/6 = 290 -> 5 pods.

    With 2 ready replicas 5 >= 2 × 2, so KPA panics at t=64 and goes to 5 although the 60 s average
    (92) only asks for 2. At t=62 the panic average is 180 -> 3 < 4: no panic yet.
    """
    run = drive(KPA(), SVC, settled(lambda t: conc(burst(t), replicas=2)), until=64)
    assert run.reason_at(62) != PANIC
    assert run.reason_at(64) == PANIC
    assert run.replicas_at(64) == 5
    assert run.at(64).metric[0] == pytest.approx((56 * 70 + 4 * 400) / 60)


def test_no_scale_down_while_panicking_and_panic_ends_60s_after_last_over_threshold() -> None:
    """During panic the count never decreases; panic ends at the first tick more than 60 s after the last
    tick over the threshold.

    At t=66 the 6 s average is 400 -> 6 pods (3× the 2 ready). The last tick over the threshold is t=68
    ((2×400 + 70)×2 s / 6 s = 290 -> 5 pods >= 4); from t=70 the panic count is below 4. KPA keeps 6 until
    t=128 (= 68 + 60, not yet "more than" 60 s); at t=130 it leaves panic and the stable count applies (an
    all-70 window -> 1 pod; the ÷2 limit from 2 ready allows 1).
    """
    run = drive(KPA(), SVC, settled(lambda t: conc(burst(t), replicas=2)), until=132)
    assert run.replicas_at(66) == 6
    assert run.between(66, 128) == [6] * 32
    assert all(run.reason_at(t) == PANIC for t in range(64, 129, 2))
    assert run.reason_at(130) == DOWN
    assert run.replicas_at(130) == 1


@pytest.mark.parametrize(
    ("ready", "c", "expected", "reason"),
    [
        pytest.param(8, 70.0, 4, RATE_LIMITED, id="8-ready-want-1->4"),
        pytest.param(9, 70.0, 4, RATE_LIMITED, id="9-ready-want-1->floor(4.5)=4"),
        pytest.param(20, 0.0, 10, RATE_LIMITED, id="20-ready-want-0->10"),
        pytest.param(8, 300.0, 5, DOWN, id="8-ready-want-5->5"),
    ],
)
def test_scale_down_is_at_most_halving_per_tick(ready: int, c: float, expected: int, reason: int) -> None:
    """max-scale-down-rate 2: one decision keeps at least floor(ready / 2) replicas."""
    run = drive(KPA(), SVC, settled(lambda t: conc(c, replicas=ready)), until=60)
    assert run.replicas_at(60) == expected
    assert run.reason_at(60) == reason


def test_scale_down_halves_tick_by_tick_when_following_its_decisions() -> None:
    """8 replicas (forced at t=2, the autoscaler started over one) with 70 in flight: 4, 2, 1, 1."""
    run = drive(KPA(), SVC, lambda t: conc(70.0, replicas={0: 1, 2: 8}.get(int(t))), until=8)
    assert run.series()[1:] == [4, 2, 1, 1]


@pytest.mark.parametrize(
    ("last_busy", "desired_zero_at"),
    [pytest.param(20, 80, id="busy-until-20->zero-desired-80->removed-110"), pytest.param(50, 110, id="until-50")],
)
def test_scale_to_zero_after_idle_stable_window_plus_grace(last_busy: float, desired_zero_at: float) -> None:
    """The stable average reaches 0 once the whole 60 s window is idle; the replica goes 30 s later.

    35 in flight until ``last_busy``, then none. At ``last_busy + 60`` the desired count is 0, but the last
    replica stays through the scale-to-zero grace period (reason COOLDOWN) and is removed at
    ``last_busy + 90`` (reason SCALE_TO_ZERO).
    """
    run = drive(KPA(), SVC, lambda t: conc(35.0 if t <= last_busy else 0.0), until=desired_zero_at + 40)
    assert desired_zero_at == last_busy + 60
    zero_at = desired_zero_at + 30
    assert run.reason_at(desired_zero_at - 2) not in (COOLDOWN, TO_ZERO)
    assert run.between(0, zero_at - 2) == [1] * int(zero_at / 2)
    assert all(run.reason_at(t) == COOLDOWN for t in range(int(desired_zero_at), int(zero_at), 2))
    assert run.replicas_at(zero_at) == 0
    assert run.reason_at(zero_at) == TO_ZERO
    assert run.between(zero_at, zero_at + 10) == [0] * 6


@pytest.mark.parametrize(
    ("c", "outstanding", "expected", "reason"),
    [
        pytest.param(0.0, 2, 1, ACTIVATE, id="buffered-requests-no-concurrency-yet->1"),
        pytest.param(3.0, 3, 1, ACTIVATE, id="3-in-flight->1"),
        pytest.param(300.0, 300, 2, ACTIVATE, id="300-buffered->panic-count-2"),
        pytest.param(0.0, 0, 0, HOLD, id="nothing-buffered->stay-at-0"),
    ],
)
def test_activation_from_zero_when_requests_are_buffered(
    c: float, outstanding: int, expected: int, reason: int
) -> None:
    """At zero, requests buffered by the activator (outstanding > 0) bring at least one replica at the next tick."""

    def load(t: float) -> Load:
        return conc(c, outstanding=outstanding) if t >= 10 else conc(0.0)

    run = drive(KPA(), SVC, load, until=10, initial=0)
    assert run.between(0, 8) == [0] * 5
    assert run.replicas_at(10) == expected
    assert run.reason_at(10) == reason


@pytest.mark.parametrize(
    ("knob", "expected"),
    [
        pytest.param(None, 2, id="default-100->target-70->1->halving-floor-2"),
        pytest.param(10.0, 5, id="10->target-7->5"),
        pytest.param(20.0, 3, id="20->target-14->ceil(2.5)=3"),
    ],
)
def test_target_concurrency_knob_changes_the_result(knob: float | None, expected: int) -> None:
    """The knob is container-concurrency-target-default: 35 in flight on 5 replicas want ceil(35 / (0.7 × knob))."""
    run = drive(make_policy("kpa", knob=knob), SVC, settled(lambda t: conc(35.0, replicas=5)), until=60)
    assert run.replicas_at(60) == expected


def test_reason_string_mentions_concurrency_and_target() -> None:
    """Decisions.explain for KPA reports the stable concurrency as the metric and 70 as the target."""
    run = drive(KPA(), SVC, settled(lambda t: conc(200.0, replicas=2)), until=60)
    text = run.at(60).explain(0)
    assert text.startswith("kpa: scale up")
    assert "metric=200 " in text
    assert "target=70 " in text
    assert text.endswith("-> 3 replicas")


def test_panic_provisions_for_the_stable_count_when_it_is_larger() -> None:
    """10 ready replicas serve 1000 in flight; at t=60 8 of them vanish and 300 remain in flight.

    At t=62 the 6 s average is (2×1000×2 + 300×2)/6 = 767 -> 11 pods, 11/2 >= 2: panic. The 60 s average is
    (1000×58 + 300×2)/60 = 977 -> 14 pods. Knative provisions max(14, 11) = 14.
    """

    def load(t: float) -> Load:
        return conc(1000.0, replicas=10) if t <= 60 else Load(concurrency=300.0, replicas=10, ready=2)

    run = drive(KPA(), SVC, settled(load), until=62)
    assert run.reason_at(62) == PANIC
    assert run.replicas_at(62) == 14
