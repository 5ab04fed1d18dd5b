"""The agent as a secondary Kubernetes scheduler (``schedulerName: shadowscale``; issues 5 and 14).

:class:`SecondaryScheduler` keeps a :class:`policies.placement.scheduler.LiveCluster` current from two
list+watch loops (nodes, and pods in every namespace): each event updates the numpy arrays in place, so one
decision costs what a simulated placement costs (``shadowscale bench placement --live``). For each pending pod
whose ``spec.schedulerName`` is the configured name it asks :meth:`LiveCluster.decide` where it goes, one pod
after the other; the API calls of a binding run on their own task (``bind_concurrency`` at once), so the next
decision does not wait for them:

- **Binding** (HAMi's protocol, as HAMi's scheduler does it in ``Filter`` and ``Bind``): the binding enters the
  cluster first (an *assumed* pod: the next decision already sees it); for a GPU pod on a HAMi node the node is
  locked (``hami.io/mutex.lock``, taken only when absent or older than HAMi's 5 minutes, released by HAMi's
  device plugin after Allocate, or by us if the binding fails), then one PATCH writes HAMi's device
  annotations (``hami.io/vgpu-node``, ``vgpu-devices-to-allocate``, ``vgpu-devices-allocated``, ``vgpu-time``,
  ``bind-time``, ``bind-phase: allocating`` and ``nvidia.com/use-gpuuuid``) with the pod's ``resourceVersion`` as
  a precondition, then the ``Binding`` is POSTed. A 409 on the PATCH re-reads the pod: bound meanwhile, deleted
  or changed, it is left alone (a bound pod is never written); otherwise the PATCH is retried on the new version.
  A 409 on the Binding re-reads the pod too: bound to our node it is a success (an earlier attempt went
  through), elsewhere a failure. The assumption ends when the watch shows the pod bound or deleted, or the
  binding failed. Nodes without HAMi's registration get no annotation (their GPUs are the kubelet's).
- **Unschedulable**: a ``FailedScheduling`` Warning Event with the reason (once per distinct reason). ``Invalid``
  and ``Impossible`` pods are not decided again until the pod or a node changes; ``NoRoom`` pods again when
  capacity was freed or after ``retry_s``.

What a node offers: allocatable ``cpu``, ``memory``, ``pods`` and every other resource; labels, taints, the Ready
condition and ``spec.unschedulable`` for the filters; its GPUs from HAMi's ``hami.io/node-nvidia-register``
annotation (JSON list or the older ``id,count,mem,cores,type,numa,health:`` form: UUIDs, memory, model;
unhealthy devices left out), else allocatable ``nvidia.com/gpu`` as whole devices that are never shared. What a
pod asks for: the sum of its containers' requests (limits when a request is missing; the largest init container
if larger), ``nvidia.com/gpu`` GPUs in one container, a share from ``shadowscale.io/gpu-milli`` (annotation),
``nvidia.com/gpucores`` (percent) or 1000 per GPU, an explicit ``nvidia.com/gpumem``, GPU models from HAMi's
``nvidia.com/use-gputype`` / ``nouse-gputype``, ``nodeSelector``, required node affinity and tolerations. A bound
pod holds the GPUs named by ``nvidia.com/use-gpuuuid`` or, for pods HAMi scheduled, by
``hami.io/vgpu-devices-allocated``.

FGD-style policies score against a target workload: ``scheduler.workload`` from the configuration, else the
request shapes of the last ``workload_window`` pods that arrived for this scheduler (recomputed at most every
``workload_refresh_s``), never the pods running now (DaemonSet pods would dominate).

Migrations (off by default, ``scheduler.migrations``) run on their own task: a pod that found no room although
enough GPU shares are free queues a :func:`policies.placement.defrag.plan_defrag` plan, at most one per
``migration_interval_s``. PodDisruptionBudgets are read first (a pod covered by a budget moves only within its
``disruptionsAllowed``; a pod under two budgets, a bare pod, a DaemonSet pod never moves). Each move's
destination is reserved (a placeholder pod holds the capacity) for the evicted pod's replacement, which is
steered there when it arrives (same controller); once the moves are done the freed node is reserved for the
pod the plan made room for. A 429 from the Eviction API (a budget refused) abandons the plan: its reservations
are released and the refused pod is left out of plans for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any

import aiohttp
import numpy as np
import structlog
from kubernetes_asyncio import client

from shadowscale.agent.config import KubernetesConfig, SchedulerConfig
from shadowscale.agent.kube import KubeError, _json, list_and_watch
from shadowscale.agent.metrics import Metrics
from shadowscale.policies.placement import make_policy
from shadowscale.policies.placement.cluster import PodRequest
from shadowscale.policies.placement.defrag import BoundPod, DefragPlan, plan_defrag
from shadowscale.policies.placement.filters import Requirement, Taint, Toleration
from shadowscale.policies.placement.scheduler import (
    HAMI_DEVICES_ALLOCATED,
    HAMI_USE_GPUUUID,
    Binding,
    LiveCluster,
    Node,
    PendingPod,
    RunningPod,
    Unschedulable,
    hami_bind_annotations,
    running_pod,
)
from shadowscale.policies.placement.workload import TaskClasses, task_classes

log = structlog.get_logger("shadowscale.scheduler")

HAMI_NODE_REGISTER = "hami.io/node-nvidia-register"
HAMI_USE_GPUTYPE = "nvidia.com/use-gputype"
HAMI_NOUSE_GPUTYPE = "nvidia.com/nouse-gputype"
GPU_MILLI_ANNOTATION = "shadowscale.io/gpu-milli"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_CORES_RESOURCE = "nvidia.com/gpucores"
GPU_MEM_RESOURCE = "nvidia.com/gpumem"
HAMI_RESOURCES = frozenset({GPU_CORES_RESOURCE, GPU_MEM_RESOURCE, "nvidia.com/gpumem-percentage"})
"""HAMi's per-GPU resources: the scheduler extender's, not the kubelet's (``ignoredByScheduler``)."""
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
REFUSED_PIN_S = 60.0
"""A pod whose eviction was refused is left out of migration plans this long."""
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
HAMI_NODE_LOCK = "hami.io/mutex.lock"
"""HAMi ``nodelock.NodeLockKey``: ``<RFC 3339 time>,<namespace>,<pod>`` while a pod's devices are being allocated."""
NODE_LOCK_EXPIRY_S = 300.0
"""HAMi ``nodelock.NodeLockTimeout``: an older lock is stale and may be taken over."""
RESERVED = "reservation/"
"""Name prefix of the placeholder pods that hold a migration's reserved capacity."""

