"""Profiling: per-model performance profiles found by a Bayesian search over configurations.

- :mod:`~policies.profiling.space`: search spaces (dimensions, forbidden combinations, candidates);
- :mod:`~policies.profiling.objective`: throughput per unit of cost under a p99 SLO, and pricing;
- :mod:`~policies.profiling.config`: spaces and objectives from configuration and workload annotations;
- :mod:`~policies.profiling.planner`: the planner (:class:`~policies.profiling.planner.Search`);
- :mod:`~policies.profiling.transfer`: warm starts from other models' profiles;
- :mod:`~policies.profiling.ports`: the trial-runner port; :mod:`~policies.profiling.replay` its dataset runner;
- :mod:`~policies.profiling.skopt_adapter`: the only module that imports scikit-optimize.

Importing this package imports none of the modules that need scikit-optimize.
"""

from __future__ import annotations

from shadowscale.policies.profiling.objective import CostTerm, Objective, Pricing
from shadowscale.policies.profiling.ports import TrialRunner
from shadowscale.policies.profiling.space import Categorical, Dimension, Levels, Point, Range, SearchSpace, Value
from shadowscale.policies.profiling.types import (
    Observation,
    Prediction,
    Profile,
    Suggestion,
    Trial,
    TrialResult,
    TrialStatus,
)

__all__ = [
    "Categorical",
    "CostTerm",
    "Dimension",
    "Levels",
    "Objective",
    "Observation",
    "Point",
    "Prediction",
    "Pricing",
    "Profile",
    "Range",
    "SearchSpace",
    "Suggestion",
    "Trial",
    "TrialResult",
    "TrialRunner",
    "TrialStatus",
    "Value",
]
