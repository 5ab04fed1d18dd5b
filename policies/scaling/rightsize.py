"""Right-sizing: which measured spec (GPU share) a model's replicas should take.

A replica's GPU share costs in proportion to its fraction; what it buys is capacity at the SLO and latency
margin. Traffic to inference services arrives in bursts that no cold start can catch (a minute of thousands of
requests after an hour of nothing), so the spec is chosen for the peak a model has shown: the smallest share
whose single replica serves the peak at ``target_load`` of its capacity, among the shares that keep a lone
request well inside the SLO (``L(1) <= latency_margin × SLO``) and at least ``BURST_SHARE`` of the whole GPU's
capacity (room for a burst not seen yet); when no share can, the one with the most capacity per replica. A
lightly loaded CNN thus runs on a small share (at batch 1 it is about as fast there as on a whole GPU) and a
bursty one on a larger share. Models measured at one spec only keep it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from shadowscale.policies.types import FloatArray, IntArray, ModelProfile, ServiceConfig

BoolArray = npt.NDArray[np.bool_]

TARGET_LOAD = 0.85
LATENCY_MARGIN = 0.4
BURST_SHARE = 0.5
"""A replica keeps at least this share of the whole-GPU spec's capacity: the burst a model has not shown yet."""
BURST_MARGIN = 4.0
"""With a measured burst: one replica serves this many times the most work seen within one cold start, in one cold
start (2 to 8 give the same Azure Functions day within 0.2 %: what matters is evidence against ``BURST_SHARE``)."""


def choose_spec(
    service: ServiceConfig,
    peak_rps: float,
    target_load: float = TARGET_LOAD,
    latency_margin: float = LATENCY_MARGIN,
    burst_work: float = 0.0,
) -> ModelProfile:
    """The spec for a model whose history peaked at ``peak_rps`` (10-second bins) and received at most
    ``burst_work`` (unit requests, Σ size) within one cold start; 0: no history, ``BURST_SHARE`` holds."""
    specs = service.specs or (service.profile,)
    top = max(p.capacity_rps for p in specs)
    shown = burst_work * BURST_MARGIN if burst_work > 0.0 else math.inf
    options = [
        p
        for p in specs
        if p.batch_latency_s[0] <= latency_margin * p.slo_s
        and (p.capacity_rps >= BURST_SHARE * top - 1e-9 or p.capacity_rps * service.cold_start_s >= shown)
    ]
    if not options:
        return service.profile
    fitting = [p for p in options if p.capacity_rps * target_load >= peak_rps]
    if fitting:
        return min(fitting, key=lambda p: (p.gpu_fraction, -p.capacity_rps))
    return max(options, key=lambda p: (p.capacity_rps, -p.gpu_fraction))


def right_size(
    services: Sequence[ServiceConfig], peak_rps: FloatArray, burst_work: FloatArray | None = None
) -> tuple[ServiceConfig, ...]:
    """The services with each model's profile replaced by its chosen spec for ``peak_rps[i]`` and, when given,
    ``burst_work[i]`` (the most work within one of its cold starts)."""
    bursts = [0.0] * len(services) if burst_work is None else [float(b) for b in burst_work]
    return tuple(
        replace(s, profile=choose_spec(s, float(p), burst_work=b))
        for s, p, b in zip(services, peak_rps, bursts, strict=True)
    )


@dataclass(frozen=True, slots=True)
class SpecTable:
    """Per model and alternative spec (padded to the most specs any model has): GPU share, capacity (requests/s at
    the SLO) and whether a lone request stays within ``LATENCY_MARGIN`` of the SLO there."""

    fraction: FloatArray
    capacity: FloatArray
    usable: BoolArray
    top: FloatArray
    """Per model, the largest capacity among its specs."""

    @staticmethod
    def of(services: Sequence[ServiceConfig]) -> SpecTable | None:
        k = max((len(s.specs) for s in services), default=0)
        if k < 2:
            return None
        n = len(services)
        fraction = np.full((n, k), np.inf)
        capacity = np.zeros((n, k))
        usable = np.zeros((n, k), np.bool_)
        for i, s in enumerate(services):
            if s.llm is not None or len(s.specs) < 2:
                continue
            for j, p in enumerate(s.specs):
                fraction[i, j] = p.gpu_fraction
                capacity[i, j] = p.capacity_rps
                usable[i, j] = p.batch_latency_s[0] <= LATENCY_MARGIN * p.slo_s
        return SpecTable(fraction, capacity, usable, capacity.max(axis=1))

    def choose(self, peak_rps: FloatArray, burst: FloatArray, horizon: FloatArray) -> IntArray:
        """Per model, the spec :func:`choose_spec` picks for this peak and burst
        (requests within one cold start; 0: none seen, the burst floor holds); -1 where no spec qualifies."""
        cap = self.capacity
        shown = np.where(burst > 0.0, burst * BURST_MARGIN, np.inf)[:, None]
        admit = self.usable & ((cap >= BURST_SHARE * self.top[:, None] - 1e-9) | (cap * horizon[:, None] >= shown))
        fits = admit & (cap * TARGET_LOAD >= peak_rps[:, None])
        # smallest share that fits (ties: more capacity); else the most capacity among the admitted
        by_share = np.where(fits, self.fraction - 1e-9 * cap, np.inf)
        by_cap = np.where(admit, cap - 1e-9 * self.fraction, -np.inf)
        pick = np.where(fits.any(axis=1), np.argmin(by_share, axis=1), np.argmax(by_cap, axis=1))
        return np.where(admit.any(axis=1), pick, -1).astype(np.int64)
