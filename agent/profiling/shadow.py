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
3. creates ``<name>-loadgen-<trial>``, a Job running the load generator (:mod:`agent.profiling.loadgen`,
   ``shadowscale loadgen``; image, command and extra arguments configurable) aimed at the ready shadow pod's IP and
   the workload's port: it drives open-loop load shaped like the model's traffic (the workload's
   :class:`~agent.profiling.loadgen.RequestShape`, as JSON in a ConfigMap ``<name>-loadgen-<trial>`` mounted into
   the Job's pod and read with ``--shape``: capped at ``SHAPE_MAX_BYTES``, keeping the most recent observed gaps,
   so a busy model's ten minutes of arrivals never overflow the environment), raises the rate until the SLO
   breaks, then bisects;
4. waits for the trial's result, a ``shadowscale.trial-result/v1`` event keyed by the trial id that the load
   generator publishes on the trials topic, handed over through the :class:`TrialResults` port
   (:class:`agent.profiling.results.KafkaTrialResults`);
5. deletes the Job (with its pods), its ConfigMap and the shadow Deployment, also when any step fails, times out
   or the trial is cancelled. :meth:`ShadowTrialRunner.cleanup` deletes every shadow object left by an agent that died
   mid-trial; the agent calls it on start.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import math
import re
import string
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, cast

import msgspec
import structlog
from kubernetes_asyncio import client

from shadowscale.agent.profiling.loadgen import (
    DEFAULT_TOPIC,
    SASL_PASSWORD_ENV,
    SASL_USERNAME_ENV,
    SHAPE_ENV,
    SHAPE_MAX_BYTES,
    TRIAL_ENV,
    LoadPlan,
    RequestShape,
    fit_shape,
    shape_json,
)
from shadowscale.policies.profiling.types import Trial, TrialResult

log = structlog.get_logger("shadowscale.profiling.shadow")

SHADOW_LABEL = "shadowscale.io/shadow"
TRIAL_LABEL = "shadowscale.io/trial"
ROLE_LABEL = "shadowscale.io/role"
MIN_OBSERVED_GAPS = 20
"""Fewer observed inter-arrival times than this say too little about a model's traffic to replay them."""
"""``shadow`` on the shadow Deployment and its pods, ``loadgen`` on the Job and its pod (which also carry the shadow
and trial labels, so cleanup finds both and the trial's pods can be told apart)."""
FAILED_WAITING = frozenset(
    {"CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError", "InvalidImageName"}
)


class TrialResults(Protocol):
    """Where a trial's measurement arrives (traffic events tagged with the trial id, decoded by the agent)."""

    async def wait(self, trial_id: str, timeout_s: float) -> TrialResult | None:
        """The trial's result, or None if none arrived within ``timeout_s``."""
        ...


class Knob(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How one configuration key reaches the model server, when not by the built-in mapping (resources, node
    selector, ``env_names``): exactly one of

    - ``arg``: a command-line flag of the container (``--max-num-seqs``): any ``--flag VALUE`` or ``--flag=VALUE``
      already in its ``args`` is replaced by ``--flag=VALUE``;
    - ``env``: an environment variable;
    - ``file`` with ``template``: a config file at this absolute path in the container, rendered from ``template``
      with ``$key`` / ``${key}`` placeholders filled from the whole configuration (``string.Template``, so the braces
      of a Triton ``config.pbtxt`` or TorchServe JSON need no escaping); several keys may name the same file. The
      rendered files reach the pod in a ConfigMap mounted with ``subPath``.
    """

    arg: str | None = None
    env: str | None = None
    file: str | None = None
    template: str | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("arg", "env", "file") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"a knob sets exactly one of arg, env or file, got {', '.join(given) or 'none'}")
        if self.arg is not None and not re.fullmatch(r"-{1,2}[A-Za-z0-9][A-Za-z0-9_.-]*", self.arg):
            raise ValueError(f"knob arg {self.arg!r} is not a command-line flag such as --max-num-seqs")
        if self.env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.env):
            raise ValueError(f"knob env {self.env!r} is not an environment variable name")
        if self.file is not None and (not self.file.startswith("/") or not self.template):
            raise ValueError(f"knob file {self.file!r}: needs an absolute path and a template")
        if self.template is not None and self.file is None:
            raise ValueError("a knob template needs a file")


@dataclass(frozen=True, slots=True)
class Workload:
    namespace: str
    deployment: str
    container: str | None = None
    """The container the configuration applies to (default: the first)."""
    port: int | None = None
    """The port the load generator targets (default: the container's first ``containerPort``)."""
    path: str = "/"
    """The HTTP path requests go to (a request shape's ``path`` overrides it)."""
    protocol: Literal["http", "https", "tcp", "openai"] = "http"
    """``openai``: an OpenAI-compatible completions server over HTTP, load-tested with streamed completions (TTFT,
    time per output token, tokens/s; :class:`agent.profiling.loadgen.LlmTarget`)."""
    shape: RequestShape | None = None
    """What the model's requests look like (bodies or sizes, inter-arrival gaps); None: empty POSTs, evenly spaced."""
    knobs: Mapping[str, Knob] = field(default_factory=dict)
    """Configuration keys that set a container argument, an environment variable or a templated file (:class:`Knob`)."""

    def __post_init__(self) -> None:
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError(f"workload {self.namespace}/{self.deployment}: port {self.port} is not in 1..65535")
        if not self.path.startswith("/"):
            raise ValueError(f"workload {self.namespace}/{self.deployment}: path {self.path!r} must start with '/'")
        if self.protocol not in ("http", "https", "tcp", "openai"):
            raise ValueError(
                f"workload {self.namespace}/{self.deployment}: protocol must be http, https, tcp or openai"
            )


@dataclass(frozen=True, slots=True)
class ShadowSettings:
    """How shadow trials run. ``kafka_bootstrap`` is where the load generator publishes its result (the agent's
    broker as the Job's pod reaches it); ``loadgen_args`` are appended to the load generator's arguments (e.g.
    ``--config FILE`` for TLS/SASL from a mounted agent configuration) and ``loadgen_env`` added to its
    environment.

    A broker behind TLS or SASL: ``kafka_security_protocol`` and ``kafka_sasl_mechanism`` as the agent's own;
    ``kafka_ca_secret`` names a Secret with ``ca.crt`` and ``kafka_sasl_secret`` one with ``username`` and
    ``password``, both in the *model's* namespace (where the Job runs): the CA is mounted into the load generator's
    pod and the credentials reach it as environment variables from the Secret, never as values in the Job.
    """

    ready_timeout_s: float = 600.0
    unschedulable_grace_s: float = 60.0
    """A shadow pod ``Unschedulable`` this long (no node has room: a cluster autoscaler had time to add one) ends
    the trial as unschedulable: retried later by the search, never scored."""
    result_timeout_s: float = 900.0
    poll_s: float = 2.0
    kafka_bootstrap: str = ""
    results_topic: str = DEFAULT_TOPIC
    loadgen_image: str = "ghcr.io/shadowscale/shadowscale:latest"
    loadgen_command: Sequence[str] = ("shadowscale", "loadgen")
    loadgen_args: Sequence[str] = ()
    loadgen_env: Mapping[str, str] = field(default_factory=dict)
    load: LoadPlan = field(default_factory=LoadPlan)
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_ca_secret: str | None = None
    kafka_sasl_secret: str | None = None
    gc_grace_s: float = 300.0
    """The trial's anchor Job (see :func:`trial_anchor`) fails this long after the trial's own deadline, and is
    deleted with everything it owns this long after that, by Kubernetes, whether or not an agent still runs."""
    gpu_type_label: str = "nvidia.com/gpu.product"
    env_names: Mapping[str, str] = field(default_factory=lambda: {"batch": "BATCH_SIZE", "threads": "NUM_THREADS"})

    def __post_init__(self) -> None:
        for name in ("ready_timeout_s", "unschedulable_grace_s", "result_timeout_s", "poll_s", "gc_grace_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"shadow settings: {name} must be positive, got {getattr(self, name)}")
        if self.kafka_bootstrap and ":" not in self.kafka_bootstrap:
            raise ValueError(f"shadow settings: kafka_bootstrap must be HOST:PORT, got {self.kafka_bootstrap!r}")
        if not self.loadgen_command or not self.loadgen_image:
            raise ValueError("shadow settings: loadgen_command and loadgen_image must not be empty")
        if self.kafka_security_protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise ValueError(f"shadow settings: unknown kafka_security_protocol {self.kafka_security_protocol!r}")
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_secret
        ):
            raise ValueError(
                f"shadow settings: kafka_security_protocol {self.kafka_security_protocol} needs kafka_sasl_mechanism "
                "and kafka_sasl_secret (a Secret with username and password in each model's namespace) so the load "
                "generator can publish"
            )


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
    """``text`` as a Kubernetes name part: lower case, ``[a-z0-9-]``, at most ``limit`` characters.

    A text that had to be shortened ends in 8 hex digits of its hash, so two long trial ids that share a prefix
    (``run-<long model name>-1`` and ``-2``) still get different labels and names.
    """
    s = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "x"
    if len(s) <= limit:
        return s
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return f"{s[: max(1, limit - 9)].rstrip('-')}-{digest}"


def apply_config(
    template: dict[str, Any],
    config: Mapping[str, Any],
    wl: Workload,
    st: ShadowSettings,
    *,
    trial_id: str = "",
    files_configmap: str | None = None,
) -> dict[str, str]:
    """``config`` applied to the pod ``template`` in place (see the module doc for the mapping, and :class:`Knob`;
    ``trial_id``, when given, goes into ``$SHADOWSCALE_TRIAL_ID``). Shared by shadow trials and rollouts (pure).

    Returns the rendered config files of ``file`` knobs by ConfigMap key (``f0``, ``f1``…): the template then mounts
    them from the ConfigMap ``files_configmap``, which the caller creates (a ``ValueError`` when there are files and
    no ConfigMap name)."""
    spec = template.setdefault("spec", {})
    containers = spec.get("containers") or []
    if not containers:
        raise ValueError(f"deployment {wl.deployment} has no containers")
    target = next((c for c in containers if c.get("name") == wl.container), containers[0])
    cfg = dict(config)
    files = _apply_knobs(target, spec, cfg, wl, files_configmap)
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
    if trial_id:
        extra[TRIAL_ENV] = trial_id
    target["env"] = [e for e in env if e.get("name") not in extra] + [{"name": k, "value": v} for k, v in extra.items()]
    return files


def _apply_knobs(
    target: dict[str, Any], spec: dict[str, Any], cfg: dict[str, Any], wl: Workload, files_configmap: str | None
) -> dict[str, str]:
    """Apply (and remove from ``cfg``) the keys that have a :class:`Knob`; the rendered files by ConfigMap key."""
    values = {k: f"{v:g}" if isinstance(v, float) else str(v) for k, v in cfg.items()}
    paths: dict[str, str] = {}
    for key, knob in wl.knobs.items():
        if key not in cfg:
            continue
        value = values[key]
        del cfg[key]
        if knob.arg is not None:
            args = [str(a) for a in target.get("args") or []]
            out: list[str] = []
            skip = False
            for a in args:
                if skip:
                    skip = False
                    continue
                if a == knob.arg:
                    skip = True  # the flag's separate value goes too
                    continue
                if a.startswith(knob.arg + "="):
                    continue
                out.append(a)
            target["args"] = [*out, f"{knob.arg}={value}"]
        elif knob.env is not None:
            env = [e for e in target.get("env", []) if isinstance(e, Mapping) and e.get("name") != knob.env]
            target["env"] = [*env, {"name": knob.env, "value": value}]
        elif knob.file is not None and knob.template is not None:
            paths.setdefault(knob.file, knob.template)
    if not paths:
        return {}
    if files_configmap is None:
        raise ValueError(f"configuration keys set config files ({', '.join(sorted(paths))}); not supported here")
    files: dict[str, str] = {}
    mounts = [m for m in target.get("volumeMounts") or [] if m.get("name") != "shadowscale-knobs"]
    for k, (path, text) in enumerate(sorted(paths.items())):
        try:
            files[f"f{k}"] = string.Template(text).substitute(values)
        except (KeyError, ValueError) as e:
            raise ValueError(f"config file {path}: template placeholder {e} is not a configuration key") from None
        mounts.append({"name": "shadowscale-knobs", "mountPath": path, "subPath": f"f{k}", "readOnly": True})
    target["volumeMounts"] = mounts
    volumes = [v for v in spec.get("volumes") or [] if v.get("name") != "shadowscale-knobs"]
    spec["volumes"] = [*volumes, {"name": "shadowscale-knobs", "configMap": {"name": files_configmap}}]
    return files


def shadow_deployment(original: Mapping[str, Any], trial: Trial, wl: Workload, st: ShadowSettings) -> dict[str, Any]:
    """The shadow Deployment for ``trial``, built from the model's Deployment (pure: no API call)."""
    trial_label = dns_label(trial.trial_id)
    labels = {SHADOW_LABEL: "true", TRIAL_LABEL: trial_label, ROLE_LABEL: "shadow"}
    template = copy.deepcopy(original.get("spec", {}).get("template", {}))
    meta = template.setdefault("metadata", {})
    meta["labels"] = dict(labels)
    name = f"{wl.deployment[:30].rstrip('-')}-shadow-{dns_label(trial.trial_id, 63 - 9 - len(wl.deployment[:30]))}"
    files = apply_config(template, trial.config, wl, st, trial_id=trial.trial_id, files_configmap=name)
    out: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": wl.namespace, "labels": dict(labels)},
        "spec": {"replicas": 1, "selector": {"matchLabels": dict(labels)}, "template": template},
    }
    if files:  # the knobs' config files, created with the shadow (the ConfigMap shares its name and labels)
        out["files"] = files
    return out


def trial_anchor(trial: Trial, wl: Workload, st: ShadowSettings) -> dict[str, Any]:
    """The Job that owns everything a trial creates (pure). It runs no pod (``parallelism: 0``); its
    ``activeDeadlineSeconds`` (the trial's timeout plus ``gc_grace_s``) fails it and ``ttlSecondsAfterFinished``
    then deletes it, and the garbage collector deletes the shadow Deployment, the load-generator Job and its
    ConfigMap through their owner references: a trial's objects go even when no agent is left to clean up. (An
    owner reference to the agent's Lease cannot do this: owners must be in the dependent's namespace.)"""
    trial_label = dns_label(trial.trial_id)
    labels = {SHADOW_LABEL: "true", TRIAL_LABEL: trial_label, ROLE_LABEL: "anchor"}
    name = f"{wl.deployment[:30].rstrip('-')}-trial-{dns_label(trial.trial_id, 63 - 8 - len(wl.deployment[:30]))}"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": wl.namespace, "labels": dict(labels)},
        "spec": {
            "parallelism": 0,
            "completions": 1,
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(1, math.ceil(trial.timeout_s + st.gc_grace_s)),
            "ttlSecondsAfterFinished": max(0, math.ceil(st.gc_grace_s)),
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "anchor", "image": st.loadgen_image, "command": ["true"]}],
                },
            },
        },
    }


