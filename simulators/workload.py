"""The input of a simulation run: which services exist and which requests arrive when.

A :class:`Workload` is built by :func:`simulators.traces.load_trace` from a public trace or a generic CSV. It
is a value: frozen, with read-only arrays, so a simulator or a policy cannot change it by accident.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from shadowscale.policies.types import FloatArray, IntArray, ServiceConfig


def _read_only(*arrays: npt.NDArray[Any]) -> None:
    for array in arrays:
        array.setflags(write=False)


@dataclass(frozen=True, slots=True)
class Workload:
    """Requests of one trace, one row per request, sorted by arrival time.

    ``services[i]`` describes model ``i``; ``model[j]`` is the index of the model request ``j`` is for.
    ``size[j]`` is the work of request ``j`` relative to the unit request of its model's profile (1.0 for
    fixed-size inference; LLM requests scale with their tokens). Every arrival lies in ``[0, duration_s)``.
    ``prompt_tokens`` / ``output_tokens`` (both or neither) are each request's tokens; the simulator needs them
    for services with ``llm`` set (continuous batching) and ignores them otherwise.
    """

    name: str
    duration_s: float
    services: tuple[ServiceConfig, ...]
    arrival_s: FloatArray
    model: IntArray
    size: FloatArray
    prompt_tokens: FloatArray | None = None
    output_tokens: FloatArray | None = None

    def __post_init__(self) -> None:
        n = self.arrival_s.shape[0] if self.arrival_s.ndim == 1 else -1
        if n < 0 or self.model.shape != (n,) or self.size.shape != (n,):
            raise ValueError(f"workload {self.name}: arrival_s, model and size must be 1-D and equally long")
        if self.arrival_s.dtype != np.float64 or self.size.dtype != np.float64:
            raise ValueError(f"workload {self.name}: arrival_s and size must be float64")
        if self.model.dtype != np.int64:
            raise ValueError(f"workload {self.name}: model must be int64")
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise ValueError(f"workload {self.name}: duration_s must be positive and finite")
        names = [s.model for s in self.services]
        if len(set(names)) != len(names):
            raise ValueError(f"workload {self.name}: service model names must be unique")
        tokens = (self.prompt_tokens, self.output_tokens)
        if (tokens[0] is None) != (tokens[1] is None):
            raise ValueError(f"workload {self.name}: prompt_tokens and output_tokens go together")
        for t in tokens:
            if t is not None and (
                t.shape != (n,) or t.dtype != np.float64 or not np.all(np.isfinite(t)) or np.any(t < 0)
            ):
                raise ValueError(
                    f"workload {self.name}: token counts must be 1-D float64, finite, >= 0, one per request"
                )
        if any(s.llm is not None for s in self.services) and tokens[0] is None:
            raise ValueError(f"workload {self.name}: LLM services need prompt_tokens and output_tokens")
        if n == 0:
            return
        if not np.all(np.isfinite(self.arrival_s)) or np.any(np.diff(self.arrival_s) < 0):
            raise ValueError(f"workload {self.name}: arrival_s must be finite and sorted ascending")
        if self.arrival_s[0] < 0 or self.arrival_s[-1] >= self.duration_s:
            raise ValueError(f"workload {self.name}: arrivals must lie in [0, duration_s)")
        if self.model.min() < 0 or self.model.max() >= len(self.services):
            raise ValueError(f"workload {self.name}: model indices must be in [0, {len(self.services)})")
        if not np.all(np.isfinite(self.size)) or np.any(self.size <= 0):
            raise ValueError(f"workload {self.name}: sizes must be positive and finite")

    @property
    def n_requests(self) -> int:
        return int(self.arrival_s.shape[0])

    @property
    def n_models(self) -> int:
        return len(self.services)

    def requests_per_model(self) -> IntArray:
        """Number of requests of each model (index = model id)."""
        return np.bincount(self.model, minlength=len(self.services)).astype(np.int64)

    def subset(self, models: int) -> Workload:
        """The ``models`` models with the most requests (ties: by name), re-indexed 0..models-1 in that order.

        Requests of the other models are dropped; arrival order is kept.
        """
        if models < 1:
            raise ValueError(f"models must be >= 1, got {models}")
        counts = self.requests_per_model()
        order = sorted(range(len(self.services)), key=lambda i: (-int(counts[i]), self.services[i].model))
        return self.select(order[:models])

    def select(self, keep: Sequence[int]) -> Workload:
        """The models ``keep`` (indices, no repeats), re-indexed 0..len(keep)-1 in that order; the others' requests
        are dropped and arrival order is kept."""
        if not keep or len(set(keep)) != len(keep) or min(keep) < 0 or max(keep) >= len(self.services):
            raise ValueError(f"workload {self.name}: select needs distinct model indices in [0, {len(self.services)})")
        remap = np.full(len(self.services), -1, dtype=np.int64)
        remap[np.asarray(keep, dtype=np.int64)] = np.arange(len(keep), dtype=np.int64)
        new_model = remap[self.model]
        mask = new_model >= 0
        return make_workload(
            name=self.name,
            duration_s=self.duration_s,
            services=tuple(self.services[i] for i in keep),
            arrival_s=self.arrival_s[mask],
            model=new_model[mask],
            size=self.size[mask],
            prompt_tokens=None if self.prompt_tokens is None else self.prompt_tokens[mask],
            output_tokens=None if self.output_tokens is None else self.output_tokens[mask],
        )

    def since(self, start_s: float) -> Workload:
        """Only the requests that arrive at or after ``start_s``, with time re-based so that ``start_s`` is 0."""
        if not (0.0 <= start_s < self.duration_s):
            raise ValueError(f"workload {self.name}: start {start_s} must lie in [0, {self.duration_s})")
        lo = int(np.searchsorted(self.arrival_s, start_s, side="left"))
        return make_workload(
            name=self.name,
            duration_s=self.duration_s - start_s,
            services=self.services,
            arrival_s=self.arrival_s[lo:] - start_s,
            model=self.model[lo:],
            size=self.size[lo:],
            prompt_tokens=None if self.prompt_tokens is None else self.prompt_tokens[lo:],
            output_tokens=None if self.output_tokens is None else self.output_tokens[lo:],
        )

    def truncate(self, duration_s: float) -> Workload:
        """Only the requests that arrive before ``duration_s``; the result lasts ``duration_s``."""
        end = int(np.searchsorted(self.arrival_s, duration_s, side="left"))
        return make_workload(
            name=self.name,
            duration_s=duration_s,
            services=self.services,
            arrival_s=self.arrival_s[:end],
            model=self.model[:end],
            size=self.size[:end],
            prompt_tokens=None if self.prompt_tokens is None else self.prompt_tokens[:end],
            output_tokens=None if self.output_tokens is None else self.output_tokens[:end],
        )


def make_workload(
    *,
    name: str,
    duration_s: float,
    services: tuple[ServiceConfig, ...],
    arrival_s: FloatArray,
    model: IntArray,
    size: FloatArray,
    prompt_tokens: FloatArray | None = None,
    output_tokens: FloatArray | None = None,
) -> Workload:
    """Build a :class:`Workload` from (possibly shared) arrays: copies them contiguous and read-only."""
    arrival = np.ascontiguousarray(arrival_s, dtype=np.float64).copy()
    idx = np.ascontiguousarray(model, dtype=np.int64).copy()
    sz = np.ascontiguousarray(size, dtype=np.float64).copy()
    _read_only(arrival, idx, sz)
    tokens = [
        None if t is None else np.ascontiguousarray(t, dtype=np.float64).copy() for t in (prompt_tokens, output_tokens)
    ]
    for t in tokens:
        if t is not None:
            _read_only(t)
    return Workload(
        name=name,
        duration_s=float(duration_s),
        services=services,
        arrival_s=arrival,
        model=idx,
        size=sz,
        prompt_tokens=tokens[0],
        output_tokens=tokens[1],
    )
