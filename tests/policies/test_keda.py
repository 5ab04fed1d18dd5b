"""KEDA baseline: a queue-lag scaler (Kafka-style, lagThreshold 10) driving the HPA KEDA creates.

KEDA's operator polls every 30 s and alone moves the workload between 0 and 1 replica (activation when
lag > activationLagThreshold 0; scale to zero after cooldownPeriod 300 s without activity). Between 1 and N
replicas the HPA (15 s sync) scales on the lag as an AverageValue external metric: desired = ceil(lag / 10)
with tolerance 0.1 and HPA's default behavior. Lag in the simulator = ``outstanding``.
"""

from __future__ import annotations

import pytest
from policy_harness import Load, drive, service

from shadowscale.policies.scaling import KEDA, Reason, make_policy

SVC = [service()]
UP, DOWN, HOLD = int(Reason.SCALE_UP), int(Reason.SCALE_DOWN), int(Reason.HOLD)
WITHIN, ACTIVATE, TO_ZERO = int(Reason.WITHIN_TOLERANCE), int(Reason.ACTIVATE), int(Reason.SCALE_TO_ZERO)
RATE_LIMITED = int(Reason.RATE_LIMITED)


def lag(n: int, replicas: int | None = None) -> Load:
    return Load(outstanding=n, concurrency=float(n), replicas=replicas)


def test_defaults_match_the_documented_scaledobject_spec() -> None:
    """lagThreshold 10, activationLagThreshold 0, pollingInterval 30 s, cooldownPeriod 300 s, HPA sync 15 s."""
    keda = KEDA()
    assert (keda.lag_threshold, keda.activation_lag_threshold) == (10.0, 0.0)
    assert (keda.polling_s, keda.cooldown_s, keda.tick_s) == (30.0, 300.0, 15.0)
    assert keda.hindsight is False
    assert list(keda.init(SVC)[0]) == [1]


@pytest.mark.parametrize(
    ("lag_from", "activated_at"),
    [
        pytest.param(15, 30, id="lag-at-HPA-only-tick-15->poll-30"),
        pytest.param(30, 30, id="lag-at-poll-30->30"),
        pytest.param(45, 60, id="lag-at-HPA-only-tick-45->poll-60"),
        pytest.param(60, 60, id="lag-at-poll-60->60"),
    ],
)
def test_activation_from_zero_only_at_a_polling_tick(lag_from: float, activated_at: float) -> None:
    """At zero replicas the HPA is disabled; KEDA's 30 s poll alone activates (0 -> 1) when lag > 0."""
    run = drive(KEDA(), SVC, lambda t: lag(5 if t >= lag_from else 0), until=90, initial=0)
    assert run.between(0, activated_at - 15) == [0] * int(activated_at / 15)
    assert run.replicas_at(activated_at) == 1
    assert run.reason_at(activated_at) == ACTIVATE


def test_no_activation_without_lag() -> None:
    """Lag 0 is not above activationLagThreshold 0: the workload stays at zero."""
    run = drive(KEDA(), SVC, lambda t: lag(0), until=600, initial=0)
    assert set(run.series()) == {0}


def test_scale_from_zero_then_hpa_scales_on_lag() -> None:
    """KEDA activates to 1 at the poll; the HPA's next sync scales to ceil(35 / 10) = 4, then holds."""
    run = drive(KEDA(), SVC, lambda t: lag(35 if t >= 20 else 0), until=75, initial=0)
    assert run.series() == [0, 0, 1, 4, 4, 4]
    assert run.reason_at(45) == UP


def test_activation_respects_min_replicas() -> None:
    """Scale-from-zero goes to max(1, minReplicaCount); here a forced zero with min 2 comes back to 2."""
    run = drive(KEDA(), [service(min_replicas=2)], lambda t: lag(3, replicas=0 if t < 30 else None), until=30)
    assert run.replicas_at(30) == 2
    assert run.reason_at(30) == ACTIVATE


# (replicas, lag, expected raw recommendation, expected replicas or None, expected reason or None)
LAG_FORMULA = [
    pytest.param(1, 25, 3, 3, UP, id="1@25->ceil(2.5)=3"),
    pytest.param(2, 35, 4, 4, UP, id="2@35->4"),
    pytest.param(4, 41, 4, 4, WITHIN, id="4@41-ratio-1.025-holds"),
    pytest.param(4, 43, 4, 4, WITHIN, id="4@43-ratio-1.075-holds"),
    pytest.param(4, 45, 5, 5, UP, id="4@45-ratio-1.125->ceil(4.5)=5"),
    pytest.param(4, 37, 4, 4, WITHIN, id="4@37-ratio-0.925-holds"),
    pytest.param(4, 35, 4, 4, HOLD, id="4@35-ratio-0.875->ceil(3.5)=4"),
    pytest.param(5, 30, 3, None, None, id="5@30->3"),
    pytest.param(10, 12, 2, None, None, id="10@12->2"),
]


@pytest.mark.parametrize(("replicas", "n", "raw", "expected", "reason"), LAG_FORMULA)
def test_between_one_and_n_desired_is_ceil_lag_over_threshold(
    replicas: int, n: int, raw: int, expected: int | None, reason: int | None
) -> None:
    """With 1..N replicas the HPA recommends ceil(lag / 10), holding while |lag / (10 × replicas) − 1| <= 0.1."""
    run = drive(KEDA(), SVC, lambda t: lag(n, replicas), until=15)
    assert run.raw_at(15) == raw
    if expected is not None:
        assert run.replicas_at(15) == expected
        assert run.reason_at(15) == reason


