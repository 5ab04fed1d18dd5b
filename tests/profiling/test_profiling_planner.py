"""The planner finds the optimum of known functions, learns from infeasible and failed trials, stops by its rules,
and transfers across a toy family of models; a search is a value (same input, same answer)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from shadowscale.policies.profiling.objective import CostTerm, Objective, Pricing
from shadowscale.policies.profiling.planner import PlannerSettings, Search
from shadowscale.policies.profiling.skopt_adapter import Encoder, FloatArray, default_hyper, fit_gp
from shadowscale.policies.profiling.space import Categorical, Levels, Point, Range, SearchSpace
from shadowscale.policies.profiling.transfer import SourceModel, SourceProfile, fit_source
from shadowscale.policies.profiling.types import Observation, TrialResult, TrialStatus

SPACE = SearchSpace(
    (
        Levels("batch", (1, 2, 4, 8, 16, 32, 64), log=True, integer=True),
        Levels("threads", tuple(range(1, 9)), integer=True),
        Categorical("gpu", ("a", "b", "c")),
    )
)  # 7 × 8 × 3 = 168 configurations
MULT = {"a": 0.6, "b": 1.0, "c": 0.8}

Toy = Callable[[Point], TrialResult]


def quadratic(shift: float = 0.0, scale: float = 100.0) -> Toy:
    """A smooth bump in (log2 batch, threads) times a per-GPU factor; every configuration meets the SLO."""

    def f(p: Point) -> TrialResult:
        lb, t, g = math.log2(float(p[0])), float(p[1]), str(p[2])
        thr = scale * MULT[g] * math.exp(-((lb - 4 - shift) ** 2) / 6 - (t - 5 - shift) ** 2 / 12)
        return TrialResult(TrialStatus.MEASURED, throughput=thr, p99_ms=10.0)

    return f


def optimum(f: Toy, objective: Objective) -> float:
    return max(v for p in SPACE.enumerate() if (v := objective.value(SPACE, p, f(p))) is not None)


def drive(search: Search, f: Toy, steps: int) -> Search:
    for _ in range(steps):
        search, sug = search.ask()
        if sug.stop:
            break
        search = search.record(sug.points[0], f(sug.points[0]))
    return search


def trials_to_within(search: Search, f: Toy, target: float, limit: int = 168) -> int:
    for k in range(1, limit + 1):
        search, sug = search.ask()
        p = sug.points[0]
        r = f(p)
        search = search.record(p, r)
        v = search.objective.value(SPACE, p, r)
        if v is not None and v >= 0.95 * target:
            return k
    return limit + 1


FAST = PlannerSettings(ei_threshold=0.0, restarts=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finds_quadratic_optimum_with_categorical_dimension(seed: int) -> None:
    objective = Objective(slo_ms=50.0)
    f = quadratic()
    best = optimum(f, objective)
    search = drive(Search.start(SPACE, objective, FAST, seed=seed), f, 25)
    found = search.best()
    assert found is not None
    value = objective.value(SPACE, found.point, found.result)
    assert value is not None and value >= 0.95 * best, (found.point, value, best)
    assert found.point[2] == "b"


def test_constrained_optimum_and_failed_trials_are_learnt_from() -> None:
    """Throughput grows with batch but p99 = 2 ms × batch must stay within 40 ms (batch <= 16); GPU "c" with more
    than 4 threads fails to start (out of memory). The search finds the best feasible configuration within 30
    trials; failed and infeasible trials are recorded and shape P(feasible)."""
    objective = Objective(slo_ms=40.0, pricing=Pricing((CostTerm("threads", 1.0),), base=2.0))

    def f(p: Point) -> TrialResult:
        b, t, g = float(p[0]), float(p[1]), str(p[2])
        if g == "c" and t > 4:
            return TrialResult.failed("out of memory")
        thr = 10.0 * b**0.8 * t**0.7 * {"a": 1.0, "b": 0.7, "c": 1.3}[g]
        return TrialResult(TrialStatus.MEASURED, throughput=thr, p99_ms=2.0 * b * (1.0 if g != "c" else 1.1))

    best = optimum(f, objective)
    search = drive(Search.start(SPACE, objective, FAST, seed=0), f, 30)
    found = search.best()
    assert found is not None and objective.feasible(found.result)
    value = objective.value(SPACE, found.point, found.result)
    assert value is not None and value >= 0.95 * best
    assert any(not o.result.measured for o in search.observations)  # failures were tried, recorded and kept
    pf = search.posterior().p_feasible()

    def p(select: Callable[[Point], bool]) -> FloatArray:
        return pf[[i for i, q in enumerate(search.candidates) if select(q)]]

    assert float(np.max(p(lambda q: int(q[0]) >= 32))) < 0.05  # latency model: batch >= 32 misses the SLO
    ooms = p(lambda q: q[2] == "c" and int(q[1]) > 4 and int(q[0]) <= 8)
    fine = p(lambda q: q[2] == "c" and int(q[1]) <= 3 and int(q[0]) <= 8)
    assert float(np.mean(ooms)) < float(np.mean(fine)) - 0.2  # failure model: many threads on "c" fail
    assert float(np.min(p(lambda q: int(q[0]) <= 4 and q[2] != "c"))) > 0.5


def test_stopping_rules() -> None:
    objective = Objective(slo_ms=50.0)
    f = quadratic()
    s = drive(Search.start(SPACE, objective, PlannerSettings(budget=7, ei_threshold=0.0, restarts=0)), f, 100)
    assert len(s.observations) == 7
    assert s.suggest().stop == "budget"

    converged = drive(Search.start(SPACE, objective, PlannerSettings(ei_threshold=0.05, restarts=0)), f, 168)
    last = converged.suggest()
    assert last.stop == "converged" and len(converged.observations) < 60
    assert last.acquisition < 0.05

    tiny = SearchSpace((Categorical("gpu", ("a", "b")),))
    t = Search.start(tiny, objective, PlannerSettings(ei_threshold=0.0))
    for _ in range(2):
        t, sug = t.ask()
        t = t.record(sug.points[0], TrialResult(TrialStatus.MEASURED, throughput=1.0, p99_ms=1.0))
    assert t.suggest().stop == "exhausted"


def test_parallel_asks_are_distinct_and_pending_is_respected() -> None:
    objective = Objective(slo_ms=50.0)
    f = quadratic()
    s = drive(Search.start(SPACE, objective, FAST, seed=3), f, 5)
    s, sug = s.ask(3)
    assert len(set(sug.points)) == 3
    assert not set(sug.points) & {o.point for o in s.observations}
    s2, sug2 = s.ask(2)
    assert not set(sug2.points) & set(sug.points)
    s3 = s2.record(sug.points[0], f(sug.points[0])).release(sug.points[1])
    assert len(s3.pending) == 3


def test_a_search_is_a_value() -> None:
    objective = Objective(slo_ms=50.0)
    s = drive(Search.start(SPACE, objective, FAST, seed=4), quadratic(), 8)
    a, b = s.suggest(2), s.suggest(2)
    assert a == b
    assert len(s.observations) == 8  # suggesting changed nothing


def test_profile_reports_chosen_capacity_and_predictions() -> None:
    objective = Objective(slo_ms=50.0, pricing=Pricing((CostTerm("threads", 1.0),)))
    f = quadratic()
    s = drive(Search.start(SPACE, objective, FAST, seed=0), f, 12)
    prof = s.profile("toy", "budget")
    assert len(prof.predictions) == len(SPACE.enumerate())
    assert prof.chosen is not None and prof.chosen_config is not None
    best = s.best()
    assert best is not None and prof.capacity == best.result.throughput
    assert prof.cost == float(best.point[1])
    for pr in prof.predictions:
        assert pr.value_low <= pr.value <= pr.value_high and 0.0 <= pr.p_feasible <= 1.0
    tried = {o.point: o for o in s.observations}
    pr = next(p for p in prof.predictions if p.point == prof.chosen)
    v = objective.value(SPACE, prof.chosen, tried[prof.chosen].result)
    assert v is not None and pr.value_low <= v * 1.05 and v <= pr.value_high * 1.05


def test_transfer_helps_on_a_family_of_models() -> None:
    """Three source models are the same function at other scales and slightly shifted optima; a warm search on a
    fourth needs fewer trials than a cold one, and starts at the sources' optimum."""
    objective = Objective(slo_ms=50.0)
    sources = _family_sources(objective)
    f = quadratic(0.15, 7.0)
    best = optimum(f, objective)
    warm = [trials_to_within(Search.start(SPACE, objective, FAST, sources=sources, seed=s), f, best) for s in range(3)]
    cold = [trials_to_within(Search.start(SPACE, objective, FAST, seed=s), f, best) for s in range(3)]
    assert np.mean(warm) <= 3 and np.mean(warm) < np.mean(cold), (warm, cold)


