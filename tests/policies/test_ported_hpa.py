"""Kubernetes' own HPA test cases, translated case by case and run against our HPA through ``decide()``.

Sources (kubernetes/kubernetes, ``pkg/controller/podautoscaler/``; each case's id is its Go test or table name):

- ``replica_calculator_test.go``: ``TestReplicaCalc*`` (``GetResourceReplicas``: desired replicas from the ready
  pods' utilization, tolerance, unready pods).
- ``horizontal_test.go``: ``TestConvertDesiredReplicasWithRules`` (legacy min/max and 2×/4 scale-up limit),
  ``TestScalingWithRules`` (``convertDesiredReplicasWithBehaviorRate``: behavior policies, min/max),
  ``TestNormalizeDesiredReplicas`` (legacy 5-minute scale-down stabilization) and
  ``TestNormalizeDesiredReplicasWithBehavior`` (``stabilizeRecommendationWithBehaviors``: up and down windows).

How a case becomes a ``decide()`` call. Our HPA scales on GPU utilization, a resource metric like the CPU of the
upstream cases: a case's pod ``levels`` / ``requests`` become the busy fraction of the ready replicas
(``Σ levels / Σ requests`` of the pods that count) and its ``targetUtilization`` our ``target_utilization``. The
harness (``policy_harness.drive``) feeds those as counters over one 15 s sync, so every case goes through the
HPA's public ``init``/``decide`` and its purity check. Pod states map as follows: a pod that is not ready, or a
"hot" pod whose metric predates its readiness (``hotCpuCreationTime``), or a Pending pod, is a replica that is not
ready yet; Failed and deleted pods are not replicas at all.

The horizontal_test.go cases pass a *prenormalized* recommendation. Here the metric is chosen so the replica
calculator recommends exactly that value (``util = X × target / current`` with a 0.1 % target, so every value
is a utilization ≤ 1), and the HPA is synced long enough (past its stabilization windows) that its window holds
only that recommendation, or, for the stabilization cases, the case's own recommendation history placed at the
case's ages. What upstream calls a condition reason we check as ``Decisions.reason``: ``DesiredWithinRange`` =
neither RATE_LIMITED nor BOUNDS, ``ScaleUpLimit``/``ScaleDownLimit`` = RATE_LIMITED, ``TooManyReplicas``/
``TooFewReplicas`` = BOUNDS.

Not translated, with the reason (modelling choices, documented in policies/scaling/hpa.py):
- missing metrics of a ready pod (``TestReplicaCalcMissingMetrics*``), superfluous metrics of unknown pods,
  empty metrics and missing requests: every ready replica of ours reports its utilization;
- custom/object/external metrics (``*CM*``): our HPA scales on utilization only (KEDA's external ``AverageValue``
  metric is ported in test_ported_keda.py);
- the ``TestScalingWithRules`` case marked ``testThis`` (skipped upstream too);
- stored-log lengths (``expectedLogLength``, ``expectedRecommendations``): internal bookkeeping, not decisions.

Disagreements found and fixed in the port while translating (see the commit messages): ``Behavior`` had no
``Pods`` scale-down policy (``TestScalingWithRules`` "scaleDown with pod policy …"); policies had no period of
their own and the HPA kept no scale events, so a policy such as "5 pods per 120 s" limited each 15 s sync
instead of the 120 s (the ``… previous events`` cases); the legacy path reported BOUNDS where Kubernetes reports
``ScaleUpLimit`` (maxReplicas above the 2× limit); the first sync's recorded recommendation fed only the
scale-down window, not the scale-up one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import pytest
from policy_harness import Load, assert_pure, drive, service

from shadowscale.policies.scaling import HPA, Reason
from shadowscale.policies.scaling.base import Decisions, Sample, Signals
from shadowscale.policies.scaling.hpa import Behavior, Recommendations

RC = "replica_calculator_test.go"
HZ = "horizontal_test.go"
RATE_LIMITED, BOUNDS, WITHIN = int(Reason.RATE_LIMITED), int(Reason.BOUNDS), int(Reason.WITHIN_TOLERANCE)
LIMITS = {RATE_LIMITED, BOUNDS}

# ---------------------------------------------------------------------------------------------------------------
# replica_calculator_test.go: GetResourceReplicas
# (Go test, current replicas, ready replicas, busy fraction of the ready ones, target, expected replicas)
# ---------------------------------------------------------------------------------------------------------------
REPLICA_CALC = [
    # levels 300/500/700 of 1.0 CPU requests -> 50 % vs 30 %: ceil(3 × 1.667) = 5
    ("TestReplicaCalcScaleUp", 3, 3, 0.5, 0.3, 5),
    # pod 0 unready: ready pods 500/700 -> 60 %; on a scale-up the unready pod counts as 0 %: 40 % -> ceil(4) = 4
    ("TestReplicaCalcScaleUpUnreadyLessScale", 3, 2, 0.6, 0.3, 4),
    # pod 0 "hot" (metric predates readiness) is left out the same way
    ("TestReplicaCalcScaleUpHotCpuLessScale", 3, 2, 0.6, 0.3, 4),
    # one ready pod at 40 %: with the two unready at 0 % the ratio drops below 1 -> no scale (would flip direction)
    ("TestReplicaCalcScaleUpUnreadyNoScale", 3, 1, 0.4, 0.3, 3),
    ("TestReplicaCalcScaleHotCpuNoScale", 3, 1, 0.4, 0.3, 3),
    # two Failed pods are not replicas: 2 ready at 60 % vs 30 % -> 4
    ("TestReplicaCalcScaleUpIgnoresFailedPods", 2, 2, 0.6, 0.3, 4),
    # two pods being deleted are not replicas either
    ("TestReplicaCalcScaleUpIgnoresDeletionPods", 2, 2, 0.6, 0.3, 4),
    # levels 100/300/500/250/250 -> 28 % vs 50 %: ceil(5 × 0.56) = 3
    ("TestReplicaCalcScaleDown", 5, 5, 0.28, 0.5, 3),
    # two unready pods are left out of a scale-down: 3 ready at 30 % vs 50 % -> ceil(3 × 0.6) = 2
    ("TestReplicaCalcScaleDownIncludeUnreadyPods", 5, 3, 0.3, 0.5, 2),
    # four Pending pods: 1 running pod at 10 % vs 50 % -> ceil(0.2) = 1
    ("TestReplicaCalcScaleDownExcludeUnscheduledPods", 5, 1, 0.1, 0.5, 1),
    ("TestReplicaCalcScaleDownIgnoreHotCpuPods", 5, 3, 0.3, 0.5, 2),
    ("TestReplicaCalcScaleDownIgnoresFailedPods", 5, 5, 0.28, 0.5, 3),
    ("TestReplicaCalcScaleDownIgnoresDeletionPods", 5, 5, 0.28, 0.5, 3),
    # requests 0.9/1.0/1.1, levels 1010/1030/1020 -> 3060/3000 = 102 % vs 100 %: within tolerance
    ("TestReplicaCalcTolerance", 3, 3, 3060 / 3000, 1.0, 3),
    # 10 pods using half their request, target int32(56.56) % -> ratio 0.893 breaks the 0.1 tolerance: 9
    ("TestReplicaCalcComputedToleranceAlgImplementation", 10, 10, 0.5, 0.56, 9),
    # ... and target int32(55.96) % -> ratio 0.909: within tolerance, 10 (the test's second run)
    ("TestReplicaCalcComputedToleranceAlgImplementation/no-scale", 10, 10, 0.5, 0.55, 10),
]


@pytest.mark.parametrize(
    ("current", "ready", "util", "target", "expected"),
    [pytest.param(*case[1:], id=f"{RC} {case[0]}") for case in REPLICA_CALC],
)
def test_replica_calculator(current: int, ready: int, util: float, target: float, expected: int) -> None:
    """``GetResourceReplicas`` as the case's ``expectedReplicas``: our recommendation (``Decisions.raw``) after one
    sync equals it; a scale-up is also applied (all are within the 2× limit); no change reports WITHIN_TOLERANCE.

    Mutations run: unready replicas counted at the ready ones' utilization on a scale-up (UnreadyLessScale and
    HotCpuLessScale give 6, UnreadyNoScale and HotCpuNoScale 4: 4 failures); the direction-flip check dropped
    (the two NoScale cases give 2: 2 failures).
    """
    hpa = HPA(target_utilization=target)
    run = drive(hpa, [service()], lambda t: Load(util=util, replicas=current, ready=ready), until=15)
    assert run.raw_at(15) == expected
    if expected > current:
        assert run.replicas_at(15) == expected
    if expected == current:
        assert run.reason_at(15) == WITHIN


# ---------------------------------------------------------------------------------------------------------------
# horizontal_test.go: min/max, rate limits and stabilization, fed through the replica calculator
# ---------------------------------------------------------------------------------------------------------------
TARGET = 0.001
"""A 0.1 % target lets a utilization ≤ 1 express any recommendation up to 1000 × current."""


def normalized(
    hpa: HPA,
    current: int,
    desired: int,
    *,
    lo: int = 1,
    hi: int = 1000,
    history: Mapping[float, int] | None = None,
    horizon_s: float = 300.0,
) -> Decisions:
    """Our HPA's decision for a prenormalized recommendation ``desired`` at ``current`` replicas.

    The replicas stay at ``current``; every sync recommends ``desired`` except those at the ages (seconds before
    the decision) in ``history``, which recommend the value given there. The decision comes at least
    ``horizon_s`` + 15 s after the first sync so that sync's recorded recommendation has left every window.
    """
    history = dict(history or {})
    oldest = max(history, default=0.0)
    end = max(horizon_s, oldest) + 15.0
    at = {end - age: value for age, value in history.items()}
    assert all(t > 0 for t in at), "a history entry would fall on the first sync, which records no metric"

    def load(t: float) -> Load:
        value = at.get(t, desired)
        return Load(util=value * TARGET / current, replicas=current)

    run = drive(hpa, [service(min_replicas=lo, max_replicas=hi)], load, until=end)
    decision = run.at(end)
    assert decision.raw[0] == desired, "the metric must make the calculator recommend the case's value"
    return decision


# TestConvertDesiredReplicasWithRules: behavior unset, min/max and calculateScaleUpLimit = max(2 × current, 4).
# (annotation, current, prenormalized desired, min, max, expected, reason)
LEGACY_RULES = [
    ("prenormalized desired replicas within range", 5, 7, 3, 8, 7, None),
    ("prenormalized desired replicas < minReplicas", 3, 1, 2, 8, 2, BOUNDS),
    ("prenormalized desired zeroed replicas within range", 1, 0, 0, 10, 0, None),
    ("maxReplicas is the limit because maxReplicas < scaleUpLimit", 20, 1000, 1, 10, 10, BOUNDS),
    # calculateScaleUpLimit(3) with the production factor 2 (the Go test raises it to 8 in init())
    ("scaleUpLimit is the limit because scaleUpLimit < maxReplicas", 3, 1000, 1, 2000, 6, RATE_LIMITED),
]


@pytest.mark.parametrize(
    ("current", "desired", "lo", "hi", "expected", "reason"),
    [pytest.param(*c[1:], id=f"{HZ} TestConvertDesiredReplicasWithRules/{c[0]}") for c in LEGACY_RULES],
)
def test_convert_desired_replicas_with_rules(
    current: int, desired: int, lo: int, hi: int, expected: int, reason: int | None
) -> None:
    """``convertDesiredReplicasWithRules`` (behavior unset): min/max, then at most max(2 × current, 4).

    Mutation caught: swapping the two limit labels (BOUNDS for RATE_LIMITED).
    """
    d = normalized(HPA(target_utilization=TARGET, min_replicas=lo), current, desired, lo=lo, hi=hi)
    assert int(d.replicas[0]) == expected
    if reason is None:
        assert int(d.reason[0]) not in LIMITS
    else:
        assert int(d.reason[0]) == reason


def rules(pods: int, percent: float, window_s: float, up: bool) -> Behavior:
    """``generateScalingRules(pods, _, percent, _, window)`` for one direction, the v2 defaults for the other."""
    if up:
        return Behavior(scale_up_pods=pods, scale_up_percent=percent, scale_up_stabilization_s=window_s)
    return Behavior(scale_down_pods=pods, scale_down_percent=percent, scale_down_stabilization_s=window_s)


DEFAULT = Behavior()
# TestScalingWithRules (convertDesiredReplicasWithBehaviorRate). Rule arguments are generateScalingRules'
# (pods, percent, stabilizationWindow); periods do not matter without scale events (cases with events below).
# (name, behavior, current, prenormalized desired, min, max, expected, reason)
WITH_RULES = [
    ("prenormalized desired replicas within range", DEFAULT, 5, 7, 3, 8, 7, None),
    ("prenormalized desired replicas < minReplicas", DEFAULT, 3, 1, 2, 8, 2, BOUNDS),
    ("prenormalized desired replicas within range when minReplicas is 0", DEFAULT, 1, 0, 0, 10, 0, None),
    ("maxReplicas is the limit because maxReplicas < scaleUpLimit", DEFAULT, 20, 1000, 1, 10, 10, BOUNDS),
    ("desired replica count is more than the maximum replica count", DEFAULT, 100, 1000, 100, 150, 150, BOUNDS),
    (
        "scaleUpLimit is the limit because scaleUpLimit < maxReplicas with user policies",
        rules(0, 1, 0, up=True),
        3,
        1000,
        1,
        2000,
        4,
        RATE_LIMITED,
    ),
    ("scaleUp with default behavior", DEFAULT, 10, 50, 1, 1000, 20, RATE_LIMITED),
    (
        "scaleUp with pods policy larger than percent policy",
        rules(100, 100, 0, True),
        10,
        500,
        1,
        1000,
        110,
        RATE_LIMITED,
    ),
    ("scaleUp with percent policy larger than pods policy", rules(2, 100, 0, True), 10, 500, 1, 1000, 20, RATE_LIMITED),
    (
        "scaleUp with spec MaxReplicas limitation with large pod policy",
        rules(100, 0, 0, True),
        10,
        50,
        1,
        1000,
        50,
        None,
    ),
    (
        "scaleUp with spec MaxReplicas limitation with large percent policy",
        rules(10000, 0, 0, True),
        10,
        50,
        1,
        1000,
        50,
        None,
    ),
    ("scaleUp with pod policy limitation", rules(30, 0, 0, True), 10, 50, 1, 1000, 40, RATE_LIMITED),
    ("scaleUp with percent policy limitation", rules(0, 200, 0, True), 10, 50, 1, 1000, 30, RATE_LIMITED),
    (
        "scaleDown with percent policy larger than pod policy",
        rules(20, 1, 300, False),
        100,
        2,
        1,
        1000,
        80,
        RATE_LIMITED,
    ),
    (
        "scaleDown with pod policy larger than percent policy",
        rules(2, 1, 300, False),
        100,
        2,
        1,
        1000,
        98,
        RATE_LIMITED,
    ),
    (
        "scaleDown with spec MinReplicas=nil limitation with large pod policy",
        rules(100, 0, 300, False),
        10,
        0,
        1,
        1000,
        1,
        BOUNDS,
    ),
    (
        "scaleDown with spec MinReplicas limitation with large percent policy",
        rules(0, 100, 300, False),
        10,
        2,
        5,
        1000,
        5,
        BOUNDS,
    ),
    ("scaleDown with pod policy limitation", rules(5, 0, 300, False), 10, 2, 1, 1000, 5, RATE_LIMITED),
    ("scaleDown with percent policy limitation", rules(0, 50, 300, False), 10, 5, 1, 1000, 5, None),
]


@pytest.mark.parametrize(
    ("behavior", "current", "desired", "lo", "hi", "expected", "reason"),
    [pytest.param(*c[1:], id=f"{HZ} TestScalingWithRules/{c[0]}") for c in WITH_RULES],
)
def test_scaling_with_rules(
    behavior: Behavior, current: int, desired: int, lo: int, hi: int, expected: int, reason: int | None
) -> None:
    """``convertDesiredReplicasWithBehaviorRate``: the behavior's Pods/Percent policies (selectPolicy Max), then
    min/max, with the reason naming the limit that binds.

    Mutations run: the Pods scale-down policy ignored (4 failures); selectPolicy Min instead of Max for scale-up
    (9 failures).
    """
    hpa = HPA(target_utilization=TARGET, min_replicas=lo, behavior=behavior)
    d = normalized(hpa, current, desired, lo=lo, hi=hi, horizon_s=behavior.scale_down_stabilization_s)
    assert int(d.replicas[0]) == expected
    if reason is None:
        assert int(d.reason[0]) not in LIMITS
    else:
        assert int(d.reason[0]) == reason


def spread(changes: Sequence[int], period_s: float) -> dict[float, int]:
    """``generateEventsUniformDistribution``: the events' ages (seconds), each in the middle of its share of the
    period, e.g. ([1, 5, 9], 120) -> {100: 1, 60: 5, 20: 9}."""
    seg = period_s / len(changes)
    return {period_s - seg * (i + 1) + seg / 2: c for i, c in enumerate(changes)}


def policies(
    up: bool, pods: int, pods_period_s: float, percent: float, percent_period_s: float, window_s: float
) -> Behavior:
    """``generateScalingRules(pods, podsPeriod, percent, percentPeriod, window)`` for one direction."""
    if up:
        return Behavior(
            scale_up_pods=pods,
            scale_up_pods_period_s=pods_period_s,
            scale_up_percent=percent,
            scale_up_percent_period_s=percent_period_s,
            scale_up_stabilization_s=window_s,
        )
    return Behavior(
        scale_down_pods=pods,
        scale_down_pods_period_s=pods_period_s,
        scale_down_percent=percent,
        scale_down_percent_period_s=percent_period_s,
        scale_down_stabilization_s=window_s,
    )


UP19 = spread([1, 5, 9], 120)
OUTDATED = spread([8, 12, 9, 11], 120)
# TestScalingWithRules cases with scale events: (name, behavior, up events, down events, current, desired, min,
# max, expected, reason). Events map age (s) -> replicas added or removed.
WITH_EVENTS = [
    (
        "scaleUp with spec MaxReplicas limitation with large pod policy and events",
        policies(True, 300, 60, 0, 0, 0),
        UP19,
        {},
        100,
        500,
        1,
        200,
        200,
        BOUNDS,
    ),
    (
        "scaleUp with spec MaxReplicas limitation with large percent policy and events",
        policies(True, 0, 0, 10000, 60, 0),
        UP19,
        {},
        100,
        500,
        1,
        200,
        200,
        BOUNDS,
    ),
    (
        "scaleUp with currentReplicas limitation with rate.PeriodSeconds with a lot of recent scale up events",
        policies(True, 5, 120, 0, 0, 0),
        UP19,
        {},
        100,
        500,
        1,
        1000,
        100,
        RATE_LIMITED,
    ),
    (
        "scaleUp with pod policy and previous scale up events",
        policies(True, 150, 120, 0, 0, 0),
        UP19,
        {},
        100,
        500,
        1,
        1000,
        235,
        RATE_LIMITED,
    ),
    (
        "scaleUp with percent policy and previous scale up events",
        policies(True, 0, 0, 200, 120, 0),
        UP19,
        {},
        100,
        500,
        1,
        1000,
        255,
        RATE_LIMITED,
    ),
    (
        "scaleUp with percent policy and previous scale up and down events",
        policies(True, 0, 0, 300, 300, 0),
        spread([4], 120),
        spread([2], 120),
        6,
        24,
        1,
        1000,
        16,
        RATE_LIMITED,
    ),
    ("scaleDown with default policy and previous events", DEFAULT, {}, UP19, 10, 5, 1, 1000, 5, None),
    (
        "scaleDown with spec MinReplicas=nil limitation with large pod policy and previous events",
        policies(False, 115, 120, 0, 0, 300),
        {},
        UP19,
        100,
        0,
        1,
        1000,
        1,
        BOUNDS,
    ),
    (
        "scaleDown with spec MinReplicas limitation with large pod policy and previous events",
        policies(False, 130, 120, 0, 0, 300),
        {},
        UP19,
        100,
        0,
        5,
        1000,
        5,
        BOUNDS,
    ),
    (
        "scaleDown with spec MinReplicas limitation with large percent policy and previous events",
        policies(False, 0, 0, 100, 120, 300),
        {},
        UP19,
        100,
        2,
        5,
        1000,
        5,
        BOUNDS,
    ),
    (
        "scaleDown with pod policy limitation and previous events",
        policies(False, 5, 120, 0, 0, 300),
        {},
        UP19,
        100,
        2,
        1,
        1000,
        100,
        RATE_LIMITED,
    ),
    (
        "scaleDown with percent policy limitation and previous events",
        policies(False, 0, 0, 50, 120, 300),
        {},
        spread([2, 4, 6], 120),
        100,
        0,
        1,
        1000,
        56,
        RATE_LIMITED,
    ),
    (
        "scaleDown with percent policy and previous scale up and down events",
        policies(False, 0, 0, 50, 180, 0),
        spread([2], 120),
        spread([4], 120),
        10,
        1,
        1,
        1000,
        6,
        RATE_LIMITED,
    ),
    (
        "scaleDown with previous events preventing further scale down",
        policies(False, 0, 0, 10, 120, 300),
        {},
        spread([10, 10, 10], 120),
        100,
        0,
        1,
        1000,
        100,
        RATE_LIMITED,
    ),
    (
        "scaleDown with with previous events still allowing more scale down",
        policies(False, 0, 0, 1000, 120, 300),
        {},
        spread([10, 10, 10], 120),
        10,
        5,
        1,
        1000,
        5,
        None,
    ),
    (
        "check 'outdated' flag for events for one behavior for up",
        policies(True, 1000, 60, 0, 0, 0),
        OUTDATED,
        {},
        100,
        200,
        1,
        1000,
        200,
        None,
    ),
    (
        "check that events were not marked 'outdated' for two different policies in the behavior for up",
        policies(True, 1000, 120, 100, 60, 0),
        OUTDATED,
        {},
        100,
        200,
        1,
        1000,
        200,
        None,
    ),
    (
        "check that events were marked 'outdated' for two different policies in the behavior for up",
        policies(True, 1000, 30, 100, 60, 0),
        OUTDATED,
        {},
        100,
        200,
        1,
        1000,
        200,
        None,
    ),
    (
        "check 'outdated' flag for events for one behavior for down",
        policies(False, 1000, 60, 0, 0, 300),
        {},
        OUTDATED,
        100,
        5,
        1,
        1000,
        5,
        None,
    ),
    (
        "check that events were not marked 'outdated' for two different policies in the behavior for down",
        policies(False, 1000, 120, 100, 60, 300),
        {},
        OUTDATED,
        100,
        5,
        1,
        1000,
        5,
        None,
    ),
    (
        "check that events were marked 'outdated' for two different policies in the behavior for down",
        policies(False, 1000, 30, 100, 60, 300),
        {},
        OUTDATED,
        100,
        5,
        1,
        1000,
        5,
        None,
    ),
]


@pytest.mark.parametrize(
    ("behavior", "up_events", "down_events", "current", "desired", "lo", "hi", "expected", "reason"),
    [pytest.param(*c[1:], id=f"{HZ} TestScalingWithRules/{c[0]}") for c in WITH_EVENTS],
)
def test_scaling_with_rules_and_scale_events(
    behavior: Behavior,
    up_events: dict[float, int],
    down_events: dict[float, int],
    current: int,
    desired: int,
    lo: int,
    hi: int,
    expected: int,
    reason: int | None,
) -> None:
    """A policy limits the change over its period from the replicas at the period's start: current minus the
    replicas this HPA added in the period plus those it removed (its scale events), never past the current count.

    The Go test injects the controller's ``scaleUpEvents``/``scaleDownEvents``; here the same events (signed
    replica changes at the cases' ages) are put into the HPA state that ``decide()`` is given, with empty
    stabilization windows (the Go function does not stabilize), and the metric makes the calculator recommend the
    case's prenormalized count. Mutations run: events ignored (the port kept none: 8 failures); events counted
    whatever their age (0 failures: no upstream case here has an event outside a policy's period that changes the
    result).
    """
    now = 1000.0
    hpa = HPA(target_utilization=TARGET, min_replicas=lo, behavior=behavior)
    _, state = hpa.init([service(min_replicas=lo, max_replicas=hi)])
    events = sorted(
        [(now - age, float(n)) for age, n in up_events.items()]
        + [(now - age, -float(n)) for age, n in down_events.items()]
    )
    recs = Recommendations(events=tuple(Sample(t, np.array([change])) for t, change in events))
    state = replace(state, last_t=now - 15.0, last_busy=np.zeros(1), last_ready=np.zeros(1), recs=recs)
    ready_s = current * 15.0
    zero = np.zeros(1)
    signals = Signals(
        now=now,
        replicas=np.array([current]),
        ready=np.array([current]),
        arrivals=zero,
        busy_s=np.array([desired * TARGET / current * ready_s]),
        ready_s=np.array([ready_s]),
        inflight_s=zero,
        outstanding=np.array([0]),
    )
    d, _ = assert_pure(hpa, signals, state)
    assert d.raw[0] == desired
    assert int(d.replicas[0]) == expected
    if reason is None:
        assert int(d.reason[0]) not in LIMITS
    else:
        assert int(d.reason[0]) == reason


# TestNormalizeDesiredReplicas: behavior unset, 5-minute scale-down stabilization (stabilizeRecommendation).
# (name, {age in seconds: recommendation}, prenormalized desired, expected)
LEGACY_STABILIZE = [
    ("empty log", {}, 5, 5),
    ("stabilize", {120: 4, 60: 5}, 3, 5),
    ("no stabilize", {120: 1, 60: 2}, 3, 3),
    ("no stabilize - old recommendations", {600: 10, 540: 9}, 3, 3),
    ("stabilize - old recommendations", {600: 10, 60: 4, 120: 5, 540: 9}, 3, 5),
]


@pytest.mark.parametrize(
    ("history", "desired", "expected"),
    [pytest.param(*c[1:], id=f"{HZ} TestNormalizeDesiredReplicas/{c[0]}") for c in LEGACY_STABILIZE],
)
def test_normalize_desired_replicas(history: dict[float, int], desired: int, expected: int) -> None:
    """``stabilizeRecommendation``: the highest recommendation of the last 5 minutes (entries older drop out).

    The replicas stay at 100, above every case, so the result is the stabilized recommendation itself.
    Mutation run: a 10-minute window (all 5 fail: the 9 of 9 minutes ago, or the first sync's 100, still count).
    """
    d = normalized(HPA(target_utilization=TARGET), 100, desired, history=history)
    assert int(d.replicas[0]) == expected


UNLIMITED = 1e6
"""Percent per period so large that the rate limit never binds: the Go test calls the stabilizer alone."""

# TestNormalizeDesiredReplicasWithBehavior (stabilizeRecommendationWithBehaviors).
# (name, {age: recommendation}, current, prenormalized desired, expected, up window, down window)
WITH_BEHAVIOR = [
    ("empty recommendations for scaling down", {}, 100, 5, 5, 0, 0),
    ("simple scale down stabilization", {120: 4, 60: 5}, 100, 3, 5, 0, 180),
    ("simple scale up stabilization", {120: 4, 60: 5}, 1, 7, 4, 300, 0),
    ("no scale down stabilization", {120: 1, 60: 2}, 100, 3, 3, 300, 0),
    ("no scale up stabilization", {120: 4, 60: 5}, 1, 3, 3, 0, 300),
    ("no scale down stabilization, reuse recommendation element", {600: 10, 540: 9}, 100, 3, 3, 0, 0),
    ("no scale up stabilization, reuse recommendation element", {600: 10, 540: 9}, 1, 100, 100, 0, 0),
    (
        "scale down stabilization, reuse one of obsolete recommendation element",
        {600: 10, 60: 4, 120: 5, 540: 9},
        100,
        3,
        5,
        0,
        180,
    ),
    # the Go case leaves the scale-down window at its zero value, so only the scale-up window applies
    (
        "scale up stabilization, reuse one of obsolete recommendation element",
        {6000: 10, 60: 6, 120: 5, 180: 9},
        1,
        100,
        5,
        300,
        0,
    ),
    (
        "scale up and down stabilization, do not scale up when prenormalized rec goes down",
        {6000: 2, 180: 3},
        2,
        1,
        2,
        300,
        300,
    ),
    (
        "scale up and down stabilization, do not scale down when prenormalized rec goes up",
        {6000: 2, 180: 1},
        2,
        3,
        2,
        300,
        300,
    ),
]


@pytest.mark.parametrize(
    ("history", "current", "desired", "expected", "up_s", "down_s"),
    [pytest.param(*c[1:], id=f"{HZ} TestNormalizeDesiredReplicasWithBehavior/{c[0]}") for c in WITH_BEHAVIOR],
)
def test_normalize_desired_replicas_with_behavior(
    history: dict[float, int], current: int, desired: int, expected: int, up_s: float, down_s: float
) -> None:
    """Scale-up window: the lowest recommendation of the window; scale-down window: the highest; the result is the
    current count brought within [up, down].

    Mutations run: the scale-up window taking its maximum (4 failures); the current count left out of the
    result (5 failures).
    """
    behavior = Behavior(scale_up_stabilization_s=up_s, scale_down_stabilization_s=down_s, scale_up_percent=UNLIMITED)
    hpa = HPA(target_utilization=TARGET, behavior=behavior)
    d = normalized(hpa, current, desired, history=history, horizon_s=max(up_s, down_s))
    assert int(d.replicas[0]) == expected


def test_first_sync_feeds_the_scale_up_window_too() -> None:
    """Not an upstream table case: ``recordInitialRecommendation`` stores the current count in the one list both
    windows read, so an HPA created with a 300 s scale-up window and asked for more replicas at once keeps the
    count it found until that first entry leaves the window (the port used to feed only the scale-down window and
    scaled up at the first sync with metrics)."""
    behavior = Behavior(scale_up_stabilization_s=300.0, scale_up_percent=UNLIMITED)
    hpa = HPA(target_utilization=TARGET, behavior=behavior)
    run = drive(hpa, [service()], lambda t: Load(util=8 * TARGET / 2, replicas=2), until=315)
    assert run.raw_at(15) == 8
    assert run.between(15, 285) == [2] * 19
    # at 300 s the first entry is exactly one window old, and the controller keeps only entries after the cutoff
    assert run.replicas_at(300) == 8


def test_legacy_reason_names_the_binding_limit() -> None:
    """Not an upstream table case, the rule ``convertDesiredReplicasWithRules`` codes: with maxReplicas (100) above
    the 2× limit (6) a large recommendation is cut by the scale-up limit, reason ScaleUpLimit (RATE_LIMITED); the
    port used to report BOUNDS whenever the recommendation was also above maxReplicas."""
    d = normalized(HPA(target_utilization=TARGET), 3, 1000, hi=100)
    assert (int(d.replicas[0]), int(d.reason[0])) == (6, RATE_LIMITED)
