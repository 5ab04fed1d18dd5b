"""Domain types shared by every policy, the simulator and the agent.

Everything here is a frozen, slotted dataclass (or a named alias of a numpy array): values in, values out.
Validation happens at the edges (trace readers, config, events); these types assume valid input and say
in their docstrings what "valid" means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from shadowscale.policies.llm import LlmServing

FloatArray: TypeAlias = npt.NDArray[np.float64]
IntArray: TypeAlias = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """Measured performance of one model at one spec (GPU fraction), as a batch-latency curve.

    ``batch_sizes`` are strictly increasing and start at 1; ``batch_latency_s[i]`` is the time one replica needs
    to run a batch of ``batch_sizes[i]`` requests of unit size. Latency for sizes between measured points is
    interpolated linearly. ``slo_s`` is the latency objective for a request of unit size (a request of size
    ``s`` has objective ``s * slo_s``). ``max_batch`` is the largest batch the server forms.
    """

    name: str
    source: str
    batch_sizes: tuple[int, ...]
    batch_latency_s: tuple[float, ...]
    slo_s: float
    max_batch: int
    gpu_fraction: float = 1.0
    """Share of one GPU in (0, 1], or a whole number of GPUs (> 1) for a tensor-parallel replica."""

    def __post_init__(self) -> None:
        if not self.batch_sizes or self.batch_sizes[0] != 1:
            raise ValueError(f"profile {self.name}: batch_sizes must start at 1")
        if len(self.batch_sizes) != len(self.batch_latency_s):
            raise ValueError(f"profile {self.name}: batch_sizes and batch_latency_s differ in length")
        if any(b2 <= b1 for b1, b2 in zip(self.batch_sizes, self.batch_sizes[1:], strict=False)):
            raise ValueError(f"profile {self.name}: batch_sizes must be strictly increasing")
        if any(not (math.isfinite(x) and x > 0) for x in self.batch_latency_s):
            raise ValueError(f"profile {self.name}: latencies must be positive and finite")
        if not (self.slo_s > 0 and math.isfinite(self.slo_s)):
            raise ValueError(f"profile {self.name}: slo_s must be positive and finite")
        if not 1 <= self.max_batch <= self.batch_sizes[-1]:
            raise ValueError(f"profile {self.name}: max_batch must be within the measured batch sizes")
        if not (0 < self.gpu_fraction <= 1 or (self.gpu_fraction > 1 and float(self.gpu_fraction).is_integer())):
            raise ValueError(f"profile {self.name}: gpu_fraction must be in (0, 1] or a whole number of GPUs")

    def latency_table(self) -> FloatArray:
        """Batch latency for every batch size 0..max_batch (index = batch size; index 0 is unused, 0.0)."""
        sizes = np.arange(self.max_batch + 1, dtype=np.float64)
        table = np.asarray(
            np.interp(sizes, np.asarray(self.batch_sizes, np.float64), np.asarray(self.batch_latency_s)), np.float64
        )
        table[0] = 0.0
        return table

    @property
    def capacity_rps(self) -> float:
        """Requests of unit size one replica serves per second at full batches of ``max_batch``.

        The throughput the replica sustains while meeting the SLO, by construction of ``max_batch`` (the
        catalogue picks the largest batch whose latency leaves room to wait for one batch in front).
        """
        return self.max_batch / float(self.latency_table()[self.max_batch])


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """How one model is deployed: its profile, replica bounds and cold-start time.

    ``specs`` are the measured alternatives to ``profile`` (the same model at other GPU shares, same SLO) that
    right-sizing may choose from; empty when only ``profile`` was measured. ``llm`` is set for an LLM served
    with continuous batching (:mod:`policies.llm`): the simulator then serves it step by step and judges its
    requests by TTFT and TPOT; ``profile`` stays the capacity curve policies read.
    """

    model: str
    profile: ModelProfile
    min_replicas: int = 0
    max_replicas: int = 1000
    cold_start_s: float = 60.0
    specs: tuple[ModelProfile, ...] = ()
    llm: LlmServing | None = None


@dataclass(frozen=True, slots=True)
class Replica:
    """One replica of a model, holding ``gpu_fraction`` of a GPU from ``created_at``; it serves from ``ready_at``."""

    model: str
    created_at: float
    ready_at: float
    gpu_fraction: float = 1.0


@dataclass(frozen=True, slots=True)
class Cluster:
    """The replicas that exist at one instant, by model."""

    now: float
    replicas: dict[str, tuple[Replica, ...]] = field(default_factory=dict)

    def gpu_in_use(self) -> float:
        return sum(r.gpu_fraction for rs in self.replicas.values() for r in rs)


@dataclass(frozen=True, slots=True)
class Decision:
    """A target replica count for one model, with the reason an operator reads in the audit log.

    Decisions are idempotent: a target, never a delta.
    """

    model: str
    at: float
    replicas: int
    reason: str