_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_SUFFIX: dict[str | None, Decimal] = {
    None: Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
}
_MIB = Decimal(1024 * 1024)


def quantity(value: object) -> Decimal:
    """A Kubernetes quantity (``"500m"``, ``"2"``, ``"1Gi"``, ``4``) as a number; raises ``ValueError``."""
    m = _QUANTITY.match(str(value).strip())
    if m is None:
        raise ValueError(f"not a quantity: {value!r}")
    try:
        q: Decimal = Decimal(str(m.group(1))) * _SUFFIX[m.group(2)]
    except InvalidOperation:
        raise ValueError(f"not a quantity: {value!r}") from None
    return q


def _milli(q: Decimal, up: bool) -> int:
    return int((q * 1000).to_integral_value(ROUND_CEILING if up else ROUND_FLOOR))


def _mib(q: Decimal, up: bool) -> int:
    return int((q / _MIB).to_integral_value(ROUND_CEILING if up else ROUND_FLOOR))


# -- translating Kubernetes objects to the decision's values ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HamiDevice:
    uuid: str
    model: str
    memory_mib: int = 0
    healthy: bool = True


def hami_devices(annotation: str) -> list[HamiDevice]:
    """The GPUs in HAMi's node register annotation (JSON list of ``DeviceInfo``, or the older
    ``id,count,mem,cores,type,numa,health:`` form); raises ``ValueError`` on a malformed one."""
    text = annotation.strip()
    out: list[HamiDevice] = []
    if text.startswith("["):
        for d in json.loads(text):
            if isinstance(d, Mapping) and d.get("id"):
                # Go's omitempty drops a false Health; HAMi's fit skips such devices (device.go ``!dev.Health``)
                healthy = d.get("health") is True
                out.append(HamiDevice(str(d["id"]), str(d.get("type", "")), int(d.get("devmem", 0) or 0), healthy))
        return out
    for entry in text.split(":"):
        fields = [f.strip() for f in entry.split(",")]
        if fields[0]:
            mem = int(fields[2]) if len(fields) > 2 and fields[2] else 0
            healthy = len(fields) <= 6 or fields[6].lower() != "false"
            out.append(HamiDevice(fields[0], fields[4] if len(fields) > 4 else "", mem, healthy))
    return out


def _labels(meta: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}