def test_continuous_ranges_are_searched_over_a_seeded_pool() -> None:
    """A smooth bump over two continuous ranges (one log-scaled) and a categorical: the best of 20 trials is
    within 10 % of the true maximum (1.0)."""
    space = SearchSpace(
        (Range("x", 0.0, 10.0), Range("mem_gb", 0.1, 10.0, log=True), Categorical("kind", ("slow", "fast")))
    )

    def f(p: Point) -> TrialResult:
        x, m, k = float(p[0]), float(p[1]), str(p[2])
        thr = (1.0 if k == "fast" else 0.5) * math.exp(-((x - 7.0) ** 2) / 8 - math.log(m) ** 2 / 2)
        return TrialResult(TrialStatus.MEASURED, throughput=thr, p99_ms=1.0)

    objective = Objective(slo_ms=10.0)
    search = Search.start(space, objective, replace(FAST, pool_size=500), seed=1)
    assert len(search.candidates) == 500 and all(space.contains(p) for p in search.candidates)
    search = drive(search, f, 20)
    best = search.best()
    assert best is not None and best.result.throughput >= 0.9


def _family_sources(objective: Objective) -> list[SourceModel]:
    """Three source models: :func:`quadratic` at other scales with slightly shifted optima (near (16, 5, b))."""
    enc = Encoder(SPACE)
    sources = []
    for k, (shift, scale) in enumerate([(0.0, 30.0), (0.3, 300.0), (-0.3, 3000.0)]):
        g = quadratic(shift, scale)
        obs = tuple(Observation(p, g(p)) for p in SPACE.enumerate())
        model = fit_source(enc, SourceProfile(f"m{k}", SPACE, objective, obs), seed=k)
        assert model is not None
        sources.append(model)
    return sources


