"""KEDA (v2) with a queue-lag scaler, e.g. the Kafka or RabbitMQ scaler, as the HPA it drives.

Faithful to KEDA's defaults (keda.sh/docs/2.14/reference/scaledobject-spec, Kafka scaler docs):
- ``pollingInterval`` = 30 s: KEDA checks activity (lag > ``activationLagThreshold`` = 0) every 30 s and alone
  moves the workload between 0 and 1 replica (and up to ``minReplicaCount`` when it is below it). The polling and
  the HPA's syncs are separate loops: the policy runs at the instants either acts.
- ``cooldownPeriod`` = 300 s: scale to zero only after 300 s without activity.
- Between 1 and N replicas the HPA that KEDA creates scales on an ``AverageValue`` external metric with target
  ``lagThreshold`` (Kafka default 10): ``desired = ceil(lag / lagThreshold)``. That HPA syncs every 15 s
  (``tick_s``) with HPA's defaults (``behavior`` unset unless ``advanced.horizontalPodAutoscalerConfig`` sets it:
  300 s scale-down stabilization, scale-up at most max(2 × current, 4) per 15 s, tolerance 0.1), and reads the
  lag live from KEDA's metrics adapter (``useCachedMetrics: false``).
- ``minReplicaCount`` = 0.

Lag in the simulator = requests accepted and not yet completed (unacknowledged messages).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shadowscale.policies.scaling.base import Decisions, Reason, Signals, bounds, ceil_int, full
from shadowscale.policies.scaling.hpa import Behavior, Recommendations, label_direction, stabilize
from shadowscale.policies.types import FloatArray, IntArray, ServiceConfig

_WITHIN_TOLERANCE = int(Reason.WITHIN_TOLERANCE)
_HOLD = int(Reason.HOLD)
_ACTIVATE = int(Reason.ACTIVATE)
_SCALE_TO_ZERO = int(Reason.SCALE_TO_ZERO)


@dataclass(frozen=True, slots=True)
class KEDAState:
    last_active: FloatArray
    recs: Recommendations
    lo: IntArray
    hi: IntArray


@dataclass(frozen=True, slots=True)
class KEDA:
    lag_threshold: float = 10.0
    activation_lag_threshold: float = 0.0
    polling_s: float = 30.0
    cooldown_s: float = 300.0
    hpa_sync_s: float = 15.0
    tolerance: float = 0.10
    initial_replicas: int = 1
    behavior: Behavior | None = None

    @property
    def name(self) -> str:
        return "keda"

    @property
    def tick_s(self) -> float:
        """KEDA's polling loop and the HPA's sync loop run independently; the policy is evaluated at every instant
        either acts (the greatest common divisor of the two periods, 15 s for the defaults 30 s and 15 s)."""
        return _gcd_s(self.polling_s, self.hpa_sync_s)

    @property
    def hindsight(self) -> bool:
        return False

    def init(self, services: Sequence[ServiceConfig]) -> tuple[IntArray, KEDAState]:
        lo, hi = bounds(services)
        n = len(services)
        initial = np.minimum(np.maximum(np.full(n, self.initial_replicas, np.int64), lo), hi)
        # No activity recorded yet: with initialCooldownPeriod 0 (default) an idle workload goes to zero at the
        # first poll (scale_executor scaleToZeroOrIdle).
        return initial, KEDAState(np.full(n, -np.inf), Recommendations(), lo, hi)

    def decide(self, signals: Signals, state: KEDAState) -> tuple[Decisions, KEDAState]:
        n = signals.n_models
        now = signals.now
        current = signals.replicas
        lag = signals.outstanding.astype(np.float64)
        target = full(n, self.lag_threshold)
        poll = _is_multiple(now, self.polling_s)

        last_active = state.last_active
        if poll:
            active = lag > self.activation_lag_threshold
            last_active = np.where(active, now, last_active)

        # The HPA part, for workloads KEDA has activated (current >= 1), at the HPA's own syncs.
        scaled = current >= 1
        ratio = np.divide(lag, np.maximum(current, 1) * self.lag_threshold)
        raw = np.maximum(ceil_int(lag / self.lag_threshold), 1)
        within = np.abs(ratio - 1.0) <= self.tolerance
        raw = np.where(within, current, raw)
        if _is_multiple(now, self.hpa_sync_s):
            hpa_lo = np.maximum(state.lo, 1)
            out, override, recs = stabilize(
                now, np.maximum(current, 1), raw, state.recs, self.behavior, hpa_lo, state.hi
            )
            code = np.where(within, _WITHIN_TOLERANCE, _HOLD)
            code = np.where(override >= 0, override, code)
            out = np.where(scaled, out, current)
        else:
            out, recs, code = current.copy(), state.recs, np.full(n, _HOLD, np.int64)

        if poll:
            # scale_executor RequestScale: active at zero -> max(minReplicaCount, 1); inactive past the cooldown
            # with minReplicaCount 0 -> 0; inactive below minReplicaCount -> minReplicaCount.
            active = lag > self.activation_lag_threshold
            activate = (current == 0) & active
            out = np.where(activate, np.maximum(1, state.lo), out)
            code = np.where(activate, _ACTIVATE, code)
            idle_long = (now - last_active >= self.cooldown_s - 1e-9) & ~active
            to_zero = scaled & idle_long & (state.lo == 0)
            out = np.where(to_zero, 0, out)
            code = np.where(to_zero, _SCALE_TO_ZERO, code)
            to_min = ~active & (current < state.lo)
            out = np.where(to_min, state.lo, out)
            code = np.where(to_min, int(Reason.BOUNDS), code)
        code = label_direction(code, out, current)
        decisions = Decisions(self.name, now, out.astype(np.int64), code, lag, target, raw.astype(np.float64))
        return decisions, KEDAState(last_active, recs, state.lo, state.hi)


def _gcd_s(a: float, b: float) -> float:
    """Greatest common divisor of two periods, in milliseconds' resolution."""
    return math.gcd(round(a * 1000), round(b * 1000)) / 1000.0


def _is_multiple(t: float, period: float) -> bool:
    k = round(t / period)
    return abs(t - k * period) < 1e-6