def node_of(obj: Mapping[str, Any]) -> Node | str:
    """What the node offers (cordoned and not-ready nodes included: the filters say why they are skipped), or why
    it cannot be read."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    name = str(meta.get("name", ""))
    alloc = status.get("allocatable") or {}
    labels = _labels(meta)
    try:
        cpu = _milli(quantity(alloc.get("cpu", 0)), up=False)
        mem = _mib(quantity(alloc.get("memory", 0)), up=False)
        pods = int(quantity(alloc["pods"])) if "pods" in alloc else -1
        extended = tuple(
            sorted(
                (str(k), _milli(quantity(v), up=False)) for k, v in alloc.items() if k not in ("cpu", "memory", "pods")
            )
        )
        register = (meta.get("annotations") or {}).get(HAMI_NODE_REGISTER)
        devices = [d for d in hami_devices(register) if d.healthy] if register else []
        model = labels.get(GPU_PRODUCT_LABEL, "")
        if devices:
            uuids = tuple(d.uuid for d in devices)
            memory = tuple(d.memory_mib for d in devices)
            model = devices[0].model or model
            shares = True
        else:  # the kubelet's whole devices: placeholders, never written anywhere
            count = int(quantity(alloc.get(GPU_RESOURCE, 0)))
            uuids = tuple(f"kubelet-gpu-{i}" for i in range(count))
            memory = ()
            shares = False
        taints = tuple(
            Taint(str(t.get("key", "")), str(t.get("value", "") or ""), str(t.get("effect", "")))
            for t in spec.get("taints") or []
            if isinstance(t, Mapping)
        )
    except (ValueError, TypeError, AttributeError, json.JSONDecodeError) as e:
        return f"node {name}: unreadable capacity or GPU registration: {e}"
    conditions = {
        str(c.get("type")): str(c.get("status")) for c in status.get("conditions") or [] if isinstance(c, Mapping)
    }
    return Node(
        name,
        cpu,
        mem,
        model if uuids else "",
        uuids,
        shares=shares,
        gpu_memory_mib=memory,
        max_pods=pods,
        extended=extended,
        labels=labels,
        taints=taints,
        ready=conditions.get("Ready", "True") == "True",
        unschedulable=bool(spec.get("unschedulable")),
    )


@dataclass(frozen=True, slots=True)
class PodInfo:
    """What the scheduler keeps of one pod."""

    key: str
    """``namespace/name``: the pod's name in the decision's values."""
    namespace: str
    name: str
    uid: str
    scheduler: str
    node: str | None
    phase: str
    deleting: bool
    created: str
    request: PendingPod | str
    """The request, or why it cannot be read."""
    gpu_uuids: tuple[str, ...]
    owner: str
    """``Kind/name`` of the controlling owner; empty for a bare pod."""
    fingerprint: str
    """Changes when the request, the constraints or the annotations change."""
    resource_version: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.phase not in TERMINAL_PHASES

    def running(self) -> RunningPod | None:
        if self.node is None or not self.active or isinstance(self.request, str):
            return None
        r = self.request
        return RunningPod(
            self.key, self.node, r.cpu_milli, r.memory_mib, r.num_gpu, r.gpu_milli, self.gpu_uuids, r.extended
        )


def _resources(c: Mapping[str, Any]) -> dict[str, Any]:
    res = c.get("resources") or {}
    return {**(res.get("limits") or {}), **(res.get("requests") or {})}


def _affinity(spec: Mapping[str, Any]) -> tuple[tuple[Requirement, ...], ...]:
    node_aff = (spec.get("affinity") or {}).get("nodeAffinity") or {}
    required = node_aff.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = []
    for t in required.get("nodeSelectorTerms") or []:
        reqs = [
            Requirement(str(e.get("key", "")), str(e.get("operator", "")), tuple(str(v) for v in e.get("values") or ()))
            for e in t.get("matchExpressions") or []
        ]
        reqs += [
            Requirement(
                str(e.get("key", "")), str(e.get("operator", "")), tuple(str(v) for v in e.get("values") or ()), True
            )
            for e in t.get("matchFields") or []
        ]
        terms.append(tuple(reqs))
    return tuple(terms)


def _request(key: str, spec: Mapping[str, Any], annotations: Mapping[str, str]) -> PendingPod | str:
    cpu = mem = Decimal(0)
    ext: dict[str, Decimal] = {}
    cores: Decimal | None = None
    gpumem: Decimal | None = None
    init = list(spec.get("initContainers") or [])
    containers = list(spec.get("containers") or [])
    gpu_containers: list[tuple[int, int]] = []
    try:
        for c in containers:
            r = _resources(c)
            cpu += quantity(r.get("cpu", 0))
            mem += quantity(r.get("memory", 0))
            for k, v in r.items():
                if k not in ("cpu", "memory") and k not in HAMI_RESOURCES:
                    ext[str(k)] = ext.get(str(k), Decimal(0)) + quantity(v)
            if GPU_CORES_RESOURCE in r:
                cores = quantity(r[GPU_CORES_RESOURCE])
            if GPU_MEM_RESOURCE in r:
                gpumem = quantity(r[GPU_MEM_RESOURCE])
        for c in init:
            r = _resources(c)
            cpu = max(cpu, quantity(r.get("cpu", 0)))
            mem = max(mem, quantity(r.get("memory", 0)))
        for i, c in enumerate([*init, *containers]):
            g = quantity(_resources(c).get(GPU_RESOURCE, 0))
            if g != int(g) or g < 0:
                return f"{GPU_RESOURCE} {g} is not a whole number"
            if g:
                gpu_containers.append((i, int(g)))
        if len(gpu_containers) > 1:
            return (
                f"{len(gpu_containers)} containers ask for {GPU_RESOURCE}; shadowscale places one GPU container per pod"
            )
        gpu_container, num_gpu = gpu_containers[0] if gpu_containers else (len(init), 0)
        if GPU_MILLI_ANNOTATION in annotations:
            milli = int(annotations[GPU_MILLI_ANNOTATION])
        elif num_gpu == 1 and cores is not None and 0 < cores < 100:
            milli = int(cores * 10)
        else:
            milli = 1000 if num_gpu else 0
        extended = tuple(sorted((k, _milli(v, up=True)) for k, v in ext.items()))
    except (ValueError, TypeError, AttributeError) as e:
        return f"unreadable resource request: {e}"

    def models(name: str) -> frozenset[str]:
        return frozenset(m.strip() for m in annotations.get(name, "").split(",") if m.strip())

    selector = spec.get("nodeSelector") or {}
    tolerations = tuple(
        Toleration(
            str(t.get("key", "") or ""),
            str(t.get("operator", "") or "Equal"),
            str(t.get("value", "") or ""),
            str(t.get("effect", "") or ""),
        )
        for t in spec.get("tolerations") or []
        if isinstance(t, Mapping)
    )
    return PendingPod(
        key,
        _milli(cpu, up=True),
        _mib(mem, up=True),
        num_gpu,
        milli,
        models(HAMI_USE_GPUTYPE),
        models(HAMI_NOUSE_GPUTYPE),
        extended,
        tuple(sorted((str(k), str(v)) for k, v in selector.items())) if isinstance(selector, Mapping) else (),
        _affinity(spec),
        tolerations,
        containers=len(init) + len(containers),
        gpu_container=gpu_container,
        gpu_memory_mib=int(gpumem) if gpumem is not None else 0,
    )


def _held_gpus(annotations: Mapping[str, str]) -> tuple[str, ...]:
    pinned = annotations.get(HAMI_USE_GPUUUID)
    if pinned:
        return tuple(u.strip() for u in pinned.split(",") if u.strip())
    allocated = annotations.get(HAMI_DEVICES_ALLOCATED, "")  # "uuid,type,mem,cores:...;" per container
    uuids = [d.split(",")[0].strip() for ctr in allocated.split(";") for d in ctr.split(":")]
    return tuple(dict.fromkeys(u for u in uuids if u))


def pod_of(obj: Mapping[str, Any]) -> PodInfo:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    ns = str(meta.get("namespace") or "default")
    name = str(meta.get("name", ""))
    key = f"{ns}/{name}"
    annotations = {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()}
    owner = next(
        (f"{o.get('kind')}/{o.get('name')}" for o in meta.get("ownerReferences") or [] if o.get("controller")), ""
    )
    constraints = [spec.get(k) for k in ("containers", "initContainers", "nodeSelector", "affinity", "tolerations")]
    fingerprint = hashlib.sha1(json.dumps([constraints, annotations], sort_keys=True, default=str).encode()).hexdigest()
    return PodInfo(
        key=key,
        namespace=ns,
        name=name,
        uid=str(meta.get("uid", "")),
        scheduler=str(spec.get("schedulerName") or "default-scheduler"),
        node=spec.get("nodeName") or None,
        phase=str((obj.get("status") or {}).get("phase") or "Pending"),
        deleting=bool(meta.get("deletionTimestamp")),
        created=str(meta.get("creationTimestamp") or ""),
        request=_request(key, spec, annotations),
        gpu_uuids=_held_gpus(annotations),
        owner=owner,
        fingerprint=fingerprint,
        resource_version=str(meta.get("resourceVersion") or ""),
        labels=_labels(meta),
    )


# -- API calls with retries ------------------------------------------------------------------------------------------


class _Api:
    """Raw (``_preload_content=False``) core/v1 and policy calls with kube.py's retry rules."""

    def __init__(self, core: Any, cfg: KubernetesConfig, stop: asyncio.Event) -> None:
        self.core = core
        self.cfg = cfg
        self.stop = stop

    async def call(
        self, what: str, fn: Callable[..., Awaitable[Any]], *args: Any, retry: frozenset[int] = frozenset({409, 429})
    ) -> Any:
        delays = self.cfg.retry_delays_s
        attempts = len(delays) + 1
        for attempt in range(1, attempts + 1):
            try:
                return await _json(await fn(*args, _preload_content=False, _request_timeout=self.cfg.request_timeout_s))
            except KubeError as e:
                err: KubeError = e
            except (aiohttp.ClientError, TimeoutError) as e:
                err = KubeError(0, f"{type(e).__name__}: {e}".rstrip(": "))
            retryable = err.status == 0 or err.status >= 500 or err.status in retry
            if not retryable or attempt == attempts or self.stop.is_set():
                raise err
            delay = delays[attempt - 1]
            if err.retry_after is not None:
                delay = max(delay, min(err.retry_after, 2.0))
            log.info(f"{what}: attempt {attempt}/{attempts} failed; will retry", delay_s=delay, error=str(err))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)
        raise AssertionError("unreachable")  # pragma: no cover


