"""The Kubernetes shadow trial runner: a clone of the model's Deployment with the trial configuration, load from a
load-generator Job, results from traffic events tagged with the trial id, and everything torn down afterwards.

For a trial it

1. reads the model's Deployment and creates ``<name>-shadow-<trial>`` from it: one replica, the pod template's
   labels replaced by ``shadowscale.io/shadow: "true"`` and ``shadowscale.io/trial: <trial>`` (so no Service that
   selects the model's pods selects the shadow and no user traffic reaches it), and the configuration applied:
   ``cpu`` (cores) and ``memory_mib`` as requests and limits, ``gpus``, ``gpu_memory_mib`` and ``gpu_cores_pct``
   as HAMi's ``nvidia.com/gpu``, ``nvidia.com/gpumem`` and ``nvidia.com/gpucores``, ``gpu_type`` as a node
   selector, ``batch`` and ``threads`` as environment variables (names configurable) and any other key as
   ``SHADOWSCALE_PARAM_<KEY>``;
2. waits until the shadow is ready (a Deployment reporting ``ProgressDeadlineExceeded`` or a pod waiting in
   ``CrashLoopBackOff``/``ErrImagePull``/… or terminated ``OOMKilled`` is a failed start);
3. creates ``<name>-loadgen-<trial>``, a Job that replays recently observed traffic against the shadow's pods and
   raises the rate until the SLO breaks, then bisects (its image and arguments are configurable);
4. waits for the trial's result, which the load generator publishes as traffic events tagged with the trial id
   and the agent's event consumer hands over through the :class:`TrialResults` port;
5. deletes the Job (with its pods) and the shadow Deployment, also when any step fails, times out or the trial
   is cancelled. :meth:`ShadowTrialRunner.cleanup` deletes every shadow object left by an agent that died
   mid-trial; the agent calls it on start.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import structlog
from kubernetes_asyncio import client

from policies.profiling.types import Trial, TrialResult

log = structlog.get_logger("shadowscale.profiling.shadow")

SHADOW_LABEL = "shadowscale.io/shadow"
TRIAL_LABEL = "shadowscale.io/trial"
FAILED_WAITING = frozenset(
    {"CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError", "InvalidImageName"}
)


class TrialResults(Protocol):
    """Where a trial's measurement arrives (traffic events tagged with the trial id, decoded by the agent)."""

    async def wait(self, trial_id: str, timeout_s: float) -> TrialResult | None:
        """The trial's result, or None if none arrived within ``timeout_s``."""
        ...


@dataclass(frozen=True, slots=True)
class Workload:
    namespace: str
    deployment: str
    container: str | None = None
    """The container the configuration applies to (default: the first)."""


@dataclass(frozen=True, slots=True)
class ShadowSettings:
    ready_timeout_s: float = 600.0
    result_timeout_s: float = 900.0
    poll_s: float = 2.0
    loadgen_image: str = "ghcr.io/shadowscale/shadowscale:latest"
    loadgen_command: Sequence[str] = ("python", "-m", "shadowscale.loadgen")
    gpu_type_label: str = "nvidia.com/gpu.product"
    env_names: Mapping[str, str] = field(default_factory=lambda: {"batch": "BATCH_SIZE", "threads": "NUM_THREADS"})


