"""Random: a uniformly random feasible node, then a uniformly random fitting GPU on it.

The artifact's ``RandomScore`` plugin gives one random filtered node the top score; open-gpu-share's ``random``
GPU selection picks a random fitting GPU for a share (whole GPUs: the lowest free indices).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shadowscale.policies.placement.base import choose
from shadowscale.policies.placement.cluster import ClusterState, Placement, PodRequest
from shadowscale.policies.placement.feasible import candidates
from shadowscale.policies.placement.workload import TaskClasses


@dataclass(frozen=True, slots=True)
class RandomFit:
    name: str = "Random"

    def init(self, state: ClusterState, classes: TaskClasses) -> None:
        return None

    def place(
        self, state: ClusterState, pod: PodRequest, memo: None, rng: np.random.Generator
    ) -> tuple[Placement | None, None]:
        cand = candidates(state, pod)
        if not len(cand):
            return None, memo
        score = rng.random(state.spec.n_nodes)[cand.node]
        pref = rng.random(len(cand)) if pod.is_share else np.zeros(len(cand))
        return choose(self.name, state, pod, cand, score, pref), memo