def _run(search: Search, f: Toy, limit: int) -> tuple[Search, str | None, str]:
    """Ask and record until the search stops or ``limit`` trials were made: ``(search, stop, reason)``."""
    for _ in range(limit):
        search, sug = search.ask()
        if sug.stop:
            return search, sug.stop, sug.reason
        search = search.record(sug.points[0], f(sug.points[0]))
    return search, None, ""


NO_EI_STOP = PlannerSettings(ei_threshold=0.0, min_trials=40, restarts=0)
"""The EI rule off: only the agreement rule (or the budget) can end a search."""


def test_warm_start_tries_the_sources_best_configuration_first() -> None:
    """The first trial of a warm search follows the transfer prior's order: where the other models did best
    (batch 16, 5 threads, GPU b for every source). Mutation caught: the prior's order reversed or not used for the
    first trial (the acquisition's first pick is elsewhere on this family)."""
    objective = Objective(slo_ms=50.0)
    s = Search.start(SPACE, objective, NO_EI_STOP, sources=_family_sources(objective), seed=0)
    assert s.suggest().points == ((16, 5, "b"),)
    assert s.suggest().reason == "transfer prior"


def test_agreement_rule_stops_a_warm_search_the_sources_explain() -> None:
    """Target and sources of one family (the target's optimum shifted by 0.15): with the EI rule off, the agreement
    rule ends the search within 6 trials, at a configuration within 5 % of the best, and says why. Mutations
    caught: no agreement rule; weights that ignore how well each source explains the trials (uniform: the flat
    component keeps its prior share and the rule never settles); claims that count tried configurations."""
    objective = Objective(slo_ms=50.0)
    f = quadratic(0.15, 7.0)
    s = Search.start(SPACE, objective, NO_EI_STOP, sources=_family_sources(objective), seed=0)
    s, stop, reason = _run(s, f, 40)
    assert stop == "converged" and "transfer prior" in reason, (stop, reason)
    assert len(s.observations) <= 6
    best = s.best()
    assert best is not None
    assert objective.value(SPACE, best.point, best.result) >= 0.95 * optimum(f, objective)
    assert s.doubt() <= 1 - NO_EI_STOP.agree_confidence


