"""GpuPacking: prefer a partly used GPU, then free GPUs on a used node, then an idle node.

The artifact's ``GpuPackingScore`` (integer scores, higher first):

1. the pod fits on partly used GPUs: ``max(100 - sum(free shares of those GPUs in %) // 10, 50)``;
2. it needs completely free GPUs on a node already in use: ``max(50 - GPUs taken, 33)``;
3. every GPU of the node is free: ``max(33 - free GPUs, free GPUs)`` (smaller nodes first).

CPU-only pods score 0 everywhere (a random feasible node). GPU selection is best fit (tightest GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shadowscale.policies.placement.base import place_by_score
from shadowscale.policies.placement.cluster import MILLI, ClusterState, FloatArray, Placement, PodRequest
from shadowscale.policies.placement.feasible import Candidates
from shadowscale.policies.placement.workload import TaskClasses


def packing_score(state: ClusterState, pod: PodRequest, cand: Candidates) -> FloatArray:
    """Integer packing score (0..100) of each candidate's node."""
    if pod.num_gpu == 0:
        return np.zeros(len(cand))
    gpu = state.gpu_free[cand.node]
    fully_free = (gpu == MILLI).sum(axis=1)
    idle = fully_free == state.spec.gpu_count[cand.node]
    if pod.is_share:
        tight = np.where(gpu >= pod.gpu_milli, gpu, 2 * MILLI).min(axis=1)
        shared = np.maximum(100 - (tight * 100 // MILLI) // 10, 50)
        used = np.where(tight == MILLI, max(50 - 1, 33), shared)
    else:
        used = np.full(len(cand), max(50 - pod.num_gpu, 33))
    score = np.where(idle, np.maximum(33 - fully_free, fully_free), used)
    return score.astype(np.float64)


@dataclass(frozen=True, slots=True)
class GpuPacking:
    name: str = "GpuPacking"

    def init(self, state: ClusterState, classes: TaskClasses) -> None:
        return None

    def place(
        self, state: ClusterState, pod: PodRequest, memo: None, rng: np.random.Generator
    ) -> tuple[Placement | None, None]:
        return place_by_score(self.name, state, pod, packing_score), memo
