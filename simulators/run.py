"""Run policies over a workload and summarise each run (the numbers ``summary.json`` carries)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from shadowscale.policies.scaling import (
    ORACLE_BIN_S,
    RIGHT_SIZED_POLICIES,
    Demand,
    make_policy,
    oracle_policy,
    oracle_schedule,
)
from shadowscale.policies.scaling.base import ScalingPolicy
from shadowscale.policies.scaling.rightsize import right_size
from shadowscale.policies.types import FloatArray
from shadowscale.simulators.engine import Engine, SimConfig, SimResult
from shadowscale.simulators.workload import Workload

ORACLE_REFINE_PASSES = 4
"""How often the oracle adds a replica to the bins where it still missed the SLO before settling."""


@dataclass(frozen=True, slots=True)
class PolicySummary:
    slo_attainment: float
    gpu_hours: float
    gpus_held_hours: float
    p99_latency_ms: float
    requests: int
    dropped: int
    scale_events: int
    cold_starts: int
    rejected: int = 0
    """Requests refused because prompt + output exceed the model's context (LLM services); also in dropped."""

    def as_dict(self) -> dict[str, float | int]:
        return {
            "slo_attainment": self.slo_attainment,
            "gpu_hours": self.gpu_hours,
            "gpus_held_hours": self.gpus_held_hours,
            "p99_latency_ms": self.p99_latency_ms,
            "requests": self.requests,
            "dropped": self.dropped,
            "scale_events": self.scale_events,
            "cold_starts": self.cold_starts,
            "rejected": self.rejected,
        }


def summarize(result: SimResult) -> PolicySummary:
    """SLO attainment, GPU time and counts over the scored part of the run (after the warm-up, if any)."""
    keep = result.scored
    met = result.met if keep is None else result.met[keep]
    dropped = result.dropped if keep is None else result.dropped[keep]
    latency = result.latency_s if keep is None else result.latency_s[keep]
    n = int(met.shape[0])
    # The percentile is over the requests that were served; dropped ones are counted apart (and as misses).
    served = latency[~dropped]
    p99 = float(np.percentile(served, 99, method="higher")) * 1000.0 if served.size else 0.0
    return PolicySummary(
        slo_attainment=float(met.mean()) if n else 1.0,
        gpu_hours=float(result.gpu_s.sum()) / 3600.0,
        gpus_held_hours=result.gpus_held_s / 3600.0,
        p99_latency_ms=p99,
        requests=n,
        dropped=int(dropped.sum()),
        scale_events=result.scale_events,
        cold_starts=result.cold_starts,
        rejected=0
        if result.rejected is None
        else int(result.rejected.sum() if keep is None else result.rejected[keep].sum()),
    )


SPEC_SETS: tuple[str, ...] = ("traced", "rightsized")
"""The spec sets every policy can run on: the traced (whole-GPU) profiles, or the right-sized shares."""


def demand_of(workload: Workload) -> Demand:
    return Demand(workload.arrival_s, workload.model, workload.size, workload.services, workload.duration_s)


def engine_for(workload: Workload, config: SimConfig) -> Engine:
    return Engine(
        workload.services,
        workload.arrival_s,
        workload.model,
        workload.size,
        workload.duration_s,
        config,
        workload.prompt_tokens,
        workload.output_tokens,
    )


def default_spec(name: str) -> str:
    """The spec set a policy runs on unless told: right-sized for shadowscale and the oracle, else traced."""
    return "rightsized" if name in RIGHT_SIZED_POLICIES else "traced"


def prepare(
    workload: Workload, spec: str = "traced", min_replicas: int | None = None, learn_s: float = 0.0
) -> Workload:
    """The workload on spec set ``spec`` (right-sized from the traffic before ``learn_s`` only), with every model's
    ``min_replicas`` set when given."""
    if spec not in SPEC_SETS:
        raise ValueError(f"unknown spec set {spec!r}; valid: {', '.join(SPEC_SETS)}")
    w = right_sized(workload, learn_s) if spec == "rightsized" else workload
    if min_replicas is not None:
        if min_replicas < 0:
            raise ValueError(f"min_replicas must be >= 0, got {min_replicas}")
        w = replace(w, services=tuple(replace(s, min_replicas=min_replicas) for s in w.services))
    return w


def run_policy(
    workload: Workload,
    name: str,
    config: SimConfig = SimConfig(),
    knob: float | None = None,
    progress: Callable[[float], None] | None = None,
    engine: Engine | None = None,
) -> SimResult:
    """Simulate one policy on ``workload`` as given (see :func:`prepare` for spec sets and min replicas); the
    oracle is refined until it stops missing (or after a few passes)."""
    engine = engine or engine_for(workload, config)
    demand = demand_of(workload)
    if name != "oracle":
        policy: ScalingPolicy[Any] = make_policy(name, demand, knob)
        return engine.run(policy, progress)
    return _run_oracle(workload, engine, demand, config, progress)


PEAK_BIN_S = 10.0


