"""The replay trial runner: a trial's result is looked up in a measured dataset (benchmarks, the simulator).

A row with no latency (the dataset says the SLO was never reached) replays as a measurement with an infinite p99
(infeasible); a configuration the dataset does not hold is a failed trial ("not measured"), never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from shadowscale.policies.profiling.space import Point, SearchSpace
from shadowscale.policies.profiling.types import Trial, TrialResult, TrialStatus


@dataclass(frozen=True, slots=True)
class Measured:
    """One dataset row: throughput (the dataset's unit) and latency in ms (NaN = none), optional cost."""

    throughput: float
    latency_ms: float
    cost: float | None = None


class ReplayRunner:
    """A :class:`~policies.profiling.ports.TrialRunner` over a table of measured configurations."""

    def __init__(self, space: SearchSpace, rows: Mapping[Point, Measured]) -> None:
        self.space = space
        self.rows = {space.point(p): m for p, m in rows.items()}

    def measure(self, trial: Trial) -> TrialResult:
        """The stored result of ``trial.config`` (synchronous: a lookup)."""
        try:
            p = self.space.point(trial.config)
        except ValueError as e:
            return TrialResult.failed(str(e))
        m = self.rows.get(p)
        if m is None:
            return TrialResult.failed(f"configuration {dict(trial.config)} was not measured")
        latency = m.latency_ms if math.isfinite(m.latency_ms) and m.latency_ms > 0 else math.inf
        return TrialResult(TrialStatus.MEASURED, throughput=m.throughput, p99_ms=latency, cost=m.cost)

    async def run_trial(self, trial: Trial) -> TrialResult:
        return self.measure(trial)
