"""Kubernetes' HorizontalPodAutoscaler (autoscaling/v2), on a GPU-utilization metric.

Faithful to kube-controller-manager's defaults (pkg/controller/podautoscaler, Kubernetes 1.30):
- ``--horizontal-pod-autoscaler-sync-period`` = 15 s (``tick_s``); metrics-server ``--metric-resolution`` = 15 s:
  utilization is the busy fraction of the *ready* replicas over the last 15 s window.
- ``desired = ceil(current * metric / target)``; no change while ``|metric / target - 1| <= 0.1``
  (``--horizontal-pod-autoscaler-tolerance``).
- Replicas that are not ready yet have no usable metric: on a scale-up they count as 0 % utilization, on a
  scale-down they are left out; a scale that would flip direction because of them is dropped
  (replica_calculator.go ``GetResourceReplicas``).
- ``spec.behavior`` unset (the default, ``behavior=None``): the controller's legacy path
  (horizontal.go ``normalizeDesiredReplicas``): the target is the highest recommendation of the last 300 s
  (``--horizontal-pod-autoscaler-downscale-stabilization``), the current one included — so after a rate-limited
  spike it keeps climbing towards the spike's recommendation — capped per 15 s sync at
  ``max(2 × current, 4)`` (``calculateScaleUpLimit``).
- ``spec.behavior`` set (``behavior=Behavior()``, the autoscaling/v2 default rules the docs list): scale-up
  has no stabilization window and may add ``max(100 % of current, 4 pods)`` per 15 s; scale-down uses the highest
  recommendation of the last 300 s and may remove up to 100 % per 15 s. For 4 or more replicas both paths allow
  the same doubling.
- The first sync records the current replica count as a recommendation (``recordInitialRecommendation``), so a
  workload found above its need is held for the window before it shrinks.
- ``minReplicas`` defaults to 1; the HPA never scales to zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shadowscale.policies.scaling.base import (
    Decisions,
    Reason,
    Sample,
    Signals,
    WindowMax,
    bounds,
    ceil_int,
    full,
    push,
)
from shadowscale.policies.types import FloatArray, IntArray, ServiceConfig

_HOLD = int(Reason.HOLD)
_WITHIN = int(Reason.WITHIN_TOLERANCE)
_NO_METRICS = int(Reason.NO_METRICS)
_UP = int(Reason.SCALE_UP)
_DOWN = int(Reason.SCALE_DOWN)
_STABILIZED = int(Reason.STABILIZED)
_RATE_LIMITED = int(Reason.RATE_LIMITED)
_BOUNDS = int(Reason.BOUNDS)


DOWNSCALE_STABILIZATION_S = 300.0
"""``--horizontal-pod-autoscaler-downscale-stabilization`` default."""


@dataclass(frozen=True, slots=True)
class Behavior:
    """HPA ``behavior`` defaults (autoscaling/v2 ``HPAScalingRules``).

    Each direction has at most one ``Percent`` and one ``Pods`` policy, combined with ``selectPolicy: Max`` (the
    policy that allows the larger change wins); a value of 0 means "no such policy". A policy limits the change
    over its period (``periodSeconds``: ``period_s`` unless the policy's own period is given) relative to the
    replicas at the period's start, which the HPA works out from its own scale events of that period
    (``calculateScaleUpLimitWithScalingRules``); with the default 15 s periods that is the replicas the sync
    starts from.
    """

    scale_up_stabilization_s: float = 0.0
    scale_down_stabilization_s: float = 300.0
    scale_up_percent: float = 100.0
    scale_up_pods: int = 4
    scale_down_percent: float = 100.0
    scale_down_pods: int = 0
    """``Pods`` scale-down policy: at most this many replicas removed per period (0: no such policy)."""
    period_s: float = 15.0
    scale_up_percent_period_s: float | None = None
    scale_up_pods_period_s: float | None = None
    scale_down_percent_period_s: float | None = None
    scale_down_pods_period_s: float | None = None

    def periods(self) -> tuple[float, float, float, float]:
        """(up percent, up pods, down percent, down pods) policy periods in seconds."""
        p = self.period_s
        return (
            p if self.scale_up_percent_period_s is None else self.scale_up_percent_period_s,
            p if self.scale_up_pods_period_s is None else self.scale_up_pods_period_s,
            p if self.scale_down_percent_period_s is None else self.scale_down_percent_period_s,
            p if self.scale_down_pods_period_s is None else self.scale_down_pods_period_s,
        )


@dataclass(frozen=True, slots=True)
class Recommendations:
    """What the HPA controller remembers between syncs: its raw recommendations over the stabilization window,
    and (``behavior`` set) its scale events over the longest policy period.

    The scale-down window is kept as a sliding maximum; a scale-up window (0 s by default) as the plain
    history of (time, recommendation); scale events as (time, replicas added (> 0) or removed (< 0)).
    """

    down: WindowMax = WindowMax()
    up: tuple[Sample, ...] = ()
    events: tuple[Sample, ...] = ()


def _changed_since(events: tuple[Sample, ...], cut: float) -> tuple[FloatArray, FloatArray]:
    """``getReplicasChangePerPeriod`` for scale-ups and scale-downs: replicas added and removed after ``cut``."""
    recent = [e.values for e in events if e.t > cut]
    if not recent:
        return np.zeros(()), np.zeros(())
    stacked = np.stack(recent)
    return np.maximum(stacked, 0.0).sum(axis=0), np.maximum(-stacked, 0.0).sum(axis=0)


def normalize(
    now: float,
    current: IntArray,
    raw: IntArray,
    recs: Recommendations,
    behavior: Behavior,
    lo: IntArray,
    hi: IntArray,
) -> tuple[IntArray, IntArray, Recommendations]:
    """HPA's ``normalizeDesiredReplicasWithBehaviors``: stabilize, then rate-limit, then clamp.

    Returns (replicas, reason-override code or -1, new recommendations). Shared by HPA and KEDA (whose scaling
    between 1 and N is an HPA with default behavior).
    """
    # The controller keeps recommendations strictly after the cutoff (the new one included).
    down = recs.down.expire(now - behavior.scale_down_stabilization_s).push(now, raw)
    down_rec = down.max()
    assert down_rec is not None
    up = recs.up
    if behavior.scale_up_stabilization_s > 0:
        up = push(recs.up, Sample(now, raw.astype(np.float64)), behavior.scale_up_stabilization_s)
        cut = now - behavior.scale_up_stabilization_s
        up_rec = np.minimum.reduce([s.values for s in up if s.t > cut]).astype(np.int64)
    else:
        up_rec = raw
    rec = np.minimum(np.maximum(current, up_rec), down_rec)

    # Rate limits over each policy's period, from the replicas at the period's start (current minus what this HPA
    # added in the period plus what it removed), selectPolicy Max; never below/above the current count.
    up_pct_s, up_pods_s, down_pct_s, down_pods_s = behavior.periods()

    def start(period_s: float) -> FloatArray:
        added, removed = _changed_since(recs.events, now - period_s)
        return current - added + removed

    up_limit = np.maximum(
        ceil_int(start(up_pct_s) * np.float64(1.0 + behavior.scale_up_percent / 100.0)),
        (start(up_pods_s) + behavior.scale_up_pods).astype(np.int64),
    )
    up_limit = np.maximum(up_limit, current)
    # calculateScaleDownLimitWithBehaviors: the lowest limit of the policies; a percent policy truncates towards
    # zero (int32(start × (1 − p))), a missing pods policy allows no change. The default (100 %) limits nothing.
    pct_limit = np.floor(start(down_pct_s) * (1.0 - behavior.scale_down_percent / 100.0) + 1e-9).astype(np.int64)
    down_limit = np.minimum(pct_limit, (start(down_pods_s) - behavior.scale_down_pods).astype(np.int64))
    down_limit = np.minimum(down_limit, current)
    up_limited = rec > up_limit
    down_limited = rec < down_limit
    out = np.clip(rec, down_limit, up_limit)
    bounded = np.clip(out, lo, hi)
    # held by the window: a scale-down was recommended and the stabilized value is above it
    code = np.where((raw < current) & (rec > raw), _STABILIZED, -1)
    code[up_limited | down_limited] = _RATE_LIMITED
    # convertDesiredReplicasWithBehaviorRate names the limit that binds: TooMany/TooFewReplicas when max/min is
    # at least as tight as the rate limit, ScaleUpLimit/ScaleDownLimit otherwise.
    code[(up_limited & (hi <= up_limit)) | (down_limited & (lo >= down_limit)) | (bounded != out)] = _BOUNDS
    # storeScaleEvent: remember this sync's change for the policies' periods
    keep = max(behavior.periods())
    events = tuple(e for e in recs.events if e.t > now - keep)
    change = (bounded - current).astype(np.float64)
    if change.any():
        events = (*events, Sample(now, change))
    return bounded, code, Recommendations(down, up, events)


def normalize_legacy(
    now: float,
    current: IntArray,
    raw: IntArray,
    recs: Recommendations,
    window_s: float,
    lo: IntArray,
    hi: IntArray,
) -> tuple[IntArray, IntArray, Recommendations]:
    """The controller's path with ``spec.behavior`` unset: ``stabilizeRecommendation`` (the highest
    recommendation of the window, the new one included), then ``convertDesiredReplicasWithRules`` (at most
    ``max(2 × current, 4)``, within min/max). Returns like :func:`normalize`."""
    down = recs.down.expire(now - window_s).push(now, raw)
    stabilized = down.max()
    assert stabilized is not None
    up_limit = np.maximum(2 * current, 4)
    allowed_max = np.minimum(hi, up_limit)
    out = np.where(stabilized < lo, lo, np.minimum(stabilized, allowed_max))
    code = np.where((raw < current) & (stabilized > raw), _STABILIZED, -1)
    # The reason names the limit that binds: ScaleUpLimit only while maxReplicas is above it (a tie is
    # TooManyReplicas), as convertDesiredReplicasWithRules reports it.
    over = stabilized > allowed_max
    code[over & (hi > up_limit)] = _RATE_LIMITED
    code[(over & (hi <= up_limit)) | (stabilized < lo)] = _BOUNDS
    return out, code, Recommendations(down, recs.up)


def stabilize(
    now: float,
    current: IntArray,
    raw: IntArray,
    recs: Recommendations,
    behavior: Behavior | None,
    lo: IntArray,
    hi: IntArray,
) -> tuple[IntArray, IntArray, Recommendations]:
    """The HPA controller's normalisation for ``behavior`` (``None`` = unset, the legacy path)."""
    if behavior is None:
        return normalize_legacy(now, current, raw, recs, DOWNSCALE_STABILIZATION_S, lo, hi)
    return normalize(now, current, raw, recs, behavior, lo, hi)


