"""HPA baseline: kube-controller-manager's HorizontalPodAutoscaler on GPU utilization of ready replicas.

Every expectation is worked out by hand from the documented algorithm (replica_calculator.go, horizontal.go):
``desired = ceil(ready × util / target)``, tolerance 0.1, unready pods at 0 % on a scale-up, 300 s scale-down
stabilization, scale-up at most max(2×, +4) per 15 s sync, min 1.
"""

from __future__ import annotations

import pytest
from policy_harness import Load, drive, service

from shadowscale.policies.scaling import HPA, Reason, make_policy
from shadowscale.policies.scaling.hpa import Behavior

SVC = [service()]
UP, DOWN, HOLD = int(Reason.SCALE_UP), int(Reason.SCALE_DOWN), int(Reason.HOLD)
WITHIN, NO_METRICS = int(Reason.WITHIN_TOLERANCE), int(Reason.NO_METRICS)
STABILIZED, RATE_LIMITED, BOUNDS = int(Reason.STABILIZED), int(Reason.RATE_LIMITED), int(Reason.BOUNDS)


def fixed(replicas: int, util: float, ready: int | None = None) -> Load:
    return Load(util=util, replicas=replicas, ready=ready)


def test_defaults_match_the_documented_controller_flags() -> None:
    """Target 70 %, tolerance 0.1, 15 s sync, min 1, behavior unset (legacy path); the v2 default rules when set
    (300 s down window, +100 %/+4 pods up)."""
    hpa = HPA()
    assert (hpa.target_utilization, hpa.tolerance, hpa.tick_s, hpa.min_replicas) == (0.70, 0.10, 15.0, 1)
    assert hpa.behavior is None
    b = Behavior()
    assert (b.scale_down_stabilization_s, b.scale_up_stabilization_s, b.period_s) == (300.0, 0.0, 15.0)
    assert (b.scale_up_percent, b.scale_up_pods, b.scale_down_percent) == (100.0, 4, 100.0)
    assert hpa.hindsight is False


def test_first_sync_has_no_metrics_and_holds() -> None:
    """The first sync has no previous sample to difference, so no utilization: hold, reason NO_METRICS."""
    run = drive(HPA(), SVC, lambda t: fixed(3, 1.0), until=0)
    assert run.replicas_at(0) == 3
    assert run.reason_at(0) == NO_METRICS


# (current replicas, utilization, expected raw recommendation, expected reason at t=15)
FORMULA = [
    pytest.param(1, 0.9, 2, UP, id="1x90%->ceil(1.29)=2"),
    pytest.param(3, 1.0, 5, UP, id="3x100%->ceil(4.29)=5"),
    pytest.param(4, 0.8, 5, UP, id="4x80%->ceil(4.57)=5"),
    pytest.param(10, 0.35, 5, None, id="10x35%->ceil(5.0)=5"),
    pytest.param(8, 0.14, 2, None, id="8x14%->ceil(1.6)=2"),
    pytest.param(6, 0.0, 0, None, id="6x0%->0"),
    pytest.param(10, 0.749, 10, WITHIN, id="ratio-1.07-holds"),
    pytest.param(10, 0.651, 10, WITHIN, id="ratio-0.93-holds"),
    pytest.param(10, 0.777, 12, UP, id="ratio-1.11-scales-up->ceil(11.1)=12"),
    pytest.param(10, 0.623, 9, None, id="ratio-0.89-scales-down->ceil(8.9)=9"),
]


@pytest.mark.parametrize(("current", "util", "expected", "reason"), FORMULA)
def test_desired_is_ceil_current_times_util_over_target(
    current: int, util: float, expected: int, reason: int | None
) -> None:
    """desired = ceil(current × util / 0.7); no change while |util / target − 1| <= 0.1.

    Scale-ups (within the rate limit) are applied at once; for scale-downs only the recommendation is pinned
    here (what happens to the replicas is the stabilization window's business, tested below).
    """
    run = drive(HPA(), SVC, lambda t: fixed(current, util), until=15)
    assert run.raw_at(15) == expected
    if reason is not None:
        assert run.reason_at(15) == reason
        assert run.replicas_at(15) == expected


@pytest.mark.parametrize(
    ("knob", "expected"),
    [
        pytest.param(None, 5, id="default-70%->ceil(4.57)=5"),
        pytest.param(0.5, 7, id="50%->ceil(6.4)=7"),
        pytest.param(0.4, 8, id="40%->ceil(8.0)=8"),
        pytest.param(0.8, 4, id="80%->ratio-1.0-holds"),
    ],
)
def test_target_utilization_knob_changes_the_result(knob: float | None, expected: int) -> None:
    """The sweep knob is the HPA target utilization: 4 replicas at 80 % busy give ceil(4 × 0.8 / knob)."""
    run = drive(make_policy("hpa", knob=knob), SVC, lambda t: fixed(4, 0.8), until=15)
    assert run.replicas_at(15) == expected
    assert run.at(15).target[0] == pytest.approx(0.7 if knob is None else knob)


