"""Task classes: the workload's request shapes weighted by how often they occur (FGD's "target workload").

A task class is a distinct ``(cpu_milli, gpu_milli, num_gpu, gpu_models)`` request; its weight is its share of
the pods. Like the FGD artifact's ``GetTypicalPods`` (``podPopularityThreshold: 95``, ``podIncreaseStep: 1``,
CPU-only pods included), the most popular classes are kept until they cover ``threshold`` of the pods and the
kept weights are renormalised to sum to 1. Memory is not part of a class (the artifact ignores it too).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from shadowscale.policies.placement.cluster import BoolArray, ClusterSpec, FloatArray, IntArray, PodRequest

DEFAULT_THRESHOLD = 0.95


@dataclass(frozen=True, slots=True)
class TaskClasses:
    """Request shapes (index = class) and their popularity; ``weight`` is positive and sums to 1."""

    cpu_milli: IntArray
    num_gpu: IntArray
    gpu_milli: IntArray
    gpu_models: tuple[frozenset[str], ...]
    weight: FloatArray
    memory_mib: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """Host memory a class needs (all 0 = memory is not part of the classes, as in FGD)."""

    def __post_init__(self) -> None:
        t = len(self.gpu_models)
        if self.memory_mib.shape == (0,):
            object.__setattr__(self, "memory_mib", np.zeros(t, dtype=np.int64))
        for what in ("cpu_milli", "num_gpu", "gpu_milli", "weight", "memory_mib"):
            if getattr(self, what).shape != (t,):
                raise ValueError(f"task classes: {what} must have one entry per class")
        if t == 0:
            raise ValueError("task classes: at least one class is needed")
        if (self.weight <= 0).any() or abs(float(self.weight.sum()) - 1.0) > 1e-9:
            raise ValueError("task classes: weights must be positive and sum to 1")

    def __len__(self) -> int:
        return len(self.gpu_models)

    def access(self, spec: ClusterSpec) -> BoolArray:
        """``(T, M)``: class ``t`` may run on GPU model ``m`` (every model when it names none)."""
        out = np.ones((len(self), len(spec.models)), dtype=np.bool_)
        for t, allowed in enumerate(self.gpu_models):
            if allowed:
                out[t] = [m in allowed for m in spec.models]
        return out

    def describe(self) -> list[str]:
        """One line per class, most popular first (for logs and docs)."""
        lines = []
        for t in range(len(self)):
            models = "|".join(sorted(self.gpu_models[t])) or "any"
            lines.append(
                f"{self.weight[t]:6.2%} cpu={int(self.cpu_milli[t])}m gpu={int(self.num_gpu[t])}"
                f"x{int(self.gpu_milli[t])}m model={models}"
            )
        return lines


def _key(p: PodRequest, memory: bool) -> tuple[int, int, int, str, int]:
    return (p.cpu_milli, p.gpu_milli, p.num_gpu, "|".join(sorted(p.gpu_models)), p.memory_mib if memory else 0)


def task_classes(pods: Sequence[PodRequest], threshold: float = DEFAULT_THRESHOLD, memory: bool = False) -> TaskClasses:
    """The popular task classes of ``pods``: the fewest most-frequent classes covering ``threshold`` of them.

    Ties in frequency are ordered by ``(cpu, gpu_milli, num_gpu, models)``, largest first, as the artifact's
    reversed sort does. ``memory=True`` makes host memory part of a class (an extension; FGD leaves it out).
    """
    if not 0 < threshold <= 1:
        raise ValueError("threshold must be in (0, 1]")
    if not pods:
        raise ValueError("task classes need at least one pod")
    counts = Counter(_key(p, memory) for p in pods)
    ranked = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
    total = len(pods)
    kept: list[tuple[tuple[int, int, int, str, int], int]] = []
    covered = 0
    for key, n in ranked:
        if covered >= threshold * total:
            break
        kept.append((key, n))
        covered += n
    weight = np.array([n for _, n in kept], dtype=np.float64)
    return TaskClasses(
        cpu_milli=np.array([k[0] for k, _ in kept], dtype=np.int64),
        num_gpu=np.array([k[2] for k, _ in kept], dtype=np.int64),
        gpu_milli=np.array([k[1] for k, _ in kept], dtype=np.int64),
        gpu_models=tuple(frozenset(m for m in k[3].split("|") if m) for k, _ in kept),
        weight=weight / weight.sum(),
        memory_mib=np.array([k[4] for k, _ in kept], dtype=np.int64),
    )
