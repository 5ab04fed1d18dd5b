"""Drift detection on synthetic replicas whose truth is known: a stable model never goes stale on noisy data, a
step change (a new, slower model version) goes stale within K windows and reports a capacity near the new truth,
a new profile clears it; and the re-trial budget."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from shadowscale.policies.profiling.drift import (
    Drift,
    DriftSettings,
    DriftState,
    DriftVerdict,
    DriftWindow,
    RetrialPlanner,
    RetrialSettings,
)

SLO_MS = 200.0
LN100 = math.log(100.0)
WINDOW_S = 15.0
REPLICAS = 4


def capacity_at_slo(mu: float) -> float:
    """An M/M/1 replica serving ``mu`` req/s: p99 of the time in system is ln(100) / (mu - load), so the highest
    load within the SLO is mu - ln(100) / SLO."""
    return mu - LN100 / (SLO_MS / 1000.0)


@dataclass
class Replicas:
    """REPLICAS M/M/1 replicas at service rate ``mu``, measured with noise (Poisson counts, p99 and busy time)."""

    mu: float
    rng: np.random.Generator
    p99_noise: float = 0.15

    def window(self, k: int, load: float) -> DriftWindow:
        served = min(load, 0.98 * self.mu)
        replica_s = REPLICAS * WINDOW_S
        completions = float(self.rng.poisson(served * replica_s))
        util = min(served / self.mu * (1.0 + self.rng.normal(0.0, 0.03)), 1.0)
        p99 = LN100 / (self.mu - served) * 1000.0 if load < 0.98 * self.mu else 10 * SLO_MS  # saturated: backlog
        p99 *= float(self.rng.lognormal(0.0, self.p99_noise))
        return DriftWindow(k * WINDOW_S, (k + 1) * WINDOW_S, replica_s, completions, util * replica_s, p99)


PROFILED = capacity_at_slo(100.0)  # 76.97 req/s per replica
K = DriftSettings().windows_to_stale


def feed(drift: Drift, state: DriftState, windows: list[DriftWindow]) -> tuple[DriftState, list[DriftVerdict]]:
    out = []
    for w in windows:
        state, v = drift.update(state, w)
        out.append(v)
    return state, out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_stable_model_never_goes_stale_on_noisy_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    drift = Drift()
    model = Replicas(100.0, rng, p99_noise=0.2)
    loads = rng.uniform(0.05, 0.98, 2000) * PROFILED  # from nearly idle to just under the profiled capacity
    loads[::50] = 0.01  # and now and then a window too quiet to say anything
    state, verdicts = feed(drift, drift.start(PROFILED, SLO_MS), [model.window(k, x) for k, x in enumerate(loads)])
    assert not any(v.stale for v in verdicts), next(v.reason for v in verdicts if v.stale)
    assert state.run < K
    share = drift.share(state)
    assert share is not None and share == pytest.approx(PROFILED / 100.0, rel=0.05)  # calibrated on the way


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_slower_model_version_goes_stale_within_k_windows_and_reports_its_capacity(seed: int) -> None:
    rng = np.random.default_rng(seed)
    drift = Drift()
    model = Replicas(100.0, rng)
    before = [model.window(k, x) for k, x in enumerate(rng.uniform(0.2, 0.95, 100) * PROFILED)]
    state, verdicts = feed(drift, drift.start(PROFILED, SLO_MS), before)
    assert not any(v.stale for v in verdicts)

    model.mu = 50.0  # a new version that serves half as fast: the truth is now 26.97 req/s per replica
    truth = capacity_at_slo(model.mu)
    after = [model.window(100 + k, x) for k, x in enumerate(rng.uniform(0.2, 0.95, 60) * PROFILED)]
    state, verdicts = feed(drift, state, after)
    first = next(k for k, v in enumerate(verdicts) if v.stale)
    assert first <= K - 1, f"stale only at window {first} after the change"
    assert state.stale_since == after[0].end  # the change point is where the run began
    assert str(verdicts[first].reason).endswith(f"({K} windows in a row)")
    assert all(v.stale for v in verdicts[first:])  # sticky
    # at once, before the load has explored the new model: below the profile, on the safe side of it
    at_once = verdicts[first].observed_capacity
    assert at_once is not None and at_once < 0.6 * PROFILED
    # after a few dozen windows at varied loads: the boundary between the rates that met and missed the SLO. With
    # 15 % noise on p99 the boundary is blurred: over seeds 0-39 this lands at 0.77-1.15 x the truth (the profile's
    # 76.97 is 2.85 x)
    final = verdicts[-1].observed_capacity
    assert final is not None and final == pytest.approx(truth, rel=0.25), (final, truth)


def test_a_new_profile_clears_stale_and_then_holds() -> None:
    rng = np.random.default_rng(7)
    drift = Drift()
    model = Replicas(50.0, rng)  # already the slow version: the stored profile is wrong from the start
    state, verdicts = feed(drift, drift.start(PROFILED, SLO_MS), [model.window(k, 0.6 * PROFILED) for k in range(K)])
    assert verdicts[-1].stale and "p99" in verdicts[-1].reason
    # no calibration (the profile never agreed): the service rate × the default target utilisation, capped by the
    # lowest rate that missed the SLO
    assert verdicts[-1].observed_capacity == pytest.approx(min(0.8 * 50.0, 0.98 * 50.0), rel=0.1)

    reprofiled = capacity_at_slo(50.0)  # the re-trial measured the new version
    state = drift.start(reprofiled, SLO_MS)
    assert drift.verdict(state) == DriftVerdict(False, "", None)
    loads = rng.uniform(0.2, 0.95, 300) * reprofiled
    state, verdicts = feed(drift, state, [model.window(K + k, x) for k, x in enumerate(loads)])
    assert not any(v.stale for v in verdicts)


def test_a_faster_model_goes_stale_only_once_calibrated() -> None:
    rng = np.random.default_rng(3)
    drift = Drift()
    model = Replicas(200.0, rng)  # twice as fast as profiled from the first window: no calibration to judge by
    loads = rng.uniform(0.2, 0.8, 30) * PROFILED
    state, verdicts = feed(drift, drift.start(PROFILED, SLO_MS), [model.window(k, x) for k, x in enumerate(loads)])
    assert not any(v.stale for v in verdicts)  # faster than profiled is not a contradiction without calibration

    slow = Replicas(100.0, rng)  # calibrate on a model that matches the profile, then speed up
    state, _ = feed(drift, drift.start(PROFILED, SLO_MS), [slow.window(k, x) for k, x in enumerate(loads)])
    state, verdicts = feed(drift, state, [model.window(30 + k, x) for k, x in enumerate(loads[:K])])
    assert verdicts[-1].stale and "above the profiled" in verdicts[-1].reason
    observed = verdicts[-1].observed_capacity
    assert observed is not None and observed > 1.5 * PROFILED


def test_quiet_windows_neither_count_nor_reset_and_one_bad_window_is_forgotten() -> None:
    drift = Drift(DriftSettings(windows_to_stale=3, min_requests=20))
    bad = DriftWindow(0, 15, 15, 300, 3, 900)  # p99 900 ms at 20 req/s per replica: a latency contradiction
    good = DriftWindow(0, 15, 15, 300, 3, 50)
    quiet = DriftWindow(0, 15, 15, 5, 0.1, 5000)  # 5 requests: says nothing, however late they were
    state = drift.start(PROFILED, SLO_MS)
    state, v = feed(drift, state, [bad, quiet, bad, good, bad, quiet, bad])
    assert not any(x.stale for x in v) and state.run == 2
    state, v = feed(drift, state, [quiet, bad])
    assert v[-1].stale and state.run == 3


def test_stored_stale_profile_starts_stale() -> None:
    drift = Drift()
    state = drift.start(PROFILED, SLO_MS, stale=True, reason="p99 over the SLO (stored)")
    assert drift.verdict(state) == DriftVerdict(True, "p99 over the SLO (stored)", None)


def test_bad_settings_and_windows_name_the_field() -> None:
    with pytest.raises(ValueError, match="windows_to_stale must be >= 1"):
        DriftSettings(windows_to_stale=0)
    with pytest.raises(ValueError, match="capacity_tolerance must be in"):
        DriftSettings(capacity_tolerance=1.5)
    with pytest.raises(ValueError, match="memory must be >= windows_to_stale"):
        DriftSettings(windows_to_stale=5, memory=3)
    with pytest.raises(ValueError, match="load_margin"):
        DriftSettings(load_margin=math.nan)
    with pytest.raises(ValueError, match="completions must be finite and >= 0"):
        DriftWindow(0, 1, 1, -1, 0, 0)
    with pytest.raises(ValueError, match="end 1 is before start 2"):
        DriftWindow(2, 1, 1, 1, 0, 0)
    with pytest.raises(ValueError, match="capacity must be a positive number"):
        Drift().start(0.0, SLO_MS)
    with pytest.raises(ValueError, match="slo_ms must be a positive number"):
        Drift().start(10.0, math.inf)
    with pytest.raises(ValueError, match="max_parallel must be >= 1"):
        RetrialSettings(max_parallel=0)
    with pytest.raises(ValueError, match="cooldown_s"):
        RetrialSettings(cooldown_s=-1)


def test_retrials_run_within_the_budget_longest_stale_first_with_a_cooldown() -> None:
    planner = RetrialPlanner(RetrialSettings(max_parallel=2, cooldown_s=100.0))
    stale = {"c": 5.0, "a": 10.0, "b": 10.0, "d": 20.0}
    due = planner.due(30.0, stale)
    assert due == ("c", "a")  # the longest stale first, ties by name
    planner = planner.started(due, 30.0)
    assert planner.due(31.0, stale) == ()  # the budget is spent
    planner = planner.finished("c")
    assert planner.due(32.0, stale) == ("b",)  # c is cooling down; b is next
    planner = planner.started(("b",), 32.0).finished("a").finished("b")
    assert planner.due(100.0, stale) == ("d",)
    assert planner.due(129.0, stale) == ("d",)
    assert planner.due(130.0, stale) == ("c", "a")  # their cooldowns (started at 30) are over; d waits its turn
    assert planner.due(200.0, {}) == ()


def batched_window(k: int, load: float, rng: np.random.Generator, util: float = 0.9) -> DriftWindow:
    """A continuous-batching server seen through the GPU exporter: the GPU stays ``util`` busy whatever the load
    (it runs a batch as long as anything is queued), p99 well within the SLO up to its real capacity."""
    replica_s = REPLICAS * WINDOW_S
    completions = float(rng.poisson(load * replica_s))
    u = min(util * (1.0 + rng.normal(0.0, 0.02)), 1.0)
    p99 = 0.4 * SLO_MS * float(rng.lognormal(0.0, 0.1))
    return DriftWindow(k * WINDOW_S, (k + 1) * WINDOW_S, replica_s, completions, u * replica_s, p99, "gpu")


@pytest.mark.parametrize("seed", [0, 1])
def test_a_batched_server_at_low_load_with_busy_gpu_stays_fresh(seed: int) -> None:
    """Profile 100 req/s, load 30 req/s, GPU utilization 0.9 (the issue's case): the GPU's busy time does not track
    load, so it says nothing about the service rate; p99 is fine, so the profile stays. Mutation: using GPU
    utilization like a server's own busy time (``usable = True``) makes it stale after 3 windows at capacity 30."""
    rng = np.random.default_rng(seed)
    drift = Drift()
    state = drift.start(100.0, SLO_MS)
    loads = [30.0] * 20 + list(rng.uniform(20.0, 60.0, 40))
    state, verdicts = feed(drift, state, [batched_window(k, x, rng) for k, x in enumerate(loads)])
    assert not any(v.stale for v in verdicts), next(v.reason for v in verdicts if v.stale)
    assert not drift.gpu_tracks_load(state) and len(state.gpu_points) == DriftSettings().memory
    # the same windows, had the server itself reported that busy time, would contradict the profile
    server = [DriftWindow(w.start, w.end, w.ready_replica_s, w.completions, w.busy_s, w.p99_ms, "server") for w in
              [batched_window(k, 30.0, rng) for k in range(K)]]  # fmt: skip
    _, got = feed(drift, drift.start(100.0, SLO_MS), server)
    assert got[-1].stale and "from the service rate" in got[-1].reason


def test_gpu_utilization_that_tracks_load_is_evidence_of_a_slower_model() -> None:
    """A one-request-at-a-time GPU server: utilization = load / service rate, so once the windows show it rising
    with the rate it counts, and a slower model version (service rate 100 → 50) goes stale on it even before its
    p99 breaks the SLO. Mutation: never trusting GPU utilization leaves it fresh."""
    rng = np.random.default_rng(3)
    drift = Drift()
    fast, slow = Replicas(100.0, rng), Replicas(50.0, rng)
    profiled = capacity_at_slo(100.0)

    def gpu(w: DriftWindow) -> DriftWindow:
        return DriftWindow(w.start, w.end, w.ready_replica_s, w.completions, w.busy_s, w.p99_ms * 0.0, "gpu")

    before = [gpu(fast.window(k, x)) for k, x in enumerate(rng.uniform(0.2, 0.8, 12) * profiled)]
    state, verdicts = feed(drift, drift.start(profiled, SLO_MS), before)
    assert not any(v.stale for v in verdicts) and drift.gpu_tracks_load(state)
    after = [gpu(slow.window(12 + k, 20.0)) for k in range(K)]
    state, verdicts = feed(drift, state, after)
    assert verdicts[-1].stale and "from the service rate" in verdicts[-1].reason
    assert verdicts[-1].observed_capacity is not None and verdicts[-1].observed_capacity < 0.8 * profiled
