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
- **Scale to zero** after ``idle_to_zero_s`` without traffic, only for models whose largest burst so far would
  cost at most ``zero_burst_requests`` requests during a cold start (the most requests an exponential window of one
  cold start has counted; ``burst_window``): a burst that lands on a model at zero misses its SLO for a whole cold
  start, a lone request costs one. A model that has had no traffic yet is judged by the median of the models that
  have (on the Azure Functions trace, functions first called after hours of silence arrive as bursts like the
  others'). Back on the first request, cold start paid.
- **Predicted idle gaps** (``predictive_zero``; Serverless in the Wild, ATC'20): per model a histogram of idle gaps
  (one-minute bins up to two hours, longer ones in an overflow bin), and the requests that arrive within a cold
  start of a gap's end (what a cold model misses). From them a plan: go to zero ``K`` after the last request and
  start a replica again at ``P`` (``prewarm``: a cold start and a margin ahead of the shortest gaps the plan bets
  against), chosen to maximise, per gap, the GPU-seconds saved minus ``miss_cost_gpu_s`` × the requests expected
  to find no ready replica (observed misses in the window plus ``miss_prior``, over the gaps seen: a thin or
  memoryless histogram plans nothing). A timer every N minutes sleeps through most of each period and is
  pre-warmed before each fire (reason ``PREWARM``). A **cold-start budget** bounds the bet: no new predicted zero
  while the requests that arrived at a model without a ready replica exceed ``cold_budget_share`` of the SLO's
  error budget (``1 − slo_target``) of all requests so far. Plans are remade as a histogram grows by
  ``replan_growth`` and at once after a gap that ended inside the zero window.
- Replicas may hold a fraction of a GPU: the simulator right-sizes each model's spec with
  :func:`policies.scaling.rightsize.choose_spec` before the run from what the warm-up showed; this policy plans
  with the running spec's capacity (``Signals.capacity_rps``).
- **Right-sizing that moves** (``move_specs``): once a model has been watched for ``spec_learn_s`` since its first
  request, the same rule picks its spec from what this policy has seen of it (the peak fast rate, the most requests
  one cold start has met) and asks for it (``Decisions.spec``; the simulator moves a model at zero at once and one
  at one replica by a surge rollout it charges). A model first called after the warm-up ran on the half-GPU burst
  floor for want of evidence; an hour of its traffic is evidence. The measures only grow, so a model moves down
  once and up when a larger burst shows.

Every decision carries its reason: the forecast (``metric``, requests/s), the planned capacity per replica
(``target``) and the replicas that needs (``raw``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from shadowscale.policies.scaling.base import Decisions, Reason, Signals, WindowMax, bounds, ceil_int
from shadowscale.policies.scaling.hpa import label_direction
from shadowscale.policies.scaling.llm_sizing import LlmSizing, LlmSizingState
from shadowscale.policies.scaling.rightsize import SpecTable
from shadowscale.policies.types import FloatArray, IntArray, ServiceConfig

BoolArray = npt.NDArray[np.bool_]

_HOLD = int(Reason.HOLD)
_NO_METRICS = int(Reason.NO_METRICS)
_STABILIZED = int(Reason.STABILIZED)
_SCALE_TO_ZERO = int(Reason.SCALE_TO_ZERO)
_ACTIVATE = int(Reason.ACTIVATE)
_PREWARM = int(Reason.PREWARM)
BURST_TOLERANCE = 0.01
"""Requests over a cold start below which the small-bursts rule does not count (the exponential window keeps a
trace ``exp(-gap / cold start)`` of every earlier request: two lone requests 10 minutes apart count 1.00005)."""


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
    gap_hist: FloatArray
    """Per model, counts of idle gaps (time between two ticks with traffic, at least one ``gap_bin_s``) in bins of
    ``gap_bin_s``; the last column counts the gaps longer than the histogram."""
    keep_alive: FloatArray
    """Planned idle time after which the model goes to zero (inf: no plan)."""
    prewarm_at: FloatArray
    """Planned idle time at which a replica is started again, a cold start ahead of the next predicted request."""
    burst: FloatArray
    """Requests that arrive within a cold start of the end of an idle gap (the misses a cold model pays), averaged."""
    burst_open: FloatArray
    """Arrival counter at the end of the last idle gap while its cold-start window is still counting; NaN otherwise."""
    burst_t: FloatArray
    planned_gaps: FloatArray
    """Gaps in the histogram when the model's plan was last made (re-planned as it grows by ``replan_growth``)."""
    cold_arrivals: float
    """Requests that arrived at a model with no ready replica (what the cold-start budget is spent on)."""
    all_arrivals: float
    fraction: FloatArray
    capacity: FloatArray
    max_batch: FloatArray
    slo: FloatArray
    horizon: FloatArray
    lo: IntArray
    hi: IntArray
    window: FloatArray
    """Requests over the last cold start (exponentially weighted, time constant = the cold start)."""
    max_window: FloatArray
    """Largest ``window`` seen: the most requests a cold start has met."""
    llm: LlmSizingState | None = None
    """LLM sizing in tokens (:mod:`policies.scaling.llm_sizing`); None without LLM models."""
    specs: SpecTable | None = None
    """The services' alternative specs (right-sizing that moves); None when no model has more than one."""
    first_seen: FloatArray | None = None
    """Per model, when its first request was seen (inf: not yet); kept with ``specs``."""


@dataclass(frozen=True, slots=True)
class _ZeroPlan:
    gap_hist: FloatArray
    keep_alive: FloatArray
    prewarm_at: FloatArray
    burst: FloatArray
    burst_open: FloatArray
    burst_t: FloatArray
    planned_gaps: FloatArray
    cold_arrivals: float
    all_arrivals: float


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
    idle_to_zero_s: float = 12 * 3600.0
    """Idle time after which a model whose bursts are small goes to zero. 12 h: at 6 h the lone-request models that
    sleep and later burst put the Azure Functions day at 99.903 / 99.890 / 99.887 % on arrival spreads (seeds)
    0 / 1 / 2; at 12 h seeds 0–3 give 99.914–99.927 % (see docs/results.md)."""
    zero_burst_requests: float = 1.0
    burst_window: bool = True
    """Lever: the small-bursts rule counts a model's requests over one cold start (an exponential window of the
    cold start's length, at its peak); off: its peak 10-second rate × the cold start, which counts one lone request
    as cold start / ``fast_tau_s`` (6 on a 60 s cold start) and so kept nearly every model that was ever called
    warm all day."""
    correction_tau_s: float = 300.0
    relax_tau_s: float = 1800.0
    min_correction: float = 0.1
    latency_target: float = 0.3
    """Mean time in system, as a share of the SLO, above which capacity is corrected down."""
    peak_tau_s: float = 6 * 3600.0
    predictive_zero: bool = True
    """Lever: scale to zero inside the idle gaps the model's gap histogram predicts, and pre-warm a cold start ahead
    of the predicted next request (Serverless in the Wild, ATC'20); off: only the ``idle_to_zero_s`` rule."""
    prewarm: bool = True
    """Lever (within ``predictive_zero``): start a replica a cold start ahead of the predicted end of a gap; off: a
    model at zero waits for its next request (every gap past the keep-alive is a cold start)."""
    gap_bin_s: float = 60.0
    gap_bins: int = 120
    """Histogram bins of ``gap_bin_s`` (the last one collects longer gaps): two hours at one minute."""
    min_gaps: int = 4
    """Gaps a model must have shown, at least as long as the keep-alive, before its histogram plans anything."""
    miss_cost_gpu_s: float = 20000.0
    """What one request missed on a cold model is worth in GPU-seconds: a plan goes to zero only when the GPU time it
    expects to save per gap exceeds this × the requests it expects to miss per gap."""
    miss_prior: float = 0.5
    """Misses added to those a plan's window has seen in the histogram (an unseen gap may still end in it)."""
    prewarm_margin_s: float = 30.0
    """A pre-warmed replica is planned to be ready this long before the earliest gap the plan bets against."""
    cold_budget_share: float = 0.35
    """Share of the SLO's error budget that cold starts may spend: no new predicted zero while the requests that
    arrived at a model without a ready replica exceed ``cold_budget_share × (1 − slo_target)`` of all requests."""
    slo_target: float = 0.999
    replan_growth: float = 0.1
    """A model's plan is made again once its histogram holds this share more gaps than when it was last made, and
    at once after a gap that ended inside its zero window (a plan per gap would cost a histogram search per request
    on busy models)."""
    llm_sizing: LlmSizing | None = field(default_factory=LlmSizing)
    """Sizes LLM models (continuous batching) in tokens from their serving model; None: as every other model."""
    move_specs: bool = True
    """Lever: right-sizing that moves. A model watched ``spec_learn_s`` since its first request asks for the spec
    the right-sizing rule picks from what was seen of it (``Decisions.spec``); off: the spec chosen before the run
    stays."""
    spec_learn_s: float = 3600.0
    """Traffic a model must have shown (time since its first request) before its spec moves: the simulator's
    right-sizing learns from a one-hour warm-up too."""

    @property
    def name(self) -> str:
        return "shadowscale"

    @property
    def tick_s(self) -> float:
        return self.tick_interval_s

    @property
    def hindsight(self) -> bool:
        return False

    def rebase(self, state: ShadowscaleState) -> ShadowscaleState:
        """``state`` with its counter snapshots at zero, for a new source of cumulative counters that starts from
        zero: an agent that resumes from the state the simulator learnt over earlier hours (``make demo``). What
        was learnt (rates, peaks, gap histograms, plans, times) stays; an open burst window keeps the requests it has
        counted. Times are kept as they are: the new clock must continue the old one."""
        z = np.zeros_like(state.last_arrivals)
        llm = state.llm
        if llm is not None and self.llm_sizing is not None:
            llm = self.llm_sizing.rebase(llm)
        return replace(
            state,
            last_arrivals=z,
            last_busy=z,
            last_inflight=z,
            burst_open=state.burst_open - state.last_arrivals,
            llm=llm,
        )

    def init(self, services: Sequence[ServiceConfig]) -> tuple[IntArray, ShadowscaleState]:
        lo, hi = bounds(services)
        n = len(services)
        capacity = np.array([s.profile.capacity_rps for s in services])
        max_batch = np.array([float(s.profile.max_batch) for s in services])
        horizon = np.array([s.cold_start_s for s in services])
        zero = np.zeros(n)
        initial = np.minimum(np.maximum(np.ones(n, np.int64), lo), hi)
        if self.gap_bins < 2 or self.gap_bin_s <= 0.0 or self.min_gaps < 1:
            raise ValueError(
                f"shadowscale: gap_bins must be >= 2, gap_bin_s > 0 and min_gaps >= 1; got {self.gap_bins}, "
                f"{self.gap_bin_s}, {self.min_gaps}"
            )
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
            gap_hist=np.zeros((n, self.gap_bins + 1)),
            keep_alive=np.full(n, math.inf),
            prewarm_at=np.full(n, math.inf),
            burst=np.ones(n),
            burst_open=np.full(n, math.nan),
            burst_t=zero,
            planned_gaps=zero,
            cold_arrivals=0.0,
            all_arrivals=0.0,
            fraction=np.array([s.profile.gpu_fraction for s in services]),
            capacity=capacity,
            max_batch=max_batch,
            slo=np.array([s.profile.slo_s for s in services]),
            horizon=horizon,
            lo=lo,
            hi=hi,
            window=zero,
            max_window=zero,
            llm=self.llm_sizing.init(services) if self.llm_sizing and any(s.llm for s in services) else None,
        )
        table = SpecTable.of(services) if self.move_specs else None
        if table is not None:
            state = replace(state, specs=table, first_seen=np.full(n, math.inf))
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
                signals, llm_state, dt, self.headroom, state.horizon, self.slo_target
            )
            need = np.where(sized, llm_need, need)
            demand = np.where(sized, llm_demand, demand)
            per_replica = np.where(sized, llm_per, per_replica)
        # --- end LLM sizing hook ---

        active = (arrived > 0) | (signals.outstanding > 0)
        last_active = np.where(active, now, state.last_active)
        zero_plan = self._learn_gaps(state, now, arrived, active, signals)
        # Requests a cold start would meet: arrivals counted over an exponential window of the cold start's length,
        # at their peak. A model that has shown no traffic yet has shown no burst either: it is judged by the bursts
        # the other models have shown (their median), not taken to be quiet.
        window = state.window * np.exp(-dt / np.maximum(state.horizon, dt)) + arrived
        max_window = np.maximum(state.max_window, window)
        if self.burst_window:
            seen, peaks = max_window > 0, max_window
        else:  # issue 12's first measure: the peak 10-second rate over a cold start
            seen, peaks = max_peak > 0, max_peak * state.horizon
        prior = float(np.median(peaks[seen])) if seen.any() else 0.0
        at_wake = np.where(seen, peaks, prior)
        awake = (now - last_active < self.idle_to_zero_s) | (at_wake > self.zero_burst_requests + BURST_TOLERANCE)
        floor = np.where(awake, np.maximum(state.lo, 1), state.lo)
        # asleep (idle long, small bursts): zero unless requests are arriving or waiting right now
        need = np.where(awake | active, np.maximum(need, floor), state.lo)
        need = np.minimum(need, state.hi)
        needs = state.needs.expire(now - self.scale_down_window_s).push(now, need)
        window_max = needs.max()
        assert window_max is not None
        # scale up at once; scale down only to the highest need of the window; to zero only when idle long
        out = np.where(awake, window_max, need)
        # predicted idle gap: zero from the keep-alive until the pre-warm point (never below min replicas)
        idle = now - last_active
        budget_left = zero_plan.cold_arrivals < self.cold_budget_share * (1.0 - self.slo_target) * max(
            zero_plan.all_arrivals, 1.0
        )
        gap_zero = (~active) & (idle >= zero_plan.keep_alive) & (idle < zero_plan.prewarm_at) & (state.lo == 0)
        gap_zero &= budget_left | (current == 0)
        prewarm = awake & (~active) & (idle >= zero_plan.prewarm_at) & (current == 0) & (out > 0)
        out = np.where(gap_zero, 0, out)
        code = np.where(out > need, _STABILIZED, _HOLD)
        code = np.where((~awake | gap_zero) & (current > 0) & (out == 0), _SCALE_TO_ZERO, code)
        code = np.where((current == 0) & (out > 0), _ACTIVATE, code)
        code = np.where(prewarm, _PREWARM, code)
        code = label_direction(code, out, current)
        spec = None
        first_seen = state.first_seen
        if state.specs is not None and first_seen is not None:
            first_seen = np.where((arrived > 0) & np.isinf(first_seen), now, first_seen)
            spec = state.specs.choose(max_peak, max_window, state.horizon)
            spec = np.where(now - first_seen >= self.spec_learn_s, spec, -1)
        decisions = Decisions(
            self.name, now, out.astype(np.int64), code, demand, per_replica, need.astype(np.float64), spec
        )
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
            gap_hist=zero_plan.gap_hist,
            keep_alive=zero_plan.keep_alive,
            prewarm_at=zero_plan.prewarm_at,
            burst=zero_plan.burst,
            burst_open=zero_plan.burst_open,
            burst_t=zero_plan.burst_t,
            planned_gaps=zero_plan.planned_gaps,
            cold_arrivals=zero_plan.cold_arrivals,
            all_arrivals=zero_plan.all_arrivals,
            llm=llm_state,  # LLM sizing hook (i12-llm)
            window=window,
            max_window=max_window,
            first_seen=first_seen,
        )
        return decisions, new_state

    def _learn_gaps(
        self, state: ShadowscaleState, now: float, arrived: FloatArray, active: BoolArray, signals: Signals
    ) -> _ZeroPlan:
        """Record the idle gaps that ended at this tick, the requests each gap's end brought within a cold start,
        the cold-start budget's spending, and re-plan the models whose histogram has grown enough."""
        cold_arrivals = state.cold_arrivals + float(arrived[signals.ready == 0].sum())
        all_arrivals = state.all_arrivals + float(arrived.sum())
        # a burst window closes one cold start after the gap ended: the requests it saw are what a cold model misses
        closing = ~np.isnan(state.burst_open) & (now - state.burst_t >= state.horizon)
        burst = np.where(closing, state.burst + 0.3 * (signals.arrivals - state.burst_open - state.burst), state.burst)
        burst_open = np.where(closing, np.nan, state.burst_open)
        gap = now - state.last_active
        # a gap is known only between two ticks with traffic (the time before the first request is not a gap)
        ended = active & (state.max_peak > 0) & (gap >= self.gap_bin_s)
        if not self.predictive_zero or not ended.any():
            return _ZeroPlan(
                state.gap_hist,
                state.keep_alive,
                state.prewarm_at,
                burst,
                burst_open,
                state.burst_t,
                state.planned_gaps,
                cold_arrivals,
                all_arrivals,
            )
        rows = np.flatnonzero(ended)
        hist = state.gap_hist.copy()
        b = np.minimum((gap[rows] // self.gap_bin_s).astype(np.int64), self.gap_bins)
        hist[rows, b] += 1.0
        burst_open = burst_open.copy()
        burst_open[rows] = state.last_arrivals[rows]
        burst_t = state.burst_t.copy()
        burst_t[rows] = now
        keep_alive = state.keep_alive
        prewarm_at = state.prewarm_at
        planned = state.planned_gaps
        count = hist[rows].sum(axis=1)
        g = gap[rows]
        # a gap that ended inside the model's zero window (a request that found it cold) re-plans at once
        missed = (g >= keep_alive[rows]) & (g < prewarm_at[rows] + state.horizon[rows])
        grown = count >= (1.0 + self.replan_growth) * planned[rows] + 1.0
        due = rows[(count >= self.min_gaps) & (grown | missed)]
        if due.size:
            keep_alive, prewarm_at, planned = keep_alive.copy(), prewarm_at.copy(), planned.copy()
            for i in due:
                keep_alive[i], prewarm_at[i] = self._plan(
                    hist[i], float(state.fraction[i]), float(burst[i]), float(state.horizon[i])
                )
                planned[i] = hist[i].sum()
        return _ZeroPlan(hist, keep_alive, prewarm_at, burst, burst_open, burst_t, planned, cold_arrivals, all_arrivals)

    def _plan(self, h: FloatArray, fraction: float, burst: float, cold_start_s: float) -> tuple[float, float]:
        """(keep-alive, pre-warm point) that maximise, per idle gap, the GPU-seconds saved at zero minus
        ``miss_cost_gpu_s`` × the requests expected to miss; (inf, inf) when no plan gains or the histogram is thin.

        Zero from ``K = k`` bins after the last request until ``P = e`` bins − cold start − margin: a gap that ends
        in ``[K, e·bin)`` finds no ready replica (miss); a gap ``G ≥ K`` saves ``min(G, P) − K`` seconds of the
        replica. Probabilities are over the gaps at least ``K`` long, with ``miss_prior`` misses added to the ones
        observed (an unseen gap in the window is possible: a thin histogram plans cautiously).
        """
        nb = self.gap_bins
        w = self.gap_bin_s
        centre = (np.arange(nb + 1) + 0.5) * w
        centre[nb] = nb * w  # longer than the histogram: at least this long
        c = np.concatenate(([0.0], np.cumsum(h)))  # c[j] = gaps in bins < j
        hc = np.concatenate(([0.0], np.cumsum(h * centre)))
        total = c[-1]
        if not self.prewarm:
            # zero from K until the next request: every gap at least K long pays a cold start
            kk = np.arange(1, nb + 1)
            n_kk = total - c[kk]
            with np.errstate(divide="ignore", invalid="ignore"):
                gain = fraction * (hc[-1] - hc[kk] - kk * w * n_kk) / n_kk
                gain -= self.miss_cost_gpu_s * burst * (n_kk + self.miss_prior) / (n_kk + 1.0)
            gain = np.where(n_kk >= self.min_gaps, gain, -math.inf)
            top = int(np.argmax(gain))
            return (float(kk[top] * w), math.inf) if gain[top] > 0.0 else (math.inf, math.inf)
        k = np.arange(1, nb)[:, None]  # keep-alive bins
        e = np.arange(2, nb + 1)[None, :]  # bins the plan bets no gap ends before
        keep = k * w
        pre = e * w - cold_start_s - self.prewarm_margin_s
        n_k = total - c[k]
        # bins whose whole range lies below the pre-warm point count their centre; the rest count P
        j = np.clip(np.floor(pre / w).astype(np.int64), 0, nb + 1)
        j = np.maximum(j, k)
        saved = hc[j] - hc[k] + pre * (total - c[j]) - keep * n_k
        misses = c[e] - c[k]
        with np.errstate(divide="ignore", invalid="ignore"):
            value = fraction * saved / n_k - self.miss_cost_gpu_s * burst * (misses + self.miss_prior) / (n_k + 1.0)
        ok = (pre >= keep + w) & (n_k >= self.min_gaps) & (e > k)
        value = np.where(ok, value, -math.inf)
        best = int(np.argmax(value))
        if not value.flat[best] > 0.0:
            return math.inf, math.inf
        kb, eb = np.unravel_index(best, value.shape)
        return float(keep[kb, 0]), float(pre[0, eb])


def _replace_sample(state: ShadowscaleState, now: float, signals: Signals) -> ShadowscaleState:
    return replace(
        state, last_t=now, last_arrivals=signals.arrivals, last_busy=signals.busy_s, last_inflight=signals.inflight_s
    )
