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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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

    async def create_canary(self, model: str, config: Config) -> str: ...

    async def delete_canary(self, model: str) -> None: ...

    async def promote(self, model: str, config: Config, settings: RolloutSettings) -> None: ...


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

    async def create_canary(self, model: str, config: Config) -> str:
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
                "annotations": {SPEC_ANNOTATION: json.dumps(dict(config), sort_keys=True)},
                **({"ownerReferences": [owner]} if "uid" in owner else {}),
            },
            "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": template},
        }
        await _json(await self.apps.create_namespaced_deployment(wl.namespace, cast(Any, body), _preload_content=False))
        return name

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
    ) -> None:
        self.actuator = actuator
        self.settings = settings or RolloutSettings()
        self.on_running = on_running
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

    async def consider(self, model: str, profile: Profile, now: float) -> Decision:
        """A new profile for ``model``: roll its chosen spec out if the policy says so (a canary first)."""
        dep = await self.actuator.read(model)
        annotations = {str(k): str(v) for k, v in ((dep.get("metadata") or {}).get("annotations") or {}).items()}
        decision = plan(model, profile, running_spec(dep), annotations, self.ledger, now, self.settings)
        self.decisions.append((now, model, decision))
        log.info("rollout decision", model=model, action=decision.action, reason=decision.reason)
        if decision.action == "start" and decision.config is not None:
            self.ledger = self.ledger.started(model, now, self.settings.model_interval_s)
            try:
                await self.actuator.create_canary(model, decision.config)
            except Exception:
                self.ledger = self.ledger.finished(model)
                raise
            self.canaries[model] = Canary(decision.config, now)
            self.profiles[model] = profile
        return decision

    def observe(self, model: str, window: CanaryWindow) -> None:
        """One window of the canary's traffic (its pods' traffic events)."""
        canary = self.canaries.get(model)
        if canary is not None:
            canary.windows.append(window)

    async def step(self, now: float) -> dict[str, CanaryVerdict]:
        """Judge every canary: promote (patch the Deployment, delete the canary) or roll back (delete it)."""
        out: dict[str, CanaryVerdict] = {}
        for model, canary in list(self.canaries.items()):
            profile = self.profiles[model]
            verdict = judge_canary(canary.windows, profile.slo_ms, canary.started, now, self.settings)
            out[model] = verdict
            if verdict.action == "wait":
                continue
            self.decisions.append((now, model, verdict))
            if verdict.action == "promote":
                await self.actuator.promote(model, canary.config, self.settings)
                log.info("rollout promoted", model=model, config=dict(canary.config), reason=verdict.reason)
                if self.on_running is not None:
                    self.on_running(model, canary.config)
            else:
                await self.actuator.delete_canary(model)
                log.warning("rollout rolled back", model=model, config=dict(canary.config), reason=verdict.reason)
            del self.canaries[model]
            self.ledger = self.ledger.finished(model)
        return out
