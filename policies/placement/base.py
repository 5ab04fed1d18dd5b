"""The placement policy contract and the selection rule every policy shares.

A policy scores each feasible choice (:func:`policies.placement.feasible.candidates`) for one pod; the best is
taken. Like the Kubernetes scheduler running one score plugin plus open-gpu-share's GPU selection, selection is
two-level:

1. nodes compete on ``score`` (higher is better); among tied nodes the lowest :attr:`ClusterSpec.rank` wins
   (the artifact's kube-scheduler fork takes the smallest node name, and the names carry a seeded random
   prefix; upstream kube-scheduler samples a tied node uniformly instead);
2. within the chosen node, among its choices with the top score, the highest ``pref`` wins, then the lowest GPU
   index (e.g. the tightest-fitting GPU for best-fit GPU selection).

Policies follow Ray Serve's shape: ``init`` builds a memo, ``place(state, pod, memo, rng)`` returns the
placement (``None`` when the pod fits nowhere) and the memo for the next call. A memo is a cache derived from
the cluster state (policies sync it from the state they are given), never hidden decision state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import numpy as np

from shadowscale.policies.placement.cluster import ClusterState, FloatArray, IntArray, Placement, PodRequest
from shadowscale.policies.placement.feasible import Candidates, candidates, gpus_for
from shadowscale.policies.placement.workload import TaskClasses

S = TypeVar("S")


class PlacementPolicy(Protocol[S]):
    """Chooses a node (and GPUs) for one pod at a time."""

    @property
    def name(self) -> str: ...

    def init(self, state: ClusterState, classes: TaskClasses) -> S:
        """The memo for ``state``; ``classes`` is the workload's task-class distribution."""
        ...

    def place(
        self, state: ClusterState, pod: PodRequest, memo: S, rng: np.random.Generator
    ) -> tuple[Placement | None, S]:
        """Where ``pod`` goes in ``state`` (``None``: nowhere) and the memo for the next call."""
        ...


def select(cand: Candidates, score: FloatArray, pref: FloatArray, rank: IntArray) -> tuple[int, int]:
    """Index of the chosen candidate and how many nodes tied for the top score (see the module docstring)."""
    best = score.max()
    hit = np.flatnonzero(score == best)
    nodes = cand.node[hit]
    first = np.empty(nodes.shape[0], dtype=np.bool_)
    first[0] = True
    np.not_equal(nodes[1:], nodes[:-1], out=first[1:])
    tied = nodes[first]
    node = tied[int(np.argmin(rank[tied]))] if tied.shape[0] > 1 else tied[0]
    within = hit[nodes == node]
    return int(within[int(np.argmax(pref[within]))]), int(tied.shape[0])


def choose(
    name: str,
    state: ClusterState,
    pod: PodRequest,
    cand: Candidates,
    score: FloatArray,
    pref: FloatArray,
    detail: Callable[[int], str] | None = None,
) -> Placement:
    """The placement :func:`select` picks, with an audit-log reason (``detail(i)`` adds to it for row ``i``)."""
    i, ties = select(cand, score, pref, state.spec.rank)
    node = int(cand.node[i])
    gpus = gpus_for(state, pod, node, int(cand.gpu[i]))
    n_nodes = int(np.count_nonzero(np.diff(cand.node))) + 1
    what = f"gpus {list(gpus)}" if gpus else "no GPU"
    extra = f"; {detail(i)}" if detail is not None else ""
    reason = (
        f"{name}: node {state.spec.names[node]} {what}; score {float(score[i]):.6g}, "
        f"{ties} of {n_nodes} feasible nodes tied{extra}"
    )
    return Placement(name, node, gpus, float(score[i]), reason)


def place_by_score(
    name: str,
    state: ClusterState,
    pod: PodRequest,
    score_fn: Callable[[ClusterState, PodRequest, Candidates], FloatArray],
) -> Placement | None:
    """The shape of a stateless score plugin: score every feasible choice, take the best (tightest GPU within
    a node); None when nothing fits."""
    cand = candidates(state, pod)
    if not len(cand):
        return None
    return choose(name, state, pod, cand, score_fn(state, pod, cand), tightest_pref(state, pod, cand))


def tightest_pref(state: ClusterState, pod: PodRequest, cand: Candidates) -> FloatArray:
    """Within-node preference for the tightest-fitting GPU (least free shares); 0 for node-level choices."""
    if not pod.is_share:
        return np.zeros(len(cand))
    return -state.gpu_free[cand.node, cand.gpu].astype(np.float64)
