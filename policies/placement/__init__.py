"""GPU-sharing placement: a numpy-vectorised core, the FGD paper's baselines, FGD itself and ``shadowscale``.

``make_policy(name)`` builds a policy by name (case-insensitive); :data:`POLICY_NAMES` lists them in the
paper's order. Every policy scores all feasible (node, GPU) choices of a pod at once
(:mod:`policies.placement.feasible`) and takes the best (:func:`policies.placement.base.select`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shadowscale.errors import UsageError
from shadowscale.policies.placement.base import PlacementPolicy, select
from shadowscale.policies.placement.bestfit import BestFit
from shadowscale.policies.placement.cluster import (
    MILLI,
    ClusterSpec,
    ClusterState,
    Placement,
    PodRequest,
)
from shadowscale.policies.placement.dotprod import DotProd
from shadowscale.policies.placement.feasible import Candidates, candidates, feasible_nodes
from shadowscale.policies.placement.fgd import FGD
from shadowscale.policies.placement.frag import FragMemo, fragmentation_rate, node_fragmentation
from shadowscale.policies.placement.gpuclustering import GpuClustering
from shadowscale.policies.placement.gpupacking import GpuPacking
from shadowscale.policies.placement.random_fit import RandomFit
from shadowscale.policies.placement.shadowscale import Shadowscale
from shadowscale.policies.placement.workload import TaskClasses, task_classes

_FACTORIES: dict[str, Callable[[], PlacementPolicy[Any]]] = {
    "Random": RandomFit,
    "DotProd": DotProd,
    "GpuClustering": GpuClustering,
    "GpuPacking": GpuPacking,
    "BestFit": BestFit,
    "FGD": FGD,
    "shadowscale": Shadowscale,
}
POLICY_NAMES: tuple[str, ...] = tuple(_FACTORIES)
_BY_LOWER = {n.lower(): n for n in POLICY_NAMES}


class UnknownPolicyError(UsageError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown placement policy {name!r}; valid policies: {', '.join(POLICY_NAMES)}")


def canonical_name(name: str) -> str:
    """The registered spelling of ``name`` (matched case-insensitively); raises :class:`UnknownPolicyError`."""
    try:
        return _BY_LOWER[name.strip().lower()]
    except KeyError:
        raise UnknownPolicyError(name) from None


def make_policy(name: str) -> PlacementPolicy[Any]:
    """The policy called ``name`` with its defaults."""
    return _FACTORIES[canonical_name(name)]()


__all__ = [
    "FGD",
    "MILLI",
    "POLICY_NAMES",
    "BestFit",
    "Candidates",
    "ClusterSpec",
    "ClusterState",
    "DotProd",
    "FragMemo",
    "GpuClustering",
    "GpuPacking",
    "Placement",
    "PlacementPolicy",
    "PodRequest",
    "RandomFit",
    "Shadowscale",
    "TaskClasses",
    "UnknownPolicyError",
    "candidates",
    "canonical_name",
    "feasible_nodes",
    "fragmentation_rate",
    "make_policy",
    "node_fragmentation",
    "select",
    "task_classes",
]
