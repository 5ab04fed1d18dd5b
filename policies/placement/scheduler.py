"""One scheduling decision for a pending pod: the pure core of the live secondary scheduler (issue 5, part 4).

The live agent (``schedulerName: shadowscale``) keeps a view of the cluster (nodes with their GPU UUIDs, pods
bound with the GPUs they hold) and, for each pending pod, calls :func:`decide`. The answer is a value:

* :class:`Binding`: the node, the GPU indices and UUIDs, and the pod annotations to write before binding
  (:data:`HAMI_USE_GPUUUID`, the annotation HAMi honours to pin a pod to given GPUs: comma-separated UUIDs);
* :class:`Unschedulable`: why not, worded for a Kubernetes Event and the log, with ``kind`` saying whether
  waiting can help (``NoRoom``: yes, the cluster may free room or a defragmentation plan may make it;
  ``Invalid`` and ``Impossible``: not until the pod or the nodes change; ``AlreadyBound``: nothing to do).

Nothing here talks to Kubernetes or keeps state between calls. Bad input never raises: a request with negative
or malformed values is ``Invalid``; more GPUs than any node has, an unknown GPU model or a request larger than
every eligible node is ``Impossible``. Inconsistent state is contained, never trusted: a bound pod on a node
that is gone is ignored; a node with a duplicate name, more than 8 GPUs or negative capacity is left out; a node
where a bound pod names a GPU UUID the node does not list (a stale GPU event), holds the wrong number of GPUs,
or where the bound pods add up to more than the node has, is treated as full. Each such case is one line in
``warnings``. Because a decision is only as good as its view, the caller must serialise decisions: add each
binding to the view (:func:`running_pod`) before deciding the next pod, so two pods never get one GPU share.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from shadowscale.policies.placement.base import PlacementPolicy
from shadowscale.policies.placement.cluster import MAX_GPUS, MILLI, N_TAGS, ClusterSpec, ClusterState, PodRequest
from shadowscale.policies.placement.workload import TaskClasses, task_classes

HAMI_USE_GPUUUID = "nvidia.com/use-gpuuuid"
"""Pod annotation with which HAMi pins a pod to GPUs: their UUIDs, comma-separated."""

UnschedulableKind = Literal["Invalid", "Impossible", "NoRoom", "AlreadyBound"]


@dataclass(frozen=True, slots=True)
class Node:
    """A schedulable node: ``gpu_uuids[i]`` is GPU ``i`` (all of one ``gpu_model``; empty for a CPU-only node)."""

    name: str
    cpu_milli: int
    memory_mib: int
    gpu_model: str = ""
    gpu_uuids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RunningPod:
    """A pod bound to ``node``, holding ``gpu_milli`` shares on each GPU in ``gpu_uuids``."""

    name: str
    node: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int = 0
    gpu_milli: int = 0
    gpu_uuids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PendingPod:
    """What a pending pod asks for, as read from its spec (values are validated by :func:`decide`)."""

    name: str
    cpu_milli: int
    memory_mib: int = 0
    num_gpu: int = 0
    gpu_milli: int = 0
    gpu_models: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class ClusterView:
    """The scheduler's view: nodes and the pods bound to them."""

    nodes: tuple[Node, ...]
    pods: tuple[RunningPod, ...] = ()


@dataclass(frozen=True, slots=True)
class Binding:
    """Bind ``pod`` to ``node``; write ``annotations`` on the pod first."""

    pod: str
    node: str
    gpu_indices: tuple[int, ...]
    gpu_uuids: tuple[str, ...]
    annotations: Mapping[str, str]
    reason: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Unschedulable:
    """``pod`` cannot be bound now; ``reason`` is the Event message."""

    pod: str
    kind: UnschedulableKind
    reason: str
    warnings: tuple[str, ...] = ()

    @property
    def retry(self) -> bool:
        """Whether the pod may fit later without changing (only ``NoRoom``)."""
        return self.kind == "NoRoom"


Decision = Binding | Unschedulable


def running_pod(pending: PendingPod, binding: Binding) -> RunningPod:
    """The bound pod to add to the view once ``binding`` is made."""
    return RunningPod(
        binding.pod,
        binding.node,
        pending.cpu_milli,
        pending.memory_mib,
        pending.num_gpu,
        pending.gpu_milli,
        binding.gpu_uuids,
    )


def _request(p: PendingPod) -> PodRequest | str:
    """The pod's request, or why it is invalid."""
    values = (
        ("cpu_milli", p.cpu_milli),
        ("memory_mib", p.memory_mib),
        ("num_gpu", p.num_gpu),
        ("gpu_milli", p.gpu_milli),
    )
    negative = [f"{k} {v}" for k, v in values if v < 0]
    if negative:
        return f"negative request: {', '.join(negative)}"
    if any(not m.strip() for m in p.gpu_models):
        return "an empty GPU model name in the allowed models"
    try:
        return PodRequest(p.cpu_milli, p.memory_mib, p.num_gpu, p.gpu_milli, p.gpu_models, p.name)
    except ValueError as exc:
        return str(exc)


