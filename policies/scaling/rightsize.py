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

from collections.abc import Sequence
from dataclasses import replace

from shadowscale.policies.types import FloatArray, ModelProfile, ServiceConfig

TARGET_LOAD = 0.85
LATENCY_MARGIN = 0.4
BURST_SHARE = 0.5
"""A replica keeps at least this share of the whole-GPU spec's capacity: the burst a model has not shown yet."""


def choose_spec(
    service: ServiceConfig, peak_rps: float, target_load: float = TARGET_LOAD, latency_margin: float = LATENCY_MARGIN
) -> ModelProfile:
    specs = service.specs or (service.profile,)
    top = max(p.capacity_rps for p in specs)
    options = [
        p
        for p in specs
        if p.batch_latency_s[0] <= latency_margin * p.slo_s and p.capacity_rps >= BURST_SHARE * top - 1e-9
    ]
    if not options:
        return service.profile
    fitting = [p for p in options if p.capacity_rps * target_load >= peak_rps]
    if fitting:
        return min(fitting, key=lambda p: (p.gpu_fraction, -p.capacity_rps))
    return max(options, key=lambda p: (p.capacity_rps, -p.gpu_fraction))


def right_size(services: Sequence[ServiceConfig], peak_rps: FloatArray) -> tuple[ServiceConfig, ...]:
    """The services with each model's profile replaced by its chosen spec for ``peak_rps[i]``."""
    return tuple(replace(s, profile=choose_spec(s, float(p))) for s, p in zip(services, peak_rps, strict=True))
