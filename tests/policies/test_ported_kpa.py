"""Knative Serving's own KPA test cases, translated case by case and run against our KPA through ``decide()``.

Sources (knative/serving; each case's id is its Go test, table label or ``t.Run`` name):

- ``pkg/autoscaler/scaling/autoscaler_test.go``: the decider (``autoscaler.Scale``): stable and panic windows,
  panic mode, rate limits, the one-pod minimum, start in panic mode.
- ``pkg/reconciler/autoscaling/kpa/scaler_test.go`` ``TestScaler``: what the reconciler does with the decider's
  count: min/max scale, scale-to-zero grace period, scaling up from zero.

How a case becomes a ``decide()`` call. Upstream injects the stable and panic concurrency through a fake metric
client and the ready count through a fake pod counter, and keeps the autoscaler object (its panic time and
maximum panic pods) between calls. Our KPA computes both averages from the concurrency-seconds counter samples it
keeps in its state; so each call here puts two counter samples into the state (one stable window and one panic
window before ``now``) whose differences to the current counter give exactly the case's stable and panic
concurrency, and keeps everything else the previous ``decide()`` returned. Where a case prepares the autoscaler
(``prepFunc``: panic time, max panic pods) the state's fields are set the same way. The Go tests' decider uses
``TargetValue`` (our ``target_concurrency × target_utilization``), ``MaxScaleUpRate`` = ``MaxScaleDownRate`` = 10,
panic threshold 200 %, stable window 60 s. The decider itself never holds at a zero count (that is the
reconciler's grace period), so the decider cases run with ``scale_to_zero_grace_s=0``.

Not translated, with the reason (Knative knobs the port does not model; each defaults to off):
``TestAutoscalerScaleDownDelayNotReachable`` (revision reachability), ``TestAutoscalerActivationScale``
(``activation-scale``, default 1), ``AutoscalerStableModeDecreaseNonReachable`` and the reconciler's
reachability cases (revision reachability), RPS-mode tests (our KPA is concurrency mode), the metrics and
excess-burst-capacity assertions (observability, not decisions), pod-counter errors, and the reconciler's
activator probing, last-pod retention, initial scale and activation deadlines.

Disagreements found and fixed in the port while translating: an autoscaler started over more than one ready
replica did not start in panic mode (``TestStartInPanicMode``), and with a minimum scale above zero a zero
count was held for the scale-to-zero grace period instead of going to the minimum at once (``TestScaler``
"scale down to minScale before grace period"). The port had no ``scale-down-delay``; it has it now
(``KPA.scale_down_delay_s``, default 0 s as Knative's) so the ``TestAutoscalerScaleDownDelay`` cases run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pytest
from policy_harness import assert_pure, service

from shadowscale.policies.scaling import KPA, Reason
from shadowscale.policies.scaling.base import Decisions, Sample, Signals
from shadowscale.policies.scaling.kpa import KPAState

AS = "pkg/autoscaler/scaling/autoscaler_test.go"
SC = "pkg/reconciler/autoscaling/kpa/scaler_test.go"
PANIC, NO_METRICS = int(Reason.PANIC), int(Reason.NO_METRICS)
COOLDOWN, TO_ZERO = int(Reason.COOLDOWN), int(Reason.SCALE_TO_ZERO)
COUNTER = 1e6
"""Concurrency-seconds counter value at ``now`` (any value large enough to keep earlier samples positive)."""


def decider(target: float) -> KPA:
    """newTestAutoscaler(targetValue, …): TargetValue, MaxScaleUpRate = MaxScaleDownRate = 10, threshold 200 %."""
    return KPA(
        target_concurrency=target,
        target_utilization=1.0,
        max_scale_up_rate=10.0,
        max_scale_down_rate=10.0,
        scale_to_zero_grace_s=0.0,
    )


@dataclass
class Autoscaler:
    """One KPA and the state it carries between ``Scale`` calls (min/max scale as the service's bounds)."""

    kpa: KPA
    state: KPAState

    @classmethod
    def new(cls, kpa: KPA, *, min_scale: int = 0, max_scale: int = 100_000) -> Autoscaler:
        _, state = kpa.init([service(min_replicas=min_scale, max_replicas=max_scale)])
        return cls(kpa, state)

    def scale(
        self,
        now: float,
        *,
        stable: float,
        panic: float,
        ready: int,
        replicas: int | None = None,
        outstanding: int = 0,
    ) -> Decisions:
        """``expectScale``: one decision at ``now`` with the given window averages and ready pods."""
        sw, pw = self.kpa.stable_window_s, self.kpa.panic_window_s
        assert panic * pw <= stable * sw, "counter samples must not decrease"
        history = (
            Sample(now - sw, np.array([COUNTER - stable * sw])),
            Sample(now - pw, np.array([COUNTER - panic * pw])),
        )
        return self._decide(replace(self.state, history=history), now, ready, replicas, outstanding)

    def first(self, now: float, *, ready: int, replicas: int | None = None) -> Decisions:
        """A decision with no metric history yet (the autoscaler was just created or restarted)."""
        return self._decide(self.state, now, ready, replicas, 0)

    def _decide(self, state: KPAState, now: float, ready: int, replicas: int | None, outstanding: int) -> Decisions:
        one = np.zeros(1)
        signals = Signals(
            now=now,
            replicas=np.array([ready if replicas is None else replicas], np.int64),
            ready=np.array([ready], np.int64),
            arrivals=one,
            busy_s=one,
            ready_s=one,
            inflight_s=np.array([COUNTER]),
            outstanding=np.array([outstanding], np.int64),
        )
        decisions, self.state = assert_pure(self.kpa, signals, state)
        return decisions

    @property
    def panicking(self) -> bool:
        return not math.isnan(float(self.state.panic_since[0]))

    @property
    def panic_since(self) -> float:
        return float(self.state.panic_since[0])


def pods(d: Decisions) -> int:
    return int(d.replicas[0])


# ---------------------------------------------------------------------------------------------------------------
# autoscaler_test.go: single Scale calls (TestAutoscalerScale's table and the one-call tests)
# (name, target, stable, panic, ready, prepared panic (seconds ago, max panic pods) or None, expected)
# ---------------------------------------------------------------------------------------------------------------
ONE_CALL = [
    ("TestAutoscalerScale/AutoscalerNoDataAtZeroNoAutoscale", 10, 0, 0, 1, None, 0),
    ("TestAutoscalerScale/AutoscalerNoDataAtZeroNoAutoscaleWithExplicitEPs", 10, 0, 0, 1, None, 0),
    ("TestAutoscalerScale/AutoscalerStableModeUnlimitedTBC", 181, 21, 26, 1, None, 1),
    ("TestAutoscalerScale/Autoscaler0TBC", 10, 50, 49, 1, None, 5),
    ("TestAutoscalerScale/AutoscalerStableModeNoChange", 10, 50, 50, 1, None, 5),
    # stable 50 > panic 30 while panicking: provision for the stable count
    ("TestAutoscalerScale/AutoscalerPanicStableLargerThanPanic", 1, 50, 30, 5, (5.0, 5), 50),
    ("TestAutoscalerScale/AutoscalerPanicStableLessThanPanic", 1, 20, 30, 5, (5.0, 5), 30),
    ("TestAutoscalerScale/AutoscalerStableModeNoChangeAlreadyScaled", 10, 50, 50, 5, None, 5),
    # no ready pods counts as one: the scale-up rate 10 allows 10 of the 100 wanted
    ("TestAutoscalerUseOnePodAsMinimumIfEndpointsNotFound", 10, 1000, 888, 0, None, 10),
    # panic concurrency 100 -> 10 pods >= 2 × 1 ready: panic, and the panic count wins over the stable 5
    ("TestAutoscalerScale/AutoscalerPanicModeDoublePodCount", 10, 50, 100, 1, None, 10),
]


@pytest.mark.parametrize(
    ("target", "stable", "panic", "ready", "prepared", "expected"),
    [pytest.param(*c[1:], id=f"{AS} {c[0]}") for c in ONE_CALL],
)
def test_decider_single_scale(
    target: float, stable: float, panic: float, ready: int, prepared: tuple[float, int] | None, expected: int
) -> None:
    """desired = ceil(stable / target) within [ready / 10, ready × 10] (ready at least 1); in panic the larger of the
    stable and panic counts, never below the panic maximum.

    Mutations caught: ready 0 not counted as one (UseOnePodAsMinimum gives 0·10 → 0), the stable count ignored in
    panic (PanicStableLargerThanPanic gives 30).
    """
    a = Autoscaler.new(decider(target))
    now = 1000.0
    if prepared is not None:
        ago, max_pods = prepared
        a.state = replace(a.state, panic_since=np.array([now - ago]), max_panic_pods=np.array([max_pods]))
    assert pods(a.scale(now, stable=stable, panic=panic, ready=ready)) == expected


# (name, target, stable, panic, ready, max scale-up rate, max scale-down rate, expected)
RATES = [
    # MSUR 1.1 from 2 ready: ceil(2.2) = 3 allows the 3 wanted (ceil keeps a slow rate from getting stuck)
    ("TestAutoscalerScale/AutoscalerStableModeIncreaseWithSmallScaleUpRate", 1, 3, 3.1, 2, 1.1, 10.0, 3),
    # MSDR 1.1 from 100 ready: floor(100 / 1.1) = 90
    ("TestAutoscalerScale/AutoscalerStableModeDecreaseWithSmallScaleDownRate", 10, 1, 1, 100, 10.0, 1.1, 90),
]


@pytest.mark.parametrize(
    ("target", "stable", "panic", "ready", "up", "down", "expected"),
    [pytest.param(*c[1:], id=f"{AS} {c[0]}") for c in RATES],
)
def test_decider_scale_rates(
    target: float, stable: float, panic: float, ready: int, up: float, down: float, expected: int
) -> None:
    """``maxScaleUp = ceil(MSUR × ready)``, ``maxScaleDown = floor(ready / MSDR)``.

    Mutation caught: ``floor`` for the scale-up bound (gives 2).
    """
    a = Autoscaler.new(replace(decider(target), max_scale_up_rate=up, max_scale_down_rate=down))
    assert pods(a.scale(1000.0, stable=stable, panic=panic, ready=ready)) == expected


# ---------------------------------------------------------------------------------------------------------------
# autoscaler_test.go: sequences of Scale calls on one autoscaler
# ---------------------------------------------------------------------------------------------------------------


def test_no_data_no_autoscale() -> None:
    """``TestAutoscalerNoDataNoAutoscale`` (autoscaler_test.go): no metric data yet: no valid scale; ours keeps the
    current count with reason NO_METRICS."""
    a = Autoscaler.new(decider(10))
    d = a.first(1000.0, ready=1)
    assert (pods(d), int(d.reason[0])) == (1, NO_METRICS)


def test_stable_mode_increase_with_concurrency_default() -> None:
    """``TestAutoscalerStableModeIncreaseWithConcurrencyDefault``: 50 -> 5 pods, then 100 -> 10 (from 1 ready, the
    ×10 limit)."""
    a = Autoscaler.new(decider(10))
    assert pods(a.scale(1000.0, stable=50, panic=10, ready=1)) == 5
    assert pods(a.scale(1000.0, stable=100, panic=10, ready=1)) == 10


def test_unpanic_after_slow_increase() -> None:
    """``TestAutoscalerUnpanicAfterSlowIncrease``: panic at 25, keeps its panic time while below the threshold,
    and leaves panic a full stable window (+ one tick) later at the stable count 50."""
    a = Autoscaler.new(decider(1))
    start = 1000.0
    assert pods(a.scale(start, stable=11, panic=25, ready=10)) == 25
    assert a.panic_since == start
    assert pods(a.scale(start + 30, stable=30, panic=41, ready=40)) == 41
    assert a.panic_since == start, "panic time must not move below the threshold"
    assert pods(a.scale(start + 62, stable=50, panic=56, ready=55)) == 50
    assert not a.panicking


def test_extend_panic_window() -> None:
    """``TestAutoscalerExtendPanicWindow``: still over the threshold 30 s later (80 / 40 = 2×): panic time moves
    to now, 80 pods."""
    a = Autoscaler.new(decider(1))
    start = 1000.0
    assert pods(a.scale(start, stable=11, panic=25, ready=10)) == 25
    assert pods(a.scale(start + 30, stable=30, panic=80, ready=40)) == 80
    assert a.panic_since == start + 30


def test_stable_mode_decrease() -> None:
    """``TestAutoscalerStableModeDecrease``: 8 ready, 100 -> 10 pods, then 50 -> 5."""
    a = Autoscaler.new(decider(10))
    assert pods(a.scale(1000.0, stable=100, panic=100, ready=8)) == 10
    assert pods(a.scale(1000.0, stable=50, panic=50, ready=8)) == 5


def test_stable_mode_no_traffic_scale_to_zero() -> None:
    """``TestAutoscalerStableModeNoTrafficScaleToZero``: stable 1 -> 1 pod, stable 0 -> 0 pods."""
    a = Autoscaler.new(decider(10))
    assert pods(a.scale(1000.0, stable=1, panic=0, ready=1)) == 1
    assert pods(a.scale(1000.0, stable=0, panic=0, ready=1)) == 0


def test_panic_mode_exponential_track_and_stabilize() -> None:
    """``TestAutoscalerPanicModeExponentialTrackAndStabilize``: traffic ×6 per step, 6 -> 36 -> 216 -> 1296 pods,
    panic time following each step, and 1296 kept once traffic stabilizes."""
    a = Autoscaler.new(decider(1))
    tm = 1000.0
    assert pods(a.scale(tm, stable=6, panic=6, ready=1)) == 6
    assert pods(a.scale(tm, stable=36, panic=36, ready=6)) == 36
    assert a.panic_since == tm
    tm += 1
    assert pods(a.scale(tm, stable=216, panic=216, ready=36)) == 216
    assert a.panic_since == tm
    assert pods(a.scale(tm, stable=1296, panic=1296, ready=216)) == 1296
    assert a.panic_since == tm
    tm += 1
    assert pods(a.scale(tm, stable=1296, panic=1296, ready=1296)) == 1296


def test_panic_then_unpanic_scale_down() -> None:
    """``TestAutoscalerPanicThenUnPanicScaleDown``: panic at 100 pods holds them when traffic drops; 61 s later the
    stable count (1) applies."""
    a = Autoscaler.new(decider(10))
    assert pods(a.scale(1000.0, stable=100, panic=100, ready=1)) == 10
    panic_time = 1001.0
    assert pods(a.scale(panic_time, stable=100, panic=1000, ready=10)) == 100
    assert pods(a.scale(panic_time + 30, stable=1, panic=1, ready=10)) == 100
    assert pods(a.scale(panic_time + 61, stable=1, panic=1, ready=10)) == 1


def test_rate_limit_scale_up() -> None:
    """``TestAutoscalerRateLimitScaleUp``: 100 pods wanted, ×10 per decision: 10, then 100."""
    a = Autoscaler.new(decider(10))
    assert pods(a.scale(1000.0, stable=1000, panic=1001, ready=1)) == 10
    assert pods(a.scale(1000.0, stable=1000, panic=1001, ready=10)) == 100


def test_rate_limit_scale_down() -> None:
    """``TestAutoscalerRateLimitScaleDown``: 1 pod wanted, ÷10 per decision: 100 ready -> 10, then 1."""
    a = Autoscaler.new(decider(10))
    assert pods(a.scale(1000.0, stable=1, panic=1, ready=100)) == 10
    assert pods(a.scale(1000.0, stable=1, panic=1, ready=10)) == 1


def test_update_target() -> None:
    """``TestAutoscalerUpdateTarget``: the decider spec changes to target 1 between calls (a new KPA configuration
    with the state carried over): 100 concurrency on 10 ready -> 100 pods."""
    a = Autoscaler.new(decider(10))
    assert pods(a.scale(1000.0, stable=100, panic=101, ready=1)) == 10
    a.kpa = decider(1)
    assert pods(a.scale(1000.0, stable=100, panic=101, ready=10)) == 100


def delayed(delay_s: float) -> Autoscaler:
    """TestAutoscalerScaleDownDelay's spec: target 10, rates 10, panic threshold 10 000 % (never), no ready pods."""
    kpa = replace(decider(10), panic_threshold=100.0, scale_down_delay_s=delay_s)
    return Autoscaler.new(kpa)


def test_scale_down_delay() -> None:
    """``TestAutoscalerScaleDownDelay`` (both subtests on one autoscaler, ScaleDownDelay 5 min). ``simple``: 40 ->
    4 pods; 0 for 5 minutes: still 4; 2 s later: 0. ``gradual``: 40 at 9 min -> 4; 30 at 10 min -> 4 (4 still
    dominates); 0 at 11 min -> 4; at 14 min the 4 has scrolled out -> 3; at 15 min everything has -> 0.

    Mutations caught: no delay (0 at 5 min), an entry kept at exactly the delay's age (4 at 14 min, 3 at 15 min).
    """
    a = delayed(300.0)
    assert pods(a.scale(2.0, stable=40, panic=40, ready=0)) == 4
    assert pods(a.scale(300.0, stable=0, panic=0, ready=0)) == 4
    assert pods(a.scale(302.0, stable=0, panic=0, ready=0)) == 0
    assert pods(a.scale(540.0, stable=40, panic=40, ready=0)) == 4
    assert pods(a.scale(600.0, stable=30, panic=30, ready=0)) == 4
    assert pods(a.scale(660.0, stable=0, panic=0, ready=0)) == 4
    assert pods(a.scale(840.0, stable=0, panic=0, ready=0)) == 3
    assert pods(a.scale(900.0, stable=0, panic=0, ready=0)) == 0


def test_scale_down_delay_zero() -> None:
    """``TestAutoscalerScaleDownDelayZero``: without a delay a lower count applies at once: 40 -> 4, then 20 -> 2
    half a second later."""
    a = delayed(0.0)
    assert pods(a.scale(0.0, stable=40, panic=40, ready=0)) == 4
    assert pods(a.scale(0.5, stable=20, panic=20, ready=0)) == 2


@pytest.mark.parametrize("ready", [0, 1, 2, 5], ids=lambda r: f"{AS} TestStartInPanicMode/ready-{r}")
def test_start_in_panic_mode(ready: int) -> None:
    """``TestStartInPanicMode``: created over 0 or 1 ready pods: no panic; over 2 or more: panic mode at that count,
    so losing the metric history (a restart) cannot scale it down for a stable window.

    Our KPA learns the ready count at its first ``decide()`` (no window yet); then, with no concurrency at all, a
    restarted KPA over 5 replicas keeps them while the new window fills. Mutation caught: dropping the start-up
    panic (the port had none: 5 -> 0 at the next tick).
    """
    a = Autoscaler.new(decider(10))
    a.first(1000.0, ready=ready)
    assert a.panicking is (ready > 1)
    d = a.scale(1002.0, stable=0, panic=0, ready=ready)
    assert pods(d) == (ready if ready > 1 else 0)
    if ready > 1:
        assert int(d.reason[0]) == PANIC


# ---------------------------------------------------------------------------------------------------------------
# scaler_test.go TestScaler: the reconciler applies the decider's count
# (label, start replicas, decider's count, min scale, max scale, seconds since the count first became 0 or None,
#  expected replicas)
# ---------------------------------------------------------------------------------------------------------------
RECONCILER = [
    ("scales up", 1, 10, 0, 1000, None, 10),
    ("scales up to maxScale", 1, 10, 0, 8, None, 8),
    ("scales up from zero to desired one", 0, 1, 0, 1000, None, 1),
    ("scales up from zero to desired high scale", 0, 10, 0, 1000, None, 10),
    # the PA is still active (the zero count is new): keep the replica
    ("waits to scale to zero (just before idle period)", 1, 0, 0, 1000, 0.0, 1),
    ("waits to scale to zero (just before grace period)", 1, 0, 0, 1000, 29.0, 1),
    ("scale to zero after grace period", 1, 0, 0, 1000, 30.0, 0),
    ("scale down to minScale before grace period", 10, 0, 2, 1000, 29.0, 2),
    ("scale down to minScale after grace period", 10, 0, 2, 1000, 30.0, 2),
]


@pytest.mark.parametrize(
    ("start", "count", "min_scale", "max_scale", "zero_for", "expected"),
    [pytest.param(*c[1:], id=f"{SC} TestScaler/{c[0]}") for c in RECONCILER],
)
def test_reconciler_applies_the_count(
    start: int, count: int, min_scale: int, max_scale: int, zero_for: float | None, expected: int
) -> None:
    """The decider's count within [minScale, maxScale]; a zero count only after the 30 s grace period (our grace
    runs from the first zero count, Knative's from the PA turning inactive, which it does at the first zero count
    once the revision has been active a stable window).

    The decider is given the stable and panic concurrency ``count × 70`` and rates that never bind, so its count is
    exactly the case's ``scaleTo``. Mutation caught: the minimum applied after the grace period (the port did:
    "scale down to minScale before grace period" kept 10).
    """
    kpa = KPA(max_scale_down_rate=1e6)
    a = Autoscaler.new(kpa, min_scale=min_scale, max_scale=max_scale)
    now = 1000.0
    if zero_for is not None and zero_for > 0:
        a.state = replace(a.state, zero_since=np.array([now - zero_for]))
    per_pod = kpa.target_concurrency * kpa.target_utilization
    d = a.scale(now, stable=count * per_pod, panic=count * per_pod, ready=start)
    assert pods(d) == expected
    if count == 0 and min_scale == 0:
        assert int(d.reason[0]) == (TO_ZERO if expected == 0 else COOLDOWN)


def test_does_not_scale_up_from_zero_with_no_metrics() -> None:
    """``TestScaler/does not scale up from zero with no metrics`` (scaler_test.go): at zero with no metrics yet the
    count stays 0."""
    a = Autoscaler.new(KPA())
    d = a.first(1000.0, ready=0, replicas=0)
    assert (pods(d), int(d.reason[0])) == (0, NO_METRICS)
