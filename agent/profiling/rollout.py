"""Rolling a profile's chosen spec out to the model's Deployment: the Kubernetes side of
:mod:`policies.profiling.rollout` (which makes every decision).

:class:`RolloutActuator` is the port's Kubernetes implementation (every API call is here):

- ``read``: the model's Deployment (its annotations: the opt-out, and ``shadowscale.io/spec``, the JSON of the
  configuration the last rollout applied, which is how the running spec is known);
- ``create_canary``: ``<name>-canary``, one replica of the model's pod template with the new configuration applied
  (the same mapping as a shadow trial's: :func:`agent.profiling.shadow.apply_config`) and the model's own pod labels
  plus ``shadowscale.io/canary: "true"``, so the model's Service sends it live traffic; it is owned by the model's
  Deployment (deleted with it);
- ``promote``: one patch of the Deployment: the new pod template, ``strategy.rollingUpdate`` with
  ``maxUnavailable: 0`` (capacity never drops) and the spec annotation; then the canary is deleted;
- ``delete_canary``: the rollback (production was never changed).

:class:`RolloutController` runs the decisions: ``consider`` a new profile (opt-out, threshold, rate limits, dry-run,
then a canary), ``observe`` the canary's traffic windows (from its pods' traffic events), ``step`` to judge canaries
(promote or roll back), and tells the profile book which spec runs so the autoscaler's capacity follows it.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, cast

import structlog
from kubernetes_asyncio import client

from shadowscale.agent.events import TrafficEvent
from shadowscale.agent.profiling.shadow import ShadowSettings, Workload, _json, apply_config
from shadowscale.policies.profiling.rollout import (
    SPEC_ANNOTATION,
    CanaryVerdict,
    CanaryWindow,
    Config,
    Decision,
    Ledger,
    RolloutSettings,
    judge_canary,
    plan,
    strategy,
)
from shadowscale.policies.profiling.types import Profile

log = structlog.get_logger("shadowscale.rollout")

CANARY_LABEL = "shadowscale.io/canary"
MAX_SPEC_ANNOTATION = 4096
STARTED_ANNOTATION = "shadowscale.io/rollout-started"
"""When the last rollout of the model started (seconds since the epoch), on the model's Deployment and on its canary:
how a restarted agent resumes its rate limits and the canary in flight."""
VERSION_ANNOTATION = "shadowscale.io/model-version"
"""The model version a workload runs; without it, its container's image is the version."""


def started_mark(obj: Mapping[str, Any]) -> float | None:
    """The ``shadowscale.io/rollout-started`` time on ``obj``, or None (absent or not a finite number)."""
    text = ((obj.get("metadata") or {}).get("annotations") or {}).get(STARTED_ANNOTATION)
    try:
        t = float(text) if isinstance(text, str) else math.nan
    except ValueError:
        return None
    return t if math.isfinite(t) else None


def model_version(deployment: Mapping[str, Any], container: str | None = None) -> str | None:
    """The model version the Deployment runs: its ``shadowscale.io/model-version`` annotation, else the image of
    ``container`` (or of its first container); None when neither is there."""
    meta = deployment.get("metadata") or {}
    ann = (meta.get("annotations") or {}).get(VERSION_ANNOTATION)
    if isinstance(ann, str) and ann.strip():
        return ann.strip()
    pod = (((deployment.get("spec") or {}).get("template") or {}).get("spec")) or {}
    containers = [c for c in pod.get("containers") or [] if isinstance(c, dict)]
    chosen = next((c for c in containers if c.get("name") == container), None) if container else None
    chosen = chosen or (containers[0] if containers else None)
    image = chosen.get("image") if chosen else None
    return image if isinstance(image, str) and image else None


def running_spec(deployment: Mapping[str, Any]) -> dict[str, Any] | None:
    """The configuration the last rollout applied (``shadowscale.io/spec``), or None when there is none or it is
    not a small JSON object of scalars (an annotation anyone may have edited is input, not truth)."""
    text = ((deployment.get("metadata") or {}).get("annotations") or {}).get(SPEC_ANNOTATION)
    if not isinstance(text, str) or len(text) > MAX_SPEC_ANNOTATION:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(v, str | int | float) and not isinstance(v, bool) for v in value.values()
    ):
        return None
    return value


