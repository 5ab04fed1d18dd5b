"""The hindsight oracle: a schedule that knows the whole trace and starts each replica one cold start ahead.

For each bin of ``bin_s`` seconds and each model the replicas needed are ``ceil(work arriving in the bin /
(capacity per replica at the SLO × bin_s))``, zero when nothing arrives (:func:`oracle_schedule`). A replica needed
in bin ``j`` must exist from bin ``j - ceil(cold_start / bin_s)`` on to be ready in time, so the policy asks at bin
``k`` for the most any of bins ``k - 1 .. k + lead`` needs (:func:`ahead_of_need`): it starts replicas one cold
start ahead, keeps them one bin longer to finish the bin's last requests, and keeps an idle one through a gap
shorter than a cold start (letting it go and starting it again would hold the GPU as long). It pays every cold
start and is scored by the same engine as the policies; the simulator runs it on the right-sized specs and may add
replicas where a pass still missed the SLO. It is a reference, not a lower bound: the lower bound on GPU-hours is
:mod:`simulators.bound`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shadowscale.policies.scaling.base import Decisions, Reason, Signals, bounds, ceil_int
from shadowscale.policies.scaling.demand import Demand, work_per_bin
from shadowscale.policies.types import FloatArray, IntArray, ServiceConfig


def oracle_schedule(demand: Demand, bin_s: float) -> IntArray:
    """Replicas needed per (bin, model) from capacity at the SLO; shape (n_bins, n_models)."""
    work = work_per_bin(demand, bin_s)
    capacity = np.array([s.profile.capacity_rps for s in demand.services])
    need = ceil_int(work / (capacity * bin_s))
    lo, hi = bounds(demand.services)
    return np.minimum(np.maximum(need, lo), hi)


def ahead_of_need(schedule: IntArray, bin_s: float, cold_start_s: FloatArray) -> IntArray:
    """Per (bin, model): the most replicas needed in this bin, the one before (the requests that arrived at its
    end are still being served) or the next ``ceil(cold_start / bin_s)`` bins (a replica must start that early)."""
    out = schedule.copy()
    out[1:] = np.maximum(schedule[1:], schedule[:-1])
    schedule = out.copy()
    n_bins = schedule.shape[0]
    for i in range(schedule.shape[1]):
        lead = math.ceil(float(cold_start_s[i]) / bin_s - 1e-9)
        col = schedule[:, i]
        acc = col.copy()
        for d in range(1, min(lead, n_bins - 1) + 1):
            acc[: n_bins - d] = np.maximum(acc[: n_bins - d], col[d:])
        out[:, i] = acc
    return out


@dataclass(frozen=True, slots=True)
class Oracle:
    """Plays a replica schedule per ``bin_s`` bin (built with :func:`ahead_of_need`), paying cold starts."""

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
        return False

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


def oracle_policy(
    demand: Demand, bin_s: float, schedule: IntArray | None = None, cold_start_s: float | None = None
) -> Oracle:
    """The oracle for ``demand``: its need schedule (or ``schedule``) played one cold start ahead (each service's
    own cold start, or ``cold_start_s`` for all when given)."""
    need = oracle_schedule(demand, bin_s) if schedule is None else schedule
    cold = np.array([s.cold_start_s if cold_start_s is None else cold_start_s for s in demand.services], np.float64)
    return Oracle(ahead_of_need(need, bin_s, cold), bin_s)
