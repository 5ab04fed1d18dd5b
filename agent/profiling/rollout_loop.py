"""The daemon's rollout task (``rollout.enabled``): what ``shadowscale serve`` runs so a profile's chosen spec
reaches the model's Deployment through :class:`~agent.profiling.rollout.RolloutController`.

Every ``check_interval_s`` (and at once after a profile is published) the leader reads each profiled model's
Deployment, tells the :class:`~agent.profiling.book.ProfileBook` which spec runs (``shadowscale.io/spec``; none
recorded: the configured capacity stands) and which model version (``shadowscale.io/model-version``, else the
image), and considers the model's profile (opt-out, version, threshold, rate limits, dry-run, then a canary).

It reads the traffic topic itself, without a consumer group (every replica sees every model's events, whichever
partition its decision loop owns): each ``canary_window_s`` the canary pods' events become one
:class:`~policies.profiling.rollout.CanaryWindow` per canary, and the canaries are judged (promote or roll back).

Leader-fenced: a follower reads the topic (so its position is current) and does nothing else; whenever this replica
becomes the leader it first resumes from the cluster: the start marks on the Deployments (rate limits) and the
canary Deployments in flight (their spec and start annotations). Canary windows seen by a previous leader are not
carried over: a resumed canary is judged on the windows from then on (its timeout counts from its start).

Each rollout started, promoted or rolled back (and each new dry-run decision) is counted in
``shadowscale_rollouts_total{outcome}`` and written as a Kubernetes Event on the model's Deployment;
``shadowscale_rollouts_in_progress`` is the number of canaries.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

import msgspec
import structlog

from shadowscale.agent.events import TrafficEvent
from shadowscale.agent.metrics import Metrics
from shadowscale.agent.profiling.book import ProfileBook
from shadowscale.agent.profiling.rollout import (
    CanaryWindows,
    RolloutActuator,
    RolloutController,
    model_version,
    running_spec,
)
from shadowscale.agent.profiling.shadow import Workload
from shadowscale.policies.ports import Clock
from shadowscale.policies.profiling.types import Profile

log = structlog.get_logger("shadowscale.rollout")

REASONS = {
    "started": ("Normal", "RolloutStarted"),
    "promoted": ("Normal", "RolloutPromoted"),
    "rolled_back": ("Warning", "RolloutRolledBack"),
    "dry_run": ("Normal", "RolloutDryRun"),
}


class Tail(Protocol):
    async def poll(self, max_records: int, timeout_s: float) -> list[tuple[bytes | None, bytes | None]]: ...


class Events(Protocol):
    def emit(self, ref: Any, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None: ...


class RolloutLoop:
    """The rollout task (see the module doc)."""

    def __init__(
        self,
        controller: RolloutController,
        actuator: RolloutActuator,
        book: ProfileBook,
        clock: Clock,
        *,
        traffic: Tail | None,
        check_interval_s: float,
        canary_window_s: float,
        is_leader: Callable[[], bool] | None = None,
        metrics: Metrics | None = None,
        events: Events | None = None,
        event_ref: Callable[[Workload, str], Any] | None = None,
    ) -> None:
        self.controller = controller
        self.actuator = actuator
        self.book = book
        self.clock = clock
        self.traffic = traffic
        self.check_interval_s = check_interval_s
        self.canary_window_s = canary_window_s
        self.is_leader = is_leader or (lambda: True)
        self.metrics = metrics
        self.events = events
        self.event_ref = event_ref
        self.windows: dict[str, CanaryWindows] = {}
        self.resumed = False
        self.wake = asyncio.Event()
        """Set to consider the models now (a profile was published)."""
        controller.on_event = self._on_event

    def poke(self) -> None:
        self.wake.set()

    async def published(self, model: str, profile: Profile) -> None:
        """The profiling service's hook: a new profile was published; consider it now, not at the next check."""
        self.wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: consider every ``check_interval_s`` (or when poked), judge every ``canary_window_s``,
        read the traffic topic in between. A failed round is logged and tried again at the next one."""
        next_check = 0.0
        next_window = time.monotonic() + self.canary_window_s
        was_leader = False
        while not stop.is_set():
            leader = self.is_leader()
            if not leader and self.resumed:
                log.info("rollout: no longer the leader; canaries left to the next one", models=sorted(self.windows))
                self.resumed = False
                self.controller.forget()
                self.windows.clear()
            if leader and not was_leader:
                self.wake.set()  # just became the leader (or started): resume and check at once
            was_leader = leader
            mono = time.monotonic()
            if mono >= next_check or (leader and self.wake.is_set()):
                next_check = mono + self.check_interval_s
                if leader:
                    self.wake.clear()
                    await self._guard("check", self.check)
            if mono >= next_window:
                next_window = mono + self.canary_window_s
                if leader and self.resumed:
                    await self._guard("judge", self.judge)
            wait = max(0.01, min(next_check, next_window) - time.monotonic())
            await self._read(min(wait, 0.5), stop)

    async def _guard(self, what: str, step: Callable[[], Any]) -> None:
        try:
            await step()
        except Exception as e:  # the API server may be away: the next round tries again
            log.warning("rollout round failed; will retry", step=what, error=f"{type(e).__name__}: {e}")
        self._gauge()

    async def _read(self, timeout_s: float, stop: asyncio.Event) -> None:
        if self.traffic is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout_s)
            return
        try:
            records = await self.traffic.poll(2000, timeout_s)
        except Exception as e:
            log.warning("rollout: traffic topic unreadable; will retry", error=f"{type(e).__name__}: {e}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout_s)
            return
        if not self.windows:
            return
        for _, value in records:
            if value is None:
                continue
            try:
                ev = msgspec.json.decode(value, type=TrafficEvent)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # the decision loop dead-letters it
            w = self.windows.get(ev.model)
            if w is not None:
                w.add(ev)

    # -- rounds -------------------------------------------------------------------------------------------------
    async def check(self) -> None:
        """Read each profiled model's workload, tell the book what runs, consider its profile (resume first)."""
        now = self.clock.now()
        if not self.resumed:
            await self.resume()
        for model in self.actuator.workloads:
            if model not in self.book.index:
                continue
            try:
                await self._check(model, now)
            except Exception as e:  # one model's failure (no Deployment, a refused spec) never stops the others
                log.warning("rollout check failed for the model", model=model, error=f"{type(e).__name__}: {e}")

    async def _check(self, model: str, now: float) -> None:
        dep = await self.actuator.read(model)
        self.sync(model, dep, now)
        stored = self.book.profiles.get(model)
        if stored is None or model in self.controller.canaries:
            return
        await self.controller.consider(
            model,
            stored.profile,
            now,
            deployment=dep,
            profile_version=stored.version,
            running_version=self.book.versions.get(model),
        )
        self._track(model)

    def sync(self, model: str, dep: Mapping[str, Any], now: float) -> None:
        """Tell the book the spec and version ``dep`` runs (only what changed: a new spec restarts drift checks)."""
        spec = running_spec(dep)
        if spec is None:
            self.book.set_running_unknown(model)
        elif self.book.running.get(model) != spec:
            self.book.set_running(model, spec)
        version = model_version(dep, self.actuator.workloads[model].container)
        if version is not None and self.book.versions.get(model) != version:
            self.book.set_version(model, version, now)

    async def resume(self) -> None:
        """Take up the rate-limit marks and the canaries in flight from the cluster (a new leader, a restart)."""
        for model in self.actuator.workloads:
            try:
                dep = await self.actuator.read(model)
            except Exception as e:
                if getattr(e, "status", None) != 404:
                    raise  # the API server is away: resume again at the next round
                log.warning("rollout: the model has no Deployment; not rolled out", model=model, error=str(e))
                continue
            canary = await self.actuator.read_canary(model)
            stored = self.book.profiles.get(model)
            if self.controller.resume(model, dep, canary, stored.profile if stored else None):
                self._track(model)
            elif canary is not None and model not in self.controller.canaries:
                await self.controller.abandon(model, "no profile or readable spec to judge it against after a restart")
        self.resumed = True
        log.info("rollout resumed from the cluster", canaries=sorted(self.controller.canaries))

    async def judge(self) -> None:
        """One window per canary from its pods' events since the last, then promote, roll back or keep watching."""
        now = self.clock.now()
        for model, w in list(self.windows.items()):
            self.controller.observe(model, w.take(now))
        await self.controller.step(now)
        for model in list(self.windows):
            if model not in self.controller.canaries:
                del self.windows[model]

    def _track(self, model: str) -> None:
        if model in self.controller.canaries and model not in self.windows:
            wl = self.actuator.workloads[model]
            self.windows[model] = CanaryWindows(RolloutActuator.canary_name(wl))

    # -- reporting ----------------------------------------------------------------------------------------------
    def _on_event(self, model: str, outcome: str, message: str) -> None:
        if self.metrics is not None:
            self.metrics.rollouts.labels(outcome).inc()
        if self.events is not None and self.event_ref is not None and outcome in REASONS:
            type_, reason = REASONS[outcome]
            wl = self.actuator.workloads[model]
            self.events.emit(self.event_ref(wl, model), "Warning" if type_ == "Warning" else "Normal", reason, message)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.rollouts_in_progress.set(len(self.controller.canaries))