class Actuator(Protocol):
    async def read(self, model: str) -> dict[str, Any]: ...

    async def create_canary(self, model: str, config: Config, started: float | None = None) -> str: ...

    async def delete_canary(self, model: str) -> None: ...

    async def promote(self, model: str, config: Config, settings: RolloutSettings) -> None: ...

    async def mark_started(self, model: str, now: float) -> None: ...

    async def read_canary(self, model: str) -> dict[str, Any] | None: ...


class RolloutActuator:
    """The Kubernetes calls of a rollout (see the module doc)."""

    def __init__(self, api: Any, workloads: Mapping[str, Workload], shadow: ShadowSettings | None = None) -> None:
        self.apps = client.AppsV1Api(api)
        self.workloads = dict(workloads)
        self.shadow = shadow or ShadowSettings(kafka_bootstrap="unused:0")

    def _wl(self, model: str) -> Workload:
        wl = self.workloads.get(model)
        if wl is None:
            raise ValueError(f"no workload known for model {model!r}")
        return wl

    @staticmethod
    def canary_name(wl: Workload) -> str:
        return f"{wl.deployment[:50].rstrip('-')}-canary"

    async def read(self, model: str) -> dict[str, Any]:
        wl = self._wl(model)
        got = await _json(
            await self.apps.read_namespaced_deployment(wl.deployment, wl.namespace, _preload_content=False)
        )
        return cast(dict[str, Any], got)

    async def create_canary(self, model: str, config: Config, started: float | None = None) -> str:
        wl = self._wl(model)
        dep = await self.read(model)
        template = copy.deepcopy(dep["spec"]["template"])
        labels = {**(template.get("metadata") or {}).get("labels", {}), CANARY_LABEL: "true"}
        template.setdefault("metadata", {})["labels"] = labels
        apply_config(template, config, wl, self.shadow)
        meta = dep["metadata"]
        owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"]}
        if meta.get("uid"):
            owner["uid"] = meta["uid"]
        name = self.canary_name(wl)
        body: dict[str, Any] = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": name,
                "namespace": wl.namespace,
                "labels": {CANARY_LABEL: "true"},
                "annotations": {
                    SPEC_ANNOTATION: json.dumps(dict(config), sort_keys=True),
                    **({STARTED_ANNOTATION: repr(float(started))} if started is not None else {}),
                },
                **({"ownerReferences": [owner]} if "uid" in owner else {}),
            },
            "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": template},
        }
        await _json(await self.apps.create_namespaced_deployment(wl.namespace, cast(Any, body), _preload_content=False))
        return name

    async def version(self, model: str) -> str | None:
        """The model version the workload runs now (:func:`model_version`)."""
        return model_version(await self.read(model), self._wl(model).container)

    async def mark_started(self, model: str, now: float) -> None:
        """Record on the model's Deployment when its rollout started (its per-model rate limit survives a restart).
        Only an annotation: the pod template is untouched, so nothing restarts."""
        wl = self._wl(model)
        patch = {"metadata": {"annotations": {STARTED_ANNOTATION: repr(float(now))}}}
        await _json(
            await self.apps.patch_namespaced_deployment(
                wl.deployment, wl.namespace, cast(Any, patch), _preload_content=False
            )
        )

    async def read_canary(self, model: str) -> dict[str, Any] | None:
        """The model's canary Deployment, or None when there is none."""
        wl = self._wl(model)
        try:
            got = await _json(
                await self.apps.read_namespaced_deployment(self.canary_name(wl), wl.namespace, _preload_content=False)
            )
        except Exception as e:
            if getattr(e, "status", None) == 404:
                return None
            raise
        return cast(dict[str, Any], got)

    async def delete_canary(self, model: str) -> None:
        wl = self._wl(model)
        try:
            await _json(
                await self.apps.delete_namespaced_deployment(self.canary_name(wl), wl.namespace, _preload_content=False)
            )
        except Exception as e:
            if getattr(e, "status", None) != 404:
                raise

    async def promote(self, model: str, config: Config, settings: RolloutSettings) -> None:
        wl = self._wl(model)
        dep = await self.read(model)
        template = copy.deepcopy(dep["spec"]["template"])
        apply_config(template, config, wl, self.shadow)  # a config with file knobs is refused (ValueError)
        replicas = int((dep.get("spec") or {}).get("replicas") or 1)
        patch = {
            "metadata": {"annotations": {SPEC_ANNOTATION: json.dumps(dict(config), sort_keys=True)}},
            "spec": {
                "template": template,
                "strategy": {"type": "RollingUpdate", "rollingUpdate": strategy(replicas, settings)},
            },
        }
        await _json(
            await self.apps.patch_namespaced_deployment(
                wl.deployment, wl.namespace, cast(Any, patch), _preload_content=False
            )
        )
        await self.delete_canary(model)


