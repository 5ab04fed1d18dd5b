"""The agent's profile book: each model's current profile, checked against live data every reconcile tick, and the
capacity the decision core divides demand by.

- On start (:meth:`ProfileBook.load`) it reads every profile from the store (:class:`~policies.profiling.ports.
  ProfileStore`; the compacted topic live) and keeps those of the configured models. A profile with no feasible
  configuration (capacity 0) is ignored with a warning: the model keeps its configured ``capacity_rps``.
- Every reconcile tick (:meth:`ProfileBook.tick`) it turns each profiled model's counters since the previous tick
  into a :class:`~policies.profiling.drift.DriftWindow` (ready replica-seconds, completions, busy seconds, the
  worst pod's p99), updates the model's drift state, and sets the model's capacity in the
  :class:`~agent.core.DecisionCore`: the profile's while it is fresh, the observed one while it is stale (the
  profile's when there is no estimate yet), with a note the audit record carries.
- A profile that goes stale is written back to the store marked stale (in the background; a failed write is
  retried at the next tick), so an agent that restarts does not trust it again; re-trials are scheduled within the
  global budget (:class:`~policies.profiling.drift.RetrialPlanner`) and handed to ``on_retrial``.
- A new profile (:meth:`ProfileBook.publish`, what a finished re-trial calls) is stored and replaces the old one:
  its drift state starts fresh.
- The capacity follows the spec that *runs* (:meth:`ProfileBook.set_running`, what a promoted rollout calls,
  :mod:`agent.profiling.rollout`): the profile's trial of the running configuration when it made one, the configured
  capacity when the profile says nothing about it, and the profile's own capacity once its chosen spec runs (or
  while the running spec is unknown). With rollouts on, the rollout loop reads the spec and the model version from
  the workload: a workload without a recorded spec runs something the profile may not describe
  (:meth:`ProfileBook.set_running_unknown`: the configured capacity stands), and a profile measured on another
  model version (:meth:`ProfileBook.set_version`; the image changed) does not set the capacity and is marked stale,
  so a re-trial measures the new version.
- Every ``profiles.refresh_s`` (:meth:`ProfileBook.refresh_every`) it re-reads the store and takes the records
  newer than its own: what the leader's searches published, or another replica marked stale, reaches every agent
  replica without a restart.

Synchronous except for the store: the decision loop owns it, like the core.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import structlog

from shadowscale.agent.core import DecisionCore
from shadowscale.policies.profiling.codec import StoredProfile
from shadowscale.policies.profiling.drift import (
    Drift,
    DriftState,
    DriftVerdict,
    DriftWindow,
    RetrialPlanner,
    RetrialSettings,
)
from shadowscale.policies.profiling.ports import ProfileStore
from shadowscale.policies.profiling.rollout import capacity_for
from shadowscale.policies.profiling.space import Value
from shadowscale.policies.types import FloatArray

log = structlog.get_logger("shadowscale.profiles")


class ProfileBook:
    def __init__(
        self,
        models: Sequence[str],
        store: ProfileStore,
        *,
        drift: Drift | None = None,
        retrials: RetrialSettings | None = None,
        on_retrial: Callable[[str], None] | None = None,
    ) -> None:
        self.models = list(models)
        self.index = {m: i for i, m in enumerate(self.models)}
        self.store = store
        self.drift = drift or Drift()
        self.planner = RetrialPlanner(retrials or RetrialSettings())
        self.on_retrial = on_retrial
        """Starts a re-trial search for a model; it calls :meth:`publish` with the result (or
        :meth:`retrial_finished` if it gives up). None: nothing runs re-trials yet; they are only logged."""
        self.profiles: dict[str, StoredProfile] = {}
        self.states: dict[str, DriftState] = {}
        self.verdicts: dict[str, DriftVerdict] = {}
        self.retrials: list[tuple[float, str]] = []
        """Every re-trial scheduled: (time, model)."""
        self.running: dict[str, Mapping[str, Value]] = {}
        """The spec each model runs, where known (a rollout applied it)."""
        self.running_unknown: set[str] = set()
        """Models whose workload records no applied spec (rollouts on): the configured capacity stands."""
        self.versions: dict[str, str] = {}
        """The model version each workload runs, where read (annotation ``shadowscale.io/model-version`` or image)."""
        self._last: tuple[float, FloatArray, FloatArray, FloatArray] | None = None
        self._unwritten: dict[str, StoredProfile] = {}
        self._writing: asyncio.Task[None] | None = None

    # -- profiles in --------------------------------------------------------------------------------------------
    async def load(self) -> int:
        """Read the store; keep the configured models' profiles. Returns how many were installed."""
        found = await self.store.load()
        others = sorted(m for m in found if m not in self.index)
        if others:
            log.info("profiles of models this agent does not manage ignored", models=others[:20], count=len(others))
        return sum(self.install(found[m]) for m in self.models if m in found)

    async def refresh(self) -> int:
        """Re-read the store and install every configured model's record that is newer than the book's (a profile
        another agent replica published, or marked stale); returns how many. Models with a stale mark of this
        book's own still unwritten keep theirs."""
        found = await self.store.load()
        n = 0
        for m in self.models:
            new = found.get(m)
            if new is None or m in self._unwritten:
                continue
            old = self.profiles.get(m)
            if old is None or new.updated_at > old.updated_at:
                n += self.install(new)
        return n

    async def refresh_every(self, interval_s: float, stop: asyncio.Event) -> None:
        """Until ``stop``: :meth:`refresh` every ``interval_s`` (a failed read is logged and tried again)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            if stop.is_set():
                return
            try:
                n = await self.refresh()
            except Exception as e:  # the broker is away: keep the profiles we have
                log.warning("profile refresh failed; will retry", error=f"{type(e).__name__}: {e}")
                continue
            if n:
                log.info("profiles refreshed from the store", installed=n)

    def install(self, stored: StoredProfile) -> bool:
        """Make ``stored`` the model's profile (a fresh drift state, or a stale one if it was stored stale)."""
        model = stored.model
        if model not in self.index:
            raise ValueError(f"profile of {model!r}: not a configured model")
        p = stored.profile
        if not p.capacity > 0:
            log.warning(
                "profile has no feasible configuration; keeping the configured capacity",
                model=model,
                stopped=p.stopped,
            )
            return False
        self.profiles[model] = stored
        cap = self._running_capacity(model)
        start_cap = cap[0] if cap is not None else p.capacity
        self.states[model] = self.drift.start(start_cap, p.slo_ms, stale=stored.stale, reason=stored.stale_reason)
        self.verdicts[model] = self.drift.verdict(self.states[model])
        self.planner = self.planner.finished(model)
        self._stale_if_other_version(model, stored.updated_at)  # e.g. a re-trial that began before the image changed
        log.info(
            "profile installed",
            model=model,
            capacity_rps=p.capacity,
            config=p.chosen_config,
            stale=stored.stale,
            updated_at=stored.updated_at,
        )
        return True

    async def publish(self, stored: StoredProfile) -> None:
        """A new profile (a finished re-trial): store it, then use it."""
        await self.store.put(stored)
        self._unwritten.pop(stored.model, None)  # an older stale mark must not overwrite it
        self.install(stored)

    def set_running(self, model: str, config: Mapping[str, Value]) -> None:
        """``model`` now runs ``config``: its capacity (and drift checks) follow that spec from now on."""
        if model not in self.index:
            raise ValueError(f"running spec of {model!r}: not a configured model")
        self.running[model] = dict(config)
        self.running_unknown.discard(model)
        stored = self.profiles.get(model)
        if stored is None:
            return
        cap = self._running_capacity(model)
        if cap is not None:
            self.states[model] = self.drift.start(cap[0], stored.profile.slo_ms)
            self.verdicts[model] = self.drift.verdict(self.states[model])
        log.info("running spec", model=model, config=dict(config), capacity=None if cap is None else cap[0])

    def set_running_unknown(self, model: str) -> None:
        """``model``'s workload records no applied spec: what runs may be anything, so the configured capacity
        stands until a rollout applies the profile's spec (what the rollout loop calls for such a workload)."""
        if model not in self.index:
            raise ValueError(f"running spec of {model!r}: not a configured model")
        if model not in self.running_unknown:
            log.info("running spec unknown (no applied spec recorded); the configured capacity stands", model=model)
        self.running.pop(model, None)
        self.running_unknown.add(model)

    def set_version(self, model: str, version: str, now: float) -> None:
        """``model`` runs ``version``. A profile of another version stops setting the capacity and is marked stale
        (stored, and a re-trial scheduled when profiling runs)."""
        if model not in self.index:
            raise ValueError(f"model version of {model!r}: not a configured model")
        self.versions[model] = version
        self._stale_if_other_version(model, now)

    def _stale_if_other_version(self, model: str, now: float) -> None:
        stored = self.profiles.get(model)
        if stored is None or not self.version_mismatch(model) or self.states[model].stale:
            return
        version = self.versions[model]
        reason = f"model version changed: profiled {stored.version!r}, running {version!r}"
        log.warning("profile is of another model version", model=model, reason=reason)
        self.states[model] = self.drift.start(
            self.states[model].capacity, stored.profile.slo_ms, stale=True, reason=reason
        )
        self.verdicts[model] = self.drift.verdict(self.states[model])
        self.profiles[model] = self._unwritten[model] = replace(stored, stale=True, stale_reason=reason, updated_at=now)

    def version_mismatch(self, model: str) -> bool:
        """Whether the model's profile was measured on another version than the one running (both known)."""
        stored = self.profiles.get(model)
        running = self.versions.get(model)
        return stored is not None and stored.version is not None and running is not None and stored.version != running

    def _running_capacity(self, model: str) -> tuple[float, str] | None:
        stored = self.profiles.get(model)
        if stored is None:
            return None
        return capacity_for(stored.profile, self.running.get(model))

    def retrial_finished(self, model: str) -> None:
        """A re-trial ended without a new profile: its slot in the budget is free again (the cooldown still holds)."""
        self.planner = self.planner.finished(model)

    # -- every reconcile tick -----------------------------------------------------------------------------------
    def capacity(self, model: str) -> tuple[float, str] | None:
        """The capacity per replica the autoscaler should use for ``model`` and where it came from (None: no
        profile, the configured capacity stands)."""
        stored = self.profiles.get(model)
        if stored is None or model in self.running_unknown or self.version_mismatch(model):
            return None
        running = self._running_capacity(model)
        if running is None:
            return None  # the running spec is one the profile knows nothing about: the configured capacity stands
        cap = running[0]
        v = self.verdicts[model]
        if not v.stale:
            return cap, f"profile {cap:.4g} req/s per replica" + (f" ({running[1]})" if running[1] else "")
        if v.observed_capacity is None or not v.observed_capacity > 0:
            return cap, f"profile {cap:.4g} req/s (stale, no live estimate yet: {v.reason})"
        return v.observed_capacity, f"observed {v.observed_capacity:.4g} req/s (profile {cap:.4g} stale: {v.reason})"

    def apply(self, core: DecisionCore) -> None:
        for model in self.profiles:
            got = self.capacity(model)
            i = self.index[model]
            if got is not None:
                core.set_capacity(i, got[0], got[1])
            elif model in self.running_unknown or self.version_mismatch(model):
                why = "another model version runs" if self.version_mismatch(model) else "running spec unknown"
                core.set_capacity(i, float(core.configured_rps[i]), f"configured (profile not used: {why})")

    def tick(self, core: DecisionCore, now: float) -> None:
        """Judge the window since the previous tick for every profiled model, then set the core's capacities."""
        w = core.windows
        _, busy, ready, _ = w.counters()
        done = w.completions()
        last, self._last = self._last, (now, done, busy, ready)
        if last is not None and now > last[0]:
            t0, done0, busy0, ready0 = last
            for model, state in list(self.states.items()):
                i = self.index[model]
                window = DriftWindow(
                    t0,
                    now,
                    max(float(ready[i] - ready0[i]), 0.0),
                    max(float(done[i] - done0[i]), 0.0),
                    max(float(busy[i] - busy0[i]), 0.0),
                    w.p99_ms(i),
                    w.busy_source(i),
                )
                was_stale = state.stale
                self.states[model], self.verdicts[model] = self.drift.update(state, window)
                v = self.verdicts[model]
                if v.stale and not was_stale:
                    log.warning(
                        "profile stale", model=model, reason=v.reason, observed_capacity_rps=v.observed_capacity
                    )
                    # the book holds the stale mark too (same record as the store will), so a refresh does not
                    # mistake its own write for news and reset the drift state
                    self.profiles[model] = self._unwritten[model] = replace(
                        self.profiles[model], stale=True, stale_reason=v.reason, updated_at=now
                    )
        self.apply(core)
        self._schedule_retrials(now)

    def _schedule_retrials(self, now: float) -> None:
        stale = {
            m: s.stale_since if s.stale_since is not None else self.profiles[m].updated_at
            for m, s in self.states.items()
            if s.stale
        }
        if not stale:
            return
        due = self.planner.due(now, stale)
        if not due:
            return
        self.planner = self.planner.started(due, now)
        for model in due:
            self.retrials.append((now, model))
            if self.on_retrial is None:
                log.warning("re-trial due, but no trial runner is wired; the observed capacity stays", model=model)
                self.planner = self.planner.finished(model)
            else:
                log.info("re-trial scheduled", model=model)
                self.on_retrial(model)

    # -- writing stale marks ------------------------------------------------------------------------------------
    def persist(self) -> None:
        """Write the stale marks in the background (one write in flight; the loop never waits for it)."""
        if self._unwritten and (self._writing is None or self._writing.done()):
            self._writing = asyncio.create_task(self._write(), name="profile-store-write")

    async def _write(self) -> None:
        batch, self._unwritten = self._unwritten, {}
        for model, stored in batch.items():
            try:
                await self.store.put(stored)
            except Exception as e:  # the store is away: keep it for the next tick (a newer mark wins)
                log.warning("profile write failed; will retry", model=model, error=f"{type(e).__name__}: {e}")
                self._unwritten.setdefault(model, stored)

    async def close(self, timeout_s: float = 5.0) -> None:
        """On a clean stop: finish the write in flight and try the rest once (bounded)."""
        try:
            if self._writing is not None:
                await asyncio.wait_for(asyncio.shield(self._writing), timeout_s)
            if self._unwritten:
                await asyncio.wait_for(self._write(), timeout_s)
        except Exception as e:
            log.warning("profile writes left undone at stop", models=sorted(self._unwritten), error=repr(e))

    @property
    def stale(self) -> Mapping[str, str]:
        """Stale models and why."""
        return {m: v.reason for m, v in self.verdicts.items() if v.stale}
