"""Scenario tests for shadowscale's LLM sizing (policies/scaling/llm_sizing.py): LLM models served with continuous
batching and chunked prefill in the simulator's engine, sized in tokens — a step, heavy-tailed prompts at a flat
rate, KV pressure, short answers that need an idle replica; and the fallback when no tokens are counted."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from shadowscale.policies.llm import OUTPUT_TOKEN_BUCKETS, LlmServing
from shadowscale.policies.scaling import Shadowscale
from shadowscale.policies.scaling.base import Decisions, Signals
from shadowscale.policies.scaling.llm_sizing import LlmSizing, LlmSizingState
from shadowscale.policies.types import ServiceConfig
from shadowscale.simulators.engine import Engine, SimConfig, SimResult
from shadowscale.simulators.llm_profiles import deployment, unit_profile

SERVING = deployment("llama-3.1-8b@1xA100")


class Recorder:
    """Wraps a policy; keeps (now, replicas decided, the LLM sizing state) at every tick."""

    def __init__(self, inner: Shadowscale) -> None:
        self.inner = inner
        self.log: list[tuple[float, int, LlmSizingState | None]] = []

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def tick_s(self) -> float:
        return self.inner.tick_s

    @property
    def hindsight(self) -> bool:
        return False

    def init(self, services: Any) -> Any:
        return self.inner.init(services)

    def decide(self, signals: Signals, state: Any) -> tuple[Decisions, Any]:
        d, s = self.inner.decide(signals, state)
        self.log.append((signals.now, int(d.replicas[0]), s.llm))
        return d, s

    def replicas(self, t0: float, t1: float) -> list[int]:
        return [r for t, r, _ in self.log if t0 <= t < t1]

    def kappa(self, t0: float, t1: float) -> list[float]:
        return [float(s.kappa[0]) for t, _, s in self.log if t0 <= t < t1 and s is not None]


def run(
    rate: Any,
    prompt: Any,
    output: Any,
    duration: float,
    seed: int = 0,
    policy: Shadowscale | None = None,
    serving: LlmServing = SERVING,
) -> tuple[Recorder, SimResult, np.ndarray]:
    """One LLM model (llama-3.1-8b unless told; cold start 30 s) under Poisson arrivals at ``rate(t)`` with token
    lengths drawn by ``prompt(rng, n)``/``output(rng, n)``; shadowscale (default knobs unless given) decides."""
    rng = np.random.default_rng(seed)
    t, times = 0.0, []
    peak = max(rate(x) for x in np.arange(0.0, duration, 1.0))
    while True:  # thinning: an inhomogeneous Poisson process
        t += rng.exponential(1.0 / peak)
        if t >= duration:
            break
        if rng.random() < rate(t) / peak:
            times.append(t)
    arr = np.array(times)
    n = arr.size
    p = np.asarray(prompt(rng, n), np.float64)
    o = np.asarray(output(rng, n), np.float64)
    svc = (ServiceConfig("llm", unit_profile(serving), cold_start_s=30.0, llm=serving),)
    engine = Engine(svc, arr, np.zeros(n, np.int64), np.ones(n), duration, SimConfig(), p, o)
    rec = Recorder(policy or Shadowscale())
    return rec, engine.run(rec), arr


def const(x: float) -> Any:
    return lambda rng, n: np.full(n, x)


def test_a_step_in_arrivals_is_sized_in_tokens_and_settles() -> None:
    """Arrivals step from 2 to 8 req/s (1,000-token prompts, 200-token answers) at t = 600 s: replicas rise
    within seconds of the step, settle at what the serving model says the work needs (about 4× the replicas
    before, within the scale-down window's hold) and, but for the cold start after the step, 99.9 % of the requests meet
    their TTFT and TPOT. Mutations caught:
    sizing LLM models by the unit request's profile capacity instead of tokens (``llm_sizing=None``: far fewer
    replicas before the step, misses after it), a step that is not acted on until the slow average catches up
    (the replicas at t = 610 s)."""
    rec, res, arr = run(lambda t: 8.0 if t >= 600 else 2.0, const(1000.0), const(200.0), 1500.0)
    before = rec.replicas(400, 600)
    after = rec.replicas(1200, 1500)
    assert max(rec.replicas(600, 612)) > max(before)
    sizing = LlmSizing()
    st = replace(
        sizing.init([ServiceConfig("llm", unit_profile(SERVING), llm=SERVING)]),
        prompt_mean=np.array([1000.0]),
        output_mean=np.array([200.0]),
    )
    per = float(sizing.capacity(st)[0])
    assert min(after) >= int(np.ceil(8.0 / per))
    assert max(after) <= int(np.ceil(8.0 / per)) + 3
    assert 2.5 <= np.mean(after) / np.mean(before) <= 5.0
    steady = ((arr >= 60) & (arr < 600)) | (arr >= 700)  # the 30 s cold start after the step is paid by all
    assert res.met[steady].mean() >= 0.999
    # the same traffic sized as request counts of the unit profile: the correction-free capacity model
    rec0, res0, _ = run(
        lambda t: 8.0 if t >= 600 else 2.0, const(1000.0), const(200.0), 1500.0, policy=Shadowscale(llm_sizing=None)
    )
    assert res0.met[steady].mean() < res.met[steady].mean() or np.mean(rec0.replicas(1200, 1500)) > 1.5 * np.mean(after)


def pareto_prompts(rng: np.random.Generator, n: int) -> np.ndarray:
    """Heavy-tailed prompts (Pareto, shape 1.3, from 2,000 tokens, capped at 100k): Mooncake-like."""
    out: np.ndarray = np.minimum(2000.0 * (1.0 + rng.pareto(1.3, n)), 100_000.0)
    return out


def test_heavy_tailed_prompts_at_a_flat_rate_do_not_ratchet_replicas_up() -> None:
    """Mooncake's symptom (issue 12): at a flat rate of heavy-tailed prompts the old correction shrank from 0.62 to
    0.20 while replicas grew from 9 to 27. Here, at a flat 1.5 req/s, the correction stays within 20 % of 1 and the
    replicas do not grow: the last ten minutes need no more than the ten after the first five, plus one.
    Mutations caught: a correction that also learns at a light load (``informative_rho`` 0: the long prompts'
    own service time, above the mean prompt's, reads as extra work per request; more replicas make the load
    lighter and the estimate worse — the correction swings to 0.55–1.45, and with the old cap of 4 to 4.0, and
    the replicas jump to 12–24), a correction that ignores the requests' own work (same)."""
    heavy = (lambda t: 1.5, pareto_prompts, lambda rng, n: rng.integers(20, 600, n), 2400.0, 3)
    rec, res, _ = run(*heavy)
    early = rec.replicas(300, 900)
    late = rec.replicas(1800, 2400)
    assert max(late) <= max(early) + 1
    kappa = rec.kappa(300, 2400)
    assert min(kappa) >= 0.8 and max(kappa) <= 1.2
    assert res.met.mean() >= 0.99
    rec2, _, _ = run(*heavy, policy=Shadowscale(llm_sizing=LlmSizing(informative_rho=0.0)))
    assert max(rec2.replicas(300, 2400)) >= max(rec.replicas(300, 2400)) + 3


