"""LLM replica sizing in tokens, from the serving model (shadowscale's LLM lever, issue 12).

A continuous-batching replica is not a server of "requests/s of the unit request": what it can take depends on the
prompt and answer lengths of the traffic it gets. This module sizes each LLM model's replicas the way Dynamo's SLA
planner does (load predictor × performance profile × correction), with the profile being the fitted iteration
model of :mod:`policies.llm`:

- **Work per request** (replica-seconds) from the token mix: the prompt's prefill (``b·p + c·p² + e`` per chunk,
  plus the fixed cost of the steps its chunks ride on, ``(a − d0)`` each) and its share of the decode steps it
  takes part in (``(o − 1)·(d1 + d2·(p + o/2))``). Mean prompt tokens per arrival come from the
  ``prompt_tokens`` counter, mean answer tokens per finished request from ``output_tokens``/``finished``.
- **Queueing model** of one replica at ``x`` requests/s: utilization ``ρ = x·κ·w`` (``κ`` the correction); a
  decode step then comes every ``TPOT = d0 / (1 − ρ)`` seconds (the step's fixed cost stretched by the work that
  shares the replica), the first token after ``prefill / (1 − ρ)``, and Little's law gives the requests a
  replica holds, ``R = x·(prefill + (o − 1)·d0) / (1 − ρ)``. The largest ``x`` that keeps the mean TPOT and
  TTFT within ``tpot_share`` / ``ttft_share`` of their objectives and ``R`` within ``kv_share`` of the KV cache
  (every running request holds its prompt + answer) and of ``max_num_seqs`` is the replica's capacity.
- **Quantile forecast** of arrivals: the larger of a fast and a slow average (plus the rising trend over the cold
  start), times the tracked ``quantile`` of how far the rate ran above the forecast one cold start earlier — or,
  where that asks for less, the average plus ``headroom_share × z`` (``z`` shadowscale's ``headroom``) standard
  deviations of the arrival rate over ``window_s`` (the per-tick variance averaged down to the window: Poisson
  noise shrinks with the window, bursts do not). Requests
  queued beyond what the ready replicas can hold are drained within ``drain_s``.
- **Correction** ``κ`` (multiplier of the work per request), learned from the observed concurrency: with ``λ``
  arriving at ``r`` ready replicas the model predicts ``L = λ·T0 / (1 − κ·w·λ/r)`` outstanding requests; the
  observed ``L`` solves for the ``κ`` that explains it. ``κ`` moves towards that value (in log space, over
  ``correction_tau_s``) **both ways**, and only while every replica is ready and nothing queues beyond what they
  hold (a backlog measures the shortage, not the replica). Shadowscale's request-count correction compared the
  mean time in system with the unit request's SLO, so on heavy-tailed traffic the long requests' own service time
  read as slowness at any replica count and it only ever shrank; here the requests' own work is in the
  prediction, and ``κ`` stays near 1 when the model is right.
- **Error budget** (needs ``Signals.slo_missed``): the margins above (the TPOT and TTFT shares, the forecast
  quantile) are what a model needs when nothing is known about how much of its error budget it spends. A model
  that serves requests without missing earns *credit* (``relax_per_budget`` per budget's worth of requests: 1,000
  at 99.9 %) and its margins relax with it, up to level 1 (shares + 0.1, quantile 0.95); every miss while it was
  relaxed (or within ``attribution_s`` of it) costs ``tighten_per_miss``, and a debt keeps the default margins
  until it is earned back. Misses at the default margins (a start from one replica, a burst beyond any
  forecast) are not charged: they are not the relaxation's doing.
- **Burst hold** (needs ``Signals.slo_missed``): a burst shorter than a cold start is over before the replicas it
  called up are ready, so reacting to it buys replicas that serve nothing and the burst misses anyway. A model
  whose misses come while fewer replicas are ready than its own peak need of the last ``hold_window_s`` (the
  need without the backlog's drain, and at least what the fast average needs) — more than ``hold_trigger`` × its
  error budget of the requests it served, both counted over ``hold_tau_s`` — *holds* that peak: its replicas
  stay at the window's peak need, so the next burst finds them warm, and its forecast trusts a burst only as far
  as bursts have lasted: the excursion above the slow average is scaled by its learned **persistence** (the
  regression of what remained one cold start later on the excursion then, over ``persistence_tau_s``). Only a
  model whose bursts persist less than ``hold_persistence`` holds: one whose bursts last (a start from one replica
  under a steady load) is met by reacting to them.

Pure: numpy only; time comes in with the signals. Without token counters (a pipeline that does not count
tokens) :meth:`LlmSizing.plan` leaves every model to the caller's own sizing (``use`` all False).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from shadowscale.policies.llm import (
    OUTPUT_TOKEN_BUCKETS,
    TPOT_SLO_FACTOR,
    TPOT_SLO_MIN_S,
    TTFT_SLO_FACTOR,
    TTFT_SLO_MIN_S,
)
from shadowscale.policies.scaling.base import Signals, WindowMax, ceil_int
from shadowscale.policies.types import FloatArray, IntArray, ServiceConfig

BoolArray = npt.NDArray[np.bool_]

UNIT_PROMPT = 256.0
UNIT_OUTPUT = 256.0
"""Token mix assumed before any request has been seen (the unit request of :func:`LlmServing.unit_batch_latency`)."""


@dataclass(frozen=True, slots=True)
class LlmSizingState:
    is_llm: BoolArray
    coef: FloatArray
    """Per model (rows): a, b, c, e, d0, d1, d2, KV tokens, max_num_seqs, step token budget (0: unchunked)."""
    last_prompt: FloatArray
    last_output: FloatArray
    last_finished: FloatArray
    last_arrivals: FloatArray
    last_inflight: FloatArray
    prompt_mean: FloatArray
    output_mean: FloatArray
    mix: FloatArray
    """Exponentially weighted sums over ``mix_tau_s`` (rows: prompt tokens, arrivals, output tokens, finished):
    the token means are their ratios, each request weighing the same."""
    fast: FloatArray
    slow: FloatArray
    var: FloatArray
    kappa: FloatArray
    """Correction: observed work per request / modelled work per request."""
    rate_avg: FloatArray
    """Arrival rate and concurrency averaged over ``correction_tau_s`` of steady ticks (the correction's data)."""
    conc_avg: FloatArray
    seen: BoolArray
    """Whether a request of the model has arrived (the token means are still the prior until then)."""
    hist_t: FloatArray
    """The forecasts of the last ``max horizon`` (times, oldest first; -inf where empty) ..."""
    hist_mean: FloatArray
    """... and the mean arrival rate each forecast for one cold start later (rows: ticks)."""
    log_q: FloatArray
    """Tracked ``quantile`` of log(arrival rate observed / rate forecast one cold start earlier)."""
    last_by_output: FloatArray
    by_output: FloatArray
    """Finished requests by output bucket (cumulative), exponentially weighted over ``mix_tau_s``."""
    last_missed: FloatArray
    credit: FloatArray
    """Error-budget credit: up by ``relax_per_budget`` for every budget's worth of requests served (``1 / (1 −
    slo_target)`` of them), down by ``tighten_per_miss`` for every miss the relaxation may have caused (one while
    the model was relaxed, or within ``attribution_s`` of it); at most ``max_level``, unbounded below (a debt)."""
    level: FloatArray
    """Margin level: the credit within ``[min_level, max_level]`` (0: the default margins, 1: relaxed)."""
    relaxed_t: FloatArray
    """When the model was last relaxed (level at least ``attribute_level``; -inf: never)."""
    peak_needs: WindowMax
    """Replicas needed at each tick of the last ``hold_window_s``, without the backlog's drain (their maximum is
    held)."""
    held: FloatArray
    """Misses while fewer replicas were ready than the window's peak need, and requests served (rows), each decayed
    over ``hold_tau_s``."""
    hold: BoolArray
    """Whether the model holds its window's peak need (burst hold)."""
    hist_excess: FloatArray
    """Per forecast tick (rows, as ``hist_t``): the fast average's excess over the slow one ..."""
    hist_slow: FloatArray
    """... and the slow average then."""
    persistence: FloatArray
    """E[x·y] and E[x²] (rows) over ``persistence_tau_s``: x a burst's excess over the slow average, y what of it
    remained one cold start later (the fast average then minus the slow average at the burst)."""


@dataclass(frozen=True, slots=True)
class LlmSizing:
    tpot_share: float = 0.6
    """Mean time per output token planned as this share of the TPOT objective."""
    ttft_share: float = 0.5
    """Mean time to first token planned as this share of the TTFT objective."""
    kv_share: float = 0.8
    """Share of the KV cache (and of ``max_num_seqs``) the running requests are planned to hold."""
    fast_tau_s: float = 10.0
    slow_tau_s: float = 120.0
    mix_tau_s: float = 300.0
    """Averaging time of the token mix (mean prompt and answer tokens)."""
    window_s: float = 10.0
    """Time over which a burst must be absorbed (the arrival-rate quantile's averaging window)."""
    drain_s: float = 10.0
    correction_tau_s: float = 120.0
    min_kappa: float = 0.5
    max_kappa: float = 2.0
    short_output: float = 0.25
    """The short answer the TPOT guard protects, as a share of the mean answer (about the 22nd percentile of an
    exponential length distribution)."""
    short_z: float = 4.0
    """Standard deviations of the Poisson count of prompts landing during a short answer's decode."""
    trend_weight: float = 0.0
    """Share of the rising trend extrapolated over the cold start (0: the quantile forecast stands for it;
    extrapolating a burst's rise over a 4-minute cold start planned 8-GPU replicas for bursts long gone)."""
    quantile: float = 0.99
    """Quantile of the forecast error over the cold-start horizon that the replicas are planned for."""
    quantile_step: float = 0.02
    """Step of the stochastic quantile tracker (log units); an error above the quantile raises it by
    ``step × quantile``, one below lowers it by ``step × (1 − quantile)``."""
    isolation_miss: float = 1e-3
    """Share of requests allowed to miss because they arrive when no replica is idle and are short enough to be
    hurt by one prompt's chunks (the isolation rule; a 99.9 % objective's budget: the estimate is conservative,
    as a newcomer with a short prompt hurts less than the mean one it is costed at)."""
    error_budget: bool = True
    """The error-budget lever: margins relax with the credit each model earns by serving requests within the SLO
    (needs ``Signals.slo_missed``; without it the margins stay at their defaults)."""
    relax_per_budget: float = 0.2
    """Credit gained per budget's worth of requests served (1,000 requests at a 99.9 % objective)."""
    tighten_per_miss: float = 1.0
    """Credit lost per request that missed while the model was relaxed or within ``attribution_s`` of it. A model
    is relaxed only while the misses charged so far stay below ``relax_per_budget / tighten_per_miss`` (a fifth)
    of the error budget of the requests it served, plus ``max_level / tighten_per_miss``: over any period its
    charged misses are at most that plus what one event costs before the counts show it, whatever the traffic's
    shape, and a costly event leaves a debt that keeps the default margins until it is earned back."""
    attribution_s: float = 600.0
    """A miss this long after the model was last relaxed is still charged to the relaxation (the scale-down window,
    a cold start and a request's own latency)."""
    attribute_level: float = 0.2
    """Level from which a model counts as relaxed (below it the margins differ by less than 0.02 of a share)."""
    min_level: float = 0.0
    max_level: float = 1.0
    """Bounds of the margin level (the credit clipped to them). ``min_level`` below 0 would let a debt tighten
    the margins beyond the defaults; measured with an earlier burn-ratio level, that kept azure-llm-2023-conv at its
    tightest after the misses of its start from one replica (docs/results.md), so the default is 0."""
    level_quantile_factor: float = 5.0
    """``1 − quantile`` is multiplied by this per level (0.99 → 0.95 at level 1, 0.998 at −1)."""
    level_share_step: float = 0.1
    """TPOT and TTFT shares move by this per level (0.6 / 0.5 → 0.7 / 0.6 at level 1, 0.5 / 0.4 at −1)."""
    headroom_share: float = 0.5
    """Share of shadowscale's ``headroom`` (standard deviations of the rate over ``window_s``) the forecast adds
    where the quantile asks for less: the quantile already tracks the forecast's error over a cold start, Poisson
    noise included, so the full headroom counts the noise twice (azure-llm-2023-conv: 2.143 → 2.110 GPU-hours at
    the same 99.974 %; 0 puts the LLM fleet at 99.899 %)."""
    burst_hold: bool = True
    """Lever: burst hold (the module docstring; needs ``Signals.slo_missed``)."""
    hold_window_s: float = 600.0
    """How long a model that holds keeps its peak need (bursts of the code trace recur within minutes)."""
    hold_tau_s: float = 1800.0
    """Time constant of the counts that decide whether a model holds."""
    hold_trigger: float = 1.0
    """A model holds while its misses below the peak need exceed this many error budgets of the requests served."""
    persistence_tau_s: float = 1800.0
    """Time constant of the persistence regression."""
    hold_persistence: float = 0.8
    """Only a model whose bursts persist less than this over a cold start holds: one whose bursts last (a start
    from one replica under a steady load, persistence near 1) is met by reacting (mooncake: 100 % at 37.70 →
    99.991 % at 35.36 GPU-hours; azure-llm-2023-conv at twice its speed: 2.132 → 1.925)."""
    informative_rho: float = 0.5
    """The correction learns only while the modelled utilization is at least this: at a light load the observed
    concurrency is mostly the requests' own service time, and a bias there (heavy-tailed prompts: ``E[p²] >
    E[p]²``) would read as extra work per request — more replicas, a lighter load, a larger bias: a ratchet."""

    def rebase(self, st: LlmSizingState) -> LlmSizingState:
        """``st`` with its counter snapshots at zero: for a source of counters that starts from zero (an agent that
        resumes from a state the simulator learnt; see :meth:`Shadowscale.rebase`)."""
        z = np.zeros_like(st.last_arrivals)
        return replace(
            st,
            last_prompt=z,
            last_output=z,
            last_finished=z,
            last_arrivals=z,
            last_inflight=z,
            last_by_output=np.zeros_like(st.last_by_output),
            last_missed=z,
        )

    def init(self, services: Sequence[ServiceConfig]) -> LlmSizingState:
        n = len(services)
        coef = np.zeros((n, 10))
        is_llm = np.zeros(n, dtype=np.bool_)
        for i, s in enumerate(services):
            llm = s.llm
            if llm is None:
                coef[i] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0)  # unused; keeps the arithmetic finite
                continue
            is_llm[i] = True
            a, b, c, e = llm.iteration.prefill
            d0, d1, d2 = llm.iteration.decode
            budget = float(llm.max_batched_tokens) if llm.chunked_prefill else 0.0
            coef[i] = (a, b, c, e, d0, d1, d2, float(llm.kv_tokens), float(llm.max_num_seqs), budget)
        z = np.zeros(n)
        return LlmSizingState(
            is_llm=is_llm,
            coef=coef,
            last_prompt=z,
            last_output=z,
            last_finished=z,
            last_arrivals=z,
            last_inflight=z,
            prompt_mean=np.full(n, UNIT_PROMPT),
            output_mean=np.full(n, UNIT_OUTPUT),
            mix=np.zeros((4, n)),
            fast=z,
            slow=z,
            var=z,
            kappa=np.ones(n),
            rate_avg=z,
            conc_avg=z,
            seen=np.zeros(n, dtype=np.bool_),
            hist_t=np.full(1, -np.inf),
            hist_mean=np.zeros((1, n)),
            log_q=z,
            last_by_output=np.zeros((n, len(OUTPUT_TOKEN_BUCKETS))),
            by_output=np.zeros((n, len(OUTPUT_TOKEN_BUCKETS))),
            last_missed=z,
            credit=z,
            level=z,
            relaxed_t=np.full(n, -np.inf),
            peak_needs=WindowMax(),
            held=np.zeros((2, n)),
            hold=np.zeros(n, dtype=np.bool_),
            hist_excess=np.zeros((1, n)),
            hist_slow=np.zeros((1, n)),
            persistence=np.zeros((2, n)),
        )

    def model(self, st: LlmSizingState) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
        """(work per request w, ρ_max, T0 = prefill alone + (o − 1)·d0, R_max, π_max) at the current token mix
        (``π_max``: the arrivals per engine step a replica may take, the short-answer guard)."""
        a, b, c, e, d0, d1, d2, kv, seqs, budget = st.coef.T
        p = st.prompt_mean
        o = np.maximum(st.output_mean, 1.0)
        chunked = budget > 0
        steps = np.where(chunked, np.maximum(1.0, p / np.maximum(budget, 1.0)), 1.0)
        prefill_alone = a + b * p + c * p * p + e
        # a prompt served alone: its chunks each pay the step's fixed costs; each of its tokens one decode step
        own_prefill = np.where(chunked, (a + e) * np.ceil(steps), a + e) + b * p + c * p * p
        # unchunked: the prefill step holds the replica; chunked: its chunks ride on steps that run anyway, each
        # chunk costing e and each step (a − d0) more than a plain decode step — a step shared by the chunks of
        # several prompts at a load that matters, so a prompt pays (a − d0) for the share of a step it fills
        w_pre = np.where(
            chunked,
            b * p + c * p * p + e * np.ceil(steps) + np.maximum(a - d0, 0.0) * p / np.maximum(budget, 1.0),
            prefill_alone,
        )
        w = w_pre + (o - 1.0) * (d1 + d2 * (p + o / 2.0))
        tpot_slo = np.maximum(TPOT_SLO_MIN_S, TPOT_SLO_FACTOR * (d0 + d1 + d2 * p))
        ttft_slo = np.maximum(TTFT_SLO_MIN_S, TTFT_SLO_FACTOR * prefill_alone)
        tpot_share, ttft_share = self.shares(st.level)
        rho_max = np.minimum(1.0 - d0 / (tpot_share * tpot_slo), 1.0 - prefill_alone / (ttft_share * ttft_slo))
        rho_max = np.clip(rho_max, 0.05, 0.95)
        t0 = own_prefill + (o - 1.0) * d0
        r_max = self.kv_share * np.minimum(kv / (p + o), seqs)
        # Short answers: a prompt that lands on a replica while a request decodes turns ``m`` of its steps into
        # mixed steps, each ``delta`` longer; a request of ``n + 1`` tokens misses its TPOT once more than
        # ``k = slack·n / (delta·m)`` prompts land during its ``n`` steps. Arrivals per step ``π``: the count is
        # about Poisson(n·π); keep ``n·π + z·sqrt(n·π) <= k`` for a short answer (``short_output`` of the mean).
        chunk = np.where(chunked, np.minimum(p, np.maximum(budget, 1.0)), p)
        m = np.where(chunked, np.ceil(steps), 1.0)
        delta = np.maximum(a - d0, 0.0) + b * chunk + c * chunk * chunk + e
        n = np.maximum(1.0, self.short_output * o - 1.0)
        slack = np.maximum(tpot_slo - (d0 + d1 + d2 * p), 1e-6)
        k = slack * n / np.maximum(delta * m, 1e-9)
        z = self.short_z
        u = (-z + np.sqrt(z * z + 4.0 * k)) / 2.0
        pi_max = np.maximum(u * u / n, 1e-3)
        return w, rho_max, t0, np.maximum(r_max, 1.0), pi_max

    def shares(self, level: FloatArray) -> tuple[FloatArray, FloatArray]:
        """(TPOT share, TTFT share) per model at its error-budget ``level``."""
        step = self.level_share_step * level
        return np.clip(self.tpot_share + step, 0.05, 0.95), np.clip(self.ttft_share + step, 0.05, 0.95)

    def quantiles(self, level: FloatArray) -> FloatArray:
        """The forecast error's quantile per model at its error-budget ``level``."""
        q: FloatArray = np.clip(1.0 - (1.0 - self.quantile) * self.level_quantile_factor**level, 0.5, 0.9999)
        return q

    def budget_credit(
        self, credit: FloatArray, served: FloatArray, charged: FloatArray, slo_target: float
    ) -> FloatArray:
        """The credit after ``served`` requests finished or missed and ``charged`` misses were charged to the
        relaxation: up by ``relax_per_budget`` per ``1 / (1 − slo_target)`` served, down by ``tighten_per_miss``
        per charged miss, at most ``max_level``."""
        step = self.relax_per_budget * (1.0 - slo_target) * served - self.tighten_per_miss * charged
        out: FloatArray = np.minimum(credit + step, self.max_level)
        return out

    def vulnerable(self, st: LlmSizingState) -> FloatArray:
        """Share of requests whose answer is short enough that one prompt landing on their replica while they
        decode breaks their TPOT: fewer than ``k = m·delta / slack`` decode steps (the finished-request
        histogram, interpolated linearly between bucket bounds; 0 before any request finished)."""
        a, b, c, e, d0, d1, d2, _, _, budget = st.coef.T
        p = st.prompt_mean
        chunked = budget > 0
        chunk = np.where(chunked, np.minimum(p, np.maximum(budget, 1.0)), p)
        m = np.where(chunked, np.ceil(np.maximum(1.0, p / np.maximum(budget, 1.0))), 1.0)
        delta = np.maximum(a - d0, 0.0) + b * chunk + c * chunk * chunk + e
        tpot_slo = np.maximum(TPOT_SLO_MIN_S, TPOT_SLO_FACTOR * (d0 + d1 + d2 * p))
        slack = np.maximum(tpot_slo - (d0 + d1 + d2 * p), 1e-6)
        harm_tokens = 1.0 + m * delta / slack  # answers shorter than this many tokens miss
        total = st.by_output[:, -1]
        bounds = np.array(OUTPUT_TOKEN_BUCKETS, dtype=np.float64)
        out = np.zeros(st.coef.shape[0])
        for i in np.flatnonzero(total > 1e-9):
            cdf = np.concatenate([[0.0], st.by_output[i] / total[i]])
            out[i] = float(np.interp(harm_tokens[i], np.concatenate([[0.0], bounds]), cdf))
        return out

    def isolation(self, st: LlmSizingState, rate: FloatArray, t0: FloatArray) -> IntArray:
        """Replicas so that an arriving request finds an idle one (least-loaded routing) often enough.

        At the forecast mean arrival rate the requests in the system are about Poisson(rate × T0); with ``c``
        replicas a newcomer shares one when there are ``c`` or more, which may cost the short answers
        (:meth:`vulnerable`) their TPOT. The fewest ``c`` with P(N ≥ c) × vulnerable ≤ ``isolation_miss``
        (normal approximation); 0 where nobody is vulnerable."""
        vuln = self.vulnerable(st)
        active = st.is_llm & (vuln > self.isolation_miss) & (rate > 0)
        tail = np.clip(self.isolation_miss / np.maximum(vuln, 1e-12), 1e-9, 0.5)
        z = _normal_quantile(1.0 - tail)
        load = rate * t0
        need = np.where(active, load + z * np.sqrt(load), 0.0)
        return ceil_int(need)

    def capacity(self, st: LlmSizingState) -> FloatArray:
        """Requests/s one replica takes within the planned TPOT, TTFT and KV occupancy."""
        w, rho_max, t0, r_max, pi_max = self.model(st)
        d0 = st.coef[:, 4]
        kw = st.kappa * w
        # arrivals per step x·TPOT = x·d0 / (1 − x·κ·w) <= π_max
        short = pi_max / (d0 + pi_max * kw)
        cap: FloatArray = np.minimum(np.minimum(rho_max / kw, r_max / (t0 + r_max * kw)), short)
        return cap

    def plan(
        self,
        signals: Signals,
        st: LlmSizingState,
        dt: float,
        z: float,
        horizon: FloatArray,
        slo_target: float = 0.999,
    ) -> tuple[IntArray, FloatArray, FloatArray, BoolArray, LlmSizingState]:
        """(replicas needed, demand in requests/s, capacity per replica, which models this sized, new state)."""
        n = signals.n_models
        if signals.prompt_tokens is None or signals.output_tokens is None or signals.finished is None or dt <= 0:
            return np.zeros(n, np.int64), np.zeros(n), np.ones(n), np.zeros(n, dtype=np.bool_), st
        arrived = signals.arrivals - st.last_arrivals
        rate = arrived / dt
        d_prompt = signals.prompt_tokens - st.last_prompt
        d_out = signals.output_tokens - st.last_output
        d_fin = signals.finished - st.last_finished
        a_mix = 1.0 - math.exp(-dt / self.mix_tau_s)
        tick = np.vstack([d_prompt, arrived, d_out, d_fin])
        mix = st.mix + a_mix * (tick - st.mix)
        # the first requests set the mean at once; later ones move it as the weighted sums do
        mix = np.where(st.seen | (arrived <= 0), mix, tick)
        prompt_mean = np.divide(mix[0], mix[1], out=st.prompt_mean.copy(), where=mix[1] > 1e-9)
        output_mean = np.divide(mix[2], mix[3], out=st.output_mean.copy(), where=mix[3] > 1e-9)
        seen = st.seen | (arrived > 0)

        a_fast = 1.0 - math.exp(-dt / self.fast_tau_s)
        a_slow = 1.0 - math.exp(-dt / self.slow_tau_s)
        fast = st.fast + a_fast * (rate - st.fast)
        slow = st.slow + a_slow * (rate - st.slow)
        var = st.var + a_slow * ((rate - st.fast) ** 2 - st.var)
        trend = np.maximum(fast - slow, 0.0) / (self.slow_tau_s - self.fast_tau_s)
        mean = np.maximum(fast, slow) + self.trend_weight * trend * horizon
        sigma = np.sqrt(np.maximum(var, 0.0) * min(1.0, dt / self.window_s))
        # Quantile forecast: how far the rate seen now (over ``window_s``) ran above what was forecast one cold
        # start ago, tracked at ``quantile`` (log ratio; a floor of one request per window keeps idle models sane)
        floor = 1.0 / self.window_s
        idx = np.searchsorted(st.hist_t, signals.now - horizon, side="right") - 1
        valid = st.is_llm & (idx >= 0) & np.isfinite(st.hist_t[np.maximum(idx, 0)])
        past = st.hist_mean[np.maximum(idx, 0), np.arange(n)]
        err = np.log((fast + floor) / (past + floor))
        d_miss = np.zeros(n)
        last_missed = st.last_missed
        if signals.slo_missed is not None:
            d_miss = np.maximum(signals.slo_missed - st.last_missed, 0.0)
            last_missed = signals.slo_missed
        served = np.maximum(d_fin, 0.0) + d_miss
        # Error budget: the credit rises with the requests served and falls with the misses charged to relaxing
        credit, level, relaxed_t = st.credit, st.level, st.relaxed_t
        if self.error_budget and signals.slo_missed is not None:
            charged = np.where(signals.now - st.relaxed_t <= self.attribution_s, d_miss, 0.0)
            credit = np.where(st.is_llm, self.budget_credit(st.credit, served, charged, slo_target), 0.0)
            level = np.clip(credit, self.min_level, self.max_level)
            relaxed_t = np.where(level >= self.attribute_level, signals.now, st.relaxed_t)
        # Burst hold: misses while fewer replicas were ready than the window's peak need, against requests served
        peak_needs = st.peak_needs.expire(signals.now - self.hold_window_s)
        peak_max = peak_needs.max()
        ready = signals.ready.astype(np.float64)
        below = np.zeros(n, dtype=np.bool_) if peak_max is None else ready < peak_max
        decay = math.exp(-dt / self.hold_tau_s)
        held = st.held * decay + np.vstack([np.where(below, d_miss, 0.0), served])
        hold = st.is_llm & (held[0] > self.hold_trigger * (1.0 - slo_target) * held[1])
        # Persistence: what of a burst's excess one cold start ago remains now
        excess = st.hist_excess[np.maximum(idx, 0), np.arange(n)]
        remained = fast - st.hist_slow[np.maximum(idx, 0), np.arange(n)]
        a_p = 1.0 - math.exp(-dt / self.persistence_tau_s)
        moments = np.vstack([excess * remained, excess * excess])
        persistence = np.where(valid & (excess > 0), st.persistence + a_p * (moments - st.persistence), st.persistence)
        kept = np.clip(np.divide(persistence[0], persistence[1], out=np.ones(n), where=persistence[1] > 0), 0.0, 1.0)
        # a model whose bursts last is met by reacting to them: only one whose bursts vanish holds
        hold &= kept < self.hold_persistence
        if not self.burst_hold or signals.slo_missed is None:
            hold = np.zeros(n, dtype=np.bool_)
        q = self.quantiles(level)
        step = np.where(err > st.log_q, self.quantile_step * q, -self.quantile_step * (1 - q))
        log_q = np.where(valid, st.log_q + step, st.log_q)
        keep = math.ceil(float(np.max(horizon, initial=0.0)) / dt) + 2
        hist_t = np.append(st.hist_t, signals.now)[-keep:]
        hist_mean = np.vstack([st.hist_mean, mean[None, :]])[-keep:]
        hist_excess = np.vstack([st.hist_excess, (fast - slow)[None, :]])[-keep:]
        hist_slow = np.vstack([st.hist_slow, slow[None, :]])[-keep:]
        by_output = st.by_output
        if signals.finished_by_output is not None:
            d_hist = signals.finished_by_output - st.last_by_output
            by_output = st.by_output + a_mix * (d_hist - st.by_output)
        st1 = replace(st, prompt_mean=prompt_mean, output_mean=output_mean, mix=mix, level=level)
        w, _, t0, r_max, _ = self.model(st1)

        # correction from the observed concurrency (Little): only with every replica ready and no queue beyond them
        conc = (signals.inflight_s - st.last_inflight) / dt
        steady = st.is_llm & (ready > 0) & (signals.ready == signals.replicas) & (signals.outstanding <= ready * r_max)
        a_corr = 1.0 - math.exp(-dt / self.correction_tau_s)
        rate_avg = np.where(steady, st.rate_avg + a_corr * (rate - st.rate_avg), st.rate_avg)
        conc_avg = np.where(steady, st.conc_avg + a_corr * (conc - st.conc_avg), st.conc_avg)
        x = rate_avg / np.maximum(ready, 1.0)
        base = rate_avg * t0
        # L = λ·T0 / (1 − κ·w·x)  =>  κ = (1 − λ·T0 / L) / (w·x); ill-conditioned at a light load: left alone there
        informative = steady & (st.kappa * w * x >= self.informative_rho) & (conc_avg > 0)
        k_obs = np.divide(
            1.0 - np.divide(base, conc_avg, out=np.ones(n), where=conc_avg > 0),
            w * x,
            out=st.kappa.copy(),
            where=informative,
        )
        k_obs = np.clip(k_obs, self.min_kappa, self.max_kappa)
        kappa = np.where(informative, np.exp(np.log(st.kappa) + a_fast * (np.log(k_obs) - np.log(st.kappa))), st.kappa)

        st2 = replace(
            st1,
            last_prompt=signals.prompt_tokens,
            last_output=signals.output_tokens,
            last_finished=signals.finished,
            last_arrivals=signals.arrivals,
            last_inflight=signals.inflight_s,
            fast=fast,
            slow=slow,
            var=var,
            kappa=kappa,
            rate_avg=rate_avg,
            conc_avg=conc_avg,
            seen=seen,
            hist_t=hist_t,
            hist_mean=hist_mean,
            log_q=log_q,
            last_by_output=st.last_by_output if signals.finished_by_output is None else signals.finished_by_output,
            by_output=by_output,
            last_missed=last_missed,
            credit=credit,
            relaxed_t=relaxed_t,
            held=held,
            hold=hold,
            hist_excess=hist_excess,
            hist_slow=hist_slow,
            persistence=persistence,
        )
        per_replica = self.capacity(st2)
        backlog = np.maximum(signals.outstanding - ready * r_max, 0.0) / self.drain_s
        # a holding model trusts a burst only as far as bursts have persisted over a cold start
        mean = np.where(hold, np.minimum(mean, slow + kept * np.maximum(mean - slow, 0.0)), mean)
        demand = np.maximum((mean + floor) * np.exp(log_q) - floor, mean + self.headroom_share * z * sigma) + backlog
        isolation = self.isolation(st2, mean, t0)
        need = np.maximum(ceil_int(demand / per_replica), isolation)
        # what the window holds: the need without the backlog's drain (a backlog is the shortage, not the traffic),
        # and at least what the fast rate itself needs
        calm = np.maximum(fast, demand - backlog)
        peak_needs = peak_needs.push(signals.now, np.maximum(ceil_int(calm / per_replica), isolation))
        held_max = peak_needs.max()
        assert held_max is not None
        need = np.where(hold, np.maximum(need, held_max), need)
        return need, demand, per_replica, st.is_llm.copy(), replace(st2, peak_needs=peak_needs)


def _normal_quantile(p: FloatArray) -> FloatArray:
    """Φ⁻¹(p) for p in [0.5, 1) (Abramowitz & Stegun 26.2.23, error < 4.5e-4)."""
    t = np.sqrt(-2.0 * np.log(np.clip(1.0 - p, 1e-300, 0.5)))
    z: FloatArray = t - (2.515517 + 0.802853 * t + 0.010328 * t * t) / (
        1.0 + 1.432788 * t + 0.189269 * t * t + 0.001308 * t * t * t
    )
    return z