@pytest.mark.parametrize(
    ("knob", "expected"),
    [pytest.param(None, 2, id="default-10->ceil(1.8)=2"), pytest.param(5.0, 4, id="5->ceil(3.6)=4")],
)
def test_lag_threshold_knob_changes_the_result(knob: float | None, expected: int) -> None:
    """The sweep knob is lagThreshold: 2 replicas with lag 18 want ceil(18 / knob)."""
    run = drive(make_policy("keda", knob=knob), SVC, lambda t: lag(18, replicas=2), until=15)
    assert run.replicas_at(15) == expected


_LEGACY_UP = (
    "KEDA creates its HPA with spec.behavior nil unless advanced.horizontalPodAutoscalerConfig.behavior is "
    "set, so the controller's legacy path applies: scale-up limit max(2 × current, 4), not "
    "max(2 × current, current + 4) as normalize() in hpa.py computes."
)


@pytest.mark.parametrize(
    ("replicas", "expected"),
    [
        pytest.param(4, 8, id="4->8"),
        pytest.param(8, 16, id="8->16"),
        pytest.param(1, 4, id="1->4(legacy)"),
        pytest.param(3, 6, id="3->6(legacy)"),
    ],
)
def test_hpa_part_is_rate_limited(replicas: int, expected: int) -> None:
    """Lag 1000 wants 100 replicas; one HPA sync at most doubles them (at least up to 4)."""
    run = drive(KEDA(), SVC, lambda t: lag(1000, replicas), until=15)
    assert run.raw_at(15) == 100
    assert run.replicas_at(15) == expected
    assert run.reason_at(15) == RATE_LIMITED


@pytest.mark.parametrize(
    ("lag_ticks", "last_seen", "zero_at"),
    [
        pytest.param((0, 60), 60, 360, id="lag-seen-by-poll-60->zero-at-360"),
        pytest.param((0, 90), 90, 390, id="lag-seen-by-poll-90->zero-at-390"),
        pytest.param((0, 60, 75), 60, 360, id="lag-only-at-HPA-tick-75-is-not-activity->360"),
    ],
)
def test_scale_to_zero_after_cooldown_from_last_poll_that_saw_lag(
    lag_ticks: tuple[float, ...], last_seen: float, zero_at: float
) -> None:
    """Scale to zero at the first poll at least 300 s after the last poll that saw lag > 0.

    Lag 15 at the ticks in ``[lag_ticks[0], lag_ticks[1]]`` (plus any extra tick listed), 0 otherwise; two
    replicas (ceil(15/10) = 2). Activity is only checked at polls (multiples of 30 s), so lag seen by an
    HPA-only tick does not restart the cooldown. Until then the HPA keeps at least one replica.
    """
    lo, hi, *extra = lag_ticks

    def load(t: float) -> Load:
        return lag(15 if lo <= t <= hi or t in extra else 0)

    run = drive(KEDA(), SVC, load, until=zero_at + 60, initial=2)
    assert min(run.between(0, zero_at - 15)) >= 1
    assert run.replicas_at(zero_at - 30) >= 1
    assert run.replicas_at(zero_at) == 0
    assert run.reason_at(zero_at) == TO_ZERO
    assert run.between(zero_at, zero_at + 60) == [0] * 5
    assert zero_at - last_seen == 300


def test_no_scale_to_zero_with_min_replicas() -> None:
    """With minReplicaCount 1 the cooldown never takes the workload to zero (the HPA floor is 1)."""
    run = drive(KEDA(), [service(min_replicas=1)], lambda t: lag(0), until=900, initial=3)
    assert min(run.series()) == 1
    assert run.series()[-1] == 1


def test_scale_down_between_one_and_n_is_stabilized_for_300s() -> None:
    """The HPA part keeps the highest recommendation of the last 300 s: 4 replicas until t=330, then 2.

    Lag 35 until t=30 (recommendation ceil(3.5) = 4 at t=15 and t=30), then 12 (ceil(1.2) = 2, still active
    so no scale to zero). The recommendation of t=30 stops counting when it is 300 s old, at t=330.
    """
    run = drive(KEDA(), SVC, lambda t: lag(35 if t <= 30 else 12), until=360, initial=1)
    assert run.replicas_at(15) == 4
    assert run.raw_at(45) == 2
    assert run.between(15, 315) == [4] * 21
    assert run.replicas_at(330) == 2
    assert run.replicas_at(360) == 2


def test_lag_during_cooldown_restarts_it() -> None:
    """A poll that sees lag again during the cooldown restarts it: lag at polls 0 and 240 -> zero at 540."""
    run = drive(KEDA(), SVC, lambda t: lag(5 if t in (0, 240) else 0), until=570, initial=1)
    assert min(run.between(0, 525)) == 1
    assert run.replicas_at(540) == 0


def test_reason_string_mentions_lag_and_threshold() -> None:
    """Decisions.explain for KEDA reports the lag as the metric and lagThreshold as the target."""
    run = drive(KEDA(), SVC, lambda t: lag(25, replicas=1), until=15)
    text = run.at(15).explain(0)
    assert text.startswith("keda: scale up")
    assert "metric=25 " in text
    assert "target=10 " in text
    assert text.endswith("-> 3 replicas")


def test_fresh_idle_workload_scales_to_zero_at_the_first_polls() -> None:
    """No lag ever seen and no lastActiveTime: the first polls take the initial replica to zero."""
    run = drive(KEDA(), SVC, lambda t: lag(0), until=60)
    assert run.replicas_at(30) == 0