@dataclass(frozen=True, slots=True)
class _Built:
    nodes: tuple[Node, ...]
    state: ClusterState
    warnings: tuple[str, ...]


def _build(view: ClusterView) -> _Built:
    """The cluster state of ``view``: usable nodes, free resources, and a warning per thing left out."""
    warnings: list[str] = []
    nodes: list[Node] = []
    seen: set[str] = set()
    for n in view.nodes:
        if n.name in seen:
            warnings.append(f"node {n.name}: listed twice; the second entry is ignored")
            continue
        seen.add(n.name)
        if n.cpu_milli < 0 or n.memory_mib < 0:
            warnings.append(f"node {n.name}: negative capacity; left out")
        elif len(n.gpu_uuids) > MAX_GPUS:
            warnings.append(f"node {n.name}: {len(n.gpu_uuids)} GPUs, more than {MAX_GPUS}; left out")
        elif len(set(n.gpu_uuids)) != len(n.gpu_uuids) or any(not u for u in n.gpu_uuids):
            warnings.append(f"node {n.name}: empty or repeated GPU UUIDs; left out")
        else:
            nodes.append(n)
    spec = ClusterSpec.build(
        [n.cpu_milli for n in nodes],
        [n.memory_mib for n in nodes],
        [len(n.gpu_uuids) for n in nodes],
        [n.gpu_model for n in nodes],
        [n.name for n in nodes],
    )
    index = {n.name: i for i, n in enumerate(nodes)}
    gpu_index = [{u: g for g, u in enumerate(n.gpu_uuids)} for n in nodes]
    cpu = spec.cpu_milli.copy()
    mem = spec.memory_mib.copy()
    cols = np.arange(spec.width)
    gpu = np.where(cols[None, :] < spec.gpu_count[:, None], MILLI, 0).astype(np.int64)
    tags = np.zeros((spec.n_nodes, N_TAGS), dtype=np.int64)
    full = np.zeros(spec.n_nodes, dtype=np.bool_)
    for p in view.pods:
        i = index.get(p.node)
        if i is None:
            warnings.append(f"pod {p.name}: bound to node {p.node}, which is not in the view; ignored")
            continue
        cpu[i] -= p.cpu_milli
        mem[i] -= p.memory_mib
        if not _valid_shape(p.num_gpu, p.gpu_milli) or p.cpu_milli < 0 or p.memory_mib < 0:
            warnings.append(f"pod {p.name}: invalid request recorded; node {p.node} treated as full")
            full[i] = True
            continue
        if p.num_gpu == 0:
            continue
        gpus = [gpu_index[i].get(u) for u in p.gpu_uuids]
        if len(gpus) != p.num_gpu or None in gpus or len(set(gpus)) != len(gpus):
            warnings.append(
                f"pod {p.name}: holds GPUs {list(p.gpu_uuids)} but node {p.node} lists {list(nodes[i].gpu_uuids)} "
                f"for {p.num_gpu} GPU(s); node treated as full"
            )
            full[i] = True
            continue
        gpu[i, [g for g in gpus if g is not None]] -= p.gpu_milli
        tags[i, PodRequest(0, 0, p.num_gpu, p.gpu_milli).tag] += 1
    over = (cpu < 0) | (mem < 0) | (gpu < 0).any(axis=1)
    for i in np.flatnonzero(over & ~full).tolist():
        warnings.append(f"node {nodes[i].name}: bound pods ask for more than it has; node treated as full")
    full |= over
    cpu[full] = 0
    mem[full] = 0
    gpu[full] = 0
    for a in (cpu, mem, gpu, tags):
        a.flags.writeable = False
    state = ClusterState(spec, cpu, mem, gpu, tags)
    return _Built(tuple(nodes), state, tuple(warnings))


