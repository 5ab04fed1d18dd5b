"""BestFit: the node with the least weighted leftover CPU and GPU after placing the pod.

The artifact's ``BestFitScore``: ``score = int((1 - sum_i w_i (free_i - req_i) / max_i) * 100)`` with
resources (CPU, total GPU shares), weights 0.5/0.5 and normalisers 128 vCPU / 8 GPUs; the integer score is
min-max normalised per pod (which keeps the order and the ties). GPU selection is best fit: the tightest GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shadowscale.policies.placement.base import place_by_score
from shadowscale.policies.placement.cluster import ClusterState, FloatArray, Placement, PodRequest
from shadowscale.policies.placement.feasible import Candidates
from shadowscale.policies.placement.workload import TaskClasses

MAX_SPEC_CPU_MILLI = 128_000
MAX_SPEC_GPU_MILLI = 8_000


def bestfit_score(state: ClusterState, pod: PodRequest, cand: Candidates) -> FloatArray:
    """Integer best-fit score (0..100, higher = tighter) of each candidate's node."""
    cpu_left = (state.cpu_free[cand.node] - pod.cpu_milli).astype(np.float64)
    gpu_left = (state.gpu_free_total[cand.node] - pod.total_gpu_milli).astype(np.float64)
    waste = cpu_left / MAX_SPEC_CPU_MILLI * 0.5 + gpu_left / MAX_SPEC_GPU_MILLI * 0.5
    return np.trunc((1.0 - waste) * 100.0)


@dataclass(frozen=True, slots=True)
class BestFit:
    name: str = "BestFit"

    def init(self, state: ClusterState, classes: TaskClasses) -> None:
        return None

    def place(
        self, state: ClusterState, pod: PodRequest, memo: None, rng: np.random.Generator
    ) -> tuple[Placement | None, None]:
        return place_by_score(self.name, state, pod, bestfit_score), memo
