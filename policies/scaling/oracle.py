"""The hindsight oracle: the fewest replicas over time that meet the SLO if every replica is warm when needed.

For each bin of ``bin_s`` seconds and each model, replicas = ceil(work arriving in the bin / (capacity per
replica at the SLO × bin_s)), zero when nothing arrives. The simulator runs it with no cold start (it is a lower
bound on cost, not a policy one could run) and may add ``extra`` replicas where the first pass still missed
the SLO (burstiness inside a bin, large requests), so that it reaches full attainment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shadowscale.policies.scaling.base import Decisions, Reason, Signals, bounds, ceil_int
from shadowscale.policies.scaling.demand import Demand, work_per_bin
from shadowscale.policies.types import IntArray, ServiceConfig


def oracle_schedule(demand: Demand, bin_s: float) -> IntArray:
    """Replicas per (bin, model) from capacity at the SLO; shape (n_bins, n_models)."""
    work = work_per_bin(demand, bin_s)
    capacity = np.array([s.profile.capacity_rps for s in demand.services])
    need = ceil_int(work / (capacity * bin_s))
    lo, hi = bounds(demand.services)
    return np.minimum(np.maximum(need, lo), hi)


@dataclass(frozen=True, slots=True)
class Oracle:
    schedule: IntArray
    bin_s: float = 10.0

    @property
    def name(self) -> str:
        return "oracle"

    @property
    def tick_s(self) -> float:
        return self.bin_s

    @property
    def hindsight(self) -> bool:
        return True

    def _at(self, now: float) -> IntArray:
        k = min(int(now // self.bin_s + 1e-9), self.schedule.shape[0] - 1)
        row: IntArray = self.schedule[k]
        return row

    def init(self, services: Sequence[ServiceConfig]) -> tuple[IntArray, None]:
        return self._at(0.0).copy(), None

    def decide(self, signals: Signals, state: None) -> tuple[Decisions, None]:
        out = self._at(signals.now).copy()
        n = signals.n_models
        r = out.astype(np.float64)
        return Decisions(self.name, signals.now, out, np.full(n, int(Reason.SCHEDULE), np.int64), r, r, r), None