_LEGACY_UP = (
    "An HPA whose spec.behavior is unset (the case hpa.py models, and the HPA KEDA creates) runs the legacy "
    "normalizeDesiredReplicas path: scale-up limit = max(2 × current, 4) (calculateScaleUpLimit, "
    "scaleUpLimitFactor=2, scaleUpLimitMinimum=4), not max(2 × current, current + 4). v2 defaulting leaves "
    "behavior nil (SetDefaults_HorizontalPodAutoscalerBehavior only fills a non-nil behavior)."
)

# (current replicas, expected replicas after one sync) with target 10 % and 100 % busy: raw = 10 × current
RATE_LIMIT = [
    pytest.param(4, 8, id="4->8(2x)"),
    pytest.param(5, 10, id="5->10(2x)"),
    pytest.param(10, 20, id="10->20(2x)"),
    pytest.param(1, 4, id="1->4(legacy-min-4)"),
    pytest.param(2, 4, id="2->4(legacy-min-4)"),
    pytest.param(3, 6, id="3->6(legacy-2x)"),
]


@pytest.mark.parametrize(("current", "expected"), RATE_LIMIT)
def test_scale_up_is_rate_limited_per_sync(current: int, expected: int) -> None:
    """A scale-up may at most double the replicas per 15 s sync (at least up to 4 replicas)."""
    run = drive(HPA(target_utilization=0.1), SVC, lambda t: fixed(current, 1.0), until=15)
    assert run.raw_at(15) == 10 * current
    assert run.replicas_at(15) == expected
    assert run.reason_at(15) == RATE_LIMITED


V2_RATE_LIMIT = [
    pytest.param(1, 5, id="1->5(+4)"),
    pytest.param(2, 6, id="2->6(+4)"),
    pytest.param(3, 7, id="3->7(+4)"),
    pytest.param(4, 8, id="4->8(2x)"),
    pytest.param(10, 20, id="10->20(2x)"),
]


@pytest.mark.parametrize(("current", "expected"), V2_RATE_LIMIT)
def test_v2_behavior_scale_up_is_max_of_double_and_plus_4(current: int, expected: int) -> None:
    """With ``spec.behavior`` set to the v2 defaults (Percent 100 / Pods 4 per 15 s, selectPolicy Max) a sync may add
    max(100 % of current, 4 pods)."""
    run = drive(HPA(target_utilization=0.1, behavior=Behavior()), SVC, lambda t: fixed(current, 1.0), until=15)
    assert run.replicas_at(15) == expected
    assert run.reason_at(15) == RATE_LIMITED


def test_scale_up_doubles_every_sync_while_the_recommendation_is_far_away() -> None:
    """Following its own decisions (no cold start), 4 replicas double at every sync: 8, 16, 32, 64."""
    run = drive(HPA(target_utilization=0.1), SVC, lambda t: Load(util=1.0), until=60, initial=4)
    assert run.series() == [4, 8, 16, 32, 64]


def test_max_replicas_bounds_the_scale_up() -> None:
    """maxReplicas clamps after the rate limit: 4 replicas wanting 40 with max 6 get 6, reason BOUNDS."""
    run = drive(HPA(target_utilization=0.1), [service(max_replicas=6)], lambda t: fixed(4, 1.0), until=15)
    assert run.replicas_at(15) == 6
    assert run.reason_at(15) == BOUNDS


def spike_load(t: float) -> Load:
    """25 % busy (on target) until t=15, 100 % over (15, 30], then 2 % busy."""
    if t <= 15:
        return Load(util=0.25)
    if t <= 30:
        return Load(util=1.0)
    return Load(util=0.02)


def test_scale_down_is_held_for_the_stabilization_window() -> None:
    """After a spike the replicas stay at the spike's recommendation for 300 s, then drop in one step.

    Target 25 %, one replica: the spike at t=30 recommends ceil(1 × 1.0 / 0.25) = 4 (4 replicas in both the
    legacy and the behavior rate limit). Afterwards ceil(4 × 0.02 / 0.25) = 1 is recommended at every sync,
    but the highest recommendation of the window (4, from t=30) wins while it is younger than 300 s. At
    t=330 it is exactly 300 s old and no longer counts (the controller keeps recommendations strictly
    after ``now - 300 s``), so the HPA drops to 1 at once (scale-down may remove 100 % per 15 s).
    """
    run = drive(HPA(target_utilization=0.25), SVC, spike_load, until=360)
    assert run.replicas_at(15) == 1
    assert run.replicas_at(30) == 4
    assert run.raw_at(45) == 1
    assert run.between(30, 315) == [4] * 20
    assert run.replicas_at(330) == 1
    assert run.replicas_at(345) == 1


def test_stabilized_ticks_say_so_in_the_reason() -> None:
    """While the window holds the replicas the reason is STABILIZED; the tick that scales down says SCALE_DOWN."""
    run = drive(HPA(target_utilization=0.25), SVC, spike_load, until=345)
    assert [run.reason_at(t) for t in range(45, 316, 15)] == [STABILIZED] * 19
    assert "scale-down held by stabilization window" in run.at(45).explain(0)
    assert run.reason_at(330) == DOWN


