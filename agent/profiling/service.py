"""Profiling searches in the live agent: what turns a scheduled re-trial (or a model with no profile) into a new
stored profile.

:class:`ProfilingService` owns one :class:`~agent.profiling.driver.TrialGate`, so however many models are searched
at once, their trials together stay within ``max_trials`` and the GPU-share cap. For each request it

1. starts a background search (at most one per model: a request for a model already being searched is dropped;
   a model with no search space, or a request on a replica that is not the leader, is refused and the book's
   re-trial slot is given back);
2. warm-starts it with transfer (:mod:`policies.profiling.transfer`) from the *other* profiled models' stored
   profiles whose dimension names match: each source is that model's configured space and objective with its
   stored trials. A stored profile keeps every trial, which is all :func:`~policies.profiling.transfer.fit_source`
   needs. Fitting the sources and building the search run on a worker thread (they fit Gaussian processes), as
   :func:`~agent.profiling.driver.run_search` does with the planner, so the decision loop is never held up;
3. runs :func:`~agent.profiling.driver.run_search` to its end and publishes ``StoredProfile(profile,
   updated_at=clock.now())`` through the :class:`~agent.profiling.book.ProfileBook`, which writes the store,
   clears the stale mark and sets the capacity at the next reconcile tick. A search that found no configuration
   within the SLO publishes nothing (its profile would have no capacity, and storing it would throw away the
   stale profile's trials); a search that raises is logged. In both cases the model keeps its current capacity
   and the book's re-trial slot is freed (its cooldown still holds). A published profile is handed to
   ``on_published`` (the rollout controller: :mod:`agent.profiling.rollout`).

:meth:`ProfilingService.run` is the agent's named task: with ``profile_missing`` it searches, every
``check_interval_s``, each profiled model that has no profile in the book (a model whose search did not give one
is tried again after ``retry_after_s``); when ``stop`` is set it cancels the searches in flight (the runners tear
their shadows down) and waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from shadowscale.agent.metrics import Metrics
from shadowscale.agent.profiling.book import ProfileBook
from shadowscale.agent.profiling.driver import DriverSettings, TrialGate, run_search
from shadowscale.policies.ports import Clock
from shadowscale.policies.profiling.codec import StoredProfile
from shadowscale.policies.profiling.config import ANNOTATION_PREFIX, apply_annotations
from shadowscale.policies.profiling.objective import Objective
from shadowscale.policies.profiling.planner import PlannerSettings, Search
from shadowscale.policies.profiling.ports import TrialRunner
from shadowscale.policies.profiling.skopt_adapter import Encoder
from shadowscale.policies.profiling.space import SearchSpace
from shadowscale.policies.profiling.transfer import SourceModel, SourceProfile, fit_source
from shadowscale.policies.profiling.types import Profile

log = structlog.get_logger("shadowscale.profiling")


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """What a model is searched over: its space and objective (from ``profiling`` in the configuration).

    ``raw`` is the configuration mapping they were parsed from; with it, the workload's
    ``profiling.shadowscale.io/…`` annotations can narrow the space or change the SLO for a search
    (:func:`policies.profiling.config.apply_annotations`)."""

    space: SearchSpace
    objective: Objective
    raw: Mapping[str, Any] | None = None


Annotations = Callable[[str], Awaitable[Mapping[str, str]]]
"""Reads a model's workload annotations (the shadow runner's Deployment); ``{}`` when there are none."""


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """How the service runs searches: the shared gate's limits, each search's driver and planner settings."""

    max_trials: int = 1
    gpu_share_cap: float | None = None
    driver: DriverSettings = field(default_factory=DriverSettings)
    planner: PlannerSettings = field(default_factory=PlannerSettings)
    transfer: bool = True
    profile_missing: bool = False
    check_interval_s: float = 10.0
    retry_after_s: float = 3600.0
    """A model whose ``profile_missing`` search gave no profile is searched again no sooner than this."""

    def __post_init__(self) -> None:
        if not self.check_interval_s > 0 or not self.retry_after_s >= 0:
            raise ValueError("profiling service: check_interval_s must be positive and retry_after_s >= 0")


class ProfilingService:
    """Background profiling searches for the agent (see the module doc)."""

    def __init__(
        self,
        book: ProfileBook,
        runner: TrialRunner,
        plans: Mapping[str, ModelPlan],
        clock: Clock,
        settings: ServiceSettings | None = None,
        *,
        metrics: Metrics | None = None,
        is_leader: Callable[[], bool] | None = None,
        annotations: Annotations | None = None,
        on_published: Callable[[str, Profile], Awaitable[Any]] | None = None,
        version: Callable[[str], Awaitable[str | None]] | None = None,
    ) -> None:
        unknown = sorted(set(plans) - set(book.models))
        if unknown:
            raise ValueError(f"profiling service: plans for models the book does not manage: {', '.join(unknown)}")
        self.book = book
        self.runner = runner
        self.plans = dict(plans)
        self.clock = clock
        self.settings = st = settings or ServiceSettings()
        self.gate = TrialGate(st.max_trials, st.gpu_share_cap)
        self.metrics = metrics
        self.is_leader = is_leader or (lambda: True)
        self.annotations = annotations
        self.on_published = on_published
        """Called with each published profile: what rolls its chosen spec out
        (:meth:`agent.profiling.rollout.RolloutController.consider`); its failure is logged, the profile stays."""
        self.version = version
        """Reads the model version the workload runs (rollouts on), stamped on the published profile so a profile is
        only used for the version it measured; read when the search starts (the trials clone what runs then)."""
        self.searches: dict[str, asyncio.Task[None]] = {}
        """The search in flight per model."""
        self.outcomes: dict[str, str] = {}
        """How each model's last search ended: ``published``, ``infeasible``, ``failed`` or ``cancelled``."""
        self._attempts: dict[str, int] = {}
        self._last_missing: dict[str, float] = {}
        self._run_id = uuid.uuid4().hex[:6]
        self._stopping = False

    # -- requests -----------------------------------------------------------------------------------------------
    def on_retrial(self, model: str) -> None:
        """The book's hook (:attr:`ProfileBook.on_retrial`): a stale model is due for a re-trial."""
        if not self.request(model, "re-trial"):
            self.book.retrial_finished(model)

    def request(self, model: str, why: str) -> bool:
        """Start a search for ``model`` in the background; False (with a log line) when none was started."""
        if model in self.searches:
            log.info("profiling search already running", model=model, why=why)
            return False
        if self._stopping:
            return False
        if model not in self.plans:
            log.warning("profiling search wanted, but the model has no search space", model=model, why=why)
            return False
        if not self.is_leader():
            log.info("profiling search left to the leader", model=model, why=why)
            return False
        attempt = self._attempts.get(model, 0) + 1
        self._attempts[model] = attempt
        task = asyncio.create_task(self._search(model, why, attempt), name=f"profiling-{model}")
        self.searches[model] = task
        task.add_done_callback(lambda _t: self._done(model))
        if self.metrics is not None:
            self.metrics.profiling_running.set(len(self.searches))
        log.info("profiling search started", model=model, why=why, attempt=attempt)
        return True

    def missing(self) -> list[str]:
        """Profiled models without a profile in the book, no search running, and none tried within the retry
        interval: what ``profile_missing`` searches now."""
        now = self.clock.now()
        wait = self.settings.retry_after_s
        return [
            m
            for m in self.plans
            if m not in self.book.profiles
            and m not in self.searches
            and now - self._last_missing.get(m, -math.inf) >= wait
        ]

    # -- the task -----------------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: search models without a profile (``profile_missing``); then cancel every search."""
        try:
            while not stop.is_set():
                if self.settings.profile_missing and self.is_leader():
                    for model in self.missing():
                        self._last_missing[model] = self.clock.now()
                        self.request(model, "no profile")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.check_interval_s)
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Cancel every search in flight and wait for them (each runner tears its trial down)."""
        self._stopping = True
        models, tasks = sorted(self.searches), list(self.searches.values())
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
            log.info("profiling searches cancelled at stop", models=models)

    def _done(self, model: str) -> None:
        self.searches.pop(model, None)
        if self.metrics is not None:
            self.metrics.profiling_running.set(len(self.searches))

    def _outcome(self, model: str, outcome: str) -> None:
        self.outcomes[model] = outcome
        if self.metrics is not None:
            self.metrics.profiling_searches.labels(outcome).inc()

    # -- one search ---------------------------------------------------------------------------------------------
    async def _plan(self, model: str) -> ModelPlan:
        """The configured plan with the workload's annotations applied, read afresh for every search (an operator
        narrows a model's space by annotating its Deployment). An annotation that cannot be read or applied is
        logged with its reason and the configured plan is used."""
        plan = self.plans[model]
        if self.annotations is None or plan.raw is None:
            return plan
        try:
            found = {k: v for k, v in (await self.annotations(model)).items() if k.startswith(ANNOTATION_PREFIX)}
        except Exception as e:  # the API server may be away: search the configured space
            log.warning("workload annotations unreadable; searching the configured space", model=model, error=str(e))
            return plan
        if not found:
            return plan
        try:
            space, objective = apply_annotations(plan.raw, found)
        except ValueError as e:
            log.error("workload annotation rejected; searching the configured space", model=model, error=str(e))
            return plan
        log.info("profiling space from workload annotations", model=model, annotations=found)
        return ModelPlan(space, objective, plan.raw)

    async def _version(self, model: str) -> str | None:
        if self.version is None:
            return None
        try:
            return await self.version(model)
        except Exception as e:  # the API server may be away: the profile is stored without a version
            log.warning("model version unreadable; the profile is stored without one", model=model, error=str(e))
            return None

    async def _search(self, model: str, why: str, attempt: int) -> None:
        st = self.settings
        try:
            plan = await self._plan(model)
            version = await self._version(model)
            sources = self._sources(model, plan) if st.transfer else []
            seed = (zlib.crc32(model.encode()) + attempt) % (2**31)
            search = await asyncio.to_thread(_start, plan, st.planner, sources, seed)
            _, profile = await run_search(
                model,
                search,
                self.runner,
                st.driver,
                run_id=f"{self._run_id}{attempt}",
                gate=self.gate,
            )
            if not profile.capacity > 0:
                log.warning(
                    "profiling search found no configuration within the SLO; keeping the current capacity",
                    model=model,
                    why=why,
                    trials=len(profile.observations),
                    stopped=profile.stopped,
                )
                self.book.retrial_finished(model)
                self._outcome(model, "infeasible")
                return
            await self.book.publish(StoredProfile(profile, updated_at=self.clock.now(), version=version))
            log.info(
                "profiling search published a profile",
                model=model,
                why=why,
                capacity_rps=profile.capacity,
                config=profile.chosen_config,
                trials=len(profile.observations),
                stopped=profile.stopped,
                sources=[s.model for s in sources],
            )
            self._outcome(model, "published")
            if self.on_published is not None:
                try:
                    await self.on_published(model, profile)
                except Exception as e:  # a failed rollout never undoes the profile
                    log.warning("acting on a new profile failed", model=model, error=f"{type(e).__name__}: {e}")
        except asyncio.CancelledError:
            self.book.retrial_finished(model)
            self._outcome(model, "cancelled")
            raise
        except Exception as e:  # a broken search must not take the agent down: the model keeps its capacity
            log.error(
                "profiling search failed; keeping the current capacity",
                model=model,
                why=why,
                error=f"{type(e).__name__}: {e}",
                exc_info=e,
            )
            self.book.retrial_finished(model)
            self._outcome(model, "failed")

    def _sources(self, model: str, target: ModelPlan) -> list[SourceProfile]:
        """The other profiled models' stored trials whose configured space has ``model``'s dimension names and
        whose stored profile was made over those names (its points can be read)."""
        names = set(target.space.names)
        out = []
        for other, stored in sorted(self.book.profiles.items()):
            plan = self.plans.get(other)
            if other == model or plan is None or set(plan.space.names) != names:
                continue
            if stored.profile.names != plan.space.names or not stored.profile.observations:
                continue
            out.append(SourceProfile(other, plan.space, plan.objective, stored.profile.observations))
        return out


def _start(plan: ModelPlan, settings: PlannerSettings, sources: list[SourceProfile], seed: int) -> Search:
    """A new search, warm-started from ``sources`` (fits their GPs: call it on a worker thread)."""
    fitted: list[SourceModel] = []
    if sources:
        enc = Encoder(plan.space)
        for s in sources:
            try:
                got = fit_source(enc, s, seed=seed)
            except Exception as e:  # a source that cannot be fitted is left out; the search still runs
                log.warning("transfer source left out", source=s.model, error=f"{type(e).__name__}: {e}")
                continue
            if got is not None:
                fitted.append(got)
    return Search.start(plan.space, plan.objective, settings, sources=fitted, seed=seed)