class KubeCallError(RuntimeError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status


async def _json(resp: Any) -> Any:
    try:
        body = await resp.read()
    finally:
        resp.release()
    if not 200 <= resp.status <= 299:
        reason = resp.reason or ""
        with contextlib.suppress(ValueError, AttributeError):
            reason = json.loads(body).get("message", reason)
        raise KubeCallError(resp.status, str(reason))
    return json.loads(body) if body else {}


def dns_label(text: str, limit: int = 63) -> str:
    """``text`` as a Kubernetes name part: lower case, ``[a-z0-9-]``, at most ``limit`` characters."""
    s = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return s[:limit].rstrip("-") or "x"


def shadow_deployment(original: Mapping[str, Any], trial: Trial, wl: Workload, st: ShadowSettings) -> dict[str, Any]:
    """The shadow Deployment for ``trial``, built from the model's Deployment (pure: no API call)."""
    trial_label = dns_label(trial.trial_id)
    labels = {SHADOW_LABEL: "true", TRIAL_LABEL: trial_label}
    template = copy.deepcopy(original.get("spec", {}).get("template", {}))
    meta = template.setdefault("metadata", {})
    meta["labels"] = dict(labels)
    spec = template.setdefault("spec", {})
    containers = spec.get("containers") or []
    if not containers:
        raise ValueError(f"deployment {wl.deployment} has no containers")
    target = next((c for c in containers if c.get("name") == wl.container), containers[0])
    cfg = dict(trial.config)
    resources = target.setdefault("resources", {})
    requests, limits = resources.setdefault("requests", {}), resources.setdefault("limits", {})

    def both(key: str, value: str) -> None:
        requests[key] = value
        limits[key] = value

    if "cpu" in cfg:
        both("cpu", f"{float(cfg.pop('cpu')):g}")
    if "memory_mib" in cfg:
        both("memory", f"{int(float(cfg.pop('memory_mib')))}Mi")
    gpu_keys = {"gpus": "nvidia.com/gpu", "gpu_memory_mib": "nvidia.com/gpumem", "gpu_cores_pct": "nvidia.com/gpucores"}
    for key, resource in gpu_keys.items():
        if key in cfg:
            limits[resource] = str(int(float(cfg.pop(key))))
    if "gpu_type" in cfg:
        spec.setdefault("nodeSelector", {})[st.gpu_type_label] = str(cfg.pop("gpu_type"))
    env = [e for e in target.get("env", []) if isinstance(e, Mapping)]
    extra = {st.env_names.get(k, f"SHADOWSCALE_PARAM_{k.upper()}"): str(v) for k, v in cfg.items()}
    extra["SHADOWSCALE_TRIAL_ID"] = trial.trial_id
    target["env"] = [e for e in env if e.get("name") not in extra] + [{"name": k, "value": v} for k, v in extra.items()]
    name = f"{wl.deployment[:30]}-shadow-{trial_label}"[:63].rstrip("-")
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": wl.namespace, "labels": dict(labels)},
        "spec": {"replicas": 1, "selector": {"matchLabels": dict(labels)}, "template": template},
    }


def loadgen_job(shadow: Mapping[str, Any], trial: Trial, wl: Workload, st: ShadowSettings) -> dict[str, Any]:
    """The load-generator Job aimed at the shadow's pods (pure)."""
    labels = dict(shadow["metadata"]["labels"])
    name = shadow["metadata"]["name"].replace("-shadow-", "-loadgen-")[:63].rstrip("-")
    args = [
        "--namespace",
        wl.namespace,
        "--selector",
        f"{TRIAL_LABEL}={labels[TRIAL_LABEL]}",
        "--trial-id",
        trial.trial_id,
        "--model",
        trial.model,
        "--slo-ms",
        f"{trial.slo_ms:g}",
    ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": wl.namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": int(st.result_timeout_s),
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "loadgen",
                            "image": st.loadgen_image,
                            "command": list(st.loadgen_command),
                            "args": args,
                        }
                    ],
                },
            },
        },
    }