@pytest.mark.parametrize("shift", [2.5, -2.5])
def test_agreement_rule_keeps_searching_when_the_sources_mislead(shift: float) -> None:
    """The target's optimum is far from the sources' (shifted by ±2.5): the flat component explains the trials
    better than any source, so the agreement rule does not stop the search in 12 trials (doubt stays high).
    Mutation caught: the sources' claims of a better untried configuration not counted (the rule then ends the
    search far from the best)."""
    objective = Objective(slo_ms=50.0)
    f = quadratic(shift, 7.0)
    s = Search.start(SPACE, objective, NO_EI_STOP, sources=_family_sources(objective), seed=0)
    s, stop, _ = _run(s, f, 12)
    assert stop is None and len(s.observations) == 12
    assert s.doubt() > 0.5


def _sized(latency_scale: float, scale: float = 100.0, shift: float = 0.0) -> Toy:
    """A bump whose best GPU is "b", with "a" within 1 % of it; a lone request takes 30 ms on "a" and 10 ms on
    "b"/"c", times ``latency_scale`` (a larger model of the same family is slower everywhere)."""

    def f(p: Point) -> TrialResult:
        lb, t, g = math.log2(float(p[0])), float(p[1]), str(p[2])
        thr = scale * {"a": 0.99, "b": 1.0, "c": 0.5}[g] * math.exp(-((lb - 4 - shift) ** 2) / 6 - (t - 5) ** 2 / 12)
        return TrialResult(TrialStatus.MEASURED, throughput=thr, p99_ms=latency_scale * (30.0 if g == "a" else 10.0))

    return f


def test_sources_claims_are_judged_at_the_target_s_measured_latency() -> None:
    """Small source models (GPU "a" meets their 50 ms SLO at 30 ms) and a target three times slower (90 ms on "a":
    never feasible). After four trials on "b", whose margins are 1.1 log units above the sources', the sources'
    claims that an untried "a" configuration meets the SLO and may be better are judged, with ``margin_offset``,
    at that offset and withdrawn: the agreement rule's doubt falls to its stopping level; without it the claims
    stand. Mutations caught: the offset not applied, or applied with its sign reversed (the claims grow)."""
    objective = Objective(slo_ms=50.0)
    enc = Encoder(SPACE)
    sources = []
    for k, (shift, scale) in enumerate([(0.0, 30.0), (0.3, 300.0), (-0.3, 3000.0)]):
        g = _sized(1.0, scale, shift)
        obs = tuple(Observation(p, g(p)) for p in SPACE.enumerate())
        model = fit_source(enc, SourceProfile(f"m{k}", SPACE, objective, obs), seed=k)
        assert model is not None
        sources.append(model)
    target = _sized(3.0, 7.0, 0.15)
    doubt = {}
    for flag in (True, False):
        s = Search.start(SPACE, objective, replace(NO_EI_STOP, margin_offset=flag), sources=sources, seed=0)
        for p in ((16, 5, "b"), (16, 6, "b"), (32, 5, "b"), (16, 4, "b")):
            s = s.record(p, target(p))
        doubt[flag] = s.doubt()
    assert doubt[True] <= 1 - NO_EI_STOP.agree_confidence < doubt[False], doubt


