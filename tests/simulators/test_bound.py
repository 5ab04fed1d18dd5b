"""``bound`` (the fluid lower bound on GPU-hours) against every sweep point on three traces, its tightness on a
saturated model, and the oracle (right-sized, one cold start ahead, paying it) near it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from shadowscale.policies.types import ModelProfile, ServiceConfig
from shadowscale.simulators.bound import best_gpu_seconds_per_work, fluid_bound_all_hours, fluid_bound_hours
from shadowscale.simulators.engine import SimConfig
from shadowscale.simulators.run import learned_bursts, learned_peaks, prepare, right_sized, run_policy, summarize
from shadowscale.simulators.sweep import run_sweep
from shadowscale.simulators.traces import load_trace
from shadowscale.simulators.workload import Workload, make_workload

SLICES = {
    "azure-functions-2019": {"hours": 0.25, "models": 8},
    "azure-llm-2023-conv": {"hours": 0.1},
    "mooncake": {"hours": 0.1},
}


@pytest.mark.parametrize("trace", sorted(SLICES))
def test_bound_is_below_every_sweep_point(trace: str) -> None:
    """Every point of every policy's sweep (knob grid × min replicas × spec set, oracle included) costs at least
    the bound for the work it served, and the comparison ran: every point served work (bound > 0) and there are
    well over a hundred points. Catches a bound that takes the capacity of the traced spec only (right-sized
    shares serve cheaper per GPU-second) or counts dropped/unfinished work."""
    w = load_trace(trace, **SLICES[trace])  # type: ignore[arg-type]
    sweep = run_sweep(w, ["hpa", "keda", "kpa", "oracle", "shadowscale"], SimConfig(), workers=1)
    points = [p for pts in sweep.values() for p in pts]
    assert len(points) >= (100 if trace == "azure-functions-2019" else 60)
    sets = {"traced", "rightsized"} if trace == "azure-functions-2019" else {"traced"}  # the LLM: one spec
    assert {p.spec for p in points} == sets
    assert {p.min_replicas for p in points} == {0, 1}
    for p in points:
        assert p.bound_gpu_hours > 0.0, p
        assert p.bound_gpu_hours <= p.gpu_hours + 1e-12, p
        assert p.gpu_hours <= p.gpus_held_hours + 1e-9, p


def _profile(l1: float, fraction: float = 1.0) -> ModelProfile:
    return ModelProfile(
        "p", "test", (1, 2, 4, 8, 16), tuple(l1 * x for x in (1, 1.05, 1.2, 1.6, 2.4)), 5 * l1, 16, fraction
    )


def _steady(rate: float, duration: float = 3600.0, seed: int = 0, cold: float = 30.0) -> Workload:
    rng = np.random.default_rng(seed)
    n = rng.poisson(rate * duration)
    a = np.sort(rng.uniform(0.0, duration, n))
    svc = (ServiceConfig("m", _profile(0.1), cold_start_s=cold),)
    return make_workload(
        name="steady", duration_s=duration, services=svc, arrival_s=a, model=np.zeros(n, np.int64), size=np.ones(n)
    )


def test_bound_is_tight_on_a_saturated_model() -> None:
    """One model at 55 requests/s (83 % of one replica's batched capacity): a static replica serves it all and
    the bound for its work is within 20 % of its GPU-hours. Catches a bound inflated by any factor above 1.2 (it
    would exceed the static fleet's GPU-hours) and a vacuous bound (near 0)."""
    w = _steady(55.0)
    assert best_gpu_seconds_per_work(w.services[0].profile) == pytest.approx(0.24 / 16)
    tight = 0.0
    for name, knob in (("static", None), ("oracle", None), ("hpa", 0.95), ("kpa", 10.0)):
        r = run_policy(w, name, SimConfig(), knob=knob)
        s = summarize(r)
        b = fluid_bound_hours(w, r)
        assert b <= s.gpu_hours + 1e-12, name
        tight = max(tight, b / s.gpu_hours)
    assert tight >= 0.8
    assert fluid_bound_all_hours(w) == pytest.approx(w.size.sum() * 0.24 / 16 / 3600)


def test_oracle_pays_cold_starts_starts_ahead_and_stays_near_the_bound() -> None:
    """On/off traffic (10 minutes on, 10 off): the oracle starts its replica a cold start before each burst (no
    request waits for it), pays every cold start, meets the SLO and costs at most 2.5 × the bound. Catches an
    oracle that adds replicas it does not need (3 more per bin: 9.4 × the bound), one that starts replicas at the
    need (97.7 % attainment: the bursts' first requests wait) and one that skips cold starts."""
    rng = np.random.default_rng(4)
    dur = 3600.0
    sec = np.arange(int(dur))
    cnt = rng.poisson(np.where((sec // 600) % 2 == 0, 50.0, 0.0))
    a = np.sort(np.repeat(sec, cnt) + rng.random(cnt.sum()))
    svc = (ServiceConfig("m", _profile(0.1), cold_start_s=30.0),)
    w = make_workload(
        name="onoff", duration_s=dur, services=svc, arrival_s=a, model=np.zeros(a.size, np.int64), size=np.ones(a.size)
    )
    r = run_policy(w, "oracle", SimConfig())
    s = summarize(r)
    assert s.slo_attainment >= 0.999
    assert s.cold_starts >= 2  # replicas come back after every idle period, cold
    assert s.gpu_hours <= 2.5 * fluid_bound_hours(w, r), (s.gpu_hours, fluid_bound_hours(w, r))


def test_right_sizing_uses_only_the_warm_up() -> None:
    """The spec choice sees the traffic of the warm-up only: a burst after it changes nothing, and without a
    warm-up the specs come from the profiles alone. Catches reading peaks from the scored window."""
    w = load_trace("azure-functions-2019", hours=2.0, models=20)
    learn = 1800.0
    cut = w.truncate(learn)
    assert right_sized(w, learn).services == right_sized(replace(cut, duration_s=w.duration_s), learn).services
    np.testing.assert_array_equal(learned_peaks(w, 0.0), np.zeros(len(w.services)))
    a = np.concatenate([w.arrival_s, np.full(5000, learn + 1.0)])
    o = np.argsort(a, kind="stable")
    flood = make_workload(
        name=w.name,
        duration_s=w.duration_s,
        services=w.services,
        arrival_s=a[o],
        model=np.concatenate([w.model, np.zeros(5000, np.int64)])[o],
        size=np.concatenate([w.size, np.ones(5000)])[o],
    )
    assert learned_peaks(flood, w.duration_s)[0] > learned_peaks(w, w.duration_s)[0]
    assert right_sized(flood, learn).services == right_sized(w, learn).services
    assert right_sized(flood, 0.0).services == right_sized(w, 0.0).services
    assert prepare(w, "rightsized", 1, learn).services[0].min_replicas == 1


def test_learned_bursts_count_work_within_one_cold_start_of_the_warm_up() -> None:
    """The most work (Σ size) within one cold start, from the warm-up only, per model; a model with no request in
    it has none. Catches counting requests instead of work (3 instead of 4), a window longer than the cold start
    (t = 0 and 70 s would join), and windows that reach past the warm-up (the 4-request cluster at 95-99 s)."""
    svc = ServiceConfig("a", _profile(1.0), cold_start_s=60.0)
    arrivals = np.array([0.0, 10.0, 20.0, 70.0, 95.0, 97.0, 98.0, 99.0])
    w = make_workload(
        name="bursts",
        duration_s=200.0,
        services=(svc, replace(svc, model="b")),
        arrival_s=arrivals,
        model=np.zeros(arrivals.size, np.int64),
        size=np.array([1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
    )
    np.testing.assert_array_equal(learned_bursts(w, 90.0), [4.0, 0.0])
    np.testing.assert_array_equal(learned_bursts(w, 200.0), [5.0, 0.0])
    np.testing.assert_array_equal(learned_bursts(w, 0.0), [0.0, 0.0])
