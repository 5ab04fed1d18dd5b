"""Which (node, GPU) choices can host a pod: the hard constraints every policy shares.

A node is feasible when it has the pod's CPU and memory free, a GPU model the pod accepts (GPU pods only) and
room on its GPUs: a share needs one GPU with at least ``gpu_milli`` free; ``k`` whole GPUs need ``k`` GPUs that are
completely free. The candidates are one row per choice that changes the outcome: every fitting GPU for a share,
one row per feasible node otherwise (whole GPUs of one node are interchangeable; the lowest free indices are
taken, as open-gpu-share's ``AllocateExclusiveGpuId`` does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shadowscale.policies.placement.cluster import MILLI, BoolArray, ClusterState, IntArray, PodRequest


@dataclass(frozen=True, slots=True)
class Candidates:
    """Feasible choices for one pod, sorted by node then GPU. ``gpu`` is -1 when the choice is a whole node."""

    node: IntArray
    gpu: IntArray

    def __len__(self) -> int:
        return int(self.node.shape[0])


def node_mask(state: ClusterState, pod: PodRequest) -> BoolArray:
    """Nodes with the pod's CPU, memory and (for GPU pods) model, among ``state.eligible``; GPU room is not
    checked here."""
    ok: BoolArray = (state.cpu_free >= pod.cpu_milli) & (state.memory_free >= pod.memory_mib)
    if state.eligible is not None:
        ok &= state.eligible
    if pod.num_gpu and pod.gpu_models:
        ok &= state.spec.model_mask(pod.gpu_models)
    return ok


def fit_matrix(state: ClusterState, pod: PodRequest, nodes: BoolArray) -> BoolArray:
    """``(N, G)``: GPU ``g`` of node ``n`` can take the pod's per-GPU share (rows outside ``nodes`` are False)."""
    fit: BoolArray = (state.gpu_free >= pod.gpu_milli) & nodes[:, None]
    return fit


def feasible_nodes(state: ClusterState, pod: PodRequest) -> BoolArray:
    """Nodes that can host the pod under every constraint."""
    ok = node_mask(state, pod)
    if pod.num_gpu == 0:
        return ok
    if pod.is_share:
        return ok & (state.gpu_free >= pod.gpu_milli).any(axis=1)
    return ok & ((state.gpu_free == MILLI).sum(axis=1) >= pod.num_gpu)  # type: ignore[no-any-return]


def candidates(state: ClusterState, pod: PodRequest) -> Candidates:
    """Every choice a policy may score for ``pod`` (empty when it fits nowhere)."""
    ok = node_mask(state, pod)
    if pod.is_share:
        node, gpu = np.nonzero(fit_matrix(state, pod, ok))
        return Candidates(node.astype(np.int64), gpu.astype(np.int64))
    if pod.num_gpu:
        ok &= (state.gpu_free == MILLI).sum(axis=1) >= pod.num_gpu
    node = np.flatnonzero(ok).astype(np.int64)
    return Candidates(node, np.full(node.shape[0], -1, dtype=np.int64))


def whole_gpus(state: ClusterState, node: int, k: int) -> tuple[int, ...]:
    """The ``k`` lowest-indexed completely free GPUs of ``node`` (open-gpu-share's exclusive allocation)."""
    free = np.flatnonzero(state.gpu_free[node] == MILLI)[:k]
    return tuple(int(g) for g in free)


def gpus_for(state: ClusterState, pod: PodRequest, node: int, gpu: int) -> tuple[int, ...]:
    """The GPU indices a candidate row stands for."""
    if pod.num_gpu == 0:
        return ()
    if pod.is_share:
        return (gpu,)
    return whole_gpus(state, node, pod.num_gpu)