def test_kv_pressure_bounds_the_requests_a_replica_is_planned_to_hold() -> None:
    """Llama-2-70B on two A100s holds 18,432 KV tokens: nine requests of 1,000 prompt and 1,000 answer tokens.
    Its planned capacity is then the KV bound ``R_max / (T0 + R_max·w)`` (about 0.11 req/s), a fifth of what
    the compute allows, and a run at 0.4 req/s is given at least ``0.4 / 0.11`` replicas and meets the
    objectives. Mutations caught: dropping the KV term from the capacity (a fifth of the replicas: requests
    wait for KV space and miss their TTFT), counting only the prompt in a request's KV footprint (R_max doubles)."""
    serving = deployment("llama-2-70b@2xA100")
    sizing = LlmSizing()
    st = replace(
        sizing.init([ServiceConfig("llm", unit_profile(serving), llm=serving)]),
        prompt_mean=np.array([1000.0]),
        output_mean=np.array([1000.0]),
    )
    w, rho_max, t0, r_max, _ = sizing.model(st)
    assert r_max[0] == pytest.approx(0.8 * serving.kv_tokens / 2000.0)
    kv_bound = r_max[0] / (t0[0] + r_max[0] * w[0])
    assert kv_bound < 0.3 * rho_max[0] / w[0]
    assert float(sizing.capacity(st)[0]) == pytest.approx(kv_bound)
    rec, res, arr = run(lambda t: 0.4, const(1000.0), const(1000.0), 2400.0, seed=5, serving=serving)
    scored = arr >= 600.0
    assert res.met[scored].mean() >= 0.99
    assert min(rec.replicas(900, 2400)) >= int(np.ceil(0.4 / kv_bound))


