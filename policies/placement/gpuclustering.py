"""GpuClustering: co-locate pods with the same GPU request (a share, or k whole GPUs).

The artifact's ``GpuClusteringScore``: ``25 * (8000 - free shares on the node) // 8000`` plus 75 when the node
runs only pods of the same kind, 50 when it runs that kind among others, 25 when it runs no GPU pod, 0 when it
runs only other kinds. CPU-only pods score 0 everywhere. GPU selection is best fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shadowscale.policies.placement.base import place_by_score
from shadowscale.policies.placement.bestfit import MAX_SPEC_GPU_MILLI
from shadowscale.policies.placement.cluster import ClusterState, FloatArray, Placement, PodRequest
from shadowscale.policies.placement.feasible import Candidates
from shadowscale.policies.placement.workload import TaskClasses


def clustering_score(state: ClusterState, pod: PodRequest, cand: Candidates) -> FloatArray:
    """Integer clustering score (0..100) of each candidate's node."""
    if pod.num_gpu == 0:
        return np.zeros(len(cand))
    tags = state.tag_count[cand.node]
    kinds = (tags > 0).sum(axis=1)
    same = tags[:, pod.tag] > 0
    offset = np.where(same, np.where(kinds == 1, 75, 50), np.where(kinds == 0, 25, 0))
    used = 25 * (MAX_SPEC_GPU_MILLI - state.gpu_free_total[cand.node]) // MAX_SPEC_GPU_MILLI
    return (used + offset).astype(np.float64)


@dataclass(frozen=True, slots=True)
class GpuClustering:
    name: str = "GpuClustering"

    def init(self, state: ClusterState, classes: TaskClasses) -> None:
        return None

    def place(
        self, state: ClusterState, pod: PodRequest, memo: None, rng: np.random.Generator
    ) -> tuple[Placement | None, None]:
        return place_by_score(self.name, state, pod, clustering_score), memo
