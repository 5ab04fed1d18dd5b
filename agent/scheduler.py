"""The agent as a secondary Kubernetes scheduler (``schedulerName: shadowscale``; issue 5, part 4).

:class:`SecondaryScheduler` keeps a view of the cluster from two list+watch loops (nodes, and pods in every
namespace) and, for each pending pod whose ``spec.schedulerName`` is the configured name, serially, asks
:func:`policies.placement.scheduler.decide` where it goes:

- **Binding**: the binding is added to the view first (an *assumed* pod, so the next decision already sees it:
  no double booking), then the pod gets the GPU-pinning annotation ``decide`` returns
  (``nvidia.com/use-gpuuuid``), then a ``Binding`` is POSTed. If either call fails for good the assumption is
  dropped again. The assumption ends when the pod watch shows the pod bound, or deleted.
- **Unschedulable**: a ``FailedScheduling`` Warning Event on the pod with the reason, and a log line (once per
  distinct reason). ``Invalid``/``Impossible`` pods are not decided again until the pod or a node changes;
  ``NoRoom`` pods again when capacity was freed or after ``retry_s``.

Every API call is retried like :mod:`agent.kube`: 409 (not for the Binding, where it means "already bound"), 429,
5xx, connection errors and time-outs, after each delay of ``retry_delays_s``. Nothing in the view is trusted
blindly: ``decide`` contains stale or inconsistent state and the warnings it returns are logged once.

What a node offers: allocatable ``cpu`` and ``memory``; its GPUs from HAMi's ``hami.io/node-nvidia-register``
annotation (JSON list or the older ``id,count,mem,cores,type,numa,health:`` form: UUIDs and model), else
allocatable ``nvidia.com/gpu`` with synthetic UUIDs ``shadowscale-<node>-gpu<i>`` and the model from the label
``nvidia.com/gpu.product``. What a pod asks for: the sum of its containers' requests (limits when a request is
missing; the largest init container if larger), ``nvidia.com/gpu`` GPUs, a share of ``shadowscale.io/gpu-milli``
(annotation) or ``nvidia.com/gpucores`` x 10 (one GPU), and GPU models from HAMi's ``nvidia.com/use-gputype``
annotation (exact names). A bound pod holds the GPUs named by ``nvidia.com/use-gpuuuid`` or, for pods HAMi
scheduled, by ``hami.io/vgpu-devices-allocated``.

:class:`MigrationExecutor` (off by default, ``scheduler.migrations``) runs a
:class:`policies.placement.defrag.DefragPlan` one move at a time through the Eviction API, which enforces
PodDisruptionBudgets: a 429 means a budget refused, and the plan stops there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
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
from shadowscale.policies.placement import make_policy
from shadowscale.policies.placement.cluster import PodRequest
from shadowscale.policies.placement.defrag import BoundPod, DefragPlan, plan_defrag
from shadowscale.policies.placement.scheduler import (
    HAMI_USE_GPUUUID,
    Binding,
    ClusterView,
    Node,
    PendingPod,
    RunningPod,
    Unschedulable,
    _build,
    decide,
    running_pod,
)

log = structlog.get_logger("shadowscale.scheduler")

HAMI_NODE_REGISTER = "hami.io/node-nvidia-register"
HAMI_DEVICES_ALLOCATED = "hami.io/vgpu-devices-allocated"
HAMI_USE_GPUTYPE = "nvidia.com/use-gputype"
GPU_MILLI_ANNOTATION = "shadowscale.io/gpu-milli"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_CORES_RESOURCE = "nvidia.com/gpucores"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
REFUSED_PIN_S = 60.0
"""A pod whose eviction was refused is left out of migration plans this long."""
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})

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


def hami_devices(annotation: str) -> list[tuple[str, str]]:
    """(UUID, model) of each GPU in HAMi's node register annotation (JSON list, or ``id,count,mem,cores,type,…:``)."""
    text = annotation.strip()
    out: list[tuple[str, str]] = []
    if text.startswith("["):
        for d in json.loads(text):
            if isinstance(d, Mapping) and d.get("id"):
                out.append((str(d["id"]), str(d.get("type", ""))))
        return out
    for entry in text.split(":"):
        fields = entry.split(",")
        if fields[0].strip():
            out.append((fields[0].strip(), fields[4].strip() if len(fields) > 4 else ""))
    return out


