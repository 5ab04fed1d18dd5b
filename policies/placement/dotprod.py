"""DotProd: Tetris' dot product of the node's free vector and the pod's request, as the FGD artifact runs it.

The artifact's ``DotProductScore`` with ``dimExtMethod: merge`` and ``normMethod: max``: vectors
(CPU, total GPU shares) normalised by (128 vCPU, 8 GPUs); ``score = int(100 * (1 - dot / 2))``, so the node
whose free resources align least with the request wins (it packs). GPU selection is best fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shadowscale.policies.placement.base import place_by_score
from shadowscale.policies.placement.bestfit import MAX_SPEC_CPU_MILLI, MAX_SPEC_GPU_MILLI
from shadowscale.policies.placement.cluster import ClusterState, FloatArray, Placement, PodRequest
from shadowscale.policies.placement.feasible import Candidates
from shadowscale.policies.placement.workload import TaskClasses


def dotprod_score(state: ClusterState, pod: PodRequest, cand: Candidates) -> FloatArray:
    """Integer dot-product score (0..100) of each candidate's node."""
    node_cpu = state.cpu_free[cand.node] / MAX_SPEC_CPU_MILLI
    node_gpu = state.gpu_free_total[cand.node] / MAX_SPEC_GPU_MILLI
    dot = node_cpu * (pod.cpu_milli / MAX_SPEC_CPU_MILLI) + node_gpu * (pod.total_gpu_milli / MAX_SPEC_GPU_MILLI)
    return np.trunc(100.0 * (1.0 - dot / 2.0))


@dataclass(frozen=True, slots=True)
class DotProd:
    name: str = "DotProd"

    def init(self, state: ClusterState, classes: TaskClasses) -> None:
        return None

    def place(
        self, state: ClusterState, pod: PodRequest, memo: None, rng: np.random.Generator
    ) -> tuple[Placement | None, None]:
        return place_by_score(self.name, state, pod, dotprod_score), memo