def learned_peaks(workload: Workload, learn_s: float) -> FloatArray:
    """Per model, the highest request rate in any 10 s bin of ``[0, learn_s)`` (zeros when ``learn_s`` is 0: no
    history before the scored window)."""
    n = len(workload.services)
    horizon = min(learn_s, workload.duration_s)
    if horizon <= 0.0:
        return np.zeros(n)
    keep = workload.arrival_s < horizon
    n_bins = max(1, int(np.ceil(horizon / PEAK_BIN_S)))
    b = np.minimum((workload.arrival_s[keep] // PEAK_BIN_S).astype(np.int64), n_bins - 1)
    counts = np.bincount(b * n + workload.model[keep], minlength=n_bins * n).reshape(n_bins, n)
    peaks: FloatArray = counts.max(axis=0) / PEAK_BIN_S
    return peaks


def learned_bursts(workload: Workload, learn_s: float) -> FloatArray:
    """Per model, the most work (Σ size) that arrived within one of its cold starts, over windows that start in
    ``[0, learn_s)`` and are cut at ``learn_s`` (zeros when ``learn_s`` is 0 or the model had no request)."""
    n = len(workload.services)
    out = np.zeros(n)
    horizon = min(learn_s, workload.duration_s)
    if horizon <= 0.0:
        return out
    keep = workload.arrival_s < horizon
    t_all, m_all, w_all = workload.arrival_s[keep], workload.model[keep], workload.size[keep]
    order = np.argsort(m_all, kind="stable")
    bounds = np.searchsorted(m_all[order], np.arange(n + 1))
    for i in range(n):
        j = order[bounds[i] : bounds[i + 1]]
        if j.size == 0:
            continue
        t = t_all[j]
        work = np.concatenate([[0.0], np.cumsum(w_all[j])])
        end = np.searchsorted(t, t + workload.services[i].cold_start_s, side="left")
        out[i] = float((work[end] - work[: t.size]).max())
    return out


def right_sized(workload: Workload, learn_s: float = 0.0) -> Workload:
    """The workload with every model on its right-sized spec (see :mod:`policies.scaling.rightsize`), chosen from
    what is known before the scored window: the peaks and bursts of ``[0, learn_s)`` (the warm-up), and with no
    warm-up the profiles alone (peak 0, no burst seen: the smallest share the latency and burst rules admit)."""
    if all(not s.specs for s in workload.services):
        return workload
    services = right_size(workload.services, learned_peaks(workload, learn_s), learned_bursts(workload, learn_s))
    return replace(workload, services=services)


def _run_oracle(
    workload: Workload,
    engine: Engine,
    demand: Demand,
    config: SimConfig,
    progress: Callable[[float], None] | None,
) -> SimResult:
    schedule = oracle_schedule(demand, ORACLE_BIN_S)
    n_models = len(workload.services)
    passes = ORACLE_REFINE_PASSES + 1

    def step(i: int) -> Callable[[float], None] | None:
        if progress is None:
            return None
        return lambda f: progress((i + f) / passes)

    def play(s: Any, i: int) -> SimResult:
        return engine.run(oracle_policy(demand, ORACLE_BIN_S, s, config.cold_start_s), step(i))

    result = play(schedule, 0)
    for i in range(ORACLE_REFINE_PASSES):
        missed = ~result.met
        if not missed.any():
            break
        n_bins = schedule.shape[0]
        b_all = np.minimum((workload.arrival_s // ORACLE_BIN_S).astype(np.int64), n_bins - 1)
        cell = b_all * n_models + workload.model
        misses = np.bincount(cell[missed], minlength=schedule.size).reshape(schedule.shape)
        total = np.bincount(cell, minlength=schedule.size).reshape(schedule.shape)
        # add replicas in proportion to the share missed (at least one), here and in the bin before it (whose
        # backlog may have caused the misses)
        share = np.divide(misses, total, out=np.zeros(schedule.shape), where=total > 0)
        bump = np.where(misses > 0, np.maximum(1, np.ceil(share * np.maximum(schedule, 1))), 0).astype(np.int64)
        bump[:-1] = np.maximum(bump[:-1], bump[1:])
        hi = np.array([s.max_replicas for s in workload.services])
        schedule = np.minimum(schedule + bump, hi)
        candidate = play(schedule, i + 1)
        if candidate.met.sum() < result.met.sum():
            break
        result = candidate
    if progress is not None:
        progress(1.0)
    return replace(result, policy="oracle")


def run_policies(
    workload: Workload,
    names: Sequence[str],
    config: SimConfig = SimConfig(),
    progress: Callable[[str, float], None] | None = None,
    spec: str | None = None,
    min_replicas: int | None = None,
    workers: int = 1,
) -> dict[str, SimResult]:
    """Run each policy on ``spec`` (None: its default spec set) with ``min_replicas`` (None: each model's own);
    right-sizing learns from the warm-up only. With ``workers`` > 1 the policies run in that many processes
    (progress is then reported per finished policy)."""
    prepared: dict[str, Workload] = {}
    for name in names:
        sp = spec or default_spec(name)
        if sp not in prepared:
            prepared[sp] = prepare(workload, sp, min_replicas, config.warmup_s)
    jobs = [(prepared[spec or default_spec(n)], n, config) for n in names]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            futures = {n: pool.submit(_run_one, job) for n, job in zip(names, jobs, strict=True)}
            out = {}
            for n, f in futures.items():
                out[n] = f.result()
                if progress is not None:
                    progress(n, 1.0)
            return out
    engines: dict[int, Engine] = {}
    out = {}
    for w, name, _ in jobs:
        engine = engines.setdefault(id(w), engine_for(w, config))
        cb = None if progress is None else (lambda f, n=name: progress(n, f))
        out[name] = run_policy(w, name, config, progress=cb, engine=engine)
    return out


def _run_one(job: tuple[Workload, str, SimConfig]) -> SimResult:
    w, name, config = job
    return run_policy(w, name, config)