def _histogram(short_share: float) -> np.ndarray:
    """A cumulative output-token histogram of 1,000 finished requests, ``short_share`` of them with 2 tokens,
    the rest with 300."""
    b = np.array(OUTPUT_TOKEN_BUCKETS, np.float64)
    return 1000.0 * (short_share * (b >= 2) + (1 - short_share) * (b >= 300))


def test_short_answers_behind_long_prompts_ask_for_idle_replicas() -> None:
    """Mooncake-like traffic (12k-token prompts: six chunks, each 0.16 s longer than a decode step) with 6 % of the
    answers 2 tokens long: one prompt landing on their replica breaks their TPOT, so the isolation rule asks
    for replicas above the Poisson tail of the requests in the system; with no short answers it asks for none,
    and with short prompts (one chunk) a 2-token answer survives one collision only when the slack allows.
    Mutations caught: an isolation rule that ignores the histogram (asks for replicas on conversation traffic),
    one that uses the vulnerable share the wrong way round (more replicas for fewer short answers)."""
    sizing = LlmSizing()
    base = replace(
        sizing.init([ServiceConfig("llm", unit_profile(SERVING), llm=SERVING)]),
        prompt_mean=np.array([12_000.0]),
        output_mean=np.array([340.0]),
    )
    rate = np.array([3.3])
    t0 = sizing.model(base)[2]
    none = replace(base, by_output=_histogram(0.0)[None, :])
    few = replace(base, by_output=_histogram(0.01)[None, :])
    many = replace(base, by_output=_histogram(0.06)[None, :])
    assert sizing.vulnerable(many)[0] == pytest.approx(0.06)
    assert sizing.isolation(none, rate, t0)[0] == 0
    load = 3.3 * t0[0]
    c_few = int(sizing.isolation(few, rate, t0)[0])
    c_many = int(sizing.isolation(many, rate, t0)[0])
    assert load < c_few < c_many < load + 4.0 * np.sqrt(load)


def test_budget_credit_is_earned_by_requests_served_and_lost_by_charged_misses() -> None:
    """The error-budget credit at a 99.9 % objective: +0.2 per 1,000 requests served, −1 per charged miss, never
    above ``max_level`` (1) and unbounded below (a debt); the margin level is the credit within [0, 1], and it
    moves the forecast quantile (0.99 → 0.95) and the TPOT/TTFT shares (0.6 / 0.5 → 0.7 / 0.6). Mutations caught:
    a credit that ignores the misses, a floor at 0 (one costly event forgotten at once), the quantile moved the
    wrong way."""
    sizing = LlmSizing()
    credit = np.array([0.0, 0.0, 0.9, 0.5, -3.0])
    served = np.array([0.0, 1000.0, 1000.0, 1000.0, 5000.0])
    charged = np.array([0.0, 0.0, 0.0, 3.0, 0.0])
    np.testing.assert_allclose(sizing.budget_credit(credit, served, charged, 0.999), [0.0, 0.2, 1.0, -2.3, -2.0])
    q = sizing.quantiles(np.array([0.0, 1.0, -1.0]))
    np.testing.assert_allclose(q, [0.99, 0.95, 0.998])
    tpot, ttft = sizing.shares(np.array([0.0, 1.0]))
    np.testing.assert_allclose(tpot, [0.6, 0.7])
    np.testing.assert_allclose(ttft, [0.5, 0.6])


def _signals(now: float, arrivals: float, finished: float, missed: float | None, ready: int = 2) -> Signals:
    two = np.full(1, ready, np.int64)
    return Signals(
        now,
        two,
        two,
        np.array([arrivals]),
        np.zeros(1),
        np.array([2.0 * now]),
        np.zeros(1),
        np.zeros(1, np.int64),
        prompt_tokens=np.array([arrivals * 1000.0]),
        output_tokens=np.array([finished * 200.0]),
        finished=np.array([finished]),
        finished_by_output=np.outer([finished], np.ones(len(OUTPUT_TOKEN_BUCKETS))),
        slo_missed=None if missed is None else np.array([missed]),
    )


