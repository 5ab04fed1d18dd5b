"""A hindsight view of a trace, for the policies that are sized from the whole of it (static, oracle)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shadowscale.policies.types import FloatArray, IntArray, ServiceConfig


@dataclass(frozen=True, slots=True)
class Demand:
    """Every request of a trace: arrival time (sorted), model index and size, plus the models' services."""

    arrival_s: FloatArray
    model: IntArray
    size: FloatArray
    services: tuple[ServiceConfig, ...]
    duration_s: float


def work_per_bin(demand: Demand, bin_s: float) -> FloatArray:
    """Sum of request sizes per (bin, model): shape (ceil(duration / bin), n_models)."""
    n_models = len(demand.services)
    n_bins = max(1, int(np.ceil(demand.duration_s / bin_s - 1e-9)))
    b = np.minimum((demand.arrival_s // bin_s).astype(np.int64), n_bins - 1)
    flat = np.bincount(b * n_models + demand.model, weights=demand.size, minlength=n_bins * n_models)
    out: FloatArray = np.asarray(flat, np.float64).reshape(n_bins, n_models)
    return out