# -- PodDisruptionBudgets and migrations ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Budget:
    """A PodDisruptionBudget as the planner needs it: whom it covers and how many may go now."""

    key: str
    namespace: str
    match_labels: tuple[tuple[str, str], ...] | None
    """``None``: no selector (a policy/v1 budget with a null selector covers no pod)."""
    expressions: tuple[Requirement, ...]
    allowed: int
    """``status.disruptionsAllowed``."""

    def covers(self, namespace: str, labels: Mapping[str, str]) -> bool:
        if namespace != self.namespace or self.match_labels is None:
            return False
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels, "") for r in self.expressions
        )


def budget_of(obj: Mapping[str, Any]) -> Budget | str:
    """A PodDisruptionBudget, or why it cannot be read."""
    meta = obj.get("metadata") or {}
    ns = str(meta.get("namespace") or "default")
    key = f"{ns}/{meta.get('name', '')}"
    try:
        selector = (obj.get("spec") or {}).get("selector")
        allowed = int((obj.get("status") or {}).get("disruptionsAllowed") or 0)
        if selector is None:
            return Budget(key, ns, None, (), allowed)
        labels = tuple(sorted((str(k), str(v)) for k, v in (selector.get("matchLabels") or {}).items()))
        exprs = tuple(
            Requirement(str(e["key"]), str(e["operator"]), tuple(str(v) for v in e.get("values") or ()))
            for e in selector.get("matchExpressions") or []
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return f"PodDisruptionBudget {key}: unreadable: {e}"
    return Budget(key, ns, labels, exprs, max(allowed, 0))


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """Which moves of a plan were carried out (evicted and gone), and why the rest was not (``None``: all done)."""

    done: tuple[str, ...]
    stopped: str | None = None
    refused: str | None = None
    """The pod whose PodDisruptionBudget refused its eviction (HTTP 429)."""


class MigrationExecutor:
    """Run a defragmentation plan one move at a time: evict the pod (the Eviction API enforces its
    PodDisruptionBudget), wait until it is gone, then the next; a 429 (a budget refused) stops the plan."""

    def __init__(self, api: _Api, gone: Callable[[str, float], Awaitable[bool]], wait_s: float = 60.0) -> None:
        self.api = api
        self.gone = gone
        self.wait_s = wait_s

    async def execute(self, plan: DefragPlan) -> MigrationReport:
        done: list[str] = []
        for move in plan.moves:
            ns, _, name = move.name.partition("/")
            body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": ns}}
            try:
                await self.api.call(
                    f"evict {move.name}",
                    self.api.core.create_namespaced_pod_eviction,
                    name,
                    ns,
                    body,
                    retry=frozenset(),
                )
            except KubeError as e:
                if e.status == 429:
                    why = f"eviction of {move.name} refused by its PodDisruptionBudget; plan abandoned"
                    return MigrationReport(tuple(done), why, refused=move.name)
                return MigrationReport(tuple(done), f"eviction of {move.name} failed: {e}; plan abandoned")
            if not await self.gone(move.name, self.wait_s):
                return MigrationReport(tuple(done), f"{move.name} still there {self.wait_s:g} s after its eviction")
            done.append(move.name)
            log.info("migration: pod evicted", pod=move.name, move=len(done), of=len(plan.moves))
        return MigrationReport(tuple(done))


# -- the scheduler ---------------------------------------------------------------------------------------------------


@dataclass
class _Tried:
    fingerprint: str
    capacity_gen: int
    kind: str
    at: float


@dataclass(frozen=True, slots=True)
class _Reservation:
    phantom: str
    """The placeholder pod holding the capacity in the cluster state."""
    node: str
    expires: float
    plan: int


@dataclass
class SchedulerStats:
    bound: int = 0
    unschedulable: int = 0
    failed_bindings: int = 0
    events: int = 0
    conflicts: int = 0
    """409s answered by re-reading the pod."""
    steered: int = 0
    """Pods placed on a node a migration reserved for them."""
    migrations: list[MigrationReport] = field(default_factory=list)
    decision_ms: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))


