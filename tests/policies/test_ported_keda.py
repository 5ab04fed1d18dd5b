"""KEDA's own test cases, translated case by case and run against our KEDA through ``decide()``.

Sources (kedacore/keda; each case's id is its Go test function, and step where a test has several):

- ``pkg/scaling/executor/scale_scaledobjects_test.go``: ``RequestScale`` unit tests (activation from zero,
  deactivation to ``minReplicaCount``, correction up to ``minReplicaCount``).
- e2e tests, whose steps set a metric and assert the replica count within a time limit
  (``AssertReplicaCountNotChangeDuringTimePeriod``: held for N s; ``WaitForDeploymentReplicaReadyCount(…, n, s)``:
  reached within n × s seconds): ``tests/internals/polling_cooldown_so`` (pollingInterval, cooldownPeriod),
  ``tests/scalers/kafka/kafka_test.go`` (lagThreshold, activationLagThreshold, behavior), ``tests/scalers/
  metrics_api``, ``tests/scalers/rabbitmq/rabbitmq_queue_amqp`` and ``tests/scalers/redis/redis_standalone_lists``
  (activation threshold, scale out to maxReplicaCount, scale in to 0).
- The HPA KEDA creates is Kubernetes' HPA on an external ``AverageValue`` metric: three
  ``TestReplicaCalc*PerPodCMExternal`` cases of kubernetes' ``replica_calculator_test.go`` (not counted as KEDA's).

How a case becomes a ``decide()`` call: the scaler's metric (Kafka lag, queue length, list length, metrics-api
value) is our ``outstanding`` gauge, the trigger's target (``lagThreshold``, ``value``, ``listLength``,
``targetValue``) our ``lag_threshold``, its activation threshold our ``activation_lag_threshold``; the
ScaledObject's ``pollingInterval``, ``cooldownPeriod``, ``minReplicaCount``/``maxReplicaCount`` and
``advanced.horizontalPodAutoscalerConfig.behavior`` map one to one. The harness drives the policy at its own tick
with the metric the e2e step sets (held constant by the step, as the e2e consumers in these steps do not drain it
until the step says so); replicas are ready as soon as decided (the e2e asserts on ready pods, after pod start).

Not translated (KEDA features the port does not model, each off by default): ``idleReplicaCount``,
pause annotations, forced activation, fallback on scaler errors, ``initialCooldownPeriod``, scaling modifiers,
multiple triggers, ScaledJobs, scaler-specific metric shaping (Kafka's partition cap, persistent lag, invalid
offsets), the HPA-health conditions.

Disagreements found and fixed in the port while translating: the policy ran only at the HPA's 15 s syncs, so a
``pollingInterval`` shorter than (or not a multiple of) 15 s (the Kafka, RabbitMQ and Redis e2e use 5 s) was
checked late; and an inactive workload below ``minReplicaCount`` at zero replicas was not corrected up to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
from policy_harness import Load, Run, drive, service

from shadowscale.policies.scaling import KEDA, Reason
from shadowscale.policies.scaling.hpa import Behavior

EXEC = "pkg/scaling/executor/scale_scaledobjects_test.go"
ACTIVATE, TO_ZERO = int(Reason.ACTIVATE), int(Reason.SCALE_TO_ZERO)


def scenario(
    keda: KEDA, phases: Sequence[tuple[float, int]], until: float, *, lo: int = 0, hi: int = 100, initial: int = 0
) -> Run:
    """Drive ``keda`` with the metric of ``phases`` — (start time, metric from then on) — from ``initial`` replicas."""

    def load(t: float) -> Load:
        metric = [value for start, value in phases if start <= t][-1]
        return Load(outstanding=metric)

    svc = [service(min_replicas=lo, max_replicas=hi)]
    return drive(keda, svc, load, until=until, initial=initial, cold_start_s=0.0)


def held(run: Run, replicas: int, t0: float, t1: float) -> None:
    """``AssertReplicaCountNotChangeDuringTimePeriod``: the count is ``replicas`` at every tick in [t0, t1)."""
    got = [run.replicas_at(t) for t in run.times if t0 - 1e-9 <= t < t1 - 1e-9]
    assert got and got == [replicas] * len(got), got


def reached(run: Run, replicas: int, t0: float, t1: float) -> float:
    """``WaitForDeploymentReplicaReadyCount``: the count is ``replicas`` at some tick in [t0, t1]; returns when."""
    for t in run.times:
        if t0 - 1e-9 <= t <= t1 + 1e-9 and run.replicas_at(t) == replicas:
            return t
    raise AssertionError(f"never {replicas} replicas in [{t0}, {t1}]: {run.between(t0, t1)}")


# ---------------------------------------------------------------------------------------------------------------
# scale_scaledobjects_test.go (RequestScale)
# ---------------------------------------------------------------------------------------------------------------


def test_scale_to_min_replicas_when_not_active() -> None:
    """``TestScaleToMinReplicasWhenNotActive`` (scale_scaledobjects_test.go): minReplicaCount 0, 10 replicas,
    triggers inactive, no LastActiveTime (initialCooldownPeriod 0 has passed): scaled to 0, Active false."""
    run = scenario(KEDA(), [(0, 0)], until=0, initial=10)
    assert (run.replicas_at(0), run.reason_at(0)) == (0, TO_ZERO)


def test_scale_to_min_replicas_from_lower_initial_replica_count() -> None:
    """``TestScaleToMinReplicasFromLowerInitialReplicaCount``: minReplicaCount 5, 1 replica, inactive: set to 5."""
    run = scenario(KEDA(), [(0, 0)], until=0, lo=5, initial=1)
    assert run.replicas_at(0) == 5


def test_scale_from_min_replicas_when_active() -> None:
    """``TestScaleFromMinReplicasWhenActive``: minReplicaCount 0, 0 replicas, triggers active: scaled to 1."""
    run = scenario(KEDA(), [(0, 3)], until=0, initial=0)
    assert (run.replicas_at(0), run.reason_at(0)) == (1, ACTIVATE)


def test_inactive_at_zero_below_min_replicas_is_corrected() -> None:
    """The ``RequestScale`` branch the two tests above pin for one replica (``IdleReplicaCount == nil &&
    currentReplicas < minReplicas`` -> minReplicaCount) also applies at zero replicas; the port left a workload at
    zero (not an upstream test case; it is the same branch with currentReplicas 0)."""
    run = scenario(KEDA(), [(0, 0)], until=0, lo=3, initial=0)
    assert run.replicas_at(0) == 3


# ---------------------------------------------------------------------------------------------------------------
# tests/internals/polling_cooldown_so: metrics-api trigger, targetValue 1, minReplicaCount 0, maxReplicaCount 1
# ---------------------------------------------------------------------------------------------------------------
POLL = "tests/internals/polling_cooldown_so/polling_cooldown_so_test.go"


def test_polling_interval_up() -> None:
    """``testPollingIntervalUp``: pollingInterval 75 s applied at 0 replicas, then the metric goes 0 -> 1: no
    change for 60 s, 1 replica within 2 minutes (the next poll, at 75 s).

    Mutation caught: a poll every HPA sync (the change would come at 15 s).
    """
    run = scenario(KEDA(lag_threshold=1, polling_s=75, cooldown_s=0), [(0, 0), (1, 1)], until=120, hi=1)
    held(run, 0, 0, 60)
    assert reached(run, 1, 60, 120) == 75


def test_polling_interval_down() -> None:
    """``testPollingIntervalDown``: at 1 replica, pollingInterval 75 s and cooldownPeriod 0 applied, metric 1 -> 0:
    no change for 60 s (the HPA keeps its minimum 1), 0 within 2 minutes (the next poll)."""
    run = scenario(KEDA(lag_threshold=1, polling_s=75, cooldown_s=0), [(0, 1), (1, 0)], until=120, hi=1, initial=1)
    held(run, 1, 0, 60)
    assert reached(run, 0, 60, 120) == 75


def test_cooldown_period() -> None:
    """``testCooldownPeriod``: at 1 replica, pollingInterval 5 s and cooldownPeriod 75 s, metric 1 -> 0: no change
    for 60 s, 0 within one more minute (75 s after the last active poll).

    Mutation caught: the cooldown ignored (0 at the first inactive poll, 5 s).
    """
    run = scenario(KEDA(lag_threshold=1, polling_s=5, cooldown_s=75), [(0, 1), (1, 0)], until=120, hi=1, initial=1)
    held(run, 1, 0, 60)
    assert reached(run, 0, 60, 120) == 75


# ---------------------------------------------------------------------------------------------------------------
# tests/scalers/kafka/kafka_test.go: pollingInterval 5, cooldownPeriod 0, lagThreshold 1, behavior: Percent 100
# per 15 s both ways with no stabilization window
# ---------------------------------------------------------------------------------------------------------------
KAFKA_BEHAVIOR = Behavior(
    scale_up_stabilization_s=0.0, scale_down_stabilization_s=0.0, scale_up_percent=100.0, scale_up_pods=0
)
KAFKA = KEDA(lag_threshold=1, polling_s=5, cooldown_s=0, behavior=KAFKA_BEHAVIOR)


def test_kafka_earliest_policy() -> None:
    """``testEarliestPolicy`` with activationLagThreshold 1: no scaling for 30 s without messages; one message
    (lag 1, not above the activation threshold): no scaling for 30 s; a second one (lag 2): 2 replicas within
    2 minutes.

    The messages arrive between HPA syncs (at 30 s and 65 s), as they do in the e2e run. Upstream's 2-minute limit
    would also be met by a KEDA that polls only at 15 s syncs; the pinned times are the 5 s poll's: 1 replica at
    the first poll after the second message (65 s), 2 at the next HPA sync (75 s). Mutations caught: ``>=`` for
    ``>`` in the activation test (scales at lag 1); polling only at HPA syncs (the port did: 1 at 75 s, 2 at 90 s).
    """
    keda = replace(KAFKA, activation_lag_threshold=1)
    run = scenario(keda, [(0, 0), (30, 1), (65, 2)], until=185)
    held(run, 0, 0, 30)
    held(run, 0, 30, 65)
    assert reached(run, 1, 65, 185) == 65
    assert reached(run, 2, 65, 185) == 75


def test_kafka_multi_topic() -> None:
    """``testMultiTopic`` (no activation threshold): no scaling for 30 s; one message in topic 1 (group lag 1): 1
    replica within 2 minutes; one more in topic 2 (group lag 2): 2 replicas within 2 minutes.

    With the messages at 32 s and 152 s: 1 replica at the next 5 s poll (35 s), 2 at the next HPA sync (165 s).
    """
    run = scenario(KAFKA, [(0, 0), (32, 1), (152, 2)], until=272)
    held(run, 0, 0, 32)
    assert reached(run, 1, 32, 152) == 35
    assert reached(run, 2, 152, 272) == 165


# ---------------------------------------------------------------------------------------------------------------
# tests/scalers/metrics_api, rabbitmq_queue_amqp, redis_standalone_lists: activation, scale out, scale in
# ---------------------------------------------------------------------------------------------------------------


def test_metrics_api() -> None:
    """metrics_api_test.go (targetValue 5, activationTargetValue 20, maxReplicaCount 2, cooldownPeriod 1, default
    pollingInterval 30): ``testActivation`` value 10: 0 replicas for 60 s; ``testScaleOut`` value 50: 2 within 3
    minutes; ``testScaleIn`` value 4 (below the activation value): 0 within 3 minutes."""
    keda = KEDA(lag_threshold=5, activation_lag_threshold=20, cooldown_s=1)
    run = scenario(keda, [(0, 10), (60, 50), (240, 4)], until=420, hi=2)
    held(run, 0, 0, 60)
    reached(run, 2, 60, 240)
    reached(run, 0, 240, 420)


def test_rabbitmq_queue_amqp() -> None:
    """rabbitmq_queue_amqp_test.go (QueueLength value 10, activationValue 5, pollingInterval 5, cooldownPeriod 10,
    maxReplicaCount 4): ``testScaling`` 100 messages: 4 replicas within 3 minutes, and 0 within a minute once
    they are consumed; ``testActivationValue`` 3 messages: 0 replicas for 60 s."""
    keda = KEDA(lag_threshold=10, activation_lag_threshold=5, polling_s=5, cooldown_s=10)
    run = scenario(keda, [(0, 100), (180, 0), (240, 3)], until=300, hi=4)
    reached(run, 4, 0, 180)
    reached(run, 0, 180, 240)
    held(run, 0, 240, 300)


def test_redis_standalone_lists() -> None:
    """redis_standalone_lists_test.go (listLength 5, activationListLength 10, pollingInterval 5, cooldownPeriod 10,
    maxReplicaCount 2): ``testActivation`` 5 items: 0 replicas for 60 s; ``testScaleOut`` 400 items: 2 within 3
    minutes; ``testScaleIn`` items consumed: 0 within 3 minutes."""
    keda = KEDA(lag_threshold=5, activation_lag_threshold=10, polling_s=5, cooldown_s=10)
    run = scenario(keda, [(0, 5), (60, 400), (240, 0)], until=420, hi=2)
    held(run, 0, 0, 60)
    reached(run, 2, 60, 240)
    reached(run, 0, 240, 420)


# ---------------------------------------------------------------------------------------------------------------
# The HPA KEDA creates: kubernetes replica_calculator_test.go, external AverageValue metric
# (GetExternalPerPodMetricReplicas: desired = ceil(total / target per pod) unless within tolerance)
# ---------------------------------------------------------------------------------------------------------------
PER_POD_EXTERNAL = [
    ("TestReplicaCalcScaleUpPerPodCMExternal", 3, 8600, 2150, 4),
    ("TestReplicaCalcScaleDownPerPodCMExternal", 5, 8600, 2867, 3),
    ("TestReplicaCalcTolerancePerPodCMExternal", 3, 8600, 2900, 3),
]


@pytest.mark.parametrize(
    ("current", "total", "per_pod", "expected"),
    [pytest.param(*c[1:], id=f"kubernetes:replica_calculator_test.go {c[0]}") for c in PER_POD_EXTERNAL],
)
def test_keda_hpa_external_average_value(current: int, total: int, per_pod: float, expected: int) -> None:
    """The metric total (e.g. Kafka lag 8600) over the per-pod target (lagThreshold): 8600 / 2150 = 4 from 3
    replicas; 8600 / 2867 -> 3 from 5; 8600 / (2900 × 3) = 0.99 is within the 0.1 tolerance: stay at 3."""
    run = scenario(KEDA(lag_threshold=per_pod), [(0, total)], until=0, initial=current)
    assert run.raw_at(0) == expected