def initial_recommendations(now: float, current: IntArray) -> Recommendations:
    """``recordInitialRecommendation``: the first sync remembers the current replica count, in the one list both
    stabilization windows read (a scale-up window therefore holds the count it found, as a scale-down window
    does)."""
    return Recommendations(WindowMax().push(now, current.copy()), (Sample(now, current.astype(np.float64)),))


@dataclass(frozen=True, slots=True)
class HPAState:
    last_t: float | None
    """Time of the previous metrics sample (None before the first)."""
    last_busy: FloatArray
    last_ready: FloatArray
    """Counters busy_s and ready_s at the previous metrics sample."""
    recs: Recommendations
    lo: IntArray
    hi: IntArray


@dataclass(frozen=True, slots=True)
class HPA:
    """HorizontalPodAutoscaler on average GPU utilization of ready replicas (target 70 % by default)."""

    target_utilization: float = 0.70
    tolerance: float = 0.10
    sync_s: float = 15.0
    min_replicas: int = 1
    behavior: Behavior | None = None
    """None: ``spec.behavior`` unset (Kubernetes' default, the legacy path); ``Behavior()``: the v2 rules."""

    @property
    def name(self) -> str:
        return "hpa"

    @property
    def tick_s(self) -> float:
        return self.sync_s

    @property
    def hindsight(self) -> bool:
        return False

    def init(self, services: Sequence[ServiceConfig]) -> tuple[IntArray, HPAState]:
        lo, hi = bounds(services)
        lo = np.maximum(lo, self.min_replicas)
        zero = np.zeros(len(services))
        return lo.copy(), HPAState(None, zero, zero, Recommendations(), lo, hi)

    def decide(self, signals: Signals, state: HPAState) -> tuple[Decisions, HPAState]:
        n = signals.n_models
        now = signals.now
        current = signals.replicas
        target = full(n, self.target_utilization)
        if state.last_t is None:
            hold = Decisions(
                self.name,
                now,
                current.copy(),
                full_codes(n, Reason.NO_METRICS),
                full(n, 0.0),
                target,
                current.astype(np.float64),
            )
            recs0 = initial_recommendations(now, current)
            return hold, HPAState(now, signals.busy_s, signals.ready_s, recs0, state.lo, state.hi)
        d_busy = signals.busy_s - state.last_busy
        d_ready = signals.ready_s - state.last_ready
        has_metrics = d_ready > 1e-9
        util = np.divide(d_busy, d_ready, out=np.zeros(n), where=has_metrics)
        raw, code = replica_calculator(util, self.target_utilization, self.tolerance, current, signals.ready)
        # no metrics from ready replicas (none ready over the window): hold
        code[~has_metrics] = _NO_METRICS
        raw = np.where(has_metrics, raw, current)
        out, override, recs = stabilize(now, current, raw, state.recs, self.behavior, state.lo, state.hi)
        code = label_direction(np.where(override >= 0, override, code), out, current)
        decisions = Decisions(self.name, now, out, code, util, target, raw.astype(np.float64))
        return decisions, HPAState(now, signals.busy_s, signals.ready_s, recs, state.lo, state.hi)


