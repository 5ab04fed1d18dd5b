"""The Kubernetes actuator: Deployments and StatefulSets labelled with their model, scaled through ``/scale``.

:class:`KubeActuator` implements :class:`policies.ports.Actuator` with kubernetes-asyncio:

- **Finding workloads**: every Deployment and StatefulSet carrying the label ``shadowscale.io/model`` (configurable);
  the label's value is the model. A configured model is matched in its own namespace; several matches are
  reported once and the first by (kind, name) is used.
- **State from a watch**: one named task per kind lists, then watches, and keeps ``spec.replicas`` and
  ``status.readyReplicas`` in memory; on an error or an expired watch it lists again after a back-off. ``observe``
  reads that memory (no API call on the decision path).
- **Scaling**: a strategic-merge patch of the ``scale`` subresource setting ``spec.replicas`` — an absolute target,
  so a retried call is harmless. Answers 409, 429 and 5xx, connection errors and time-outs are retried after each
  delay of ``retry_delays_s`` ("attempt 2/6 failed; will retry"); after the last one the model is reported as
  failed and the loop keeps the target pending. A target is clamped to the model's min/max before any call.

Only this module, :mod:`agent.leader`, :mod:`agent.scheduler` and :mod:`agent.profiling.shadow` import
kubernetes-asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
import structlog
from kubernetes_asyncio import client, config

from shadowscale.agent.config import KubernetesConfig, ModelConfig
from shadowscale.agent.tasks import guarded
from shadowscale.policies.ports import ScaleResult, WorkloadState

log = structlog.get_logger("shadowscale.kubernetes")

RETRYABLE = frozenset({409, 429})
WATCH_S = 300
KINDS = ("deployments", "statefulsets")


class KubeError(RuntimeError):
    """A Kubernetes API call failed; ``status`` is the HTTP status (0 for a connection error or time-out)."""

    def __init__(self, status: int, reason: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {reason}" if status else reason)
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.status == 0 or self.status in RETRYABLE or self.status >= 500


@dataclass(frozen=True, slots=True)
class Ref:
    kind: str
    namespace: str
    name: str
    model: str
    replicas: int
    ready: int
    gpu_fraction: float = 1.0
    min_replicas: int | None = None
    max_replicas: int | None = None
    paused: bool = False
    problems: tuple[str, ...] = ()
    """Annotations that were ignored, each with why (reported once as a Warning Event on the workload)."""
    target_rps: float | None = None
    slo_ms: float | None = None
    uid: str = ""
    resource_version: str = ""
    """As last seen (watch, or our own write's answer): the precondition of the next scale patch."""


ANNOTATION_PREFIX = "shadowscale.io/"
GPU_ANNOTATION = "shadowscale.io/gpu-fraction"
MIN_ANNOTATION = "shadowscale.io/min-replicas"
MAX_ANNOTATION = "shadowscale.io/max-replicas"
PAUSED_ANNOTATION = "shadowscale.io/paused"
TARGET_RPS_ANNOTATION = "shadowscale.io/target-rps"
SLO_ANNOTATION = "shadowscale.io/slo-ms"
MAX_REPLICAS_BOUND = 100_000
MAX_TARGET_RPS = 1e6
MAX_SLO_MS = 3_600_000.0


@dataclass(frozen=True, slots=True)
class WorkloadSettings:
    """Per-workload settings from its annotations (KEDA and Knative users set them on the workload itself)."""

    gpu_fraction: float = 1.0
    min_replicas: int | None = None
    max_replicas: int | None = None
    paused: bool = False
    problems: tuple[str, ...] = ()
    target_rps: float | None = None
    """Requests/s one replica is planned to serve (KEDA's and Knative's per-workload target); None: configured."""
    slo_ms: float | None = None
    """The workload's p99 latency objective (ms); None: configured."""


def parse_annotations(annotations: Mapping[str, Any] | None) -> WorkloadSettings:
    """Read ``shadowscale.io/*`` annotations; never raises. A value that is not valid (``nan``, ``inf``, zero or
    negative where a positive number is needed, not a number, min above max, out of range) is ignored — the
    default applies — and named in ``problems``."""
    ann = annotations if isinstance(annotations, Mapping) else {}
    problems: list[str] = []

    def text(key: str) -> str | None:
        v = ann.get(key)
        return None if v is None else str(v)[:64].strip()

    gpu = 1.0
    raw = text(GPU_ANNOTATION)
    if raw is not None:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if math.isfinite(value) and 0.0 < value <= 8.0:
            gpu = value
        else:
            problems.append(f"{GPU_ANNOTATION}={raw!r} ignored: must be a number in (0, 8]")

    def count(key: str) -> int | None:
        raw = text(key)
        if raw is None:
            return None
        if raw.isdigit() and int(raw) <= MAX_REPLICAS_BOUND:
            return int(raw)
        problems.append(f"{key}={raw!r} ignored: must be a whole number from 0 to {MAX_REPLICAS_BOUND}")
        return None

    lo, hi = count(MIN_ANNOTATION), count(MAX_ANNOTATION)
    if lo is not None and hi is not None and lo > hi:
        problems.append(f"{MIN_ANNOTATION}={lo} above {MAX_ANNOTATION}={hi}: both ignored")
        lo = hi = None
    paused = False
    raw = text(PAUSED_ANNOTATION)
    if raw is not None:
        if raw.lower() in ("true", "false"):
            paused = raw.lower() == "true"
        else:
            problems.append(f"{PAUSED_ANNOTATION}={raw!r} ignored: must be true or false")

    def positive(key: str, top: float, unit: str) -> float | None:
        raw = text(key)
        if raw is None:
            return None
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if math.isfinite(value) and 0.0 < value <= top:
            return value
        problems.append(f"{key}={raw!r} ignored: must be a number of {unit} in (0, {top:g}]")
        return None

    target = positive(TARGET_RPS_ANNOTATION, MAX_TARGET_RPS, "requests/s")
    slo = positive(SLO_ANNOTATION, MAX_SLO_MS, "milliseconds")
    return WorkloadSettings(gpu, lo, hi, paused, tuple(problems), target_rps=target, slo_ms=slo)


async def api_client(cfg: KubernetesConfig, identity: str | None = None) -> Any:
    """A kubernetes-asyncio ``ApiClient``: ``host`` (no credentials), in-cluster service account, or kubeconfig.
    Its User-Agent names the agent replica (``shadowscale-agent/<identity>``), so the API server's audit log says
    which replica made each call."""
    if cfg.host is not None:
        api = client.ApiClient(client.Configuration(host=cfg.host.rstrip("/")))
    elif cfg.in_cluster:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        api = client.ApiClient()
    else:
        conf = client.Configuration()
        await config.load_kube_config(config_file=cfg.kubeconfig, client_configuration=conf)
        api = client.ApiClient(conf)
    if identity is not None:
        api.user_agent = f"shadowscale-agent/{identity}"
    return api


async def _json(resp: Any) -> Any:
    """Body of a raw (``_preload_content=False``) response as JSON; non-2xx raises :class:`KubeError`."""
    try:
        body = await resp.read()
    finally:
        resp.release()
    if not 200 <= resp.status <= 299:
        retry_after = None
        with contextlib.suppress(TypeError, ValueError):
            retry_after = float(resp.headers.get("Retry-After"))
        reason = resp.reason or ""
        with contextlib.suppress(ValueError, AttributeError):
            reason = json.loads(body).get("message", reason)
        raise KubeError(resp.status, str(reason), retry_after)
    return json.loads(body) if body else {}


KIND_NAMES = {"deployments": "Deployment", "statefulsets": "StatefulSet"}


class EventRecorder:
    """Writes ``core/v1`` Events on workloads (``kubectl describe`` shows them), as KEDA and Knative do for every
    scale. Never raises and never blocks the caller: each Event is a background call with a time-out, at most
    ``max_in_flight`` at once (more are dropped and logged), and the same message on the same workload is written
    once per ``dedupe_s``."""

    def __init__(
        self, api: Any, identity: str, timeout_s: float, *, max_in_flight: int = 64, dedupe_s: float = 60.0
    ) -> None:
        self._core: Any = client.CoreV1Api(api)
        self.identity = identity
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.dedupe_s = dedupe_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._recent: dict[tuple[str, str, str, str], float] = {}
        self.written = 0

    def emit(self, ref: Ref, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        now = time.monotonic()
        key = (ref.kind, ref.namespace, ref.name, message)
        if now - self._recent.get(key, -math.inf) < self.dedupe_s:
            return
        if len(self._tasks) >= self.max_in_flight:
            log.warning("event dropped: too many in flight", workload=ref.name, reason=reason)
            return
        if len(self._recent) > 10_000:
            self._recent.clear()
        self._recent[key] = now
        task = asyncio.create_task(self._write(ref, type_, reason, message), name="kube-event")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, ref: Ref, type_: str, reason: str, message: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            # named as client-go's recorder names them (object name, then the time in hex): unique, no generateName
            "metadata": {"name": f"{ref.name[:200]}.{time.time_ns():x}", "namespace": ref.namespace},
            "involvedObject": {
                "apiVersion": "apps/v1",
                "kind": KIND_NAMES.get(ref.kind, ref.kind),
                "name": ref.name,
                "namespace": ref.namespace,
                **({"uid": ref.uid} if ref.uid else {}),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": "shadowscale-agent"},
            "reportingComponent": "shadowscale.io/agent",
            "reportingInstance": self.identity[:128],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            resp = await asyncio.wait_for(
                self._core.create_namespaced_event(
                    ref.namespace, body, _preload_content=False, _request_timeout=self.timeout_s
                ),
                self.timeout_s,
            )
            await _json(resp)
            self.written += 1
        except (KubeError, aiohttp.ClientError, TimeoutError) as e:
            log.warning("event not written", workload=ref.name, reason=reason, error=str(e))

    async def close(self, timeout_s: float = 2.0) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for t in self._tasks:
            t.cancel()


class KubeActuator:
    """Scale labelled workloads; ``start`` lists them and starts the watches, ``stop`` ends them."""

    def __init__(
        self, cfg: KubernetesConfig, models: Sequence[ModelConfig], api: Any = None, *, identity: str = "shadowscale"
    ) -> None:
        self.cfg = cfg
        self.identity = identity
        self.events: EventRecorder | None = None
        self.other_autoscalers: dict[tuple[str, str, str], str] = {}
        """(kind, namespace, name) -> the HPA or ScaledObject that scales that workload (refreshed every
        ``conflict_check_s``): shadowscale leaves such a workload alone rather than fight it."""
        self._reported: dict[tuple[str, str, str], tuple[str, ...]] = {}
        self.models = {m.name: m for m in models}
        self._api = api
        self._owns_api = api is None
        self._objects: dict[tuple[str, str, str], Ref] = {}
        self._view: dict[str, WorkloadState] = {}
        self._dirty = True
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._synced = {k: asyncio.Event() for k in KINDS}
        self._changed = asyncio.Condition()
        self.version = 0
        self._warned: set[str] = set()
        self.fence: Callable[[str], bool] | None = None
        """Asked right before every scale call (and retry) whether this replica may still actuate the model
        (the decision loop's partition ownership); a no ends the call as failed ("fenced")."""

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self, timeout_s: float = 30.0) -> None:
        if self._api is None:
            self._api = await api_client(self.cfg, self.identity)
        self._apps: Any = client.AppsV1Api(self._api)
        if self.cfg.events:
            self.events = EventRecorder(self._api, self.identity, self.cfg.request_timeout_s)
        for kind in KINDS:
            self._tasks.append(guarded(self._watch(kind), f"kube-watch-{kind}", self._stop, fatal=False))
        if self.cfg.respect_other_autoscalers:
            await self.check_other_autoscalers()
            self._tasks.append(guarded(self._conflicts_every(), "kube-other-autoscalers", self._stop, fatal=False))
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in self._synced.values())), timeout_s)

    async def stop(self) -> None:
        self._stop.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.events is not None:
            await self.events.close()
        if self._owns_api and self._api is not None:
            await self._api.close()
            self._api = None

    # -- the watch ------------------------------------------------------------------------------------------
    def _list_call(self, kind: str) -> Any:
        ns = self.cfg.namespace
        if kind == "deployments":
            return (
                self._apps.list_deployment_for_all_namespaces
                if ns is None
                else lambda **kw: self._apps.list_namespaced_deployment(ns, **kw)
            )
        return (
            self._apps.list_stateful_set_for_all_namespaces
            if ns is None
            else lambda **kw: self._apps.list_namespaced_stateful_set(ns, **kw)
        )

    async def _watch(self, kind: str) -> None:
        async def on_list(listing: Mapping[str, Any]) -> None:
            fresh = {}
            for item in listing.get("items", []):
                ref = self._ref(kind, item)
                if ref is not None:
                    fresh[(kind, ref.namespace, ref.name)] = ref
            await self._replace_kind(kind, fresh)
            self._synced[kind].set()

        async def on_event(event: Mapping[str, Any]) -> None:
            await self._on_event(kind, event)

        await list_and_watch(
            kind,
            self._list_call(kind),
            on_list,
            on_event,
            self._stop,
            self.cfg.retry_delays_s,
            self.cfg.request_timeout_s,
            label_selector=self.cfg.label,
        )

    async def _on_event(self, kind: str, event: Mapping[str, Any]) -> None:
        etype = event.get("type")
        obj = event.get("object") or {}
        if etype == "ERROR":
            raise KubeError(int(obj.get("code", 0) or 0), str(obj.get("message", "watch error")))
        meta = obj.get("metadata", {})
        key = (kind, meta.get("namespace") or "default", meta.get("name", ""))
        if etype == "DELETED":
            self._objects.pop(key, None)
        else:
            ref = self._ref(kind, obj)
            if ref is None:
                self._objects.pop(key, None)
            else:
                self._objects[key] = ref
                self._report(ref)
        await self._bump()

    async def _replace_kind(self, kind: str, fresh: dict[tuple[str, str, str], Ref]) -> None:
        for key in [k for k in self._objects if k[0] == kind]:
            del self._objects[key]
        self._objects.update(fresh)
        for ref in fresh.values():
            self._report(ref)
        await self._bump()

    def _report(self, ref: Ref) -> None:
        """A Warning Event (once per distinct set of problems) for annotations that were ignored."""
        key = (ref.kind, ref.namespace, ref.name)
        if self._reported.get(key, ()) == ref.problems:
            return
        self._reported[key] = ref.problems
        for problem in ref.problems:
            log.warning("workload annotation ignored", workload=ref.name, namespace=ref.namespace, problem=problem)
            if self.events is not None:
                self.events.emit(ref, "Warning", "InvalidAnnotation", problem)

    async def _bump(self) -> None:
        self._dirty = True
        async with self._changed:
            self.version += 1
            self._changed.notify_all()

    async def wait_changed(self, since: int, timeout_s: float = 10.0) -> int:
        """Wait until the watch saw a change after version ``since``; return the new version."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.version > since), timeout_s)
            return self.version

    def _ref(self, kind: str, obj: Mapping[str, Any]) -> Ref | None:
        meta = obj.get("metadata", {})
        model = (meta.get("labels") or {}).get(self.cfg.label)
        if not model:
            return None
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        st = parse_annotations(meta.get("annotations"))
        return Ref(
            kind=kind,
            namespace=meta.get("namespace") or "default",
            name=meta.get("name", ""),
            model=str(model),
            replicas=_count(spec.get("replicas"), 1),
            ready=_count(status.get("readyReplicas"), 0),
            gpu_fraction=st.gpu_fraction,
            min_replicas=st.min_replicas,
            max_replicas=st.max_replicas,
            paused=st.paused,
            problems=st.problems,
            target_rps=st.target_rps,
            slo_ms=st.slo_ms,
            uid=str(meta.get("uid") or ""),
            resource_version=str(meta.get("resourceVersion") or ""),
        )

    def _target(self, model: str) -> Ref | None:
        m = self.models.get(model)
        if m is None:
            return None
        found = sorted(
            (r for r in self._objects.values() if r.model == model and r.namespace == m.namespace),
            key=lambda r: (r.kind, r.name),
        )
        if len(found) > 1 and model not in self._warned:
            self._warned.add(model)
            log.warning(
                "several workloads for one model; using the first", model=model, workloads=[r.name for r in found]
            )
        return found[0] if found else None

    # -- other autoscalers -----------------------------------------------------------------------------------
    async def check_other_autoscalers(self) -> None:
        """List HPAs (``autoscaling/v2``) and KEDA ScaledObjects (``keda.sh/v1alpha1``, if installed) and note the
        workloads they scale. A failed listing keeps the previous view (and is logged)."""
        ns = self.cfg.namespace
        timeout = self.cfg.request_timeout_s
        auto: Any = client.AutoscalingV2Api(self._api)
        custom: Any = client.CustomObjectsApi(self._api)
        if ns is None:
            hpa_call = auto.list_horizontal_pod_autoscaler_for_all_namespaces

            def so_call(**kw: Any) -> Any:
                return custom.list_cluster_custom_object("keda.sh", "v1alpha1", "scaledobjects", **kw)
        else:

            def hpa_call(**kw: Any) -> Any:
                return auto.list_namespaced_horizontal_pod_autoscaler(ns, **kw)

            def so_call(**kw: Any) -> Any:
                return custom.list_namespaced_custom_object("keda.sh", "v1alpha1", ns, "scaledobjects", **kw)

        found: dict[tuple[str, str, str], str] = {}
        try:
            for label, call in (("HorizontalPodAutoscaler", hpa_call), ("ScaledObject", so_call)):
                items = await _list_items(call, timeout)
                for item in items or []:
                    meta = item.get("metadata") or {}
                    target = (item.get("spec") or {}).get("scaleTargetRef") or {}
                    kind = {"Deployment": "deployments", "StatefulSet": "statefulsets"}.get(
                        str(target.get("kind") or "Deployment")
                    )
                    if kind is None or not target.get("name"):
                        continue
                    where = str(meta.get("namespace") or "default")
                    found[(kind, where, str(target["name"]))] = f"{label} {where}/{meta.get('name', '?')}"
        except (KubeError, aiohttp.ClientError, TimeoutError) as e:
            log.warning("cannot list other autoscalers; keeping the last view", error=str(e))
            return
        if found != self.other_autoscalers:
            for key, owner in found.items():
                if self.other_autoscalers.get(key) != owner:
                    ref = self._objects.get(key)
                    if ref is not None and ref.model in self.models:
                        msg = f"not scaling: {owner} already scales this workload"
                        log.warning("another autoscaler owns a workload", workload=ref.name, owner=owner)
                        if self.events is not None:
                            self.events.emit(ref, "Warning", "OtherAutoscaler", msg)
            self.other_autoscalers = found
            await self._bump()

    async def _conflicts_every(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.cfg.conflict_check_s)
            if not self._stop.is_set():
                await self.check_other_autoscalers()

    # -- the actuator port ----------------------------------------------------------------------------------
    async def observe(self) -> Mapping[str, WorkloadState]:
        """Managed models by name; other labelled workloads as ``model@namespace/kind/name`` (for the GPU budget)."""
        if self._dirty:
            view: dict[str, WorkloadState] = {}
            for model, m in self.models.items():
                ref = self._target(model)
                if ref is not None:
                    view[model] = WorkloadState(
                        model,
                        ref.replicas,
                        ref.ready,
                        m.gpu_fraction,
                        min_replicas=ref.min_replicas,
                        max_replicas=ref.max_replicas,
                        hold=self._hold(ref),
                        target_rps=ref.target_rps,
                        slo_ms=ref.slo_ms,
                    )
            for ref in self._objects.values():
                if ref.model not in self.models:
                    key = f"{ref.model}@{ref.namespace}/{ref.kind}/{ref.name}"
                    view[key] = WorkloadState(ref.model, ref.replicas, ref.ready, ref.gpu_fraction)
            self._view = view
            self._dirty = False
        return self._view

    def _hold(self, ref: Ref) -> str | None:
        """Why ``ref`` must not be scaled (paused, another autoscaler scales it), or None."""
        if ref.paused:
            return f"paused ({PAUSED_ANNOTATION})"
        other = self.other_autoscalers.get((ref.kind, ref.namespace, ref.name))
        if other is not None:
            return f"left to {other}, which already scales this workload"
        return None

    def bounds(self, ref: Ref) -> tuple[int, int]:
        """The replica bounds of ``ref``: the configured ones, narrowed by its annotations."""
        m = self.models[ref.model]
        lo, hi = m.min_replicas, m.max_replicas
        if ref.min_replicas is not None:
            lo = min(max(ref.min_replicas, lo), hi)
        if ref.max_replicas is not None:
            hi = max(min(ref.max_replicas, hi), lo)
        return lo, hi

    async def scale(self, targets: Mapping[str, int]) -> ScaleResult:
        applied: dict[str, int] = {}
        failed: dict[str, str] = {}
        missing: list[str] = []
        sem = asyncio.Semaphore(16)

        async def one(model: str, want: int) -> None:
            ref = self._target(model)
            if ref is None:
                missing.append(model)
                return
            hold = self._hold(ref)
            if hold is not None:
                failed[model] = hold
                return
            lo, hi = self.bounds(ref)
            want = min(max(want, lo), hi)
            async with sem:
                err = await self._patch_scale(ref, want)
            if err is None:
                applied[model] = want
            else:
                failed[model] = err

        await asyncio.gather(*(one(m, t) for m, t in targets.items()))
        return ScaleResult(applied=applied, failed=failed, missing=tuple(missing))

    async def _patch_scale(self, ref: Ref, want: int) -> str | None:
        """Patch ``/scale`` with retries; return None on success, else the last error."""
        patch = (
            self._apps.patch_namespaced_deployment_scale
            if ref.kind == "deployments"
            else self._apps.patch_namespaced_stateful_set_scale
        )
        delays = self.cfg.retry_delays_s
        attempts = len(delays) + 1
        for attempt in range(1, attempts + 1):
            if self.fence is not None and not self.fence(ref.model):
                log.info("scale fenced: this replica no longer owns the model", model=ref.model, workload=ref.name)
                return "fenced: another replica owns the model now"
            key = (ref.kind, ref.namespace, ref.name)
            seen = self._objects.get(key, ref)
            body: dict[str, Any] = {"spec": {"replicas": want}}
            if seen.resource_version:
                # a precondition (optimistic concurrency, as the HPA's scale updates): a request that reaches the
                # API server late — after a time-out, after another replica took the model over and wrote — is
                # refused with 409 instead of overwriting the newer count
                body["metadata"] = {"resourceVersion": seen.resource_version}
            try:
                resp = await patch(
                    ref.name,
                    ref.namespace,
                    body,
                    _preload_content=False,
                    _request_timeout=self.cfg.request_timeout_s,
                )
                answer = await _json(resp)
            except KubeError as e:
                err: KubeError = e
            except (aiohttp.ClientError, TimeoutError) as e:
                err = KubeError(0, f"{type(e).__name__}: {e}".rstrip(": "))
            else:
                key = (ref.kind, ref.namespace, ref.name)
                cur = self._objects.get(key)
                if cur is not None:  # the watch confirms it; until then observe() shows the new target
                    rv = str(((answer or {}).get("metadata") or {}).get("resourceVersion") or cur.resource_version)
                    self._objects[key] = dataclasses.replace(cur, replicas=want, resource_version=rv)
                    self._dirty = True
                if self.events is not None and ref.replicas != want:
                    self.events.emit(
                        ref,
                        "Normal",
                        "Scaled",
                        f"agent {self.identity} scaled {ref.model!r} from {ref.replicas} to {want} replicas",
                    )
                return None
            if not err.retryable or attempt == attempts:
                log.warning(
                    "scale failed",
                    model=ref.model,
                    workload=ref.name,
                    attempt=attempt,
                    attempts=attempts,
                    error=str(err),
                )
                return str(err)
            delay = delays[attempt - 1]
            if err.retry_after is not None:
                delay = max(delay, min(err.retry_after, 2.0))
            log.info(f"attempt {attempt}/{attempts} failed; will retry", model=ref.model, delay_s=delay, error=str(err))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                return "stopping"
        return "unreachable"  # pragma: no cover


def _count(value: Any, default: int) -> int:
    """A replica count from an object (a hostile or broken one must not raise in the watch)."""
    try:
        n = int(value) if value is not None else default
    except (TypeError, ValueError):
        return default
    return min(max(n, 0), MAX_REPLICAS_BOUND)


async def _list_items(call: Callable[..., Awaitable[Any]], timeout_s: float) -> list[Mapping[str, Any]] | None:
    """The items of one list call; None when the API does not serve it (404: a CRD that is not installed)."""
    try:
        resp = await asyncio.wait_for(call(_preload_content=False, _request_timeout=timeout_s), timeout_s)
        listing = await _json(resp)
    except KubeError as e:
        if e.status == 404:
            return None
        raise
    items = listing.get("items") if isinstance(listing, Mapping) else None
    return [i for i in items if isinstance(i, Mapping)] if isinstance(items, list) else []


async def list_and_watch(
    kind: str,
    list_call: Callable[..., Awaitable[Any]],
    on_list: Callable[[Mapping[str, Any]], Awaitable[None]],
    on_event: Callable[[Mapping[str, Any]], Awaitable[None]],
    stop: asyncio.Event,
    retry_delays_s: Sequence[float],
    request_timeout_s: float,
    label_selector: str | None = None,
) -> None:
    """List, then watch from the listing's resourceVersion, until ``stop``; after any error list again after the
    next delay of ``retry_delays_s`` (the last one repeats). ``on_list`` gets the listing, ``on_event`` each watch
    event."""
    delays = tuple(retry_delays_s) or (1.0,)
    failures = 0
    selector = {} if label_selector is None else {"label_selector": label_selector}
    while not stop.is_set():
        try:
            listing = await _json(
                await list_call(**selector, _preload_content=False, _request_timeout=request_timeout_s)
            )
            await on_list(listing)
            failures = 0
            rv = (listing.get("metadata") or {}).get("resourceVersion")
            resp = await list_call(
                **selector,
                watch=True,
                resource_version=rv if rv and rv.isdigit() else None,
                timeout_seconds=WATCH_S,
                _preload_content=False,
                # the server ends the watch after WATCH_S; a connection that silently stops is cut client-side
                _request_timeout=WATCH_S + 30,
            )
            if resp.status != 200:
                await _json(resp)  # raises
            try:
                async for line in resp.content:
                    if line.strip():
                        await on_event(json.loads(line))
            finally:
                resp.release()
        except asyncio.CancelledError:
            raise
        except (KubeError, aiohttp.ClientError, TimeoutError, ValueError) as e:
            delay = delays[min(failures, len(delays) - 1)]
            failures += 1
            log.warning("watch failed; will list again", kind=kind, attempt=failures, delay_s=delay, error=str(e))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