class SecondaryScheduler:
    """Place pods whose ``schedulerName`` is ``cfg.name``; :meth:`run` until ``stop`` is set."""

    def __init__(
        self,
        cfg: SchedulerConfig,
        kube: KubernetesConfig,
        api: Any,
        *,
        identity: str = "shadowscale",
        is_leader: Callable[[], bool] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.kube = kube
        self.identity = identity
        self.is_leader = is_leader or (lambda: True)
        self.policy = make_policy(cfg.policy)
        self.rng = np.random.default_rng(0)
        self.core: Any = client.CoreV1Api(api)
        self.policy_api: Any = client.PolicyV1Api(api)
        self.live = LiveCluster()
        self.pods: dict[str, PodInfo] = {}
        self.assumed: dict[str, RunningPod] = {}
        self.reservations: dict[str, list[_Reservation]] = {}
        """By the pod key or controller (``Kind/name``) whose pod may use them."""
        self.stats = SchedulerStats()
        self.synced = {"nodes": asyncio.Event(), "pods": asyncio.Event()}
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self._capacity_gen = 0
        self._tried: dict[str, _Tried] = {}
        self._reported: dict[str, str] = {}
        self._warned: set[str] = set()
        self._seq = 0
        self._refused: dict[str, float] = {}
        """Pods whose eviction a PodDisruptionBudget refused, and when: not planned to move for a while."""
        self._inflight: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sem = asyncio.Semaphore(cfg.bind_concurrency)
        self._defrag: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._last_plan = -float("inf")
        self._plans = 0
        self._arrivals: deque[PodRequest] = deque(maxlen=cfg.workload_window)
        self._arrived: set[str] = set()
        self._classes: TaskClasses | None = configured_classes(cfg)
        self._classes_at = -float("inf")
        self._arrivals_changed = False

    # -- the target workload ----------------------------------------------------------------------------------------
    def _note_arrival(self, p: PodInfo) -> None:
        if p.key in self._arrived or isinstance(p.request, str):
            return
        if len(self._arrived) > 4 * self.cfg.workload_window:
            self._arrived.clear()
        self._arrived.add(p.key)
        r = p.request
        with contextlib.suppress(ValueError):
            self._arrivals.append(PodRequest(r.cpu_milli, r.memory_mib, r.num_gpu, r.gpu_milli))
            self._arrivals_changed = True

    def classes(self) -> TaskClasses | None:
        """The target workload: configured, or the observed arrivals (recomputed at most every refresh)."""
        if self.cfg.workload:
            return self._classes
        now = time.monotonic()
        due = self._classes is None or now - self._classes_at >= self.cfg.workload_refresh_s
        if self._arrivals and self._arrivals_changed and due:
            self._classes = task_classes(list(self._arrivals))
            self._classes_at = now
            self._arrivals_changed = False
        return self._classes

    # -- the view ---------------------------------------------------------------------------------------------------
    def pending(self) -> list[PodInfo]:
        mine = [
            p
            for p in self.pods.values()
            if p.scheduler == self.cfg.name
            and p.node is None
            and p.phase == "Pending"
            and not p.deleting
            and p.key not in self.assumed
            and p.key not in self._inflight
        ]
        return sorted(mine, key=lambda p: (p.created, p.key))

    def _warn(self, line: str) -> None:
        if line not in self._warned:
            if len(self._warned) > 10_000:
                self._warned.clear()
            self._warned.add(line)
            log.warning("scheduler view", detail=line)

    def _kept(self) -> set[str]:
        """Cluster entries that are not pods from the watch: assumed bindings and reservations."""
        return set(self.assumed) | {r.phantom for rs in self.reservations.values() for r in rs}

    # -- watches ----------------------------------------------------------------------------------------------------
    async def _watch(self, kind: str, stop: asyncio.Event) -> None:
        list_call = self.core.list_node if kind == "nodes" else self.core.list_pod_for_all_namespaces

        async def on_list(listing: Mapping[str, Any]) -> None:
            await self._replace(kind, listing.get("items") or [])
            self.synced[kind].set()

        async def on_event(event: Mapping[str, Any]) -> None:
            await self._on_event(kind, event)

        await list_and_watch(
            kind, list_call, on_list, on_event, stop, self.kube.retry_delays_s, self.kube.request_timeout_s
        )

    def _set_node(self, obj: Mapping[str, Any]) -> bool:
        """Apply one node; whether anything the scheduler uses changed."""
        name = str((obj.get("metadata") or {}).get("name", ""))
        n = node_of(obj)
        if isinstance(n, str):
            self._warn(n)
            had = self.live.node(name) is not None
            self.live.remove_node(name)
            return had
        if self.live.node(name) == n:
            return False
        self.live.set_node(n)
        return True

    async def _replace(self, kind: str, items: list[Mapping[str, Any]]) -> None:
        if kind == "nodes":
            names = {str((o.get("metadata") or {}).get("name", "")) for o in items}
            for n in self.live.all_nodes():
                if n.name not in names:
                    self.live.remove_node(n.name)
            for o in items:
                self._set_node(o)
        else:
            self.pods = {p.key: p for p in map(pod_of, items)}
            self.assumed = {k: v for k, v in self.assumed.items() if k in self.pods and self.pods[k].node is None}
            running = {p.key: r for p in self.pods.values() if (r := p.running()) is not None}
            kept = self._kept()
            for name in list(self.live.pods):
                if name not in running and name not in kept:
                    self.live.remove_pod(name)
            for r in running.values():
                if self.live.pods.get(r.name) != r:
                    self.live.add_pod(r)
        self._capacity_gen += 1
        await self._bump()

    async def _on_event(self, kind: str, event: Mapping[str, Any]) -> None:
        etype = event.get("type")
        obj = event.get("object") or {}
        if etype == "ERROR":
            raise KubeError(int(obj.get("code", 0) or 0), str(obj.get("message", "watch error")))
        if etype not in ("ADDED", "MODIFIED", "DELETED"):
            return
        if kind == "nodes":
            name = str((obj.get("metadata") or {}).get("name", ""))
            if etype == "DELETED":
                changed = self.live.node(name) is not None
                self.live.remove_node(name)
            else:
                changed = self._set_node(obj)
            if not changed:
                return
            self._capacity_gen += 1
        else:
            p = pod_of(obj)
            old = self.pods.get(p.key)
            if etype == "DELETED":
                self.pods.pop(p.key, None)
                self.assumed.pop(p.key, None)
                self._tried.pop(p.key, None)
                self._reported.pop(p.key, None)
                if p.key in self.live.pods:
                    self.live.remove_pod(p.key)
                    self._capacity_gen += 1
            else:
                self.pods[p.key] = p
                r = p.running()
                if r is not None:
                    self.assumed.pop(p.key, None)
                    if self.live.pods.get(p.key) != r:
                        self.live.add_pod(r)
                elif p.key in self.live.pods and p.key not in self.assumed:
                    self.live.remove_pod(p.key)  # ended, or no longer readable
                    self._capacity_gen += 1
                if old is not None and old.active and not p.active:
                    self._capacity_gen += 1
        await self._bump()

    async def _bump(self) -> None:
        self._wake.set()
        async with self._changed:
            self._changed.notify_all()

    async def _gone(self, key: str, timeout_s: float) -> bool:
        """Wait until pod ``key`` left the view (or ended)."""

        def left() -> bool:
            p = self.pods.get(key)
            return p is None or not p.active

        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(left), timeout_s)
            return left()

    async def _all_synced(self) -> None:
        for e in self.synced.values():
            await e.wait()

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- running ----------------------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Watch and schedule until ``stop`` is set."""
        self.api = _Api(self.core, self.kube, stop)
        watches = [asyncio.create_task(self._watch(k, stop), name=f"scheduler-watch-{k}") for k in ("nodes", "pods")]
        try:
            synced = asyncio.create_task(self._all_synced())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait([synced, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            synced.cancel()
            log.info("scheduler started", name=self.cfg.name, policy=self.cfg.policy, migrations=self.cfg.migrations)
            if self.cfg.migrations:
                watches.append(asyncio.create_task(self._migrations(stop), name="scheduler-migrations"))
            while not stop.is_set():
                self._wake.clear()
                if self.is_leader():
                    await self.schedule_pending()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.cfg.retry_s)
                await asyncio.sleep(0)  # let the watches deliver the rest of a burst
        finally:
            for t in [*watches, *self._tasks]:
                t.cancel()
            await asyncio.gather(*watches, *self._tasks, return_exceptions=True)

    async def schedule_pending(self) -> None:
        """Decide every pending pod of ours once, one after the other (each binding enters the cluster state
        first; its API calls run on their own task)."""
        now = time.monotonic()
        self._expire_reservations(now)
        for p in self.pending():
            self._note_arrival(p)
            tried = self._tried.get(p.key)
            if (
                tried is not None
                and tried.fingerprint == p.fingerprint
                and tried.capacity_gen == self._capacity_gen
                and (tried.kind != "NoRoom" or now - tried.at < self.cfg.retry_s)
            ):
                continue
            try:
                self._schedule_one(p)
            except Exception as e:  # one pod must never stop the scheduler
                log.exception("scheduling a pod failed", pod=p.key, error=f"{type(e).__name__}: {e}")
                self._tried[p.key] = _Tried(p.fingerprint, self._capacity_gen, "Error", now)
        await asyncio.sleep(0)

    def _take_reservation(self, p: PodInfo) -> _Reservation | None:
        for key in (p.key, p.owner):
            rs = self.reservations.get(key) if key else None
            if rs:
                r = rs.pop(0)
                if not rs:
                    del self.reservations[key]
                self.live.remove_pod(r.phantom)
                return r
        return None

    def _expire_reservations(self, now: float) -> None:
        for key in list(self.reservations):
            keep = []
            for r in self.reservations[key]:
                if r.expires > now:
                    keep.append(r)
                else:
                    self.live.remove_pod(r.phantom)
                    log.info("reservation expired", holder=key, node=r.node)
            if keep:
                self.reservations[key] = keep
            else:
                del self.reservations[key]

    def _release_plan(self, plan: int) -> None:
        for key in list(self.reservations):
            mine = [r for r in self.reservations[key] if r.plan == plan]
            for r in mine:
                self.live.remove_pod(r.phantom)
            rest = [r for r in self.reservations[key] if r.plan != plan]
            if rest:
                self.reservations[key] = rest
            else:
                del self.reservations[key]

    def _schedule_one(self, p: PodInfo) -> None:
        if isinstance(p.request, str):
            decision: Binding | Unschedulable = Unschedulable(p.key, "Invalid", f"invalid request: {p.request}")
        else:
            reserved = self._take_reservation(p)
            start = time.perf_counter()
            decision = self.live.decide(
                p.request,
                self.policy,
                classes=self.classes(),
                rng=self.rng,
                prefer=reserved.node if reserved is not None else None,
            )
            spent = time.perf_counter() - start
            self.stats.decision_ms.append(spent * 1000)
            self.metrics.placement_decision.observe(spent)
            for w in decision.warnings:
                self._warn(w)
            if reserved is not None and isinstance(decision, Binding) and decision.node == reserved.node:
                self.stats.steered += 1
        if isinstance(decision, Binding):
            assert not isinstance(p.request, str)
            self._tried.pop(p.key, None)
            assumed = running_pod(p.request, decision)
            self.assumed[p.key] = assumed
            self.live.add_pod(assumed)  # before any await: the next decision sees it
            self._inflight.add(p.key)
            self._spawn(self._bind(p, decision), f"bind-{p.key}")
            return
        self._tried[p.key] = _Tried(p.fingerprint, self._capacity_gen, decision.kind, time.monotonic())
        if decision.kind == "AlreadyBound":
            return
        self.metrics.placement_outcomes.labels(decision.kind).inc()
        self.stats.unschedulable += 1
        if self._reported.get(p.key) != decision.reason:
            self._reported[p.key] = decision.reason
            log.warning("pod unschedulable", pod=p.key, kind=decision.kind, reason=decision.reason)
            self._spawn(self._event(p, "FailedScheduling", f"{decision.kind}: {decision.reason}"), f"event-{p.key}")
        if decision.kind == "NoRoom" and self.cfg.migrations and p.key not in self._queued:
            self._queued.add(p.key)
            self._defrag.put_nowait(p.key)

    def _drop_assumption(self, key: str) -> None:
        if self.assumed.pop(key, None) is not None:
            self.live.remove_pod(key)
            p = self.pods.get(key)
            if p is not None and (r := p.running()) is not None:
                self.live.add_pod(r)  # the watch already showed where it really is

    async def _read(self, p: PodInfo) -> Mapping[str, Any] | None:
        """The pod as the API server has it now (``None``: gone)."""
        try:
            obj: Mapping[str, Any] = await self.api.call(
                f"read {p.key}", self.core.read_namespaced_pod, p.name, p.namespace
            )
        except KubeError as e:
            if e.status == 404:
                return None
            raise
        return obj

    async def _annotate(self, p: PodInfo, annotations: Mapping[str, str]) -> str:
        """Write ``annotations`` on the still-pending pod ``p``, conditional on its ``resourceVersion``:
        ``"ok"``, or why not (``"bound-elsewhere"``, ``"gone"``, ``"changed"``). A bound pod is never written."""
        rv, uid = p.resource_version, p.uid
        for _ in range(3):
            meta: dict[str, Any] = {"annotations": dict(annotations)}
            if rv:
                meta["resourceVersion"] = rv
            try:
                await self.api.call(
                    f"annotate {p.key}",
                    self.core.patch_namespaced_pod,
                    p.name,
                    p.namespace,
                    {"metadata": meta},
                    retry=frozenset({429}),
                )
                return "ok"
            except KubeError as e:
                if e.status == 404:
                    return "gone"
                if e.status != 409:
                    raise
            self.stats.conflicts += 1
            obj = await self._read(p)
            if obj is None:
                return "gone"
            now = pod_of(obj)
            if now.node is not None:
                return "bound-elsewhere"
            if now.uid != uid or now.fingerprint != p.fingerprint or now.phase != "Pending" or now.deleting:
                return "changed"
            rv = now.resource_version
        return "changed"

    async def _lock_node(self, p: PodInfo, node: str) -> bool:
        """Take HAMi's node lock for ``p`` (HAMi ``nodelock.LockNode``: set only when absent or stale, on condition
        of the node's resourceVersion); wait up to ``node_lock_wait_s`` for another pod's lock to go."""
        owner = f",{p.namespace},{p.name}"
        deadline = time.monotonic() + self.cfg.node_lock_wait_s
        while True:
            obj = await self.api.call(f"read node {node}", self.core.read_node, node)
            meta = obj.get("metadata") or {}
            held = str((meta.get("annotations") or {}).get(HAMI_NODE_LOCK) or "")
            if held.endswith(owner):
                return True
            if not held or _lock_stale(held, time.time()):
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                body: dict[str, Any] = {"metadata": {"annotations": {HAMI_NODE_LOCK: stamp + owner}}}
                if meta.get("resourceVersion"):
                    body["metadata"]["resourceVersion"] = meta["resourceVersion"]
                try:
                    await self.api.call(f"lock node {node}", self.core.patch_node, node, body, retry=frozenset({429}))
                    return True
                except KubeError as e:
                    if e.status != 409:
                        raise
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)

    async def _unlock_node(self, p: PodInfo, node: str) -> None:
        """Release our node lock after a binding that did not happen (the device plugin releases it otherwise)."""
        with contextlib.suppress(KubeError):
            obj = await self.api.call(f"read node {node}", self.core.read_node, node)
            meta = obj.get("metadata") or {}
            held = str((meta.get("annotations") or {}).get(HAMI_NODE_LOCK) or "")
            if held.endswith(f",{p.namespace},{p.name}"):
                body: dict[str, Any] = {"metadata": {"annotations": {HAMI_NODE_LOCK: None}}}
                if meta.get("resourceVersion"):
                    body["metadata"]["resourceVersion"] = meta["resourceVersion"]
                await self.api.call(f"unlock node {node}", self.core.patch_node, node, body, retry=frozenset({429}))

    async def _bind(self, p: PodInfo, b: Binding) -> None:
        outcome = "failed"
        locked = False
        try:
            if b.annotations and self.cfg.hami_node_lock:
                locked = await self._lock_node(p, b.node)
                if not locked:
                    outcome = "node-locked"
            if outcome != "node-locked":
                async with self._sem:
                    outcome = await self._bind_calls(p, b)
        except KubeError as e:
            log.warning("binding failed", pod=p.key, node=b.node, gpus=list(b.gpu_uuids), error=str(e))
            if e.status != 404:
                self._spawn(self._event(p, "FailedBinding", f"binding to node {b.node} failed: {e}"), "event")
        finally:
            if locked and outcome != "bound":
                await self._unlock_node(p, b.node)
            self._inflight.discard(p.key)
            self.metrics.placement_outcomes.labels(outcome if outcome in ("bound", "failed") else "abandoned").inc()
            if outcome == "bound":
                self.stats.bound += 1
                self._reported.pop(p.key, None)
            else:
                self._drop_assumption(p.key)
                self.stats.failed_bindings += outcome == "failed"
            self._wake.set()
        if outcome == "bound":
            log.info("pod bound", pod=p.key, node=b.node, gpus=list(b.gpu_uuids), reason=b.reason)
            msg = f"bound to {b.node} gpus {list(b.gpu_indices)}: {b.reason}"
            self._spawn(self._event(p, "Scheduled", msg, "Normal"), "event")
        elif outcome != "failed":
            log.info("binding abandoned", pod=p.key, node=b.node, why=outcome)

    async def _bind_calls(self, p: PodInfo, b: Binding) -> str:
        """Annotate (HAMi's protocol) and bind; ``"bound"`` or why not."""
        if b.annotations:
            annotated = await self._annotate(p, {**b.annotations, **hami_bind_annotations(time.time())})
            if annotated != "ok":
                return annotated
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": p.name, "namespace": p.namespace, "uid": p.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": b.node},
        }
        try:
            await self.api.call(
                f"bind {p.key}",
                self.core.create_namespaced_pod_binding,
                p.name,
                p.namespace,
                body,
                retry=frozenset({429}),
            )
        except KubeError as e:
            if e.status != 409:
                raise
            self.stats.conflicts += 1
            obj = await self._read(p)
            node = ((obj or {}).get("spec") or {}).get("nodeName")
            if node == b.node:
                return "bound"  # an earlier attempt went through
            if node:
                log.warning("pod was bound elsewhere", pod=p.key, node=node, ours=b.node)
                return "bound-elsewhere"
            raise
        return "bound"

    async def _event(self, p: PodInfo, reason: str, message: str, type_: str = "Warning") -> None:
        self._seq += 1
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{p.name}.{time.time_ns():x}{self._seq:x}", "namespace": p.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": p.name,
                "namespace": p.namespace,
                "uid": p.uid,
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": self.cfg.name},
            "reportingComponent": self.cfg.name,
            "reportingInstance": self.identity,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            await self.api.call(f"event {p.key}", self.core.create_namespaced_event, p.namespace, body)
            self.stats.events += 1
        except KubeError as e:
            log.warning("event not recorded", pod=p.key, reason=reason, error=str(e))

    # -- migrations -------------------------------------------------------------------------------------------------
    async def _migrations(self, stop: asyncio.Event) -> None:
        """Plan and run migrations one at a time, at most one plan per ``migration_interval_s``."""
        while not stop.is_set():
            key = await self._defrag.get()
            self._queued.discard(key)
            wait = self._last_plan + self.cfg.migration_interval_s - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
            p = self.pods.get(key)
            if stop.is_set() or not self.is_leader() or p is None or isinstance(p.request, str):
                continue
            if p.node is not None or key in self.assumed or key in self._inflight:
                continue
            try:
                await self._defragment(p, p.request)
            except Exception as e:  # a failed plan must never stop the scheduler
                log.exception("migration failed", pod=key, error=f"{type(e).__name__}: {e}")

    async def _budgets(self) -> list[Budget] | None:
        try:
            listing = await self.api.call(
                "list PodDisruptionBudgets", self.policy_api.list_pod_disruption_budget_for_all_namespaces
            )
        except KubeError as e:
            log.warning("no migration planned: PodDisruptionBudgets cannot be read", error=str(e))
            return None
        out = []
        for item in listing.get("items") or []:
            b = budget_of(item)
            if isinstance(b, str):
                log.warning("no migration planned: a PodDisruptionBudget is unreadable", detail=b)
                return None
            out.append(b)
        return out

    async def _defragment(self, p: PodInfo, pending: PendingPod) -> None:
        decision = self.live.decide(pending, self.policy, classes=self.classes(), rng=self.rng)
        if not isinstance(decision, Unschedulable) or decision.kind != "NoRoom":
            self._wake.set()
            return  # room was freed meanwhile (or the pod cannot run at all)
        warnings = self.live.warnings()
        if warnings:
            log.info("no migration planned: the view is inconsistent", pod=p.key, warnings=len(warnings))
            return
        budgets_list = await self._budgets()
        if budgets_list is None:
            return
        state = self.live.state()
        nodes = self.live.nodes
        now = time.monotonic()
        bound, budgets = [], {}
        for name, r in self.live.pods.items():
            placed = self.live.placed(name)
            if placed is None:
                continue
            i, gpus, milli = placed
            info = self.pods.get(name)
            owner = info.owner if info is not None else ""
            covering = [b for b in budgets_list if info is not None and b.covers(info.namespace, info.labels)]
            refused = now - self._refused.get(name, -1e9) < REFUSED_PIN_S
            pinned = (
                info is None
                or not owner
                or owner.startswith("DaemonSet/")
                or name in self.assumed
                or refused
                or len(covering) > 1
            )
            if pinned:
                group = f"pinned:{name}"
                budgets[group] = 0
            elif covering:
                group = f"pdb:{covering[0].key}"
                budgets[group] = covering[0].allowed
            else:
                group = owner
            req = PodRequest(r.cpu_milli, r.memory_mib, r.num_gpu, milli if r.num_gpu else 0, name=name)
            bound.append(BoundPod(name, req, i, gpus, group))
        try:
            req = PodRequest(
                pending.cpu_milli, pending.memory_mib, pending.num_gpu, pending.gpu_milli, frozenset(), p.key
            )
            plan = plan_defrag(state, bound, req, max_moves=self.cfg.max_moves, budgets=budgets)
        except ValueError as e:
            log.warning("no migration planned", pod=p.key, error=str(e))
            return
        if not plan.moves or plan.placement is None:
            log.info("no migration plan", pod=p.key, outcome=plan.outcome, reason=plan.reason)
            return
        target = nodes[plan.placement.node]
        bad = [] if self.live.allowed(pending, target.name) else [f"{p.key} may not go to {target.name}"]
        for m in plan.moves:
            info = self.pods[m.name]
            if isinstance(info.request, str) or not self.live.allowed(info.request, nodes[m.dst_node].name):
                bad.append(f"{m.name} may not go to {nodes[m.dst_node].name}")
        if bad:
            log.info("no migration plan: a destination breaks a constraint", pod=p.key, why=bad)
            return
        self._last_plan = time.monotonic()
        self._plans += 1
        plan_id = self._plans
        expires = time.monotonic() + self.cfg.reservation_s
        for m in plan.moves:
            info = self.pods[m.name]
            dst = nodes[m.dst_node]
            assert not isinstance(info.request, str)
            want = info.request
            uuids = tuple(dst.gpu_uuids[g] for g in m.dst_gpus) if dst.shares else ()
            phantom = RunningPod(
                f"{RESERVED}{plan_id}/{m.name}",
                dst.name,
                want.cpu_milli,
                want.memory_mib,
                want.num_gpu,
                want.gpu_milli,
                uuids,
            )
            self.live.add_pod(phantom)
            self.reservations.setdefault(info.owner, []).append(_Reservation(phantom.name, dst.name, expires, plan_id))
        log.info("migration plan", pod=p.key, moves=len(plan.moves), reason=plan.reason)
        report = await MigrationExecutor(self.api, self._gone, self.cfg.migration_wait_s).execute(plan)
        self.stats.migrations.append(report)
        self.metrics.placement_migrations.labels("done" if report.stopped is None else "stopped").inc()
        if report.stopped is not None:
            self._release_plan(plan_id)
            if report.refused is not None:
                now = time.monotonic()
                self._refused = {k: t for k, t in self._refused.items() if now - t < REFUSED_PIN_S}
                self._refused[report.refused] = now
            log.warning("migration stopped", pod=p.key, done=list(report.done), why=report.stopped)
            await self._event(p, "MigrationStopped", report.stopped)
            return
        current = self.pods.get(p.key)
        if current is not None and current.node is None and p.key not in self.assumed:
            gpus = plan.placement.gpus
            uuids = tuple(target.gpu_uuids[g] for g in gpus) if target.shares else ()
            phantom = RunningPod(
                f"{RESERVED}{plan_id}/{p.key}",
                target.name,
                pending.cpu_milli,
                pending.memory_mib,
                pending.num_gpu,
                pending.gpu_milli,
                uuids,
            )
            self.live.add_pod(phantom)
            self.reservations.setdefault(p.key, []).append(_Reservation(phantom.name, target.name, expires, plan_id))
        self._wake.set()


def _lock_stale(value: str, now_s: float) -> bool:
    """Whether a HAMi node lock (``<RFC 3339>[,<ns>,<pod>]``) is older than HAMi's timeout (unreadable: stale)."""
    from datetime import datetime

    try:
        taken = datetime.fromisoformat(value.split(",", 1)[0].strip()).timestamp()
    except ValueError:
        return True
    return now_s - taken > NODE_LOCK_EXPIRY_S


def configured_classes(cfg: SchedulerConfig) -> TaskClasses | None:
    """The configured target workload (``None``: observe arrivals)."""
    if not cfg.workload:
        return None
    w = np.array([c.weight for c in cfg.workload], dtype=np.float64)
    return TaskClasses(
        cpu_milli=np.array([c.cpu_milli for c in cfg.workload], dtype=np.int64),
        num_gpu=np.array([c.num_gpu for c in cfg.workload], dtype=np.int64),
        gpu_milli=np.array([c.gpu_milli for c in cfg.workload], dtype=np.int64),
        gpu_models=tuple(frozenset(c.gpu_models) for c in cfg.workload),
        weight=w / w.sum(),
        memory_mib=np.zeros(len(cfg.workload), dtype=np.int64),
    )
