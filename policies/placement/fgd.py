"""FGD: Fragmentation Gradient Descent (Weng et al., ATC '23).

Each choice is scored by how much it grows its node's fragmentation (:mod:`policies.placement.frag`), measured
against the workload's task-class distribution: the choice that grows it least wins. As in the artifact's
``FGDScore``, the score is ``int(sigmoid((frag_before - frag_after) / 1000) * 100)``; that integer rounding makes
changes within roughly 40 shares tie, and ties go to the lowest-rank node (the artifact's kube-scheduler fork
takes the smallest node name). Within a node the first GPU with the best integer score is taken.
``quantize=False`` ranks by the exact change instead (measured worse: the coarse ties are what packs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shadowscale.policies.placement.base import choose
from shadowscale.policies.placement.cluster import ClusterState, FloatArray, IntArray, Placement, PodRequest
from shadowscale.policies.placement.feasible import Candidates, candidates
from shadowscale.policies.placement.frag import FragMemo
from shadowscale.policies.placement.workload import TaskClasses


def frag_growth(memo: FragMemo, state: ClusterState, pod: PodRequest, cand: Candidates) -> FloatArray:
    """Growth of each candidate node's fragmentation if the pod goes there (GPU shares; may be negative)."""
    return memo.growth(state, pod, cand)


def fgd_score(growth: FloatArray) -> FloatArray:
    """The artifact's integer score: ``int(sigmoid(-growth / 1000) * 100)``."""
    return np.trunc(1.0 / (1.0 + np.exp(growth / 1000.0)) * 100.0)


def _fgd_score(nodes: IntArray, growth: FloatArray) -> FloatArray:
    return fgd_score(growth)


def _negated(nodes: IntArray, growth: FloatArray) -> FloatArray:
    return -growth


@dataclass(frozen=True, slots=True)
class FGD:
    name: str = "FGD"
    quantize: bool = True

    def init(self, state: ClusterState, classes: TaskClasses) -> FragMemo:
        return FragMemo(state, classes)

    def place(
        self, state: ClusterState, pod: PodRequest, memo: FragMemo, rng: np.random.Generator
    ) -> tuple[Placement | None, FragMemo]:
        memo.sync(state)
        cand = candidates(state, pod)
        if not len(cand):
            return None, memo
        score, growth = memo.evaluate(state, pod, cand, _fgd_score if self.quantize else _negated)
        pref = -cand.gpu.astype(np.float64)
        return choose(
            self.name, state, pod, cand, score, pref, lambda i: f"fragmentation {growth[i]:+.1f} shares"
        ), memo
