"""A fixed deployment sized for the trace's peak: what an operator without an autoscaler runs.

Replicas per model = ceil(peak work rate / capacity per replica at the SLO), at least 1, where the peak work rate
is the highest request work (sum of request sizes) in any of the trace's ``window_s`` bins (aligned to t = 0),
per second. The replicas exist and are warm for the whole run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shadowscale.policies.scaling.base import Decisions, Reason, Signals, bounds, ceil_int
from shadowscale.policies.scaling.demand import Demand, work_per_bin
from shadowscale.policies.types import IntArray, ServiceConfig


def peak_replicas(demand: Demand, window_s: float = 60.0) -> IntArray:
    work = work_per_bin(demand, window_s)
    peak_rate = work.max(axis=0) / window_s if work.size else np.zeros(len(demand.services))
    capacity = np.array([s.profile.capacity_rps for s in demand.services])
    lo, hi = bounds(demand.services)
    return np.minimum(np.maximum(ceil_int(peak_rate / capacity), np.maximum(lo, 1)), hi)


@dataclass(frozen=True, slots=True)
class Static:
    replicas: IntArray

    @property
    def name(self) -> str:
        return "static"

    @property
    def tick_s(self) -> float:
        return 60.0

    @property
    def hindsight(self) -> bool:
        return False

    def init(self, services: Sequence[ServiceConfig]) -> tuple[IntArray, None]:
        return self.replicas.copy(), None

    def decide(self, signals: Signals, state: None) -> tuple[Decisions, None]:
        n = signals.n_models
        r = self.replicas.astype(np.float64)
        return (
            Decisions(self.name, signals.now, self.replicas.copy(), np.full(n, int(Reason.HOLD), np.int64), r, r, r),
            None,
        )