# (replicas, ready, utilization, expected replicas or None, expected raw, expected reason or None)
UNREADY = [
    pytest.param(6, 6, 1.0, 9, 9, UP, id="all-ready-baseline->ceil(8.57)=9"),
    pytest.param(6, 5, 1.0, 8, 8, UP, id="1-unready-at-0%->ratio-1.19->8"),
    pytest.param(4, 3, 1.0, 4, 4, WITHIN, id="1-unready-at-0%->ratio-1.07-within-tolerance"),
    pytest.param(4, 2, 0.9, 4, 4, WITHIN, id="2-unready-at-0%->ratio-0.64-flips-direction->cancelled"),
    pytest.param(6, 3, 0.2, None, 1, None, id="scale-down-leaves-unready-out->ceil(3x0.29)=1"),
]


@pytest.mark.parametrize(("replicas", "ready", "util", "expected", "raw", "reason"), UNREADY)
def test_unready_replicas_count_as_idle_on_scale_up(
    replicas: int, ready: int, util: float, expected: int | None, raw: int, reason: int | None
) -> None:
    """Starting replicas have no metric: on a scale-up they count as 0 %, which can cancel the scale.

    ``util`` is the busy fraction of the ready replicas. With unready pods and ratio > 1 the controller
    recomputes the ratio over all pods with the unready ones at 0 %; it holds when the new ratio is within
    tolerance or would flip the direction. On a scale-down the unready pods are left out.
    """
    run = drive(HPA(), SVC, lambda t: fixed(replicas, util, ready), until=15)
    assert run.seen_at(15) == (replicas, ready)
    assert run.raw_at(15) == raw
    if expected is not None:
        assert run.replicas_at(15) == expected
    if reason is not None:
        assert run.reason_at(15) == reason


def test_starting_replicas_hold_further_scale_up_until_ready() -> None:
    """With a 60 s cold start, the replica added at t=15 counts as idle until ready, so the HPA waits.

    Two replicas 100 % busy: t=15 adds one (ceil(2 × 1/0.7) = 3). At t=30..60 the starting replica makes the
    ratio 1.43 × 2/3 = 0.95, within tolerance: hold. At t=75 it is ready and the HPA goes to ceil(3 × 1.43) = 5.
    """
    run = drive(HPA(), SVC, lambda t: Load(util=1.0), until=75, initial=2, cold_start_s=60)
    assert run.series() == [2, 3, 3, 3, 3, 5]
    assert run.seen_at(30) == (3, 2)
    assert all(run.reason_at(t) == WITHIN for t in (30, 45, 60))


@pytest.mark.parametrize("min_replicas", [0, 1])
def test_never_scales_below_one_replica(min_replicas: int) -> None:
    """The HPA does not scale to zero: idle for 15 minutes from 5 replicas it ends at 1, never 0."""
    policy = HPA()
    svc = [service(min_replicas=min_replicas)]
    assert list(policy.init(svc)[0]) == [1]
    run = drive(policy, svc, lambda t: Load(util=0.0), until=900, initial=5)
    assert min(run.series()) == 1
    assert run.series()[-1] == 1


def test_min_replicas_above_one_is_respected() -> None:
    """minReplicas from the service (3) is a floor: idle replicas go down to 3."""
    run = drive(HPA(), [service(min_replicas=3)], lambda t: Load(util=0.0), until=600, initial=6)
    assert run.series()[-1] == 3
    assert min(run.series()) == 3


def test_no_ready_replica_means_no_metrics() -> None:
    """A sync window with no ready replica has no utilization sample: hold, reason NO_METRICS."""
    run = drive(HPA(), SVC, lambda t: fixed(2, 1.0, ready=0), until=15)
    assert run.replicas_at(15) == 2
    assert run.reason_at(15) == NO_METRICS


def test_reason_string_mentions_metric_and_target() -> None:
    """Decisions.explain names the policy, the action and the numbers: utilization, target, recommendation."""
    run = drive(HPA(), SVC, lambda t: fixed(2, 0.9), until=15)
    text = run.at(15).explain(0)
    assert text.startswith("hpa: scale up")
    assert "metric=0.9 " in text
    assert "target=0.7 " in text
    assert "recommended=3" in text
    assert text.endswith("-> 3 replicas")


def test_first_sync_seeds_the_stabilization_window_with_current_replicas() -> None:
    """An HPA that finds 6 idle replicas keeps them for the 300 s window before scaling down."""
    run = drive(HPA(), SVC, lambda t: Load(util=0.1), until=300, initial=6)
    assert run.between(0, 285) == [6] * 20


def test_rate_limited_scale_up_keeps_climbing_to_the_windows_peak() -> None:
    """4 replicas, target 10 %: a 100 % spike recommends 40 (limited to 8); idle after, it still goes 16, 32, 40."""

    def load(t: float) -> Load:
        return Load(util=1.0 if t <= 15 else 0.05)

    run = drive(HPA(target_utilization=0.1), SVC, load, until=60, initial=4)
    assert run.series() == [4, 8, 16, 32, 40]