def node_of(obj: Mapping[str, Any]) -> Node | str:
    """The schedulable node, or why it is left out."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    if (obj.get("spec") or {}).get("unschedulable"):
        return f"node {name}: cordoned"
    alloc = (obj.get("status") or {}).get("allocatable") or {}
    try:
        cpu = _milli(quantity(alloc.get("cpu", 0)), up=False)
        mem = _mib(quantity(alloc.get("memory", 0)), up=False)
        register = (meta.get("annotations") or {}).get(HAMI_NODE_REGISTER)
        devices = hami_devices(register) if register else []
        model = str((meta.get("labels") or {}).get(GPU_PRODUCT_LABEL, ""))
        if devices:
            uuids = tuple(u for u, _ in devices)
            model = devices[0][1] or model
        else:
            count = int(quantity(alloc.get(GPU_RESOURCE, 0)))
            uuids = tuple(f"shadowscale-{name}-gpu{i}" for i in range(count))
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        return f"node {name}: unreadable capacity or GPU registration: {e}"
    return Node(name, cpu, mem, model if uuids else "", uuids)


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

    @property
    def active(self) -> bool:
        return self.phase not in TERMINAL_PHASES

    def running(self) -> RunningPod | None:
        if self.node is None or not self.active or isinstance(self.request, str):
            return None
        r = self.request
        return RunningPod(self.key, self.node, r.cpu_milli, r.memory_mib, r.num_gpu, r.gpu_milli, self.gpu_uuids)


def _resources(c: Mapping[str, Any]) -> dict[str, Any]:
    res = c.get("resources") or {}
    return {**(res.get("limits") or {}), **(res.get("requests") or {})}


def _request(key: str, spec: Mapping[str, Any], annotations: Mapping[str, str]) -> PendingPod | str:
    cpu = mem = Decimal(0)
    gpus = Decimal(0)
    cores: Decimal | None = None
    try:
        for c in spec.get("containers") or []:
            r = _resources(c)
            limits = (c.get("resources") or {}).get("limits") or {}
            cpu += quantity(r.get("cpu", 0))
            mem += quantity(r.get("memory", 0))
            gpus += quantity(limits.get(GPU_RESOURCE, r.get(GPU_RESOURCE, 0)))
            if GPU_CORES_RESOURCE in r:
                cores = quantity(r[GPU_CORES_RESOURCE])
        for c in spec.get("initContainers") or []:
            r = _resources(c)
            cpu = max(cpu, quantity(r.get("cpu", 0)))
            mem = max(mem, quantity(r.get("memory", 0)))
        num_gpu = int(gpus)
        if num_gpu != gpus:
            return f"{GPU_RESOURCE} {gpus} is not a whole number"
        if GPU_MILLI_ANNOTATION in annotations:
            milli = int(annotations[GPU_MILLI_ANNOTATION])
        elif num_gpu == 1 and cores is not None and 0 < cores < 100:
            milli = int(cores * 10)
        else:
            milli = 1000 if num_gpu else 0
    except (ValueError, TypeError) as e:
        return f"unreadable resource request: {e}"
    models = frozenset(m.strip() for m in annotations.get(HAMI_USE_GPUTYPE, "").split(",") if m.strip())
    return PendingPod(key, _milli(cpu, up=True), _mib(mem, up=True), num_gpu, milli, models)


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
    fingerprint = hashlib.sha1(
        json.dumps(
            [spec.get("containers"), spec.get("initContainers"), annotations], sort_keys=True, default=str
        ).encode()
    ).hexdigest()
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


# -- migrations ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """Which moves of a plan were carried out (evicted and gone), and why the rest was not (``None``: all done)."""

    done: tuple[str, ...]
    stopped: str | None = None
    refused: str | None = None
    """The pod whose PodDisruptionBudget refused its eviction (HTTP 429)."""


class MigrationExecutor:
    """Run a defragmentation plan one move at a time: evict the pod (the Eviction API enforces its
    PodDisruptionBudget), wait until it is gone, then the next. Its controller recreates it; the scheduler places
    the replacement like any pending pod (it is not steered to the move's destination)."""

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


@dataclass
class SchedulerStats:
    bound: int = 0
    unschedulable: int = 0
    failed_bindings: int = 0
    events: int = 0
    migrations: list[MigrationReport] = field(default_factory=list)


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
    ) -> None:
        self.cfg = cfg
        self.kube = kube
        self.identity = identity
        self.is_leader = is_leader or (lambda: True)
        self.policy = make_policy(cfg.policy)
        self.rng = np.random.default_rng(0)
        self.core: Any = client.CoreV1Api(api)
        self.nodes: dict[str, Mapping[str, Any]] = {}
        self.pods: dict[str, PodInfo] = {}
        self.assumed: dict[str, RunningPod] = {}
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

    # -- the view ---------------------------------------------------------------------------------------------------
    def view(self) -> ClusterView:
        nodes = []
        for obj in self.nodes.values():
            n = node_of(obj)
            if isinstance(n, str):
                self._warn(n)
            else:
                nodes.append(n)
        bound = {p.key: r for p in self.pods.values() if (r := p.running()) is not None}
        for key, r in self.assumed.items():
            bound.setdefault(key, r)
        return ClusterView(tuple(sorted(nodes, key=lambda n: n.name)), tuple(bound.values()))

    def pending(self) -> list[PodInfo]:
        mine = [
            p
            for p in self.pods.values()
            if p.scheduler == self.cfg.name
            and p.node is None
            and p.phase == "Pending"
            and not p.deleting
            and p.key not in self.assumed
        ]
        return sorted(mine, key=lambda p: (p.created, p.key))

    def _warn(self, line: str) -> None:
        if line not in self._warned:
            if len(self._warned) > 10_000:
                self._warned.clear()
            self._warned.add(line)
            log.warning("scheduler view", detail=line)

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

    async def _replace(self, kind: str, items: list[Mapping[str, Any]]) -> None:
        if kind == "nodes":
            self.nodes = {str((o.get("metadata") or {}).get("name", "")): o for o in items}
        else:
            self.pods = {p.key: p for p in map(pod_of, items)}
            self.assumed = {k: v for k, v in self.assumed.items() if k in self.pods and self.pods[k].node is None}
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
                self.nodes.pop(name, None)
            else:
                self.nodes[name] = obj
            self._capacity_gen += 1
        else:
            p = pod_of(obj)
            old = self.pods.get(p.key)
            if etype == "DELETED":
                self.pods.pop(p.key, None)
                self.assumed.pop(p.key, None)
                self._tried.pop(p.key, None)
                self._reported.pop(p.key, None)
                if old is not None and old.node is not None:
                    self._capacity_gen += 1
            else:
                self.pods[p.key] = p
                if p.node is not None:
                    self.assumed.pop(p.key, None)
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
            while not stop.is_set():
                self._wake.clear()
                if self.is_leader():
                    await self.schedule_pending()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.cfg.retry_s)
                await asyncio.sleep(0)  # let the watches deliver the rest of a burst
        finally:
            for t in watches:
                t.cancel()
            await asyncio.gather(*watches, return_exceptions=True)

    async def schedule_pending(self) -> None:
        """Decide every pending pod of ours once, one after the other (each binding enters the view first)."""
        now = time.monotonic()
        for p in self.pending():
            tried = self._tried.get(p.key)
            if (
                tried is not None
                and tried.fingerprint == p.fingerprint
                and tried.capacity_gen == self._capacity_gen
                and (tried.kind != "NoRoom" or now - tried.at < self.cfg.retry_s)
            ):
                continue
            if self.pods.get(p.key) is not p:  # changed or deleted while we were binding another pod
                continue
            try:
                await self._schedule_one(p)
            except Exception as e:  # one pod must never stop the scheduler
                log.exception("scheduling a pod failed", pod=p.key, error=f"{type(e).__name__}: {e}")
                self._tried[p.key] = _Tried(p.fingerprint, self._capacity_gen, "Error", now)

    async def _schedule_one(self, p: PodInfo) -> None:
        if isinstance(p.request, str):
            decision: Binding | Unschedulable = Unschedulable(p.key, "Invalid", f"invalid request: {p.request}")
        else:
            view = self.view()
            decision = decide(view, p.request, self.policy, rng=self.rng)
            for w in decision.warnings:
                self._warn(w)
        if isinstance(decision, Binding):
            self._tried.pop(p.key, None)
            await self._bind(p, decision)
            return
        self._tried[p.key] = _Tried(p.fingerprint, self._capacity_gen, decision.kind, time.monotonic())
        if decision.kind == "AlreadyBound":
            return
        self.stats.unschedulable += 1
        if self._reported.get(p.key) != decision.reason:
            self._reported[p.key] = decision.reason
            log.warning("pod unschedulable", pod=p.key, kind=decision.kind, reason=decision.reason)
            await self._event(p, "FailedScheduling", f"{decision.kind}: {decision.reason}")
        if decision.kind == "NoRoom" and self.cfg.migrations and not isinstance(p.request, str):
            await self._defragment(p, p.request)

    async def _bind(self, p: PodInfo, b: Binding) -> None:
        assert not isinstance(p.request, str)
        self.assumed[p.key] = running_pod(p.request, b)  # before any await: the next decision sees it
        try:
            if b.annotations:
                await self.api.call(
                    f"annotate {p.key}",
                    self.core.patch_namespaced_pod,
                    p.name,
                    p.namespace,
                    {"metadata": {"annotations": dict(b.annotations)}},
                )
            body = {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": p.name, "namespace": p.namespace, "uid": p.uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": b.node},
            }
            await self.api.call(
                f"bind {p.key}",
                self.core.create_namespaced_pod_binding,
                p.name,
                p.namespace,
                body,
                retry=frozenset({429}),
            )
        except KubeError as e:
            self.assumed.pop(p.key, None)
            self.stats.failed_bindings += 1
            log.warning("binding failed", pod=p.key, node=b.node, gpus=list(b.gpu_uuids), error=str(e))
            if e.status != 404:
                await self._event(p, "FailedBinding", f"binding to node {b.node} failed: {e}")
            return
        self.stats.bound += 1
        self._reported.pop(p.key, None)
        log.info("pod bound", pod=p.key, node=b.node, gpus=list(b.gpu_uuids), reason=b.reason)
        await self._event(p, "Scheduled", f"bound to {b.node} gpus {list(b.gpu_indices)}: {b.reason}", "Normal")

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

    async def _defragment(self, p: PodInfo, pending: PendingPod) -> None:
        view = self.view()
        built = _build(view)
        if built.warnings:
            log.info("no migration planned: the view is inconsistent", pod=p.key, warnings=len(built.warnings))
            return
        index = {n.name: i for i, n in enumerate(built.nodes)}
        gpu_index = [{u: g for g, u in enumerate(n.gpu_uuids)} for n in built.nodes]
        bound, budgets = [], {}
        for r in view.pods:
            i = index[r.node]
            gpus = tuple(gpu_index[i][u] for u in r.gpu_uuids)
            info = self.pods.get(r.name)
            owner = info.owner if info is not None else ""
            refused = time.monotonic() - self._refused.get(r.name, -1e9) < REFUSED_PIN_S
            pinned = not owner or owner.startswith("DaemonSet/") or r.name in self.assumed or refused
            group = owner or r.name
            if pinned:
                group = f"pinned:{r.name}"
                budgets[group] = 0
            req = PodRequest(r.cpu_milli, r.memory_mib, r.num_gpu, r.gpu_milli, name=r.name)
            bound.append(BoundPod(r.name, req, i, gpus, group))
        try:
            req = PodRequest(
                pending.cpu_milli, pending.memory_mib, pending.num_gpu, pending.gpu_milli, pending.gpu_models, p.key
            )
            plan = plan_defrag(built.state, bound, req, max_moves=self.cfg.max_moves, budgets=budgets)
        except ValueError as e:
            log.warning("no migration planned", pod=p.key, error=str(e))
            return
        if not plan.moves:
            log.info("no migration plan", pod=p.key, outcome=plan.outcome, reason=plan.reason)
            return
        log.info("migration plan", pod=p.key, moves=len(plan.moves), reason=plan.reason)
        report = await MigrationExecutor(self.api, self._gone, self.cfg.migration_wait_s).execute(plan)
        self.stats.migrations.append(report)
        if report.refused is not None:
            now = time.monotonic()
            self._refused = {k: t for k, t in self._refused.items() if now - t < REFUSED_PIN_S}
            self._refused[report.refused] = now
        if report.stopped is not None:
            log.warning("migration stopped", pod=p.key, done=list(report.done), why=report.stopped)
            await self._event(p, "MigrationStopped", report.stopped)
