"""``bound``: a provable lower bound on the GPU-hours any schedule needs for the work a run actually served.

The fluid bound. For model ``m`` let ``c_m`` be the fewest GPU-seconds one unit of work (a request of size 1) can
cost on any of its measured specs at any batch size the profile measured::

    c_m = min over specs p of m, over b = 1 .. p's largest measured batch, of  p.gpu_fraction × L_p(b) / b

(``L_p`` interpolated as the engine does). Then GPU-hours ≥ Σ_m c_m × W_m / 3600, with ``W_m`` the summed sizes of
the requests of ``m`` that were served (scored, and finished by the end of the trace).

Proof sketch. In the engine a replica of spec ``p`` holds ``p.gpu_fraction`` of a GPU from its creation to its
removal (or the end of its last batch), and it serves requests only in batches; a batch of ``b`` requests of sizes
``s_1..s_b`` occupies it for ``L_p(b) × max_i s_i ≥ L_p(b) × (Σ_i s_i) / b`` seconds, with ``b`` at most its
``max_batch`` ≤ the largest measured batch. Batches of one replica do not overlap, so the GPU-seconds it holds are
at least Σ over its batches of ``gpu_fraction × L_p(b) / b × Σ_i s_i ≥ c_m × (work it served)``. Summing over
replicas and models, and counting only work served inside the scored window ``[warmup, duration)`` (a scored
request arrives after the warm-up, so its batch starts after it; one finished by the end lies wholly inside),
gives the bound. Co-location interference and cold starts only add GPU time, and the right-sized specs are
among ``m``'s measured specs, so the bound holds for every policy on either spec set. It is not reachable in
general: it ignores the SLO, idle time and the granularity of replicas.
"""

from __future__ import annotations

import numpy as np

from shadowscale.policies.types import FloatArray, ModelProfile, ServiceConfig
from shadowscale.simulators.engine import SimResult
from shadowscale.simulators.workload import Workload


def best_gpu_seconds_per_work(profile: ModelProfile) -> float:
    """``min_b gpu_fraction × L(b) / b`` over the profile's measured batch range (interpolated)."""
    sizes = np.arange(1, profile.batch_sizes[-1] + 1, dtype=np.float64)
    table = np.interp(sizes, np.asarray(profile.batch_sizes, np.float64), np.asarray(profile.batch_latency_s))
    return float(profile.gpu_fraction * np.min(table / sizes))


def gpu_seconds_per_work(services: tuple[ServiceConfig, ...]) -> FloatArray:
    """``c_m`` per model: the cheapest GPU-seconds per unit of work over its profile and its measured specs."""
    return np.array([min(best_gpu_seconds_per_work(p) for p in (s.profile, *s.specs)) for s in services])


def served_work(workload: Workload, result: SimResult) -> FloatArray:
    """Per model: summed sizes of the scored requests served and finished by the end of the trace."""
    done = workload.arrival_s + np.nan_to_num(result.latency_s, nan=np.inf)
    ok = ~result.dropped & (done <= workload.duration_s)
    if result.scored is not None:
        ok &= result.scored
    out: FloatArray = np.bincount(
        workload.model[ok], weights=workload.size[ok], minlength=len(workload.services)
    ).astype(np.float64)
    return out


def fluid_bound_hours(workload: Workload, result: SimResult) -> float:
    """The lower bound on GPU-hours for the work ``result`` served (any policy, any spec set)."""
    return float(served_work(workload, result) @ gpu_seconds_per_work(workload.services)) / 3600.0


def fluid_bound_all_hours(workload: Workload, warmup_s: float = 0.0) -> float:
    """The lower bound on GPU-hours to serve every scored request of the trace (no policy served more)."""
    keep = workload.arrival_s >= warmup_s
    work = np.bincount(workload.model[keep], weights=workload.size[keep], minlength=len(workload.services))
    return float(work @ gpu_seconds_per_work(workload.services)) / 3600.0