def owned_by(obj: dict[str, Any], anchor: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` with an owner reference to the trial's anchor Job (which must carry its server-assigned uid)."""
    meta = anchor["metadata"]
    ref = {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"]}
    obj["metadata"]["ownerReferences"] = [{**ref, "controller": False, "blockOwnerDeletion": False}]
    return obj


def target_port(shadow: Mapping[str, Any], wl: Workload) -> int:
    """The port the load goes to: the workload's, else the target container's first ``containerPort`` (pure)."""
    if wl.port is not None:
        return wl.port
    containers = shadow["spec"]["template"]["spec"]["containers"]
    target = next((c for c in containers if c.get("name") == wl.container), containers[0])
    for p in target.get("ports") or []:
        if isinstance(p, Mapping) and isinstance(p.get("containerPort"), int):
            return int(p["containerPort"])
    raise ValueError(
        f"workload {wl.namespace}/{wl.deployment}: no port to load-test: set the workload's port or give container "
        f"{target.get('name')!r} a containerPort"
    )


def target_url(pod_ip: str, port: int, wl: Workload) -> str:
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    if wl.protocol == "tcp":
        return f"tcp://{host}:{port}"
    scheme = "openai+http" if wl.protocol == "openai" else wl.protocol
    return f"{scheme}://{host}:{port}{wl.path}"


def loadgen_job(
    shadow: Mapping[str, Any], trial: Trial, wl: Workload, st: ShadowSettings, target: str
) -> dict[str, Any]:
    """The load-generator Job aimed at ``target`` (the shadow pod's URL), publishing to the trials topic (pure)."""
    if not st.kafka_bootstrap:
        raise ValueError("shadow settings: kafka_bootstrap is empty; the load generator publishes its result there")
    labels = {**shadow["metadata"]["labels"], ROLE_LABEL: "loadgen"}
    name = shadow["metadata"]["name"].replace("-shadow-", "-loadgen-")[:63].rstrip("-")
    args = [
        "--target",
        target,
        "--trial-id",
        trial.trial_id,
        "--model",
        trial.model,
        "--namespace",
        wl.namespace,
        "--slo-ms",
        f"{trial.slo_ms:g}",
        "--bootstrap",
        st.kafka_bootstrap,
        "--topic",
        st.results_topic,
        *st.load.args(),
        *_kafka_security_args(st),
        *st.loadgen_args,
    ]
    env = {TRIAL_ENV: trial.trial_id, "POD_NAMESPACE": wl.namespace}
    if wl.shape is not None:  # in a ConfigMap (see shape_configmap), never in the environment: it can be large
        args += ["--shape", f"{SHAPE_DIR}/{SHAPE_KEY}"]
    env.update(st.loadgen_env)
    env.pop(SHAPE_ENV, None)
    env_list: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in env.items()]
    if st.kafka_sasl_secret:
        env_list += [
            {"name": name, "valueFrom": {"secretKeyRef": {"name": st.kafka_sasl_secret, "key": key}}}
            for name, key in ((SASL_USERNAME_ENV, "username"), (SASL_PASSWORD_ENV, "password"))
        ]
    container: dict[str, Any] = {
        "name": "loadgen",
        "image": st.loadgen_image,
        "command": list(st.loadgen_command),
        "args": args,
        "env": env_list,
    }
    pod: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    mounts: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    if st.kafka_ca_secret:
        mounts.append({"name": "kafka-ca", "mountPath": KAFKA_CA_DIR, "readOnly": True})
        volumes.append({"name": "kafka-ca", "secret": {"secretName": st.kafka_ca_secret}})
    if wl.shape is not None:
        mounts.append({"name": "shape", "mountPath": SHAPE_DIR, "readOnly": True})
        volumes.append({"name": "shape", "configMap": {"name": name}})
    if mounts:
        container["volumeMounts"] = mounts
        pod["volumes"] = volumes
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": wl.namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(1, int(st.result_timeout_s)),
            "ttlSecondsAfterFinished": max(0, math.ceil(st.gc_grace_s)),
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
        },
    }


KAFKA_CA_DIR = "/etc/shadowscale-kafka-ca"
SHAPE_DIR = "/etc/shadowscale-shape"
SHAPE_KEY = "shape.json"


def shape_configmap(job: Mapping[str, Any], shape: RequestShape, max_bytes: int = SHAPE_MAX_BYTES) -> dict[str, Any]:
    """The ConfigMap (named as the Job, with its labels) that carries ``shape`` to the load generator, mounted at
    ``SHAPE_DIR``: fitted to ``max_bytes`` (the most recent gaps kept), never the environment (pure)."""
    meta = job["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "labels": dict(meta["labels"])},
        "data": {SHAPE_KEY: shape_json(fit_shape(shape, max_bytes))},
    }


def _kafka_security_args(st: ShadowSettings) -> list[str]:
    out = []
    if st.kafka_security_protocol != "PLAINTEXT":
        out += ["--security-protocol", st.kafka_security_protocol]
    if st.kafka_sasl_mechanism and st.kafka_security_protocol.startswith("SASL"):
        out += ["--sasl-mechanism", st.kafka_sasl_mechanism]
    if st.kafka_ca_secret:
        out += ["--ssl-cafile", f"{KAFKA_CA_DIR}/ca.crt"]
    return out


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


def unschedulable(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """The scheduler's message when a pod of ``pods`` has ``PodScheduled=False`` with reason ``Unschedulable`` (the
    cluster has no room for it), else None (pure)."""
    for pod in pods:
        for c in (pod.get("status") or {}).get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
                name = pod.get("metadata", {}).get("name")
                return f"pod {name}: {c.get('message') or 'Unschedulable'}"
    return None


def ready_pod_ip(pods: Sequence[Mapping[str, Any]]) -> str:
    """The IP of a ready, running pod among ``pods`` (the first by name), or "" if none has one yet."""
    for pod in sorted(pods, key=lambda p: str(p.get("metadata", {}).get("name"))):
        status = pod.get("status") or {}
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        if status.get("podIP") and status.get("phase") == "Running" and conditions.get("Ready") == "True":
            return str(status["podIP"])
    return ""


class ShadowTrialRunner:
    """A :class:`~policies.profiling.ports.TrialRunner` that measures shadow Deployments (see the module doc)."""

    def __init__(
        self,
        api: Any,
        workloads: Mapping[str, Workload],
        results: TrialResults,
        settings: ShadowSettings | None = None,
        *,
        observed_gaps: Callable[[str], Sequence[float]] | None = None,
    ) -> None:
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.workloads = dict(workloads)
        self.results = results
        self.settings = settings or ShadowSettings()
        self.observed_gaps = observed_gaps
        """The model's recent inter-arrival times as the agent saw them (``Windows.recent_gaps``): replayed by the
        load generator when the workload's configured shape gives no ``gaps`` of its own."""
        if not self.settings.kafka_bootstrap:
            raise ValueError(
                "shadow runner: settings.kafka_bootstrap is empty; the load generator publishes its result to Kafka "
                "and needs the broker's HOST:PORT"
            )

    async def annotations(self, model: str) -> dict[str, str]:
        """The annotations of ``model``'s Deployment (``profiling.shadowscale.io/…`` ones override its search
        space); ``{}`` for a model without a known workload. Raises :class:`KubeCallError` when it cannot be read."""
        wl = self.workloads.get(model)
        if wl is None:
            return {}
        dep = await _json(
            await self.apps.read_namespaced_deployment(wl.deployment, wl.namespace, _preload_content=False)
        )
        found = dep.get("metadata", {}).get("annotations") or {}
        return {str(k): str(v) for k, v in found.items()}

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
        port = target_port(shadow, wl)
        anchor = await self._anchor(trial, wl, created)
        name = owned_by(shadow, anchor)["metadata"]["name"]
        files = shadow.pop("files", None)
        if files:
            body = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": wl.namespace, "labels": dict(shadow["metadata"]["labels"])},
                "data": files,
            }
            created.append(("configmap", name))
            await _json(
                await self.core.create_namespaced_config_map(
                    wl.namespace, cast(Any, owned_by(body, anchor)), _preload_content=False
                )
            )
        created.append(("deployment", name))
        await _json(
            await self.apps.create_namespaced_deployment(wl.namespace, cast(Any, shadow), _preload_content=False)
        )
        log.info("shadow created", trial=trial.trial_id, deployment=name)
        failure, pod_ip = await self._wait_ready(wl.namespace, name, shadow["metadata"]["labels"][TRIAL_LABEL])
        if isinstance(failure, _Unschedulable):
            return TrialResult.unschedulable(f"no room for the shadow: {failure}", time.perf_counter() - t0)
        if failure is not None:
            return TrialResult.failed(f"failed start: {failure}", time.perf_counter() - t0)
        traffic = self._with_traffic(trial.model, wl)
        job = loadgen_job(shadow, trial, traffic, st, target_url(pod_ip, port, wl))
        owned_by(job, anchor)
        if traffic.shape is not None:
            cm = owned_by(shape_configmap(job, traffic.shape), anchor)
            created.append(("configmap", cm["metadata"]["name"]))
            await _json(
                await self.core.create_namespaced_config_map(wl.namespace, cast(Any, cm), _preload_content=False)
            )
        created.append(("job", job["metadata"]["name"]))
        await _json(await self.batch.create_namespaced_job(wl.namespace, cast(Any, job), _preload_content=False))
        log.info("load generator started", trial=trial.trial_id, job=job["metadata"]["name"], pod_ip=pod_ip)
        result = await self._result(trial.trial_id, wl.namespace, job["metadata"]["name"], t0)
        if result is None:
            return TrialResult.failed(
                f"no results event for trial {trial.trial_id} within {st.result_timeout_s:g} s",
                time.perf_counter() - t0,
            )
        return result

    async def _anchor(self, trial: Trial, wl: Workload, created: list[tuple[str, str]]) -> dict[str, Any]:
        """Create the trial's anchor Job (:func:`trial_anchor`) and return it with its uid (read back until the
        API server has assigned one)."""
        anchor = trial_anchor(trial, wl, self.settings)
        name = anchor["metadata"]["name"]
        created.append(("job", name))
        got = await _json(
            await self.batch.create_namespaced_job(wl.namespace, cast(Any, anchor), _preload_content=False)
        )
        for _ in range(50):
            if (got.get("metadata") or {}).get("uid"):
                return cast(dict[str, Any], got)
            await asyncio.sleep(self.settings.poll_s)
            got = await _json(await self.batch.read_namespaced_job(name, wl.namespace, _preload_content=False))
        raise KubeCallError(500, f"the API server assigned no uid to the trial's anchor Job {name}")

    def _with_traffic(self, model: str, wl: Workload) -> Workload:
        """``wl`` with the model's recently observed inter-arrival pattern in its request shape (when it has no
        configured ``gaps`` and at least ``MIN_OBSERVED_GAPS`` were seen): the load replays recent traffic."""
        if self.observed_gaps is None or (wl.shape is not None and wl.shape.gaps):
            return wl
        gaps = tuple(self.observed_gaps(model))
        if len(gaps) < MIN_OBSERVED_GAPS or not sum(gaps) > 0:
            return wl
        shape = wl.shape or RequestShape()
        return replace(wl, shape=msgspec.structs.replace(shape, gaps=gaps))

    async def _result(self, trial_id: str, namespace: str, job: str, t0: float) -> TrialResult | None:
        """The trial's result; a failed result as soon as the load-generator Job fails (it could not publish, or
        crashed), instead of waiting out ``result_timeout_s``; None when nothing arrived in time."""
        waiter = asyncio.ensure_future(self.results.wait(trial_id, self.settings.result_timeout_s))
        try:
            while True:
                await asyncio.wait({waiter}, timeout=self.settings.poll_s)
                if waiter.done():
                    return waiter.result()
                why = await self._job_failure(namespace, job)
                if why is not None:
                    return TrialResult.failed(f"load generator failed: {why}", time.perf_counter() - t0)
        finally:
            if not waiter.done():
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter

    async def _job_failure(self, namespace: str, name: str) -> str | None:
        try:
            job = await _json(await self.batch.read_namespaced_job(name, namespace, _preload_content=False))
        except KubeCallError as e:
            return "the Job was deleted" if e.status == 404 else None
        status = job.get("status") or {}
        for c in status.get("conditions") or []:
            if c.get("type") == "Failed" and c.get("status") == "True":
                return ": ".join(str(x) for x in (c.get("reason"), c.get("message")) if x) or "Job failed"
        return None

    async def _wait_ready(self, namespace: str, name: str, trial_label: str) -> tuple[str | None, str]:
        """``(None, pod IP)`` once the shadow has a ready pod with an IP, else ``(why it cannot start, "")``; the
        reason is an :class:`_Unschedulable` when its pod stayed unschedulable for ``unschedulable_grace_s``."""
        deadline = time.monotonic() + self.settings.ready_timeout_s
        pending_since: float | None = None
        while True:
            dep = await _json(await self.apps.read_namespaced_deployment(name, namespace, _preload_content=False))
            ready = int((dep.get("status") or {}).get("readyReplicas") or 0) >= 1
            pods: list[Any] = []
            with contextlib.suppress(KubeCallError):
                listing = await self.core.list_namespaced_pod(
                    namespace, label_selector=f"{TRIAL_LABEL}={trial_label}", _preload_content=False
                )
                pods = [
                    p
                    for p in (await _json(listing)).get("items", [])
                    if (labels := p.get("metadata", {}).get("labels") or {}).get(TRIAL_LABEL) == trial_label
                    and labels.get(ROLE_LABEL, "shadow") == "shadow"
                ]
            if ready and (ip := ready_pod_ip(pods)):
                return None, ip
            why = start_failure(dep, pods)
            if why is not None:
                return why, ""
            full = unschedulable(pods)
            if full is None:
                pending_since = None
            else:
                pending_since = time.monotonic() if pending_since is None else pending_since
                if time.monotonic() - pending_since >= self.settings.unschedulable_grace_s:
                    return _Unschedulable(full), ""
            if time.monotonic() >= deadline:
                what = "ready but no ready pod with an IP" if ready else "not ready"
                return f"{what} within {self.settings.ready_timeout_s:g} s", ""
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
                    elif kind == "configmap":
                        resp = await self.core.delete_namespaced_config_map(name, namespace, _preload_content=False)
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
            cms = await _json(
                await self.core.list_namespaced_config_map(ns, label_selector=selector, _preload_content=False)
            )
            # the server filters by the selector; check the label again so nothing else can ever be deleted
            doomed = [("configmap", c["metadata"]["name"]) for c in cms.get("items", []) if _is_shadow(c)]
            doomed += [("job", j["metadata"]["name"]) for j in jobs.get("items", []) if _is_shadow(j)]
            doomed += [("deployment", d["metadata"]["name"]) for d in deps.get("items", []) if _is_shadow(d)]
            await self._teardown(ns, list(reversed(doomed)))
            count += len(doomed)
        return count


class _Unschedulable(str):
    """A start failure that is the cluster's (no room), not the configuration's."""


def _is_shadow(obj: Mapping[str, Any]) -> bool:
    return (obj.get("metadata", {}).get("labels") or {}).get(SHADOW_LABEL) == "true"