def test_warm_ei_rule_stops_early_only_while_the_prior_explains_the_trials() -> None:
    """With the agreement rule off, a warm search whose prior explains every trial may stop by the EI rule from
    ``warm_min_trials`` (3) on; one whose prior is far off (optimum shifted by 2.5) never stops before
    ``min_trials`` (6). Mutations caught: the early floor applied whatever the misfit (the misled search stops
    early), or never applied (the explained one runs to 6)."""
    objective = Objective(slo_ms=50.0)
    sources = _family_sources(objective)
    settings = PlannerSettings(prior_trials=0, restarts=0)
    explained, stop, reason = _run(Search.start(SPACE, objective, settings, sources=sources), quadratic(0.15, 7.0), 40)
    assert stop == "converged" and "expected improvement" in reason
    assert settings.warm_min_trials <= len(explained.observations) < settings.min_trials
    assert explained.posterior().misfit <= settings.warm_misfit
    misled = Search.start(SPACE, objective, settings, sources=sources)
    for _ in range(settings.min_trials):
        assert misled.suggest().stop is None, len(misled.observations)
        misled, sug = misled.ask()
        misled = misled.record(sug.points[0], quadratic(2.5, 7.0)(sug.points[0]))
    assert misled.posterior().misfit > settings.warm_misfit


def test_a_feature_no_trial_varies_does_not_depend_on_the_optimiser_s_luck() -> None:
    """A source whose trials all share one value of a feature (one GPU type, one batch size) says nothing about
    that feature's length scale: the likelihood is flat along it, so with a random restart the fitted value was
    whichever start won by the last bits of the arithmetic -- the same source gave different priors on two CPUs
    (llm-inference-bench-abs: 5.0 / 9.0 trials on one, 4.0 / 7.0 on another). It keeps its starting value, so the
    prediction off that feature is the same for every seed of the optimiser. Mutation caught: the fitted length
    scale kept (predictions at x2 = 1 range from 0 to 1.7 across seeds)."""
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.uniform(0, 1, 12), np.zeros(12), rng.uniform(0, 1, 12)])
    y = np.sin(4 * x[:, 0]) + 0.5 * x[:, 2]
    y = (y - y.mean()) / y.std()
    start = default_hyper(3, 1.0)
    off = np.array([[0.5, 1.0, 0.5]])
    means, sds, scales = [], [], []
    for seed in range(6):
        gp = fit_gp(x, y, start=start, seed=seed, restarts=1)
        m, sd = gp.predict(off)
        means.append(float(m[0]))
        sds.append(float(sd[0]))
        scales.append(gp.hyper.length_scales[1])
    assert scales == [start.length_scales[1]] * 6
    assert max(means) - min(means) < 1e-3 and max(sds) - min(sds) < 1e-3, (means, sds)
    on = gp.predict(x[:3])[0]  # the varying features are still fitted: the training rows are reproduced
    assert np.allclose(on, y[:3], atol=0.05)


def test_new_settings_are_validated() -> None:
    """Bad agreement-rule settings are refused with the field named. Mutation caught: a check removed."""
    for bad, word in (
        ({"agree_confidence": 0.0}, "agree_confidence"),
        ({"agree_confidence": 1.5}, "agree_confidence"),
        ({"agree_tolerance": 0.0}, "agree_tolerance"),
        ({"prior_order": -1}, "prior_order"),
        ({"warm_misfit": -0.1}, "warm_misfit"),
    ):
        with pytest.raises(ValueError, match=word):
            PlannerSettings(**bad)  # type: ignore[arg-type]


def test_gp_fits_in_threads_leak_no_warning_and_leave_the_warning_filters_alone() -> None:
    """The agent's searches ask in threads, several at once. ``warnings.catch_warnings`` around each fit is not
    thread-safe: two threads inside it at once leaked ConvergenceWarnings and, worse, left the process-wide
    filter list of one block installed (every warning of the agent silenced, or its own filters lost). Mutation
    caught: the lock dropped (``with warnings.catch_warnings()`` alone): one round failed in two of three runs,
    the test's three rounds failed in 5 of 5 runs."""
    import threading
    import warnings

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (15, 4))
    y = np.sin(3 * x[:, 0])
    y = (y - y.mean()) / y.std()

    def work() -> None:
        for s in range(15):
            fit_gp(x, y, start=default_hyper(4, 1.0), seed=s, restarts=1)

    for _ in range(3):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            before = list(warnings.filters)
            threads = [threading.Thread(target=work) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert warnings.filters == before
            assert not [w for w in caught if "gaussian_process" in str(w.filename)], [str(w.message) for w in caught]
