"""One scheduling decision for a pending pod: the pure core of the live secondary scheduler (issues 5 and 14).

The live agent (``schedulerName: shadowscale``) keeps a :class:`LiveCluster`: nodes (capacity, GPUs, labels,
taints, readiness, pod limit, extended resources) and the pods bound to them, updated one watch event at a time
into the simulator's numpy arrays (:class:`ClusterState`), so a decision costs what one simulated placement costs,
not a rebuild. For each pending pod it calls :meth:`LiveCluster.decide`; :func:`decide` does the same for a
whole :class:`ClusterView` (the tests' and a restart's path: both build the same state). The answer is a value:

* :class:`Binding`: the node, the GPU indices and UUIDs, and the pod annotations HAMi's device plugin needs
  (:func:`hami_device_annotations`; see ``docs/placement.md``). On a node without HAMi's registration the GPUs
  are the kubelet's whole devices: no annotation, no UUID, and never a share;
* :class:`Unschedulable`: why not, worded for a Kubernetes Event (like kube-scheduler's "0/5 nodes are
  available: …"), with ``kind`` saying whether waiting can help (``NoRoom``: yes, room may be freed or a
  defragmentation plan may make it; ``Invalid`` and ``Impossible``: not until the pod or the nodes change;
  ``AlreadyBound``: nothing to do).

What kube-scheduler's filters decide is honoured (:mod:`policies.placement.filters`): ``spec.unschedulable``
(NodeUnschedulable), the Ready condition, ``NoSchedule``/``NoExecute`` taints the pod does not tolerate
(TaintToleration), ``nodeSelector`` and required node affinity (NodeAffinity), the node's ``pods`` limit and
every other allocatable resource the pod requests (NodeResourcesFit: extended resources such as
``nvidia.com/gpu``, ``ephemeral-storage``, ``hugepages-*``). GPU model constraints follow HAMi:
``nvidia.com/use-gputype`` and ``nouse-gputype`` name models as case-insensitive substrings.

Nothing here talks to Kubernetes. Bad input never raises: a request with negative or malformed values is
``Invalid``; more GPUs than any node has, an unknown GPU model or a request larger than every eligible node is
``Impossible``. Inconsistent state is contained, never trusted: a bound pod on a node that is gone is ignored
(and counted again if the node comes back); a node with more than 8 GPUs, negative capacity or repeated GPU
UUIDs is left out; a node where a bound pod names a GPU UUID the node does not list, holds the wrong number of
GPUs, or where the bound pods add up to more than the node has, is treated as full. Each such case is one line
in ``warnings``. The caller must serialise decisions and add each binding to the cluster
(:meth:`LiveCluster.add_pod` of :func:`running_pod`) before deciding the next pod, so two pods never get one
GPU share.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from shadowscale.policies.placement.base import PlacementPolicy
from shadowscale.policies.placement.cluster import (
    MAX_GPUS,
    MILLI,
    N_TAGS,
    BoolArray,
    ClusterSpec,
    ClusterState,
    PodRequest,
)
from shadowscale.policies.placement.filters import (
    FILTERED_EFFECTS,
    NodeSelectorTerm,
    Taint,
    Toleration,
    selects,
    untolerated,
)
from shadowscale.policies.placement.workload import TaskClasses, task_classes

HAMI_USE_GPUUUID = "nvidia.com/use-gpuuuid"
"""Pod annotation with which HAMi pins a pod to GPUs: their UUIDs, comma-separated (HAMi's ``GPUUseUUID``)."""
HAMI_ASSIGNED_NODE = "hami.io/vgpu-node"
"""HAMi ``util.AssignedNodeAnnotations``: the node the devices were chosen on (the device plugin checks it)."""
HAMI_ASSIGNED_TIME = "hami.io/vgpu-time"
HAMI_BIND_TIME = "hami.io/bind-time"
HAMI_BIND_PHASE = "hami.io/bind-phase"
"""``allocating`` until the device plugin's Allocate answers, then ``success`` or ``failed``."""
HAMI_DEVICES_TO_ALLOCATE = "hami.io/vgpu-devices-to-allocate"
"""HAMi ``InRequestDevices["NVIDIA"]``: what the device plugin hands the container (it erases entries it served)."""
HAMI_DEVICES_ALLOCATED = "hami.io/vgpu-devices-allocated"
"""HAMi ``SupportDevices["NVIDIA"]``: what the pod holds (HAMi's scheduler counts usage from it)."""
HAMI_DEVICE_TYPE = "NVIDIA"

UnschedulableKind = Literal["Invalid", "Impossible", "NoRoom", "AlreadyBound"]
Resources = tuple[tuple[str, int], ...]
"""Extended resources as ``(name, amount)`` pairs; amounts in thousandths of a unit (``1`` = 1000)."""


@dataclass(frozen=True, slots=True)
class Node:
    """A node: ``gpu_uuids[i]`` is GPU ``i`` (all of one ``gpu_model``; empty for a CPU-only node).

    ``shares``: the GPUs are registered by HAMi's device plugin and may be shared; otherwise they are the
    kubelet's whole devices (allocatable ``nvidia.com/gpu``), ``gpu_uuids`` are placeholders that are never
    written anywhere, and a pod takes whole GPUs there. ``max_pods`` -1 means no pod limit is known.
    """

    name: str
    cpu_milli: int
    memory_mib: int
    gpu_model: str = ""
    gpu_uuids: tuple[str, ...] = ()
    shares: bool = True
    gpu_memory_mib: tuple[int, ...] = ()
    """Memory of each GPU (HAMi's ``devmem``); empty when unknown."""
    max_pods: int = -1
    extended: Resources = ()
    """Allocatable resources other than cpu, memory and pods."""
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    ready: bool = True
    unschedulable: bool = False


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
    extended: Resources = ()


@dataclass(frozen=True, slots=True)
class PendingPod:
    """What a pending pod asks for, as read from its spec (values are validated by :func:`decide`).

    ``gpu_models`` and ``gpu_models_excluded`` are HAMi's ``use-gputype`` / ``nouse-gputype`` patterns.
    ``containers`` and ``gpu_container`` place the GPUs in HAMi's per-container device annotation (init
    containers first, then the app containers); ``gpu_memory_mib`` is an explicit ``nvidia.com/gpumem`` (0: the
    share of each device's memory).
    """

    name: str
    cpu_milli: int
    memory_mib: int = 0
    num_gpu: int = 0
    gpu_milli: int = 0
    gpu_models: frozenset[str] = field(default_factory=frozenset)
    gpu_models_excluded: frozenset[str] = field(default_factory=frozenset)
    extended: Resources = ()
    node_selector: tuple[tuple[str, str], ...] = ()
    affinity: tuple[NodeSelectorTerm, ...] = ()
    """Required node-affinity terms (ORed); empty: none."""
    tolerations: tuple[Toleration, ...] = ()
    containers: int = 1
    gpu_container: int = 0
    gpu_memory_mib: int = 0


@dataclass(frozen=True, slots=True)
class ClusterView:
    """The scheduler's view: nodes and the pods bound to them."""

    nodes: tuple[Node, ...]
    pods: tuple[RunningPod, ...] = ()


@dataclass(frozen=True, slots=True)
class Binding:
    """Bind ``pod`` to ``node`` with ``annotations`` (HAMi's device annotations; empty on a whole-GPU node)."""

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
    """The bound pod to add to the cluster once ``binding`` is made."""
    return RunningPod(
        binding.pod,
        binding.node,
        pending.cpu_milli,
        pending.memory_mib,
        pending.num_gpu,
        pending.gpu_milli,
        binding.gpu_uuids,
        pending.extended,
    )


def hami_device_annotations(pending: PendingPod, node: Node, gpus: tuple[int, ...]) -> dict[str, str]:
    """HAMi's device annotations for ``pending`` on ``gpus`` of ``node`` (HAMi ``EncodePodSingleDevice``): one
    ``;``-terminated entry per container, init containers first, each a list of ``UUID,NVIDIA,MiB,cores:``.
    Memory is the explicit request or the share of the device's memory; cores are the share in percent."""
    devices = ""
    for g in gpus:
        mem = pending.gpu_memory_mib
        if not mem and g < len(node.gpu_memory_mib):
            mem = node.gpu_memory_mib[g] * pending.gpu_milli // MILLI
        devices += f"{node.gpu_uuids[g]},{HAMI_DEVICE_TYPE},{mem},{pending.gpu_milli // 10}:"
    entries = [""] * max(pending.containers, pending.gpu_container + 1)
    entries[pending.gpu_container] = devices
    encoded = "".join(e + ";" for e in entries)
    uuids = ",".join(node.gpu_uuids[g] for g in gpus)
    return {
        HAMI_USE_GPUUUID: uuids,
        HAMI_ASSIGNED_NODE: node.name,
        HAMI_DEVICES_TO_ALLOCATE: encoded,
        HAMI_DEVICES_ALLOCATED: encoded,
    }


def hami_bind_annotations(now_s: float) -> dict[str, str]:
    """What HAMi's scheduler adds at bind time (``Filter``'s ``vgpu-time``, ``Bind``'s phase and time): the
    device plugin's ``GetPendingPod`` looks for ``bind-phase: allocating`` with ``bind-time`` on its node."""
    stamp = str(int(now_s))
    return {HAMI_ASSIGNED_TIME: stamp, HAMI_BIND_TIME: stamp, HAMI_BIND_PHASE: "allocating"}


def _request(p: PendingPod, models: frozenset[str]) -> PodRequest | str:
    """The pod's request (GPU models resolved to the cluster's names), or why it is invalid."""
    values = (
        ("cpu_milli", p.cpu_milli),
        ("memory_mib", p.memory_mib),
        ("num_gpu", p.num_gpu),
        ("gpu_milli", p.gpu_milli),
    )
    negative = [f"{k} {v}" for k, v in values if v < 0]
    negative += [f"{k} {v}" for k, v in p.extended if v < 0]
    if negative:
        return f"negative request: {', '.join(negative)}"
    if any(not m.strip() for m in p.gpu_models | p.gpu_models_excluded):
        return "an empty GPU model name in the allowed models"
    try:
        return PodRequest(p.cpu_milli, p.memory_mib, p.num_gpu, p.gpu_milli, models, p.name)
    except ValueError as exc:
        return str(exc)


def _matches(model: str, patterns: frozenset[str]) -> bool:
    up = model.upper()
    return any(pat.strip().upper() in up for pat in patterns)


def _valid_shape(num_gpu: int, gpu_milli: int) -> bool:
    if num_gpu == 0:
        return gpu_milli == 0
    if num_gpu == 1:
        return 0 < gpu_milli <= MILLI
    return 2 <= num_gpu <= MAX_GPUS and gpu_milli == MILLI


@dataclass(slots=True)
class _Placed:
    """How one bound pod is counted: its node row, GPU columns, shares per GPU and resources."""

    node: int
    gpus: tuple[int, ...]
    milli: int
    tag: int
    cpu: int
    mem: int
    extended: tuple[tuple[int, int], ...]
    full: bool
    """The pod's record is inconsistent: its node is treated as full while it is there."""


_NO_LIMIT = np.iinfo(np.int64).max // 4


class LiveCluster:
    """The cluster state, kept incrementally from watch events (a mutable cache of pure values; no I/O).

    Pod changes cost O(1) array updates; a node whose capacity or GPUs change (or a node added or removed)
    rebuilds the arrays and recounts the pods (milliseconds at thousands of pods, rare); label, taint and
    readiness changes only drop the cached filter masks. :meth:`state` hands out an immutable
    :class:`ClusterState` snapshot (copied only after a change), so a policy's memo stays valid between
    decisions and syncs only the rows that changed.
    """

    def __init__(self, nodes: Iterable[Node] = (), pods: Iterable[RunningPod] = ()) -> None:
        self._nodes: dict[str, Node] = {}
        self._extra_warnings: list[str] = []
        for n in nodes:
            if n.name in self._nodes:
                self._extra_warnings.append(f"node {n.name}: listed twice; the second entry is ignored")
                continue
            self._nodes[n.name] = n
        self._pods: dict[str, RunningPod] = {p.name: p for p in pods}
        self._dirty = True
        self._state: ClusterState | None = None
        self._memo: Any = None
        self._memo_key: tuple[int, int, int] | None = None
        self.generation = 0
        """Bumped whenever the node layout is rebuilt (the spec changes)."""
        self._relayout()

    # -- updates ---------------------------------------------------------------------------------------------------
    @property
    def nodes(self) -> tuple[Node, ...]:
        """The usable nodes, in state order (index = row of the arrays)."""
        self._ensure()
        return tuple(self._usable)

    @property
    def pods(self) -> Mapping[str, RunningPod]:
        return self._pods

    def all_nodes(self) -> tuple[Node, ...]:
        """Every node given, usable or not."""
        return tuple(self._nodes.values())

    def node(self, name: str) -> Node | None:
        return self._nodes.get(name)

    def set_node(self, node: Node) -> None:
        """Add or update a node."""
        old = self._nodes.get(node.name)
        if old == node:
            return
        self._nodes[node.name] = node
        i = None if self._dirty else self._index.get(node.name)
        if old is None or i is None or not self._same_capacity(old, node):
            self._dirty = True
            return
        self._usable[i] = node
        self._set_attributes(i, node)
        self._masks.clear()

    def remove_node(self, name: str) -> None:
        """A node is gone: its pods stay known (and count again if it comes back) but hold nothing."""
        if self._nodes.pop(name, None) is not None:
            self._dirty = True

    def add_pod(self, pod: RunningPod) -> None:
        """Add or replace a bound pod."""
        if pod.name in self._pods:
            self.remove_pod(pod.name)
        self._pods[pod.name] = pod
        if not self._dirty:
            self._account(pod)

    def remove_pod(self, name: str) -> None:
        pod = self._pods.pop(name, None)
        if pod is not None and not self._dirty:
            self._unaccount(name)

    # -- state -----------------------------------------------------------------------------------------------------
    def _ensure(self) -> None:
        if self._dirty:
            self._relayout()

    @staticmethod
    def _same_capacity(a: Node, b: Node) -> bool:
        shape_a = (a.cpu_milli, a.memory_mib, a.gpu_model, a.gpu_uuids, a.shares, a.gpu_memory_mib)
        shape_b = (b.cpu_milli, b.memory_mib, b.gpu_model, b.gpu_uuids, b.shares, b.gpu_memory_mib)
        return shape_a == shape_b and {k for k, _ in a.extended} == {k for k, _ in b.extended}

    def _relayout(self) -> None:
        warnings = list(self._extra_warnings)
        usable: list[Node] = []
        for n in sorted(self._nodes.values(), key=lambda n: n.name):
            if n.cpu_milli < 0 or n.memory_mib < 0:
                warnings.append(f"node {n.name}: negative capacity; left out")
            elif len(n.gpu_uuids) > MAX_GPUS:
                warnings.append(f"node {n.name}: {len(n.gpu_uuids)} GPUs, more than {MAX_GPUS}; left out")
            elif len(set(n.gpu_uuids)) != len(n.gpu_uuids) or any(not u for u in n.gpu_uuids):
                warnings.append(f"node {n.name}: empty or repeated GPU UUIDs; left out")
            else:
                usable.append(n)
        self._layout_warnings = warnings
        self._usable = usable
        self._index = {n.name: i for i, n in enumerate(usable)}
        self._gpu_index = [{u: g for g, u in enumerate(n.gpu_uuids)} for n in usable]
        spec = ClusterSpec.build(
            [n.cpu_milli for n in usable],
            [n.memory_mib for n in usable],
            [len(n.gpu_uuids) for n in usable],
            [n.gpu_model for n in usable],
            [n.name for n in usable],
        )
        self._spec = spec
        n_nodes = spec.n_nodes
        self._cpu = spec.cpu_milli.copy()
        self._mem = spec.memory_mib.copy()
        cols = np.arange(spec.width)
        self._gpu = np.where(cols[None, :] < spec.gpu_count[:, None], MILLI, 0).astype(np.int64)
        self._tags = np.zeros((n_nodes, N_TAGS), dtype=np.int64)
        self._pods_used = np.zeros(n_nodes, dtype=np.int64)
        self._full = np.zeros(n_nodes, dtype=np.int64)
        names = sorted({k for n in usable for k, _ in n.extended})
        self._resource = {k: r for r, k in enumerate(names)}
        self._ext_cap = np.zeros((n_nodes, len(names)), dtype=np.int64)
        self._ext_used = np.zeros((n_nodes, len(names)), dtype=np.int64)
        self._max_pods = np.full(n_nodes, _NO_LIMIT, dtype=np.int64)
        self._shares = np.array([n.shares for n in usable], dtype=np.bool_)
        self._tainted: set[int] = set()
        for i, n in enumerate(usable):
            self._set_attributes(i, n)
        self._masks: dict[object, tuple[BoolArray, str]] = {}
        self._warnings: tuple[str, ...] = ()
        self._placed: dict[str, _Placed] = {}
        self._pod_warnings: dict[str, str] = {}
        self._dirty = False
        self._state = None
        self._memo = None
        self.generation += 1
        for p in self._pods.values():
            self._account(p)

    def _set_attributes(self, i: int, n: Node) -> None:
        self._max_pods[i] = n.max_pods if n.max_pods >= 0 else _NO_LIMIT
        for k, v in n.extended:
            self._ext_cap[i, self._resource[k]] = v
        if any(t.effect in FILTERED_EFFECTS for t in n.taints):
            self._tainted.add(i)
        else:
            self._tainted.discard(i)

    def _account(self, p: RunningPod) -> None:
        i = self._index.get(p.node)
        if i is None:
            self._pod_warnings[p.name] = f"pod {p.name}: bound to node {p.node}, which is not in the view; ignored"
            return
        self._pod_warnings.pop(p.name, None)
        node = self._usable[i]
        ext = tuple((self._resource[k], v) for k, v in p.extended if k in self._resource)
        rec = _Placed(i, (), 0, -1, p.cpu_milli, p.memory_mib, ext, False)
        if not _valid_shape(p.num_gpu, p.gpu_milli) or p.cpu_milli < 0 or p.memory_mib < 0:
            self._pod_warnings[p.name] = f"pod {p.name}: invalid request recorded; node {p.node} treated as full"
            rec.full = True
        elif p.num_gpu and node.shares:
            gpus = [self._gpu_index[i].get(u) for u in p.gpu_uuids]
            if len(gpus) != p.num_gpu or None in gpus or len(set(gpus)) != len(gpus):
                self._pod_warnings[p.name] = (
                    f"pod {p.name}: holds GPUs {list(p.gpu_uuids)} but node {p.node} lists {list(node.gpu_uuids)} "
                    f"for {p.num_gpu} GPU(s); node treated as full"
                )
                rec.full = True
            else:
                rec.gpus = tuple(g for g in gpus if g is not None)
                rec.milli = p.gpu_milli
                rec.tag = 0 if p.num_gpu == 1 and p.gpu_milli < MILLI else p.num_gpu
        elif p.num_gpu:  # the kubelet's whole devices: which ones does not matter, how many does
            free = np.flatnonzero(self._gpu[i, : len(node.gpu_uuids)] == MILLI)[: p.num_gpu]
            if free.shape[0] < p.num_gpu:
                self._pod_warnings[p.name] = (
                    f"pod {p.name}: holds {p.num_gpu} GPU(s) but node {p.node} has {free.shape[0]} free; "
                    "node treated as full"
                )
                rec.full = True
            else:
                rec.gpus = tuple(int(g) for g in free)
                rec.milli = MILLI
                rec.tag = p.num_gpu
        self._cpu[i] -= rec.cpu
        self._mem[i] -= rec.mem
        self._pods_used[i] += 1
        for r, v in rec.extended:
            self._ext_used[i, r] += v
        if rec.gpus:
            self._gpu[i, list(rec.gpus)] -= rec.milli
            self._tags[i, rec.tag] += 1
        if rec.full:
            self._full[i] += 1
        self._placed[p.name] = rec
        self._state = None

    def _unaccount(self, name: str) -> None:
        self._pod_warnings.pop(name, None)
        rec = self._placed.pop(name, None)
        if rec is None:
            return
        i = rec.node
        self._cpu[i] += rec.cpu
        self._mem[i] += rec.mem
        self._pods_used[i] -= 1
        for r, v in rec.extended:
            self._ext_used[i, r] -= v
        if rec.gpus:
            self._gpu[i, list(rec.gpus)] += rec.milli
            self._tags[i, rec.tag] -= 1
        if rec.full:
            self._full[i] -= 1
        self._state = None

    def _over(self) -> BoolArray:
        over: BoolArray = (self._cpu < 0) | (self._mem < 0) | (self._gpu < 0).any(axis=1)
        return over

    def state(self) -> ClusterState:
        """An immutable snapshot; nodes treated as full (inconsistent records, over-commitment) have nothing free."""
        self._ensure()
        if self._state is None:
            over = self._over()
            full = (self._full > 0) | over
            arrays = []
            for a in (self._cpu, self._mem, self._gpu):
                b = a.copy()
                if full.any():
                    b[full] = 0
                b.flags.writeable = False
                arrays.append(b)
            tags = self._tags.copy()
            tags.flags.writeable = False
            self._state = ClusterState(self._spec, arrays[0], arrays[1], arrays[2], tags)
            lines = [*self._layout_warnings, *self._pod_warnings.values()]
            lines += [
                f"node {self._usable[i].name}: bound pods ask for more than it has; node treated as full"
                for i in np.flatnonzero(over & (self._full == 0)).tolist()
            ]
            self._warnings = tuple(lines)
        return self._state

    def warnings(self) -> tuple[str, ...]:
        """One line per node or pod left out or distrusted."""
        self.state()
        return self._warnings

    def placed(self, name: str) -> tuple[int, tuple[int, ...], int] | None:
        """(node row, GPU columns, shares held per GPU) a bound pod is counted on; ``None`` when not counted."""
        self._ensure()
        rec = self._placed.get(name)
        return None if rec is None or rec.full else (rec.node, rec.gpus, rec.milli)

    def allowed(self, pending: PendingPod, name: str) -> bool:
        """Whether the filters (not the free CPU, memory or GPUs) let ``pending`` go to node ``name`` now."""
        self._ensure()
        i = self._index.get(name)
        if i is None:
            return False
        static, _ = self._static(pending, 0 < pending.gpu_milli < MILLI and pending.num_gpu == 1)
        dynamic, _ = self._dynamic(pending, static)
        return bool(dynamic[i])

    # -- filters ---------------------------------------------------------------------------------------------------
    def _static(self, pending: PendingPod, share: bool) -> tuple[BoolArray, str]:
        """Nodes the pod may go to whatever is free, and kube-scheduler-like counts of why the others may not."""
        key = (pending.tolerations, pending.node_selector, pending.affinity, share)
        hit = self._masks.get(key)
        if hit is not None:
            return hit
        n = len(self._usable)
        reasons: list[tuple[BoolArray, str]] = [
            (np.array([not u.unschedulable for u in self._usable], dtype=np.bool_), "unschedulable"),
            (np.array([u.ready for u in self._usable], dtype=np.bool_), "not ready"),
        ]
        taint_ok = np.ones(n, dtype=np.bool_)
        for i in self._tainted:
            taint_ok[i] = untolerated(self._usable[i].taints, pending.tolerations) is None
        reasons.append((taint_ok, "had untolerated taints"))
        if pending.node_selector or pending.affinity:
            sel = np.array(
                [selects(pending.node_selector, pending.affinity, u.labels, u.name) for u in self._usable],
                dtype=np.bool_,
            )
            reasons.append((sel, "didn't match the pod's node selector or affinity"))
        if share:
            reasons.append((self._shares, "cannot share a GPU (no HAMi device registration)"))
        ok = np.ones(n, dtype=np.bool_)
        parts = []
        for mask, text in reasons:
            failing = int((ok & ~mask).sum())
            if failing:
                parts.append(f"{failing} node(s) {text}")
            ok &= mask
        if len(self._masks) > 512:
            self._masks.clear()
        ok.flags.writeable = False
        self._masks[key] = (ok, ", ".join(parts))
        return ok, ", ".join(parts)

    def _dynamic(self, pending: PendingPod, ok: BoolArray) -> tuple[BoolArray, str]:
        """``ok`` less nodes at their pod limit or without the extended resources the pod requests."""
        out = ok & (self._pods_used < self._max_pods)
        parts = []
        full = int((ok & ~out).sum())
        if full:
            parts.append(f"{full} node(s) at their pod limit")
        for name, amount in pending.extended:
            if amount <= 0:
                continue
            r = self._resource.get(name)
            if r is None:
                have = np.zeros(len(self._usable), dtype=np.bool_)
            else:
                have = self._ext_cap[:, r] - self._ext_used[:, r] >= amount
            short = int((out & ~have).sum())
            if short:
                parts.append(f"{short} node(s) had insufficient {name}")
            out = out & have
        return out, ", ".join(parts)

    def _resolve_models(self, pending: PendingPod) -> frozenset[str] | str:
        """The cluster's GPU models the pod accepts (empty: any), or why none does."""
        if not pending.num_gpu or not (pending.gpu_models or pending.gpu_models_excluded):
            return frozenset()
        have = sorted({n.gpu_model for n in self._usable if n.gpu_uuids})
        ok = frozenset(
            m
            for m in have
            if (not pending.gpu_models or _matches(m, pending.gpu_models))
            and not _matches(m, pending.gpu_models_excluded)
        )
        if ok:
            return ok
        wanted = ", ".join(sorted(pending.gpu_models)) or "any"
        excluded = f" except {', '.join(sorted(pending.gpu_models_excluded))}" if pending.gpu_models_excluded else ""
        return f"unknown GPU model(s) {wanted}{excluded}; the cluster has {', '.join(have) or 'no GPU'}"

    # -- deciding --------------------------------------------------------------------------------------------------
    def decide(
        self,
        pending: PendingPod,
        policy: PlacementPolicy[Any],
        *,
        classes: TaskClasses | None = None,
        rng: np.random.Generator | None = None,
        prefer: str | None = None,
    ) -> Decision:
        """Where ``policy`` binds ``pending``, or why it cannot (see the module docstring). With ``prefer`` (a
        node reserved for this pod) the pod goes there when it fits under every filter, else where the policy says.

        ``classes`` is the target workload FGD-style policies score against; the policy's memo is kept while the
        policy, the classes and the node layout stay the same objects. Without ``classes`` they are derived from
        the bound pods plus the pending one (a rebuild per decision: for tests and one-off decisions).
        """
        if pending.name in self._pods:
            where = self._pods[pending.name].node
            return Unschedulable(pending.name, "AlreadyBound", f"pod {pending.name} is already bound to node {where}")
        state = self.state()
        nodes = self._usable
        warnings = self.warnings()
        if pending.num_gpu > MAX_GPUS and min(pending.cpu_milli, pending.memory_mib, pending.gpu_milli) >= 0:
            most = max((len(n.gpu_uuids) for n in nodes), default=0)
            too_many = f"asks for {pending.num_gpu} GPUs but the largest node has {most} (at most {MAX_GPUS} per node)"
            return Unschedulable(pending.name, "Impossible", too_many, warnings)
        models = self._resolve_models(pending)
        req = _request(pending, models if not isinstance(models, str) else frozenset())
        if isinstance(req, str):
            return Unschedulable(pending.name, "Invalid", f"invalid request: {req}", warnings)
        if not nodes:
            return Unschedulable(pending.name, "Impossible", "no usable node in the cluster", warnings)
        if req.num_gpu:
            if not any(n.gpu_uuids for n in nodes):
                why = f"asks for {req.num_gpu} GPU(s) but no node has a GPU"
                return Unschedulable(pending.name, "Impossible", why, warnings)
            most = int(state.spec.gpu_count.max())
            if req.num_gpu > most:
                why = f"asks for {req.num_gpu} GPUs but the largest node has {most}"
                return Unschedulable(pending.name, "Impossible", why, warnings)
            if isinstance(models, str):
                return Unschedulable(pending.name, "Impossible", models, warnings)
        static, why_static = self._static(pending, req.is_share)
        if not static.any():
            why = f"0/{len(nodes)} nodes are available: {why_static}"
            return Unschedulable(pending.name, "Impossible", why, warnings)
        big_key = ("too big", req.cpu_milli, req.memory_mib, req.num_gpu, req.gpu_models, id(static))
        cached = self._masks.get(big_key)
        if cached is None or cached[0] is not static:  # cached per request shape while the nodes stay the same
            cached = (static, _too_big(state.spec, req, static) or "")
            self._masks[big_key] = cached
        why_big = cached[1] or None
        if why_big is not None:
            return Unschedulable(pending.name, "Impossible", why_big, warnings)
        eligible, why_dynamic = self._dynamic(pending, static)
        if classes is None:
            known = [
                PodRequest(p.cpu_milli, p.memory_mib, p.num_gpu, p.gpu_milli)
                for p in self._pods.values()
                if p.cpu_milli >= 0 and p.memory_mib >= 0 and _valid_shape(p.num_gpu, p.gpu_milli)
            ]
            classes = task_classes([*known, req])
        key = (id(policy), id(classes), self.generation)
        if self._memo is None or self._memo_key != key:
            self._memo = policy.init(state, classes)
            self._memo_key = key
        rng = rng if rng is not None else np.random.default_rng(0)
        placement = None
        at = self._index.get(prefer) if prefer is not None else None
        if at is not None and eligible[at]:
            only = np.zeros_like(eligible)
            only[at] = True
            placement, self._memo = policy.place(replace(state, eligible=only), req, self._memo, rng)
        if placement is None:
            placement, self._memo = policy.place(replace(state, eligible=eligible), req, self._memo, rng)
        if placement is None:
            extra = f"; {why_static}" if why_static else ""
            extra += f"; {why_dynamic}" if why_dynamic else ""
            return Unschedulable(pending.name, "NoRoom", _no_room(state, req, eligible) + extra, warnings)
        node = nodes[placement.node]
        if node.shares:
            uuids = tuple(node.gpu_uuids[g] for g in placement.gpus)
            annotations = hami_device_annotations(pending, node, placement.gpus) if uuids else {}
        else:
            uuids, annotations = (), {}
        return Binding(pending.name, node.name, placement.gpus, uuids, annotations, placement.reason, warnings)


def _too_big(spec: ClusterSpec, pod: PodRequest, allowed: BoolArray) -> str | None:
    """Why no allowed node could ever host ``pod`` even when idle (``None`` when one could)."""
    eligible = allowed & (spec.gpu_count >= pod.num_gpu)
    if pod.num_gpu:
        eligible &= spec.model_mask(pod.gpu_models)
    big = eligible & (spec.cpu_milli >= pod.cpu_milli) & (spec.memory_mib >= pod.memory_mib)
    if big.any():
        return None
    if pod.num_gpu and not eligible.any():
        models = ", ".join(sorted(pod.gpu_models)) or "any model"
        return f"asks for {pod.num_gpu} GPU(s) of {models}; no eligible node has that many"
    cpu = int(spec.cpu_milli[eligible].max()) if eligible.any() else 0
    mem = int(spec.memory_mib[eligible].max()) if eligible.any() else 0
    return (
        f"no node is large enough: needs {pod.cpu_milli} mCPU and {pod.memory_mib} MiB; the largest eligible "
        f"node has {cpu} mCPU and {mem} MiB"
    )


def _no_room(state: ClusterState, pod: PodRequest, eligible: BoolArray) -> str:
    """Why ``pod`` fits nowhere now, with what is free in total (to tell fragmentation from a full cluster)."""
    spec = state.spec
    if pod.num_gpu:
        eligible = eligible & spec.model_mask(pod.gpu_models)
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


@dataclass(frozen=True, slots=True)
class _Built:
    nodes: tuple[Node, ...]
    state: ClusterState
    warnings: tuple[str, ...]


def _build(view: ClusterView) -> _Built:
    """The cluster state of ``view``: usable nodes, free resources, and a warning per thing left out."""
    live = LiveCluster(view.nodes, view.pods)
    return _Built(live.nodes, live.state(), live.warnings())


def decide(
    view: ClusterView,
    pending: PendingPod,
    policy: PlacementPolicy[Any],
    *,
    classes: TaskClasses | None = None,
    rng: np.random.Generator | None = None,
) -> Decision:
    """Where ``policy`` binds ``pending`` in ``view``, or why it cannot: :meth:`LiveCluster.decide` on a cluster
    built from ``view`` (``classes`` default to the bound pods plus the pending one)."""
    if any(p.name == pending.name for p in view.pods):
        where = next(p.node for p in view.pods if p.name == pending.name)
        return Unschedulable(pending.name, "AlreadyBound", f"pod {pending.name} is already bound to node {where}")
    return LiveCluster(view.nodes, view.pods).decide(pending, policy, classes=classes, rng=rng)