def _plan(missed: Any, sizing: LlmSizing, seconds: int = 1500, ready: int = 2) -> tuple[LlmSizingState, float]:
    """(state, capacity per replica) after ``seconds`` of 5 req/s through ``LlmSizing.plan`` with ``ready``
    replicas ready; ``missed(t, n)`` is the miss counter after ``n`` requests at ``t`` (None: no counter)."""
    st = sizing.init([ServiceConfig("llm", unit_profile(SERVING), llm=SERVING)])
    per = np.ones(1)
    for k in range(1, seconds // 2 + 1):
        now, n = 2.0 * k, 10.0 * k
        m = None if missed is None else float(missed(now, n))
        _, _, per, _, st = sizing.plan(_signals(now, n, n, m, ready), st, 2.0, 2.0, np.array([30.0]), 0.999)
    return st, float(per[0])


def test_error_budget_lever_relaxes_on_requests_served_and_backs_off_on_its_own_misses() -> None:
    """Driven through ``LlmSizing.plan`` (5 req/s for 25 minutes): with no miss the level reaches 1 and a replica is
    planned to take more; misses at 0.2 % throughout leave a debt and the default margins (and capacity); without
    a miss counter the lever is off; misses in the first minute, before the model was ever relaxed, are not
    charged (a start from one replica is not the relaxation's doing), so it still relaxes. Mutations caught: not
    reading ``slo_missed`` (level 0 with no misses), charging every miss (the early misses keep it at 0),
    margins that ignore the level (equal capacities), relaxing while misses are charged."""
    sizing = LlmSizing()
    free, free_cap = _plan(lambda t, n: 0.0, sizing)
    over, over_cap = _plan(lambda t, n: 0.002 * n, sizing)
    none, none_cap = _plan(None, sizing)
    early, _ = _plan(lambda t, n: min(n, 300.0) * 0.01, sizing)
    assert float(free.level[0]) == pytest.approx(1.0)
    assert float(over.level[0]) == 0.0 and float(over.credit[0]) < 0.0
    assert float(none.level[0]) == 0.0
    assert float(early.level[0]) == pytest.approx(1.0)
    assert over_cap == pytest.approx(none_cap)
    assert free_cap > 1.02 * none_cap
    off, off_cap = _plan(lambda t, n: 0.0, replace(sizing, error_budget=False))
    assert float(off.level[0]) == 0.0 and off_cap == pytest.approx(none_cap)


def test_square_wave_traffic_relaxes_without_spending_the_budget() -> None:
    """Arrivals alternate between 6 and 2 req/s every 4 minutes for 90 minutes (1,000-token prompts, 200-token
    answers, cold start 30 s): with the error-budget lever the model relaxes as it serves requests without a
    miss, holds at least 5 % fewer GPU-seconds than with the lever off and still meets 99.9 %; its misses stay
    within what the credit allows. Measured at 3.74 against 4.21 GPU-hours, no miss either way. Mutations caught:
    the lever off (same GPU-seconds), a level allowed to 1.5 (relaxing beyond what this traffic's steps allow:
    62 misses, a 0.28 % miss rate)."""

    def rate(t: float) -> float:
        return 6.0 if int(t // 240) % 2 == 0 else 2.0

    rec, res, _ = run(rate, const(1000.0), const(200.0), 5400.0, seed=7)
    off = Shadowscale(llm_sizing=LlmSizing(error_budget=False))
    _, res0, _ = run(rate, const(1000.0), const(200.0), 5400.0, seed=7, policy=off)
    levels = [float(s.level[0]) for t, _, s in rec.log if s is not None and t >= 3000]
    assert max(levels) >= 0.9
    assert res.met.mean() >= 0.999
    assert res.gpu_s.sum() < 0.95 * res0.gpu_s.sum()


def test_a_model_holds_its_peak_only_when_it_misses_with_fewer_replicas_ready_than_the_peak_needed() -> None:
    """Driven through ``LlmSizing.plan`` (5 req/s for 25 minutes; 1,000-token prompts, 200-token answers, which
    need 27 replicas with the short answers isolated): misses at 1 % while 2 replicas are ready, fewer than the
    peak need, make the model hold it; misses at 0.05 % (within a 99.9 % budget), the same 1 % with 50 replicas
    ready (misses that more replicas would not have prevented), no miss, no miss counter, or the lever off leave it
    free. Mutations caught: counting every miss (the 50-replica case holds), a trigger that ignores the requests
    served (the 0.05 % case holds), not reading ``slo_missed``. The persistence gate is opened here
    (``hold_persistence`` above 1: this steady rate's rise persists; the gate has its own test below)."""
    sizing = LlmSizing(hold_persistence=1.01)
    short, _ = _plan(lambda t, n: 0.01 * n, sizing)
    peak = short.peak_needs.max()
    assert peak is not None and 2 < int(peak[0]) <= 50
    assert bool(short.hold[0])
    plenty, _ = _plan(lambda t, n: 0.01 * n, sizing, ready=50)
    rare, _ = _plan(lambda t, n: 0.0005 * n, sizing)
    free, _ = _plan(lambda t, n: 0.0, sizing)
    none, _ = _plan(None, sizing)
    off, _ = _plan(lambda t, n: 0.01 * n, replace(sizing, burst_hold=False))
    assert not any(bool(s.hold[0]) for s in (plenty, rare, free, none, off))


def test_bursts_shorter_than_a_cold_start_are_held_not_chased() -> None:
    """A burst of 20 req/s for 12 s every 4 minutes over 0.5 req/s (2,000-token prompts, 30-token answers, the
    azure-llm-2023-code shape; cold start 30 s) for an hour. Chasing each burst calls up replicas that are ready
    after it has gone: 2,115 misses (40 %) at 21.8 GPU-hours with the burst hold off. With it the model holds
    the replicas its bursts needed (the peak need without the backlog's drain) and trusts a burst only as far as
    bursts have lasted: 246 misses at 7.0 GPU-hours (measured). Asserted: at most a quarter of the misses at most
    half the GPU-seconds, and the model holds through the last half hour. Mutations caught (each seen to fail):
    the lever off; the hold without the persistence (235 misses at 22.3 GPU-hours); the persistence without the
    hold (2,115 misses at 5.6)."""

    def rate(t: float) -> float:
        return 20.0 if t % 240.0 < 12.0 else 0.5

    rec, res, _ = run(rate, const(2000.0), const(30.0), 3600.0, seed=3)
    off = Shadowscale(llm_sizing=LlmSizing(burst_hold=False))
    _, res0, _ = run(rate, const(2000.0), const(30.0), 3600.0, seed=3, policy=off)
    misses, misses0 = int((~res.met).sum()), int((~res0.met).sum())
    assert misses <= 0.25 * misses0
    assert res.gpu_s.sum() <= 0.5 * res0.gpu_s.sum()
    assert all(bool(s.hold[0]) for t, _, s in rec.log if s is not None and t >= 1800)


def test_half_the_headroom_is_enough_where_the_quantile_tracks_the_noise() -> None:
    """A flat 8 req/s (1,000-token prompts, 200-token answers) for an hour: the forecast's quantile already tracks
    the rate's noise over a cold start, so adding half of shadowscale's headroom (σ of the rate) where it asks for
    less holds fewer replicas than the full headroom (measured 2.55 against 2.73 GPU-hours) and still meets every
    objective after the first five minutes. Mutation caught: the full headroom (``headroom_share`` 1: the same
    GPU-seconds)."""
    _, res, arr = run(lambda t: 8.0, const(1000.0), const(200.0), 3600.0, seed=11)
    full = Shadowscale(llm_sizing=LlmSizing(headroom_share=1.0))
    _, res1, _ = run(lambda t: 8.0, const(1000.0), const(200.0), 3600.0, seed=11, policy=full)
    scored = arr >= 300.0
    assert res.met[scored].mean() >= 0.999
    assert res.gpu_s.sum() <= 0.97 * res1.gpu_s.sum()


def test_a_start_from_one_replica_under_a_steady_load_is_not_held() -> None:
    """A steady 8 req/s from t = 0 (one replica at the start, 1,000-token prompts, 200-token answers, 40 minutes):
    the requests of the first cold start miss while fewer replicas are ready than the load needs — what the burst
    hold counts — but the load's rise lasts (its persistence over a cold start is near 0.9), so reacting meets it
    and the model never holds. With every persistence allowed to hold (``hold_persistence`` above 1) it holds for
    the rest of the run and spends about 20 % more GPU-seconds (measured 1.86 against 1.55 GPU-hours) for the same
    309 misses. Mutation caught: the persistence gate dropped (the model holds)."""
    rec, res, _ = run(lambda t: 8.0, const(1000.0), const(200.0), 2400.0, seed=5)
    assert not any(bool(s.hold[0]) for _, _, s in rec.log if s is not None)
    ungated = Shadowscale(llm_sizing=LlmSizing(hold_persistence=1.01))
    rec1, res1, _ = run(lambda t: 8.0, const(1000.0), const(200.0), 2400.0, seed=5, policy=ungated)
    assert bool(rec1.log[-1][2] is not None and rec1.log[-1][2].hold[0])
    assert int((~res1.met).sum()) == int((~res.met).sum())
    assert res1.gpu_s.sum() >= 1.1 * res.gpu_s.sum()