_DIRECTION = np.array([int(Reason.SCALE_DOWN), int(Reason.HOLD), int(Reason.SCALE_UP)], np.int64)


def label_direction(code: IntArray, out: IntArray, current: IntArray) -> IntArray:
    """Turn a plain HOLD into SCALE_UP/SCALE_DOWN where the replicas did change."""
    labelled: IntArray = np.where(code == _HOLD, _DIRECTION[np.sign(out - current) + 1], code)
    return labelled


def full_codes(n: int, reason: Reason) -> IntArray:
    return np.full(n, int(reason), np.int64)


def replica_calculator(
    metric: FloatArray, target: float | FloatArray, tolerance: float, current: IntArray, ready: IntArray
) -> tuple[IntArray, IntArray]:
    """``GetResourceReplicas``: desired replicas from the ready pods' average metric, unready pods handled.

    ``metric`` is the average over ready pods. Returns (raw desired, reason code).
    """
    ratio = metric / target
    unready = current - ready
    if not (unready > 0).any():
        raw = ceil_int(ratio * ready)
        hold = np.abs(ratio - 1.0) <= tolerance
    else:
        has_unready = unready > 0
        plain = ceil_int(ratio * ready)
        within = np.abs(ratio - 1.0) <= tolerance
        # Unready pods on a scale-up count as 0 usage (scale-down leaves them out).
        up = ratio > 1.0
        new_ratio = np.where(up, ratio * ready / np.maximum(ready + unready, 1), ratio)
        adjusted = ceil_int(new_ratio * np.where(up, ready + unready, ready))
        flipped = ((new_ratio < 1.0) & up) | ((new_ratio > 1.0) & (ratio < 1.0))
        adj_within = np.abs(new_ratio - 1.0) <= tolerance
        wrong_way = ((new_ratio < 1.0) & (adjusted > current)) | ((new_ratio > 1.0) & (adjusted < current))
        raw = np.where(has_unready, adjusted, plain)
        hold = np.where(has_unready, flipped | adj_within | wrong_way, within)
    raw = np.where(hold, current, raw)
    code = np.where(hold, _WITHIN, _HOLD)
    return raw, code
