"""shadowscale: an SLO-aware, profile-driven, predictive autoscaler.

Where HPA, KEDA and Knative scale on a proxy with fixed windows, this policy plans replicas from what one
replica of the model can serve within its SLO (its measured profile) and from a forecast of demand over the
time a new replica needs to warm up:

- **Capacity** per replica = the profile's requests/s at the SLO (``max_batch / L(max_batch)``), corrected online
  by observed latency: while requests spend longer in the system than ``latency_target`` of their SLO (mean time
  in system from the counters, by Little's law) the capacity a replica is credited with shrinks; it relaxes back
  towards the profile otherwise (heavy or variable requests serve fewer per second than the unit request).
- **Demand forecast** over the cold-start horizon: a fast and a slow exponentially weighted arrival rate, the
  larger of the two plus the rising trend extrapolated over the horizon, plus queued requests to drain.
- **Headroom** from observed burstiness: ``headroom`` standard deviations of the per-tick arrival rate (the sweep
  knob) — a bursty model gets more spare capacity than a smooth one of the same mean — and a memory of the
  model's recent peak rate (decaying over ``peak_tau_s``): bursts that arrive within a minute cannot be caught by
  a replica that needs a minute to start, so capacity for the last peak stays warm for a while.
- **Fast scale-up** at the first tick that shows demand above capacity (the live agent decides on the event);
  **scale-down with hysteresis**: the target is the highest need of the last ``scale_down_window_s``.
- **Scale to zero** only after ``idle_to_zero_s`` without traffic and only for models whose largest burst so far
  would cost at most ``zero_burst_requests`` requests during a cold start (peak rate × cold start): a burst that
  lands on a model at zero misses its SLO for a whole cold start. A model that has had no traffic yet is judged
  by the median peak of the models that have (on the Azure Functions trace, functions first called after hours of
  silence arrive as bursts like the others'). Back on the first request, cold start paid.
- Replicas may hold a fraction of a GPU: the simulator right-sizes each model's spec with
  :func:`policies.scaling.rightsize.choose_spec` before the run; this policy plans with that spec's profile.

Every decision carries its reason: the forecast (``metric``, requests/s), the planned capacity per replica
(``target``) and the replicas that needs (``raw``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from shadowscale.policies.scaling.base import Decisions, Reason, Signals, WindowMax, bounds, ceil_int
from shadowscale.policies.scaling.hpa import label_direction
from shadowscale.policies.scaling.llm_sizing import LlmSizing, LlmSizingState
from shadowscale.policies.types import FloatArray, IntArray, ServiceConfig

_HOLD = int(Reason.HOLD)
_NO_METRICS = int(Reason.NO_METRICS)
_STABILIZED = int(Reason.STABILIZED)
_SCALE_TO_ZERO = int(Reason.SCALE_TO_ZERO)
_ACTIVATE = int(Reason.ACTIVATE)


@dataclass(frozen=True, slots=True)
class ShadowscaleState:
    last_t: float | None
    last_arrivals: FloatArray
    last_busy: FloatArray
    last_inflight: FloatArray
    fast: FloatArray
    """Arrival rate, exponentially weighted over ``fast_tau_s`` (requests/s)."""
    slow: FloatArray
    """Arrival rate, exponentially weighted over ``slow_tau_s``."""
    var: FloatArray
    """Variance of the per-tick arrival rate around ``slow``."""
    correction: FloatArray
    """Observed capacity / profile capacity, in (0, 1]."""
    peak: FloatArray
    """Recent peak of the fast arrival rate, decaying over ``peak_tau_s``."""
    max_peak: FloatArray
    """Largest fast arrival rate seen."""
    last_active: FloatArray
    needs: WindowMax
    capacity: FloatArray
    max_batch: FloatArray
    slo: FloatArray
    horizon: FloatArray
    lo: IntArray
    hi: IntArray
    llm: LlmSizingState | None = None
    """LLM sizing in tokens (:mod:`policies.scaling.llm_sizing`); None without LLM models."""


@dataclass(frozen=True, slots=True)
class Shadowscale:
    headroom: float = 2.0
    """Standard deviations of the per-tick arrival rate kept as spare capacity (the sweep knob)."""
    target_load: float = 0.5
    """Share of a replica's capacity at the SLO that is planned to be used."""
    tick_interval_s: float = 2.0
    fast_tau_s: float = 10.0
    slow_tau_s: float = 120.0
    drain_s: float = 10.0
    """Queued requests are planned to be drained within this time."""
    scale_down_window_s: float = 180.0
    idle_to_zero_s: float = 6 * 3600.0
    zero_burst_requests: float = 1.0
    correction_tau_s: float = 300.0
    relax_tau_s: float = 1800.0
    min_correction: float = 0.1
    latency_target: float = 0.3
    """Mean time in system, as a share of the SLO, above which capacity is corrected down."""
    peak_tau_s: float = 6 * 3600.0
    llm_sizing: LlmSizing | None = field(default_factory=LlmSizing)
    """Sizes LLM models (continuous batching) in tokens from their serving model; None: as every other model."""

    @property
    def name(self) -> str:
        return "shadowscale"

    @property
    def tick_s(self) -> float:
        return self.tick_interval_s

    @property
    def hindsight(self) -> bool:
        return False

    def init(self, services: Sequence[ServiceConfig]) -> tuple[IntArray, ShadowscaleState]:
        lo, hi = bounds(services)
        n = len(services)
        capacity = np.array([s.profile.capacity_rps for s in services])
        max_batch = np.array([float(s.profile.max_batch) for s in services])
        horizon = np.array([s.cold_start_s for s in services])
        zero = np.zeros(n)
        initial = np.minimum(np.maximum(np.ones(n, np.int64), lo), hi)
        state = ShadowscaleState(
            last_t=None,
            last_arrivals=zero,
            last_busy=zero,
            last_inflight=zero,
            fast=zero,
            slow=zero,
            var=zero,
            correction=np.ones(n),
            peak=zero,
            max_peak=zero,
            last_active=zero,
            needs=WindowMax(),
            capacity=capacity,
            max_batch=max_batch,
            slo=np.array([s.profile.slo_s for s in services]),
            horizon=horizon,
            lo=lo,
            hi=hi,
            llm=self.llm_sizing.init(services) if self.llm_sizing and any(s.llm for s in services) else None,
        )
        return initial, state

    def decide(self, signals: Signals, state: ShadowscaleState) -> tuple[Decisions, ShadowscaleState]:
        n = signals.n_models
        now = signals.now
        current = signals.replicas
        if state.last_t is None or now <= state.last_t:
            decisions = Decisions(
                self.name,
                now,
                current.copy(),
                np.full(n, _NO_METRICS, np.int64),
                np.zeros(n),
                state.capacity.copy(),
                current.astype(np.float64),
            )
            return decisions, _replace_sample(state, now, signals)

        dt = now - state.last_t
        arrived = signals.arrivals - state.last_arrivals
        rate = arrived / dt
        a_fast = 1.0 - math.exp(-dt / self.fast_tau_s)
        a_slow = 1.0 - math.exp(-dt / self.slow_tau_s)
        fast = state.fast + a_fast * (rate - state.fast)
        slow = state.slow + a_slow * (rate - state.slow)
        # burstiness: the tick-to-tick error of the fast estimate (a level shift counts once, noise keeps counting)
        var = state.var + a_slow * ((rate - state.fast) ** 2 - state.var)

        # Online capacity from observed latency (Little's law: mean time in system = Δ concurrency-seconds /
        # Δ arrivals): while requests spend longer than ``latency_target`` of the SLO, a replica is worth less
        # than the profile says; the correction shrinks, and relaxes back towards the profile otherwise.
        d_inflight = signals.inflight_s - state.last_inflight
        sojourn = np.divide(d_inflight, arrived, out=np.zeros(n), where=arrived > 0)
        slow_down = sojourn > self.latency_target * state.slo
        ratio = np.divide(self.latency_target * state.slo, sojourn, out=np.ones(n), where=slow_down)
        a_corr = 1.0 - math.exp(-dt / self.correction_tau_s)
        a_relax = 1.0 - math.exp(-dt / self.relax_tau_s)
        correction = np.where(
            slow_down,
            state.correction * (1.0 - a_corr + a_corr * ratio),
            state.correction + a_relax * (1.0 - state.correction),
        )
        correction = np.clip(correction, self.min_correction, 1.0)

        # Forecast over the cold-start horizon, headroom from burstiness, queued work to drain.
        trend = np.maximum(fast - slow, 0.0) / (self.slow_tau_s - self.fast_tau_s)
        forecast = np.maximum(fast, slow) + trend * state.horizon
        peak = np.maximum(state.peak * math.exp(-dt / self.peak_tau_s), fast)
        max_peak = np.maximum(state.max_peak, fast)
        demand = forecast + self.headroom * np.sqrt(np.maximum(var, 0.0)) + signals.outstanding / self.drain_s
        demand = np.maximum(demand, peak)
        capacity = state.capacity if signals.capacity_rps is None else signals.capacity_rps
        per_replica = capacity * correction * self.target_load
        need = ceil_int(demand / per_replica)
        # --- LLM sizing hook (i12-llm): LLM models are sized in tokens by policies/scaling/llm_sizing.py ---
        llm_state = state.llm
        if llm_state is not None and self.llm_sizing is not None:
            llm_need, llm_demand, llm_per, sized, llm_state = self.llm_sizing.plan(
                signals, llm_state, dt, self.headroom, state.horizon
            )
            need = np.where(sized, llm_need, need)
            demand = np.where(sized, llm_demand, demand)
            per_replica = np.where(sized, llm_per, per_replica)
        # --- end LLM sizing hook ---

        active = (arrived > 0) | (signals.outstanding > 0)
        last_active = np.where(active, now, state.last_active)
        # A model that has shown no traffic yet has shown no burst either: it is judged by the bursts the other
        # models have shown (their median peak), not taken to be quiet.
        seen = max_peak > 0
        prior = float(np.median(max_peak[seen])) if seen.any() else 0.0
        burst = np.where(seen, max_peak, prior)
        awake = (now - last_active < self.idle_to_zero_s) | (burst * state.horizon > self.zero_burst_requests)
        floor = np.where(awake, np.maximum(state.lo, 1), state.lo)
        # asleep (idle long, small bursts): zero unless requests are arriving or waiting right now
        need = np.where(awake | active, np.maximum(need, floor), state.lo)
        need = np.minimum(need, state.hi)
        needs = state.needs.expire(now - self.scale_down_window_s).push(now, need)
        window_max = needs.max()
        assert window_max is not None
        # scale up at once; scale down only to the highest need of the window; to zero only when idle long
        out = np.where(awake, window_max, need)
        code = np.where(out > need, _STABILIZED, _HOLD)
        code = np.where(~awake & (current > 0) & (out == 0), _SCALE_TO_ZERO, code)
        code = np.where((current == 0) & (out > 0), _ACTIVATE, code)
        code = label_direction(code, out, current)
        decisions = Decisions(self.name, now, out.astype(np.int64), code, demand, per_replica, need.astype(np.float64))
        new_state = replace(
            state,
            last_t=now,
            last_arrivals=signals.arrivals,
            last_busy=signals.busy_s,
            last_inflight=signals.inflight_s,
            fast=fast,
            slow=slow,
            var=var,
            correction=correction,
            peak=peak,
            max_peak=max_peak,
            last_active=last_active,
            needs=needs,
            llm=llm_state,  # LLM sizing hook (i12-llm)
        )
        return decisions, new_state


def _replace_sample(state: ShadowscaleState, now: float, signals: Signals) -> ShadowscaleState:
    return replace(
        state, last_t=now, last_arrivals=signals.arrivals, last_busy=signals.busy_s, last_inflight=signals.inflight_s
    )
