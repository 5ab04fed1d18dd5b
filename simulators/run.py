"""Run policies over a workload and summarise each run (the numbers ``summary.json`` carries)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from shadowscale.policies.scaling import (
    ORACLE_BIN_S,
    RIGHT_SIZED_POLICIES,
    Demand,
    Oracle,
    make_policy,
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


def run_policy(
    workload: Workload,
    name: str,
    config: SimConfig = SimConfig(),
    knob: float | None = None,
    progress: Callable[[float], None] | None = None,
    engine: Engine | None = None,
) -> SimResult:
    """Simulate one policy; the oracle is refined until it stops missing (or after a few passes).

    Policies that right-size (``RIGHT_SIZED_POLICIES``) run on the right-sized services; ``right_sized(w)`` gives
    the same workload to any other policy.
    """
    if name in RIGHT_SIZED_POLICIES and not _is_right_sized(workload):
        workload = right_sized(workload)
        engine = None
    engine = engine or engine_for(workload, config)
    demand = demand_of(workload)
    if name != "oracle":
        policy: ScalingPolicy[Any] = make_policy(name, demand, knob)
        return engine.run(policy, progress)
    return _run_oracle(workload, engine, demand, progress)


LEARN_S = 3600.0
"""Right-sizing looks at the first hour of traffic (the history a deployed agent would have)."""
PEAK_BIN_S = 10.0


def learned_peaks(workload: Workload, learn_s: float = LEARN_S) -> FloatArray:
    """Per model, the highest request rate in any 10 s bin of the first ``learn_s`` seconds (a quarter of the
    trace when it is shorter than four hours)."""
    horizon = min(learn_s, workload.duration_s / 4.0)
    keep = workload.arrival_s < horizon
    n = len(workload.services)
    n_bins = max(1, int(np.ceil(horizon / PEAK_BIN_S)))
    b = np.minimum((workload.arrival_s[keep] // PEAK_BIN_S).astype(np.int64), n_bins - 1)
    counts = np.bincount(b * n + workload.model[keep], minlength=n_bins * n).reshape(n_bins, n)
    peaks: FloatArray = counts.max(axis=0) / PEAK_BIN_S
    return peaks


def right_sized(workload: Workload) -> Workload:
    """The workload with every model on its right-sized spec (see :mod:`policies.scaling.rightsize`), sized from
    the peaks of the first hour of traffic."""
    if all(not s.specs for s in workload.services):
        return workload
    return replace(workload, services=right_size(workload.services, learned_peaks(workload)))


def _is_right_sized(workload: Workload) -> bool:
    return workload.services == right_sized(workload).services


def _run_oracle(
    workload: Workload, engine: Engine, demand: Demand, progress: Callable[[float], None] | None
) -> SimResult:
    schedule = oracle_schedule(demand, ORACLE_BIN_S)
    n_models = len(workload.services)
    passes = ORACLE_REFINE_PASSES + 1

    def step(i: int) -> Callable[[float], None] | None:
        if progress is None:
            return None
        return lambda f: progress((i + f) / passes)

    result = engine.run(Oracle(schedule, ORACLE_BIN_S), step(0))
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
        candidate = engine.run(Oracle(schedule, ORACLE_BIN_S), step(i + 1))
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
) -> dict[str, SimResult]:
    engine = engine_for(workload, config)
    out: dict[str, SimResult] = {}
    for name in names:
        cb = None if progress is None else (lambda f, n=name: progress(n, f))
        out[name] = run_policy(workload, name, config, progress=cb, engine=engine)
    return out
