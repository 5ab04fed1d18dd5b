"""Knative Pod Autoscaler (KPA), concurrency mode.

Faithful to Knative Serving's ``config-autoscaler`` defaults and ``pkg/autoscaler/scaling/autoscaler.go``:
- ``tick-interval`` 2 s (``tick_s``); ``stable-window`` 60 s; ``panic-window-percentage`` 10 % (6 s).
- ``container-concurrency-target-default`` 100 × ``container-concurrency-target-percentage`` 70 % = target
  concurrency per replica; desired = ceil(observed average concurrency / target), from the stable window and
  separately from the panic window.
- ``panic-threshold-percentage`` 200 %: panic when the panic-window desired count is at least 2× the ready
  count; while panicking the count never decreases; panic ends after a full stable window below threshold.
- ``max-scale-up-rate`` 1000 and ``max-scale-down-rate`` 2.0 relative to ready replicas per decision.
- Scale to zero: the stable-window desired count reaches 0 after 60 s without concurrency; the replicas go
  only after ``scale-to-zero-grace-period`` 30 s more. From zero, the activator buffers requests and its
  concurrency reaches the autoscaler by the next tick.
- ``scale-down-delay`` 0 s (``scale_down_delay_s``): when set, the highest desired count of that window applies.
- ``initial-scale`` 1. An autoscaler that starts (or restarts) over more than one ready replica starts in panic
  mode at that count, as ``newAutoscaler`` does.

Observed concurrency = requests in flight (queued at the activator/queue-proxy or being served), averaged
over the window from the concurrency-seconds counter.
"""

from __future__ import annotations

import math
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
    push,
    window_start,
)
from shadowscale.policies.scaling.hpa import label_direction
from shadowscale.policies.types import FloatArray, IntArray, ServiceConfig

_PANIC = int(Reason.PANIC)
_RATE_LIMITED = int(Reason.RATE_LIMITED)
_HOLD = int(Reason.HOLD)
_COOLDOWN = int(Reason.COOLDOWN)
_SCALE_TO_ZERO = int(Reason.SCALE_TO_ZERO)
_ACTIVATE = int(Reason.ACTIVATE)
_BOUNDS = int(Reason.BOUNDS)
_STABILIZED = int(Reason.STABILIZED)


@dataclass(frozen=True, slots=True)
class KPAState:
    history: tuple[Sample, ...]
    """Concurrency-seconds counter samples over the stable window."""
    panic_since: FloatArray
    """Time panic mode was (re)entered; NaN when not panicking."""
    max_panic_pods: IntArray
    zero_since: FloatArray
    """Time the desired count first became 0 while replicas remained; NaN otherwise."""
    lo: IntArray
    hi: IntArray
    delayed: WindowMax = WindowMax()
    """Desired counts over the last ``scale_down_delay_s`` (empty when there is no delay)."""


