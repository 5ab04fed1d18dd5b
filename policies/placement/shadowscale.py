"""shadowscale: FGD plus a CPU-stranding term.

FGD (:mod:`policies.placement.fgd`) looks one task ahead: a node's fragmentation counts the free GPU shares the
*next* task could not use. It does not see that a node's CPU drains faster than its GPUs when it takes
CPU-heavy pods, so its last GPUs end up with no CPU left to go with them. On the openb cluster this matters:
the 549 G2 nodes (70 % of the GPUs) have 12 vCPU per GPU while the GPU tasks ask for about 10.9 vCPU per GPU
on average and CPU-only tasks ask for CPU alone, whereas the T4 nodes have 50 vCPU per GPU.

shadowscale adds the growth of a node's *stranded* GPU capacity to FGD's fragmentation growth:

    stranded(n) = max(0, free_gpu_shares(n) - free_cpu_milli(n) / rho)

where ``rho`` is the CPU the workload's GPU task classes ask for per GPU share (popularity-weighted, from the
same task classes FGD uses: 10.9 vCPU per GPU for ``default``). A placement that leaves a node more GPU than
CPU to serve it is penalised in GPU shares, the unit of fragmentation, so one weight (``stranding_weight``,
default 1) combines them. Scoring is otherwise FGD's: ``int(sigmoid(-growth / 1000) * 100)``, ties to the
lowest-rank node, first best GPU within a node. Keeping FGD's integer score matters: ranking by the exact
growth scatters pods over nodes and loses about 3 points of allocation (measured, ``docs/placement.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

from shadowscale.policies.placement.base import choose
from shadowscale.policies.placement.cluster import ClusterState, FloatArray, IntArray, Placement, PodRequest
from shadowscale.policies.placement.feasible import candidates
from shadowscale.policies.placement.fgd import fgd_score
from shadowscale.policies.placement.frag import FragMemo
from shadowscale.policies.placement.workload import TaskClasses

ShadowscaleMemo: TypeAlias = tuple[FragMemo, float]
"""The fragmentation memo and ``rho`` (CPU milli per GPU share demanded by GPU task classes)."""


def cpu_per_gpu_share(classes: TaskClasses) -> float:
    """Popularity-weighted CPU milli per GPU share asked for by the GPU task classes (0 when there are none)."""
    gpu = classes.num_gpu > 0
    shares = float((classes.weight[gpu] * classes.num_gpu[gpu] * classes.gpu_milli[gpu]).sum())
    if shares <= 0:
        return 0.0
    return float((classes.weight[gpu] * classes.cpu_milli[gpu]).sum()) / shares


def stranding_growth(state: ClusterState, pod: PodRequest, nodes: IntArray, rho: float) -> FloatArray:
    """Growth of each node's GPU shares left without CPU to serve them at ``rho`` CPU milli per share, if the
    pod goes there (``nodes`` may repeat)."""
    if rho <= 0:
        return np.zeros(nodes.shape[0])
    gpu = state.gpu_free[nodes].sum(axis=1).astype(np.float64)
    cpu = state.cpu_free[nodes].astype(np.float64)
    before = np.maximum(0.0, gpu - cpu / rho)
    after = np.maximum(0.0, gpu - pod.total_gpu_milli - (cpu - pod.cpu_milli) / rho)
    growth: FloatArray = after - before
    return growth


@dataclass(frozen=True, slots=True)
class Shadowscale:
    name: str = "shadowscale"
    stranding_weight: float = 1.0

    def init(self, state: ClusterState, classes: TaskClasses) -> ShadowscaleMemo:
        return FragMemo(state, classes), cpu_per_gpu_share(classes)

    def place(
        self, state: ClusterState, pod: PodRequest, memo: ShadowscaleMemo, rng: np.random.Generator
    ) -> tuple[Placement | None, ShadowscaleMemo]:
        frag, rho = memo
        frag.sync(state)
        cand = candidates(state, pod)
        if not len(cand):
            return None, memo
        weight = self.stranding_weight

        def total_growth(nodes: IntArray, growth: FloatArray) -> FloatArray:
            return growth + weight * stranding_growth(state, pod, nodes, rho)

        score, frag_growth = frag.evaluate(state, pod, cand, lambda nodes, g: fgd_score(total_growth(nodes, g)))
        pref = -cand.gpu.astype(np.float64)

        def detail(i: int) -> str:
            s = float(stranding_growth(state, pod, cand.node[i : i + 1], rho)[0])
            return f"fragmentation {frag_growth[i]:+.1f} shares, stranded GPU {s:+.1f} shares"

        return choose(self.name, state, pod, cand, score, pref, detail), memo