def start_failure(deployment: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> str | None:
    """Why the shadow cannot start, from its Deployment conditions and pods; None while it may still come up."""
    for c in deployment.get("status", {}).get("conditions", []) or []:
        if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
            return f"deployment: {c.get('message') or 'progress deadline exceeded'}"
        if c.get("type") == "ReplicaFailure" and c.get("status") == "True":
            return f"deployment: {c.get('message') or c.get('reason') or 'replica failure'}"
    for pod in pods:
        for cs in pod.get("status", {}).get("containerStatuses", []) or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in FAILED_WAITING:
                return f"pod {pod.get('metadata', {}).get('name')}: {waiting['reason']}"
            for state in ((cs.get("state") or {}).get("terminated"), (cs.get("lastState") or {}).get("terminated")):
                if state and state.get("reason") == "OOMKilled":
                    return f"pod {pod.get('metadata', {}).get('name')}: out of memory (OOMKilled)"
    return None


class ShadowTrialRunner:
    """A :class:`~policies.profiling.ports.TrialRunner` that measures shadow Deployments (see the module doc)."""

    def __init__(
        self,
        api: Any,
        workloads: Mapping[str, Workload],
        results: TrialResults,
        settings: ShadowSettings | None = None,
    ) -> None:
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.workloads = dict(workloads)
        self.results = results
        self.settings = settings or ShadowSettings()

    async def run_trial(self, trial: Trial) -> TrialResult:
        t0 = time.perf_counter()
        wl = self.workloads.get(trial.model)
        if wl is None:
            return TrialResult.failed(f"no workload known for model {trial.model!r}")
        created: list[tuple[str, str]] = []
        try:
            async with asyncio.timeout(trial.timeout_s):
                return await self._run(trial, wl, created, t0)
        except TimeoutError:
            return TrialResult.failed(f"timed out after {trial.timeout_s:g} s", time.perf_counter() - t0)
        except KubeCallError as e:
            return TrialResult.failed(f"kubernetes: {e}", time.perf_counter() - t0)
        except ValueError as e:
            return TrialResult.failed(f"bad configuration: {e}", time.perf_counter() - t0)
        finally:
            await asyncio.shield(self._teardown(wl.namespace, created))

    async def _run(self, trial: Trial, wl: Workload, created: list[tuple[str, str]], t0: float) -> TrialResult:
        st = self.settings
        original = await _json(
            await self.apps.read_namespaced_deployment(wl.deployment, wl.namespace, _preload_content=False)
        )
        shadow = shadow_deployment(original, trial, wl, st)
        name = shadow["metadata"]["name"]
        created.append(("deployment", name))
        await _json(
            await self.apps.create_namespaced_deployment(wl.namespace, cast(Any, shadow), _preload_content=False)
        )
        log.info("shadow created", trial=trial.trial_id, deployment=name)
        failure = await self._wait_ready(wl.namespace, name, shadow["metadata"]["labels"][TRIAL_LABEL])
        if failure is not None:
            return TrialResult.failed(f"failed start: {failure}", time.perf_counter() - t0)
        job = loadgen_job(shadow, trial, wl, st)
        created.append(("job", job["metadata"]["name"]))
        await _json(await self.batch.create_namespaced_job(wl.namespace, cast(Any, job), _preload_content=False))
        result = await self.results.wait(trial.trial_id, st.result_timeout_s)
        if result is None:
            return TrialResult.failed(
                f"no results event for trial {trial.trial_id} within {st.result_timeout_s:g} s",
                time.perf_counter() - t0,
            )
        return result

    async def _wait_ready(self, namespace: str, name: str, trial_label: str) -> str | None:
        deadline = time.monotonic() + self.settings.ready_timeout_s
        while True:
            dep = await _json(await self.apps.read_namespaced_deployment(name, namespace, _preload_content=False))
            if int((dep.get("status") or {}).get("readyReplicas") or 0) >= 1:
                return None
            pods: list[Any] = []
            with contextlib.suppress(KubeCallError):
                listing = await self.core.list_namespaced_pod(
                    namespace, label_selector=f"{TRIAL_LABEL}={trial_label}", _preload_content=False
                )
                pods = [
                    p
                    for p in (await _json(listing)).get("items", [])
                    if (p.get("metadata", {}).get("labels") or {}).get(TRIAL_LABEL) == trial_label
                ]
            why = start_failure(dep, pods)
            if why is not None:
                return why
            if time.monotonic() >= deadline:
                return f"not ready within {self.settings.ready_timeout_s:g} s"
            await asyncio.sleep(self.settings.poll_s)

    async def _teardown(self, namespace: str, created: Sequence[tuple[str, str]]) -> None:
        """Delete what the trial created, Job first (Background propagation removes its pods); 404 is fine."""
        for kind, name in reversed(created):
            for attempt in range(3):
                try:
                    if kind == "job":
                        resp = await self.batch.delete_namespaced_job(
                            name, namespace, propagation_policy="Background", _preload_content=False
                        )
                    else:
                        resp = await self.apps.delete_namespaced_deployment(name, namespace, _preload_content=False)
                    await _json(resp)
                    break
                except KubeCallError as e:
                    if e.status == 404:
                        break
                    log.warning("teardown failed; will retry", kind=kind, name=name, attempt=f"{attempt + 1}/3")
                except Exception as e:  # connection errors: retry, then leave it to cleanup()
                    log.warning("teardown failed; will retry", kind=kind, name=name, error=str(e))
                await asyncio.sleep(0.5 * (attempt + 1))

    async def cleanup(self, namespaces: Sequence[str] | None = None) -> int:
        """Delete every shadow Deployment and load-generator Job (label ``shadowscale.io/shadow=true``) in the
        workloads' namespaces: what an agent that died mid-trial left behind. Returns how many were deleted."""
        count = 0
        for ns in sorted(set(namespaces or [w.namespace for w in self.workloads.values()])):
            selector = f"{SHADOW_LABEL}=true"
            jobs = await _json(
                await self.batch.list_namespaced_job(ns, label_selector=selector, _preload_content=False)
            )
            deps = await _json(
                await self.apps.list_namespaced_deployment(ns, label_selector=selector, _preload_content=False)
            )
            # the server filters by the selector; check the label again so nothing else can ever be deleted
            doomed = [("job", j["metadata"]["name"]) for j in jobs.get("items", []) if _is_shadow(j)]
            doomed += [("deployment", d["metadata"]["name"]) for d in deps.get("items", []) if _is_shadow(d)]
            await self._teardown(ns, list(reversed(doomed)))
            count += len(doomed)
        return count


def _is_shadow(obj: Mapping[str, Any]) -> bool:
    return (obj.get("metadata", {}).get("labels") or {}).get(SHADOW_LABEL) == "true"