class CanaryWindows:
    """Turns the canary pods' traffic events (pods named ``<canary>-…``) into one :class:`CanaryWindow` per
    reconcile tick: counts summed, the worst pod's p99. The model's own pods are never counted."""

    def __init__(self, canary: str) -> None:
        self.prefix = f"{canary}-"
        self._events: list[TrafficEvent] = []

    def add(self, ev: TrafficEvent) -> bool:
        """Keep ``ev`` if it is a canary pod's (and not a shadow trial's); whether it was kept."""
        if ev.shadow_trial is not None or not ev.pod.startswith(self.prefix):
            return False
        self._events.append(ev)
        return True

    def take(self, end: float) -> CanaryWindow:
        """The window since the previous ``take``."""
        evs, self._events = self._events, []
        return CanaryWindow(
            end=end,
            arrivals=float(sum(e.arrivals for e in evs)),
            completions=float(sum(e.completions for e in evs)),
            errors=float(sum(e.errors for e in evs)),
            p99_ms=max((e.latency_p99_ms for e in evs), default=0.0),
        )


@dataclass
class Canary:
    config: Config
    started: float
    windows: list[CanaryWindow] = field(default_factory=list)


class RolloutController:
    """Decides and carries out rollouts (see the module doc). ``on_running(model, config)`` is told the spec that
    runs after a promotion (and on :meth:`sync`), so the autoscaler's capacity follows it."""

    def __init__(
        self,
        actuator: Actuator,
        settings: RolloutSettings | None = None,
        *,
        on_running: Callable[[str, Config], None] | None = None,
        on_event: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.actuator = actuator
        self.settings = settings or RolloutSettings()
        self.on_running = on_running
        self.on_event = on_event
        """Told ``(model, outcome, message)`` for each rollout ``started``, ``promoted``, ``rolled_back`` and each new
        ``dry_run`` decision (the daemon's metrics and Kubernetes Events)."""
        self._last: dict[str, tuple[str, str]] = {}
        self.ledger = Ledger()
        self.canaries: dict[str, Canary] = {}
        self.profiles: dict[str, Profile] = {}
        self.decisions: list[tuple[float, str, Decision | CanaryVerdict]] = []
        """Every decision made, for the audit log and tests: (time, model, decision)."""

    async def sync(self, model: str) -> Config | None:
        """Read the running spec from the workload and tell ``on_running``."""
        spec = running_spec(await self.actuator.read(model))
        if spec is not None and self.on_running is not None:
            self.on_running(model, spec)
        return spec

    async def consider(
        self,
        model: str,
        profile: Profile,
        now: float,
        *,
        deployment: Mapping[str, Any] | None = None,
        profile_version: str | None = None,
        running_version: str | None = None,
    ) -> Decision:
        """A new profile for ``model``: roll its chosen spec out if the policy says so (a canary first).
        ``deployment``: the workload as just read (else it is read); the versions: see :func:`plan`. A decision is
        logged (and kept in :attr:`decisions`) when it differs from the model's previous one."""
        dep = deployment if deployment is not None else await self.actuator.read(model)
        annotations = {str(k): str(v) for k, v in ((dep.get("metadata") or {}).get("annotations") or {}).items()}
        decision = plan(
            model,
            profile,
            running_spec(dep),
            annotations,
            self.ledger,
            now,
            self.settings,
            profile_version=profile_version,
            running_version=running_version,
        )
        if self._last.get(model) != (decision.action, decision.reason) or decision.action == "start":
            self._last[model] = (decision.action, decision.reason)
            self.decisions.append((now, model, decision))
            del self.decisions[:-1000]
            log.info("rollout decision", model=model, action=decision.action, reason=decision.reason)
            if decision.action == "dry_run":
                self._event(model, "dry_run", f"dry run: would roll out {_spec(decision.config)}")
        if decision.action == "start" and decision.config is not None:
            self.ledger = self.ledger.started(model, now, self.settings.model_interval_s)
            try:
                await self.actuator.create_canary(model, decision.config, now)
                await self.actuator.mark_started(model, now)
            except Exception:
                self.ledger = self.ledger.finished(model)
                await self._quiet_delete(model)
                raise
            self.canaries[model] = Canary(decision.config, now)
            self.profiles[model] = profile
            self._event(model, "started", f"canary with {_spec(decision.config)}: {decision.reason}")
        return decision

    def resume(
        self, model: str, deployment: Mapping[str, Any], canary: Mapping[str, Any] | None, profile: Profile | None
    ) -> bool:
        """After a restart or a leader change: take the rate-limit mark from the model's Deployment and the canary
        in flight from its canary Deployment (its spec and start annotations). Returns whether a canary was taken
        up; one that cannot be judged (no profile, no readable spec) is left for :meth:`abandon`."""
        t = started_mark(deployment)
        if t is not None and (t, model) not in self.ledger.starts:
            self.ledger = replace(self.ledger, starts=(*self.ledger.starts, (t, model)))
        if canary is None or model in self.canaries:
            return False
        spec = running_spec(canary)
        began = started_mark(canary) or t
        if spec is None or profile is None or began is None:
            return False
        starts = self.ledger.starts if (began, model) in self.ledger.starts else (*self.ledger.starts, (began, model))
        self.ledger = Ledger({**self.ledger.active, model: began}, starts)
        self.canaries[model] = Canary(spec, began)
        self.profiles[model] = profile
        log.info("rollout resumed", model=model, config=spec, started=began)
        return True

    def forget(self) -> None:
        """Drop what this replica knew (it lost the lease): the next leader, or this one again, resumes from the
        cluster's annotations (:meth:`resume`)."""
        self.canaries.clear()
        self.profiles.clear()
        self.ledger = Ledger()
        self._last.clear()

    async def abandon(self, model: str, reason: str) -> None:
        """Delete a canary this agent cannot judge (after a restart with no profile or spec for it)."""
        await self.actuator.delete_canary(model)
        log.warning("canary deleted", model=model, reason=reason)
        self._event(model, "rolled_back", f"canary deleted: {reason}")

    async def _quiet_delete(self, model: str) -> None:
        try:
            await self.actuator.delete_canary(model)
        except Exception as e:
            log.warning("canary clean-up failed", model=model, error=f"{type(e).__name__}: {e}")

    def _event(self, model: str, outcome: str, message: str) -> None:
        if self.on_event is not None:
            self.on_event(model, outcome, message)

    def observe(self, model: str, window: CanaryWindow) -> None:
        """One window of the canary's traffic (its pods' traffic events)."""
        canary = self.canaries.get(model)
        if canary is not None:
            canary.windows.append(window)

    async def step(self, now: float) -> dict[str, CanaryVerdict]:
        """Judge every canary: promote (patch the Deployment, delete the canary) or roll back (delete it). A verdict
        whose calls fail is logged and the canary judged again at the next step (the other canaries go on)."""
        out: dict[str, CanaryVerdict] = {}
        for model, canary in list(self.canaries.items()):
            profile = self.profiles[model]
            verdict = judge_canary(canary.windows, profile.slo_ms, canary.started, now, self.settings)
            out[model] = verdict
            if verdict.action == "wait":
                continue
            self.decisions.append((now, model, verdict))
            del self.decisions[:-1000]
            try:
                if verdict.action == "promote":
                    await self.actuator.promote(model, canary.config, self.settings)
                else:
                    await self.actuator.delete_canary(model)
            except Exception as e:  # the API server may be away: judged again at the next step, others go on
                log.warning(
                    "rollout verdict not carried out; will retry",
                    model=model,
                    action=verdict.action,
                    error=f"{type(e).__name__}: {e}",
                )
                continue
            if verdict.action == "promote":
                log.info("rollout promoted", model=model, config=dict(canary.config), reason=verdict.reason)
                if self.on_running is not None:
                    self.on_running(model, canary.config)
                self._event(model, "promoted", f"{_spec(canary.config)} rolled out: {verdict.reason}")
            else:
                log.warning("rollout rolled back", model=model, config=dict(canary.config), reason=verdict.reason)
                self._event(model, "rolled_back", f"canary with {_spec(canary.config)} rolled back: {verdict.reason}")
            del self.canaries[model]
            self.ledger = self.ledger.finished(model)
        return out


def _spec(config: Config | None) -> str:
    return json.dumps(dict(config or {}), sort_keys=True)
