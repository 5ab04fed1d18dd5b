"""The fast engine against the event-loop reference, conservation of requests, accounting and determinism."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from shadowscale.policies.scaling import POLICY_NAMES, Demand, make_policy
from shadowscale.policies.types import ModelProfile, ServiceConfig
from shadowscale.simulators.engine import Engine, SimConfig, SimResult
from shadowscale.simulators.reference import simulate_reference
from shadowscale.simulators.run import run_policies, summarize
from shadowscale.simulators.traces import load_trace
from shadowscale.simulators.workload import Workload


def _profile(l1: float, max_batch: int = 16) -> ModelProfile:
    sizes = (1, 2, 4, 8, 16)
    return ModelProfile("test", "test", sizes, tuple(l1 * x for x in (1, 1.05, 1.2, 1.6, 2.4)), 5 * l1, max_batch)


def _synthetic(seed: int, n: int = 4, duration: float = 1200.0, peak: float = 12.0, sizes: bool = False):
    """On/off traffic per model (bursts every 5 minutes) so that every policy scales up, down and to zero."""
    rng = np.random.default_rng(seed)
    services = tuple(ServiceConfig(f"m{i}", _profile(0.04 * (i + 1)), cold_start_s=20.0) for i in range(n))
    arr, mdl = [], []
    for i in range(n):
        rate = np.where((np.arange(int(duration)) // 300) % 2 == 0, peak * (i + 1), 0.05)
        cnt = rng.poisson(rate)
        arr.append(np.repeat(np.arange(int(duration)), cnt) + rng.random(cnt.sum()))
        mdl.append(np.full(cnt.sum(), i))
    a = np.concatenate(arr)
    m = np.concatenate(mdl).astype(np.int64)
    o = np.argsort(a, kind="stable")
    size = rng.uniform(0.3, 2.0, a.size) if sizes else np.ones(a.size)
    return services, a[o], m[o], size[o], duration


def _both(services, a, m, s, duration, name, config, knob=None) -> tuple[SimResult, SimResult]:
    demand = Demand(a, m, s, services, duration)
    policy = make_policy(name, demand, knob)
    fast = Engine(services, a, m, s, duration, config).run(policy)
    ref = simulate_reference(services, a, m, s, duration, policy, config)
    return fast, ref


def _assert_same(fast: SimResult, ref: SimResult) -> None:
    """Same decisions, and for every request the same outcome: dropped or served, latency, SLO met or missed.

    Comparing ``met`` request by request is what makes the parity tests see a wrong SLO rule. Mutation caught: the
    fast engine judging a request against the profile's SLO without scaling it by the request's size
    (``slo_per_req = slo_s[model]`` in ``Engine.run``): latencies and drops stay identical, only ``met`` changes,
    and before ``met`` was compared all 32 tests of this file passed with it.
    """
    assert fast.decisions == ref.decisions
    np.testing.assert_array_equal(fast.dropped, ref.dropped)
    # every request: NaN (dropped) in both, or the same latency
    np.testing.assert_allclose(fast.latency_s, ref.latency_s, rtol=1e-9, atol=1e-9, equal_nan=True)
    np.testing.assert_array_equal(fast.met, ref.met)
    np.testing.assert_allclose(fast.gpu_s, ref.gpu_s, rtol=1e-9, atol=1e-6)
    assert fast.scale_events == ref.scale_events
    assert fast.cold_starts == ref.cold_starts
    np.testing.assert_array_equal(fast.tick_replicas, ref.tick_replicas)


KNOBS = {"kpa": 3.0, "keda": 5.0, "hpa": None, "static": None, "oracle": None, "shadowscale": None}


@pytest.mark.parametrize("vector_min", [0, 10**9], ids=["vector-path", "per-request-path"])
@pytest.mark.parametrize("name", POLICY_NAMES)
def test_fast_engine_matches_event_loop_reference(name: str, vector_min: int) -> None:
    """Same requests, same decisions, same latencies, drops, SLO outcomes and GPU time — with and without the
    vector path, with request sizes that vary (0.3–2× the profile's unit of work), so that both the service time
    and the SLO of each request depend on its size.

    Mutations caught: the fast engine ignoring request size in its SLO rule (12 of 12 cases fail), in the service
    time of a batch (``L(b)`` for ``L(b) × max(size)``) or of a lone request (12 of 12 each), or in the vector path
    (its 6 cases).
    """
    services, a, m, s, duration = _synthetic(seed=3, sizes=True)
    config = SimConfig(timeout_s=15.0, record_decisions=True, vector_min_requests=vector_min)
    fast, ref = _both(services, a, m, s, duration, name, config, KNOBS[name])
    _assert_same(fast, ref)
    assert fast.decisions or name == "static", "the scenario must make the policy act"


@pytest.mark.parametrize("sizes", [True, False], ids=["varied-sizes", "unit-sizes"])
@pytest.mark.parametrize("name", ["hpa", "kpa", "keda"])
def test_reference_parity_with_request_sizes_and_zero_cold_start(name: str, sizes: bool) -> None:
    """Variable request sizes (LLM-like) and instant warm-up exercise batch formation and draining; unit sizes the
    batches whose requests all end together."""
    services, a, m, s, duration = _synthetic(seed=11, sizes=sizes, peak=6.0)
    config = SimConfig(timeout_s=10.0, cold_start_s=0.0, record_decisions=True, vector_min_requests=0)
    fast, ref = _both(services, a, m, s, duration, name, config, KNOBS[name])
    _assert_same(fast, ref)


def test_reference_parity_on_a_real_trace_slice() -> None:
    """The first hour of the 40 busiest Azure functions, every policy's decisions identical."""
    w = load_trace("azure-functions-2019", seed=1, hours=1.0, models=40)
    config = SimConfig(record_decisions=True, vector_min_requests=0)
    for name in ("hpa", "kpa"):
        fast, ref = _both(w.services, w.arrival_s, w.model, w.size, w.duration_s, name, config, KNOBS[name])
        _assert_same(fast, ref)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_request_is_served_or_counted_as_a_miss(name: str) -> None:
    """Conservation: each request has a latency or is dropped, and dropped ones are misses."""
    services, a, m, s, duration = _synthetic(seed=5)
    r = Engine(services, a, m, s, duration, SimConfig(timeout_s=10.0)).run(
        make_policy(name, Demand(a, m, s, services, duration), KNOBS[name])
    )
    assert r.requests == a.size
    served = ~np.isnan(r.latency_s)
    assert np.all(served ^ r.dropped)
    assert not np.any(r.met & r.dropped)
    assert np.all(r.latency_s[served] > 0)
    # a request is never served faster than its batch-of-one latency
    l1 = np.array([sv.profile.batch_latency_s[0] for sv in services])[m]
    assert np.all(r.latency_s[served] >= l1[served] * s[served] - 1e-12)


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_met_means_served_within_the_slo_scaled_by_request_size(engine: str) -> None:
    """Each engine on its own: a request meets its SLO exactly when it was served within ``slo_s × size`` of its
    model's profile (the SLO of long-running requests is relative to their work).

    The scenario is checked to be one where the rule matters: some served requests meet the size-scaled SLO but
    not the unscaled one, and some the other way round. Mutation caught: either engine judging against the
    unscaled SLO (``… * size`` dropped from its ``met``).
    """
    services, a, m, s, duration = _synthetic(seed=11, sizes=True, peak=6.0)
    config = SimConfig(timeout_s=10.0, cold_start_s=0.0, vector_min_requests=0)
    fast, ref = _both(services, a, m, s, duration, "keda", config, KNOBS["keda"])
    r = fast if engine == "fast" else ref
    slo = np.array([sv.profile.slo_s for sv in services])[m]
    served = ~r.dropped
    lat = np.where(served, r.latency_s, np.inf)
    within_scaled = served & (lat <= slo * s + 1e-12)
    within_unscaled = served & (lat <= slo + 1e-12)
    assert (within_scaled & ~within_unscaled).sum() > 0
    assert (within_unscaled & ~within_scaled).sum() > 0
    np.testing.assert_array_equal(r.met, within_scaled)


def test_equal_request_counts_across_policies_and_determinism() -> None:
    w = load_trace("azure-functions-2019", seed=2, hours=0.5, models=30)
    results = run_policies(w, list(POLICY_NAMES))
    counts = {n: summarize(r).requests for n, r in results.items()}
    assert set(counts.values()) == {w.arrival_s.size}
    again = run_policies(w, ["hpa", "oracle"])
    for n in ("hpa", "oracle"):
        assert summarize(again[n]) == summarize(results[n])
        np.testing.assert_array_equal(again[n].latency_s, results[n].latency_s)


def _one_model(rate_fn, duration: float, l1: float = 0.1, cold: float = 30.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    sec = np.arange(int(duration))
    cnt = rng.poisson(rate_fn(sec))
    a = np.sort(np.repeat(sec, cnt) + rng.random(cnt.sum()))
    svc = (ServiceConfig("m", _profile(l1), cold_start_s=cold),)
    return Workload("one", duration, svc, a, np.zeros(a.size, np.int64), np.ones(a.size))


def test_gpu_hours_count_cold_start_and_fraction() -> None:
    """A static replica holding half a GPU for an hour is 0.5 GPU-hours, whatever the traffic."""
    w = _one_model(lambda t: np.full(t.shape, 1.0), 3600.0)
    half = replace(w.services[0].profile, gpu_fraction=0.5)
    w = replace(w, services=(replace(w.services[0], profile=half),))
    r = run_policies(w, ["static"])["static"]
    assert summarize(r).gpu_hours == pytest.approx(0.5)


def test_cold_start_delays_service_and_counts_gpu_time() -> None:
    """KEDA scales from zero: the first request waits for the cold start; the replica's GPU time starts at once.
    Long-running requests (200 × the unit: 20 s of service, SLO 100 s) meet their SLO through the cold start."""
    w = _one_model(lambda t: np.where((t >= 600) & (t < 660), 0.1, 0.0), 1200.0, cold=45.0, seed=2)
    w = replace(w, size=np.full(w.arrival_s.shape, 200.0))
    r = Engine(w.services, w.arrival_s, w.model, w.size, w.duration_s, SimConfig()).run(make_policy("keda"))
    first = int(np.argmin(w.arrival_s))
    # KEDA polls every 30 s, then the replica needs 45 s: the first request waits at least 45 s
    assert r.latency_s[first] >= 45.0 + 20.0
    assert r.met[first]
    assert r.cold_starts >= 1
    assert summarize(r).gpu_hours > 0


def test_requests_are_dropped_by_the_time_out_or_when_their_slo_is_lost_never_before_the_cold_start() -> None:
    """KEDA takes an idle workload to zero at its first poll; its next requests wait 30 s (poll) + 120 s (cold
    start). Unit requests (SLO 0.5 s) are dropped when the new replica reaches them, hopeless; none is dropped by
    a clock shorter than the cold start (a 20 s time-out is raised to 120 s). Long requests whose SLO covers the
    wait (size 400: SLO 200 s, 40 s of service) are all served within it. Catches: a time-out shorter than the
    cold start (every request of the second run would be dropped), and serving hopeless requests late."""
    w = _one_model(lambda t: np.where((t > 0) & (t < 5), 5.0, 0.0), 600.0, cold=120.0)
    r = Engine(w.services, w.arrival_s, w.model, w.size, w.duration_s, SimConfig(timeout_s=20.0)).run(
        make_policy("keda")
    )
    assert r.dropped.all()
    assert not r.met.any()
    few = _one_model(lambda t: np.where((t > 0) & (t < 5), 0.6, 0.0), 600.0, cold=120.0)
    big = replace(few, size=np.full(few.arrival_s.shape, 600.0))
    r2 = Engine(big.services, big.arrival_s, big.model, big.size, big.duration_s, SimConfig()).run(
        make_policy("keda", knob=1000.0)
    )
    assert not r2.dropped.any()
    assert r2.met.all() and big.arrival_s.size >= 2 and np.all(r2.latency_s > 120.0)
    assert SimConfig().timeout_s == 300.0
    # past the stack's time-out (here 130 s, above the cold start) a queued request is dropped, met or not
    r3 = Engine(big.services, big.arrival_s, big.model, big.size, big.duration_s, SimConfig(timeout_s=130.0)).run(
        make_policy("keda", knob=1000.0)
    )
    assert r3.dropped.all()


def test_dynamic_batching_forms_batches_under_load() -> None:
    """One replica under a load above its batch-of-one capacity still meets the SLO by batching."""
    # batch-of-one capacity 10/s (L(1)=0.1 s), batched capacity 16/0.24 = 66/s; offer 30/s
    w = _one_model(lambda t: np.full(t.shape, 30.0), 120.0)
    r = Engine(w.services, w.arrival_s, w.model, w.size, w.duration_s, SimConfig()).run(
        make_policy("static", Demand(w.arrival_s, w.model, w.size, w.services, w.duration_s))
    )
    assert summarize(r).slo_attainment > 0.99
    # some request waited for a batch: its latency exceeds the batch-of-one latency
    assert np.nanmax(r.latency_s) > 0.1 + 1e-9


@pytest.mark.parametrize("name", ["kpa", "keda", "shadowscale"])
def test_warm_up_is_run_but_not_scored_and_both_engines_agree(name: str) -> None:
    """With ``warmup_s`` the run is the same (same decisions, same latencies) but the result leaves out what
    happened before it: requests that arrived earlier, GPU time, scale events and cold starts."""
    services, a, m, s, duration = _synthetic(seed=3)
    base = SimConfig(timeout_s=15.0, record_decisions=True)
    warm = replace(base, warmup_s=400.0)
    full, _ = _both(services, a, m, s, duration, name, base, KNOBS[name])
    fast, ref = _both(services, a, m, s, duration, name, warm, KNOBS[name])
    _assert_same(fast, ref)
    assert fast.decisions == full.decisions
    np.testing.assert_array_equal(fast.latency_s, full.latency_s)
    assert fast.scored is not None and ref.scored is not None
    np.testing.assert_array_equal(fast.scored, a >= 400.0)
    np.testing.assert_array_equal(ref.scored, a >= 400.0)
    # GPU time after the warm-up: the whole run's minus what the same run holds up to t = 400 s
    prefix = Engine(services, a[a < 400.0], m[a < 400.0], s[a < 400.0], 400.0, base).run(
        make_policy(name, Demand(a, m, s, services, duration), KNOBS[name])
    )
    np.testing.assert_allclose(fast.gpu_s, full.gpu_s - prefix.gpu_s, rtol=1e-9, atol=1e-6)
    assert fast.gpus_held_s == pytest.approx(full.gpus_held_s - prefix.gpus_held_s, rel=1e-9, abs=1e-6)
    assert fast.scale_events == sum(1 for t, _, _ in full.decisions if t >= 400.0)
    assert 0 < fast.scale_events < full.scale_events
    got = summarize(fast)
    assert got.requests == int((a >= 400.0).sum())
    assert got.slo_attainment == pytest.approx(float(full.met[a >= 400.0].mean()))


def test_warm_up_must_be_a_non_negative_number() -> None:
    with pytest.raises(ValueError, match="warmup_s"):
        SimConfig(warmup_s=-1.0)


def test_policies_in_worker_processes_give_the_same_results() -> None:
    """``run_policies(workers=2)`` (the CLI's --jobs) returns what the serial run returns, per policy."""
    w = load_trace("azure-functions-2019", seed=2, hours=0.25, models=10)
    names = ["hpa", "oracle", "shadowscale"]
    serial = run_policies(w, names)
    parallel = run_policies(w, names, workers=2)
    for n in names:
        assert summarize(parallel[n]) == summarize(serial[n])
        np.testing.assert_array_equal(parallel[n].latency_s, serial[n].latency_s)