def _impossible(nodes: Sequence[Node], spec: ClusterSpec, pod: PodRequest) -> str | None:
    """Why no node of this cluster could ever host ``pod`` (``None`` when one could)."""
    if pod.num_gpu:
        gpu_models = sorted({n.gpu_model for n in nodes if n.gpu_uuids})
        if not gpu_models:
            return f"asks for {pod.num_gpu} GPU(s) but no node has a GPU"
        most = int(spec.gpu_count.max())
        if pod.num_gpu > most:
            return f"asks for {pod.num_gpu} GPUs but the largest node has {most}"
        if pod.gpu_models and not pod.gpu_models & set(gpu_models):
            return f"unknown GPU model(s) {', '.join(sorted(pod.gpu_models))}; the cluster has {', '.join(gpu_models)}"
    eligible = (spec.gpu_count >= pod.num_gpu) & (spec.model_mask(pod.gpu_models) if pod.num_gpu else True)
    big = eligible & (spec.cpu_milli >= pod.cpu_milli) & (spec.memory_mib >= pod.memory_mib)
    if not big.any():
        cpu = int(spec.cpu_milli[eligible].max()) if eligible.any() else 0
        mem = int(spec.memory_mib[eligible].max()) if eligible.any() else 0
        return (
            f"no node is large enough: needs {pod.cpu_milli} mCPU and {pod.memory_mib} MiB; the largest eligible "
            f"node has {cpu} mCPU and {mem} MiB"
        )
    return None


def _no_room(state: ClusterState, pod: PodRequest) -> str:
    """Why ``pod`` fits nowhere now, with what is free in total (to tell fragmentation from a full cluster)."""
    spec = state.spec
    eligible = spec.model_mask(pod.gpu_models) if pod.num_gpu else np.ones(spec.n_nodes, dtype=np.bool_)
    fits_cpu = eligible & (state.cpu_free >= pod.cpu_milli) & (state.memory_free >= pod.memory_mib)
    what = (
        f"{pod.num_gpu} GPU(s) with {pod.gpu_milli} shares free" if pod.num_gpu else "no GPU"
    ) + f", {pod.cpu_milli} mCPU and {pod.memory_mib} MiB"
    free = int(state.gpu_free[eligible].sum())
    hint = ""
    if pod.num_gpu and free >= pod.total_gpu_milli:
        hint = f"; {free} GPU shares are free on eligible nodes but split (defragmentation could make room)"
    elif pod.num_gpu:
        hint = f"; only {free} GPU shares are free on eligible nodes"
    return f"no node has room now: needs {what}; {int(fits_cpu.sum())} node(s) have the CPU and memory{hint}"


def decide(
    view: ClusterView,
    pending: PendingPod,
    policy: PlacementPolicy[Any],
    *,
    classes: TaskClasses | None = None,
    rng: np.random.Generator | None = None,
) -> Decision:
    """Where ``policy`` binds ``pending`` in ``view``, or why it cannot (see the module docstring).

    ``classes`` is the workload's task-class distribution (FGD-style policies score against it); by default it
    is derived from the bound pods plus the pending one. ``rng`` feeds randomised policies (default: seed 0).
    """
    if any(p.name == pending.name for p in view.pods):
        where = next(p.node for p in view.pods if p.name == pending.name)
        return Unschedulable(pending.name, "AlreadyBound", f"pod {pending.name} is already bound to node {where}")
    built = _build(view)
    state, nodes, warnings = built.state, built.nodes, built.warnings
    if pending.num_gpu > MAX_GPUS and min(pending.cpu_milli, pending.memory_mib, pending.gpu_milli) >= 0:
        most = max((len(n.gpu_uuids) for n in nodes), default=0)
        too_many = f"asks for {pending.num_gpu} GPUs but the largest node has {most} (at most {MAX_GPUS} per node)"
        return Unschedulable(pending.name, "Impossible", too_many, warnings)
    req = _request(pending)
    if isinstance(req, str):
        return Unschedulable(pending.name, "Invalid", f"invalid request: {req}", warnings)
    if not nodes:
        return Unschedulable(pending.name, "Impossible", "no usable node in the cluster", warnings)
    why = _impossible(nodes, state.spec, req)
    if why is not None:
        return Unschedulable(pending.name, "Impossible", why, warnings)
    if classes is None:
        known = [
            PodRequest(p.cpu_milli, p.memory_mib, p.num_gpu, p.gpu_milli)
            for p in view.pods
            if p.cpu_milli >= 0 and p.memory_mib >= 0 and _valid_shape(p.num_gpu, p.gpu_milli)
        ]
        classes = task_classes([*known, req])
    memo = policy.init(state, classes)
    placement, _ = policy.place(state, req, memo, rng if rng is not None else np.random.default_rng(0))
    if placement is None:
        return Unschedulable(pending.name, "NoRoom", _no_room(state, req), warnings)
    node = nodes[placement.node]
    uuids = tuple(node.gpu_uuids[g] for g in placement.gpus)
    annotations = {HAMI_USE_GPUUUID: ",".join(uuids)} if uuids else {}
    return Binding(pending.name, node.name, placement.gpus, uuids, annotations, placement.reason, warnings)


def _valid_shape(num_gpu: int, gpu_milli: int) -> bool:
    if num_gpu == 0:
        return gpu_milli == 0
    if num_gpu == 1:
        return 0 < gpu_milli <= MILLI
    return 2 <= num_gpu <= MAX_GPUS and gpu_milli == MILLI
