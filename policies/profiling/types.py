"""Values that cross the profiler's boundaries: trials asked for, their results, and the profile a model gets."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from shadowscale.policies.profiling.space import Point, Value


class TrialStatus(StrEnum):
    MEASURED = "measured"
    """The runner measured the configuration (whether or not it met the SLO)."""
    FAILED = "failed"
    """No measurement: the server crashed, ran out of memory, failed to start, hung or timed out."""
    UNSCHEDULABLE = "unschedulable"
    """No measurement and nothing learnt about the configuration: the cluster had no room for the shadow (its pod
    stayed ``Unschedulable``). The trial is retried later and never scored (:meth:`Search.record` refuses it)."""


@dataclass(frozen=True, slots=True)
class Trial:
    """One trial a runner is asked to run: ``config`` applied to ``model``, judged against ``slo_ms``.

    ``trial_id`` tags everything the trial creates (shadow workloads, load, results events) so it can be found and
    torn down. ``timeout_s`` is the runner's own deadline; the search driver also enforces one.
    """

    trial_id: str
    model: str
    config: Mapping[str, Value]
    slo_ms: float
    timeout_s: float = 600.0


@dataclass(frozen=True, slots=True)
class TrialResult:
    """What a runner measured.

    ``throughput`` is the capacity of the configuration: requests (or tokens, samples; the dataset's unit) per
    second sustained with p99 latency ``p99_ms`` (a load-testing runner reports the highest rate that met the SLO
    and the p99 there; when even its lowest rate misses the SLO, ``throughput`` is 0 and ``p99_ms`` the latency at
    that rate). ``cost`` overrides the objective's pricing when the runner knows better. A FAILED result carries
    the reason in ``error``; its numbers are meaningless.
    """

    status: TrialStatus
    throughput: float = 0.0
    p99_ms: float = math.nan
    cost: float | None = None
    error: str = ""
    wall_s: float = 0.0
    details: Mapping[str, float] = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        return self.status is TrialStatus.MEASURED

    @classmethod
    def failed(cls, error: str, wall_s: float = 0.0) -> TrialResult:
        return cls(TrialStatus.FAILED, error=error, wall_s=wall_s)

    @classmethod
    def unschedulable(cls, error: str, wall_s: float = 0.0) -> TrialResult:
        return cls(TrialStatus.UNSCHEDULABLE, error=error, wall_s=wall_s)


@dataclass(frozen=True, slots=True)
class Observation:
    """A trial the planner has learnt from: the configuration tried and its result."""

    point: Point
    result: TrialResult


@dataclass(frozen=True, slots=True)
class Prediction:
    """The surrogate's belief about one configuration: objective (throughput per cost) and P(SLO met).

    ``value`` is the predicted median of throughput per cost, ``value_low``/``value_high`` a 90 % band
    (the surrogate is Gaussian in ``log`` value). ``p_feasible`` is the probability that p99 meets the SLO.
    """

    point: Point
    value: float
    value_low: float
    value_high: float
    p_feasible: float


@dataclass(frozen=True, slots=True)
class Suggestion:
    """The planner's answer to "what next": configurations to try, or a reason to stop.

    ``stop`` is set (``"budget"``, ``"converged"``, ``"exhausted"``) when the search should end; ``points`` is then
    empty. ``points`` may also be empty without ``stop`` when every remaining configuration is already running.
    ``acquisition`` is the best expected improvement × P(feasible) as the stopping rule judges it (with its wider
    latency noise), in log-objective units: 0.01 ≈ "expects to gain 1 %".
    """

    points: tuple[Point, ...]
    stop: str | None
    reason: str
    acquisition: float


@dataclass(frozen=True, slots=True)
class Profile:
    """What a model gets from a search: every trial, the surrogate's predictions, and the chosen configuration.

    ``chosen`` is the best feasible measured configuration (None when no trial met the SLO) and ``capacity`` its
    measured throughput at the SLO (requests/s for a live runner): the number the autoscaler divides demand by.
    ``cost`` is its cost, ``stopped`` why the search ended.
    """

    model: str
    names: tuple[str, ...]
    slo_ms: float
    observations: tuple[Observation, ...]
    predictions: tuple[Prediction, ...]
    chosen: Point | None
    capacity: float
    cost: float
    stopped: str

    @property
    def chosen_config(self) -> dict[str, Value] | None:
        return None if self.chosen is None else dict(zip(self.names, self.chosen, strict=True))