@dataclass(frozen=True, slots=True)
class KPA:
    target_concurrency: float = 100.0
    target_utilization: float = 0.70
    stable_window_s: float = 60.0
    panic_window_pct: float = 10.0
    panic_threshold: float = 2.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scale_to_zero_grace_s: float = 30.0
    tick_interval_s: float = 2.0
    initial_scale: int = 1
    scale_down_delay_s: float = 0.0
    """``scale-down-delay``: a scale-down takes effect only once the lower count has held this long (the highest
    desired count of the window applies)."""

    @property
    def name(self) -> str:
        return "kpa"

    @property
    def tick_s(self) -> float:
        return self.tick_interval_s

    @property
    def hindsight(self) -> bool:
        return False

    @property
    def panic_window_s(self) -> float:
        return self.stable_window_s * self.panic_window_pct / 100.0

    def init(self, services: Sequence[ServiceConfig]) -> tuple[IntArray, KPAState]:
        lo, hi = bounds(services)
        n = len(services)
        initial = np.minimum(np.maximum(np.full(n, self.initial_scale, np.int64), lo), hi)
        nan = np.full(n, math.nan)
        return initial, KPAState((), nan, np.zeros(n, np.int64), nan.copy(), lo, hi)

    def decide(self, signals: Signals, state: KPAState) -> tuple[Decisions, KPAState]:
        n = signals.n_models
        now = signals.now
        current = signals.replicas
        target = np.full(n, self.target_concurrency * self.target_utilization)
        history = push(state.history, Sample(now, signals.inflight_s), self.stable_window_s)
        first = window_start(history, now, self.stable_window_s)
        if now - first.t <= 1e-9:
            # No window yet ("no data" is a result, not an error): keep the current scale. An autoscaler that
            # starts over more than one ready pod starts in panic mode at that count (newAutoscaler), so the
            # lost metric history cannot scale it down before a stable window has passed.
            code = np.full(n, int(Reason.NO_METRICS), np.int64)
            decisions = Decisions(self.name, now, current.copy(), code, np.zeros(n), target, current.astype(np.float64))
            start = np.isnan(state.panic_since) & (signals.ready > 1)
            panic_since = np.where(start, now, state.panic_since)
            max_panic = np.where(start, signals.ready, state.max_panic_pods).astype(np.int64)
            return decisions, KPAState(
                history, panic_since, max_panic, state.zero_since, state.lo, state.hi, state.delayed
            )
        p0 = window_start(history, now, self.panic_window_s)
        stable = (signals.inflight_s - first.values) / (now - first.t)
        panic = (signals.inflight_s - p0.values) / max(now - p0.t, 1e-9)

        ready = np.maximum(signals.ready, 1).astype(np.float64)
        dspc = ceil_int(stable / target)
        dppc = ceil_int(panic / target)
        max_up = ceil_int(self.max_scale_up_rate * ready)
        max_down = np.floor(ready / self.max_scale_down_rate).astype(np.int64)
        dspc_l = np.minimum(np.maximum(dspc, max_down), max_up)
        dppc_l = np.minimum(np.maximum(dppc, max_down), max_up)
        limited = dspc_l != dspc

        # The panic test uses the unclamped panic count (autoscaler.go: dppc/readyPodsCount >= threshold).
        over = dppc / ready >= self.panic_threshold
        panic_since = state.panic_since.copy()
        panicking_before = ~np.isnan(panic_since)
        panic_since[over] = now
        stop = panicking_before & ~over & (now > state.panic_since + self.stable_window_s)
        panic_since[stop] = math.nan
        panicking = ~np.isnan(panic_since)
        # In panic provision for the larger of the stable and panic counts, and never below the panic peak.
        max_panic = np.where(panicking, np.maximum(np.maximum(dppc_l, dspc_l), state.max_panic_pods), 0)
        desired = np.where(panicking, max_panic, dspc_l)
        code = np.where(panicking, _PANIC, np.where(limited, _RATE_LIMITED, _HOLD))
        # scale-down-delay (autoscaler.go delayWindow): the highest count decided within the delay applies.
        delayed = state.delayed
        if self.scale_down_delay_s > 0:
            delayed = delayed.expire(now - self.scale_down_delay_s).push(now, desired.astype(np.int64))
            held = delayed.max()
            assert held is not None
            code = np.where(held > desired, _STABILIZED, code)
            desired = np.maximum(desired, held)

        # Scale to zero only after the grace period; from zero, activate on any buffered request. The reconciler
        # applies min/max first (scaler.go), so with a minimum above 0 the count goes to it at once.
        zero_since = state.zero_since.copy()
        wants_zero = (desired == 0) & (current > 0) & (state.lo == 0)
        zero_since[~wants_zero] = math.nan
        newly = wants_zero & np.isnan(zero_since)
        zero_since[newly] = now
        in_grace = wants_zero & (now - zero_since < self.scale_to_zero_grace_s - 1e-9)
        desired = np.where(in_grace, current, desired)
        code = np.where(in_grace, _COOLDOWN, code)
        code = np.where(wants_zero & ~in_grace, _SCALE_TO_ZERO, code)
        activate = (current == 0) & (signals.outstanding > 0)
        desired = np.where(activate, np.maximum(desired, 1), desired)
        code = np.where(activate, _ACTIVATE, code)

        out = np.minimum(np.maximum(desired, state.lo), state.hi)
        code = np.where(out != desired, _BOUNDS, code)
        code = label_direction(code, out, current)
        decisions = Decisions(
            self.name, now, out.astype(np.int64), code, stable, target, np.where(panicking, panic, stable) / target
        )
        return decisions, KPAState(
            history, panic_since, max_panic.astype(np.int64), zero_since, state.lo, state.hi, delayed
        )
