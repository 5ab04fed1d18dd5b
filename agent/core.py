"""The decision core: windows in, guarded targets out. Synchronous and clock-free (``now`` is an argument).

:class:`DecisionCore` owns, for the configured models (index = position in the configuration):

- the :class:`~agent.windows.Windows` fed by traffic events;
- the last observed workload state (replicas asked for, ready replicas) from the actuator;
- the policy (any live policy from :func:`policies.scaling.make_policy`) and the state it returns each call;
- the guard rails.

``ingest`` adds an event and says whether the model's demand just crossed its capacity (either way): the caller
decides such models at once. ``decide`` evaluates the policy for every model — policies are vectorised and keep
windowed samples in their state, so every call advances that state for all of them — and returns guarded plans
for the models in scope (the triggered ones, or every owned model at a reconcile tick). The async loop
(:mod:`agent.loop`) applies the plans and tells the core what was applied.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from shadowscale.agent.config import AgentConfig
from shadowscale.agent.events import TrafficEvent
from shadowscale.agent.guards import Guarded, Guards, Proposal
from shadowscale.agent.windows import Windows
from shadowscale.policies.ports import WorkloadState
from shadowscale.policies.scaling import Decisions, Resumable, ScalingPolicy, Signals, make_policy
from shadowscale.policies.types import ModelProfile, ServiceConfig

Trigger = Literal["event", "tick"]


@dataclass(frozen=True, slots=True)
class Plan:
    """One guarded decision for one model, ready to apply and to audit."""

    index: int
    model: str
    at: float
    trigger: Trigger
    current: int
    ready: int
    recommended: int
    target: int
    guard: str | None
    demand_rps: float
    capacity_rps: float
    outstanding: int
    decisions: Decisions
    capacity_note: str | None = None
    """Where the model's capacity came from, when not the configuration (a profile, or live data when it is stale)."""
    spec: str | None = None
    """The alternative spec (``models[].specs``) the policy recommends instead of the configured one, if any."""

    @property
    def changes(self) -> bool:
        return self.target != self.current

    @property
    def reason(self) -> str:
        """The audit reason: ``Decisions.explain`` and the guard rail that changed the target, if one did
        (rendered on demand: a reconcile tick over many models audits only the changes by default)."""
        text = self.decisions.explain(self.index)
        if self.guard is not None:
            text = f"{text}; guard: {self.guard} -> {self.target} replicas"
        if self.capacity_note is not None:
            text = f"{text}; capacity: {self.capacity_note}"
        return text


def _one_point(name: str, source: str, latency_s: float, slo_s: float, gpu_fraction: float) -> ModelProfile:
    """A profile measured at one point: one request at a time, ``latency_s`` each."""
    return ModelProfile(
        name=name,
        source=source,
        batch_sizes=(1,),
        batch_latency_s=(latency_s,),
        slo_s=slo_s,
        max_batch=1,
        gpu_fraction=min(gpu_fraction, 1.0),
    )


def services_of(cfg: AgentConfig) -> list[ServiceConfig]:
    """Policy-side :class:`ServiceConfig` per configured model (a one-point profile at the configured capacity).
    A model with alternative ``specs`` gets them as the service's ``specs``, the configured one first (index 0),
    so that right-sizing can also say "keep it"."""
    out = []
    for m in cfg.models:
        slo_s = 2.0 / m.capacity_rps if m.slo_ms is None else m.slo_ms / 1000.0
        profile = _one_point(m.name, "agent configuration", 1.0 / m.capacity_rps, slo_s, m.gpu_fraction)
        alternatives = tuple(
            _one_point(m.name, f"agent configuration, spec {o.name}", 1.0 / o.capacity_rps, slo_s, o.gpu_fraction)
            for o in m.specs
        )
        specs = (profile, *alternatives) if alternatives else ()
        out.append(
            ServiceConfig(m.name, profile, m.min_replicas, m.max_replicas, cold_start_s=m.cold_start_s, specs=specs)
        )
    return out


def spec_advice(cfg: AgentConfig, decisions: Decisions) -> list[str | None]:
    """Per model, the name of the alternative spec the policy recommends (None: no opinion, or keep the configured
    one); ``decisions.spec`` indexes :func:`services_of`'s specs, the configured one first."""
    out: list[str | None] = [None] * len(cfg.models)
    if decisions.spec is None:
        return out
    for i, m in enumerate(cfg.models):
        k = int(decisions.spec[i])
        if 1 <= k <= len(m.specs):
            out[i] = m.specs[k - 1].name
    return out


class DecisionCore:
    def __init__(self, cfg: AgentConfig, policy: ScalingPolicy[Any] | None = None) -> None:
        self.cfg = cfg
        self.models = [m.name for m in cfg.models]
        self.policy: ScalingPolicy[Any] = policy or make_policy(cfg.policy, knob=cfg.policy_knob)
        services = services_of(cfg)
        initial, self.state = self.policy.init(services)
        n = len(self.models)
        self.windows = Windows(self.models, pod_stale_s=cfg.ingest.pod_stale_s, dedupe_s=cfg.ingest.dedupe_s)
        self.replicas = np.asarray(initial, dtype=np.int64).copy()
        self.ready = self.replicas.copy()
        self.known = np.zeros(n, dtype=bool)
        """Models the actuator has a workload for (observed at least once)."""
        self.capacity_rps = np.array([m.capacity_rps for m in cfg.models])
        self.configured_rps = self.capacity_rps.copy()
        """Each model's configured ``capacity_rps``: what stands when no profile describes the running spec."""
        self.capacity_notes: list[str | None] = [None] * n
        self._base_capacity = self.capacity_rps.copy()
        self._base_notes: list[str | None] = [None] * n
        """Capacity per replica from the configuration or a profile; a workload's target-rps takes precedence."""
        self.target_rps: list[float | None] = [None] * n
        """Per model: requests/s per replica set on the workload (annotation ``shadowscale.io/target-rps``)."""
        self._base_slo_s = np.array([s.profile.slo_s for s in services])
        self.slo_ms: list[float | None] = [None] * n
        """Per model: the p99 objective set on the workload (annotation ``shadowscale.io/slo-ms``)."""
        self.gpu_fraction = np.array([m.gpu_fraction for m in cfg.models])
        self.guards = Guards(
            cfg.guards,
            [m.min_replicas for m in cfg.models],
            [m.max_replicas for m in cfg.models],
            [m.gpu_fraction for m in cfg.models],
        )
        self.config_lo = [m.min_replicas for m in cfg.models]
        self.config_hi = [m.max_replicas for m in cfg.models]
        self.hold: list[str | None] = [None] * n
        self.fallback_replicas = [m.fallback_replicas for m in cfg.models]
        self.started_at: float | None = None
        """Per model: why it must not be scaled now (paused, another autoscaler), from the workload."""
        self._over = [False] * n
        self._headroom = cfg.trigger.headroom
        self.last_now = -np.inf
        self.last_decisions: Decisions | None = None
        self.other_gpus = 0.0
        """GPUs held by labelled workloads this agent does not manage (counted against the budget)."""

    def resume(self, state: Any) -> None:
        """Start from a policy state learnt elsewhere instead of the policy's blank ``init``: the state of this
        same policy over these same models, in order (``make demo`` replays the trace hours before its slice
        through the simulator with ``self.policy``, so that the agent starts with hours of idle-gap histograms).
        The policy re-bases the state's counter snapshots to this core's counters (zero: call it before any event
        is ingested); its times stay, so the clock must continue the one the state was learnt on."""
        if not isinstance(self.policy, Resumable):
            raise ValueError(f"resume: policy {self.policy.name} cannot resume from a state learnt elsewhere")
        if self.windows.counters()[0].any():
            raise ValueError("resume: events were already ingested; resume before the first event")
        if type(state) is not type(self.state):
            raise ValueError(
                f"resume: a {type(state).__name__} is not a state of policy {self.policy.name} "
                f"({type(self.state).__name__})"
            )
        if dataclasses.is_dataclass(state):
            for f in dataclasses.fields(state):
                old, new = getattr(self.state, f.name), getattr(state, f.name)
                if isinstance(old, np.ndarray) and (not isinstance(new, np.ndarray) or new.shape != old.shape):
                    raise ValueError(
                        f"resume: the state's {f.name} has shape {getattr(new, 'shape', None)}, not {old.shape} "
                        f"({len(self.models)} models)"
                    )
        self.state = self.policy.rebase(state)

    # -- observations ---------------------------------------------------------------------------------------
    def observe(self, workloads: Mapping[str, WorkloadState]) -> None:
        """Take the actuator's view: replicas and ready replicas per model, and GPUs held by other workloads."""
        other = 0.0
        for name, w in workloads.items():
            i = self.windows.index.get(name, -1)
            if i < 0:
                other += w.replicas * w.gpu_fraction
                continue
            self.replicas[i] = w.replicas
            self.ready[i] = w.ready
            self.known[i] = True
            lo, hi = self.config_lo[i], self.config_hi[i]
            if w.min_replicas is not None:
                lo = min(max(w.min_replicas, lo), hi)
            if w.max_replicas is not None:
                hi = max(min(w.max_replicas, hi), lo)
            self.guards.lo[i], self.guards.hi[i] = lo, hi
            self.hold[i] = w.hold
            if w.target_rps != self.target_rps[i]:
                self.target_rps[i] = w.target_rps
                self._effective_capacity(i)
            if w.slo_ms != self.slo_ms[i]:
                self.slo_ms[i] = w.slo_ms
                self._set_slo(i, self._base_slo_s[i] if w.slo_ms is None else w.slo_ms / 1000.0)
        self.other_gpus = other

    def _effective_capacity(self, i: int) -> None:
        target = self.target_rps[i]
        if target is None:
            self.capacity_rps[i] = self._base_capacity[i]
            self.capacity_notes[i] = self._base_notes[i]
        else:
            self.capacity_rps[i] = target
            self.capacity_notes[i] = f"workload annotation target-rps {target:g}"

    def _set_slo(self, i: int, slo_s: float) -> None:
        """Give the policy model ``i``'s SLO, where its state plans against one (the shadowscale policy's ``slo``;
        the baselines keep none and scale on their own targets)."""
        slo = getattr(self.state, "slo", None)
        if isinstance(slo, np.ndarray) and slo.shape == (len(self.models),):
            new = slo.copy()
            new[i] = slo_s
            self.state = dataclasses.replace(self.state, slo=new)

    def ingest(self, events: Sequence[TrafficEvent]) -> list[int]:
        """Add traffic events; return the models whose demand crossed their capacity (either way) with them."""
        return [i for i in self.windows.add_all(events) if self._crossed(i)]

    def _crossed(self, i: int) -> bool:
        demand = self.windows.demand(i)
        ready = int(self.ready[i])
        over = demand > ready * float(self.capacity_rps[i]) * self._headroom if ready > 0 else demand > 0
        if over != self._over[i]:
            self._over[i] = over
            return True
        return False

    def set_capacity(self, i: int, rps: float, note: str | None) -> None:
        """Replace model ``i``'s capacity per replica (req/s) — from its profile, or from live data while the
        profile is stale (:mod:`agent.profiling.book`) — with ``note`` saying where it came from for the audit. A
        target-rps set on the workload still takes precedence (this value applies again once it is removed)."""
        if not (math.isfinite(rps) and rps > 0):
            raise ValueError(f"model {self.models[i]!r}: capacity must be a positive number of req/s, got {rps!r}")
        self._base_capacity[i] = rps
        self._base_notes[i] = note
        self._effective_capacity(i)

    def capacity(self, i: int) -> float:
        return int(self.ready[i]) * float(self.capacity_rps[i]) * self._headroom

    def gpus_in_use(self) -> float:
        return float(self.replicas @ self.gpu_fraction) + self.other_gpus

    # -- deciding -------------------------------------------------------------------------------------------
    def signals(self, now: float) -> Signals:
        arrivals, busy, ready_s, inflight = self.windows.counters()
        return Signals(
            now,
            self.replicas.copy(),
            self.ready.copy(),
            arrivals,
            busy,
            ready_s,
            inflight,
            self.windows.outstanding(),
            self.capacity_rps.copy(),
        )

    def decide(self, now: float, trigger: Trigger, scope: Iterable[int], owned: Collection[str]) -> list[Plan]:
        """Evaluate the policy at ``now`` (never earlier than the previous call) and guard the models in ``scope``
        that this agent owns and has a workload for."""
        now = max(now, self.last_now)
        self.last_now = now
        if trigger == "tick":
            self.windows.expire(now)
        decisions, self.state = self.policy.decide(self.signals(now), self.state)
        self.last_decisions = decisions
        advice = spec_advice(self.cfg, decisions)
        idx = sorted({i for i in scope if self.known[i] and self.models[i] in owned})
        fallback: dict[int, str] = {}
        for i in idx:
            reason = self.stale(i, now)
            if reason is not None:
                fallback[i] = reason
        proposals = [
            Proposal(i, int(self.replicas[i]), self._fallback_to(i) if i in fallback else int(decisions.replicas[i]))
            for i in idx
        ]
        guarded = self.guards.apply(now, proposals, self.gpus_in_use())
        outstanding = self.windows.outstanding()
        plans = []
        for g, p in zip(guarded, proposals, strict=True):
            i = g.index
            if self.hold[i] is not None and g.target != p.current:
                g = Guarded(i, p.current, self.hold[i])
            elif i in fallback:
                g = Guarded(i, g.target, fallback[i] + (f"; {g.note}" if g.note else ""))
            plans.append(
                Plan(
                    index=i,
                    model=self.models[i],
                    at=now,
                    trigger=trigger,
                    current=p.current,
                    ready=int(self.ready[i]),
                    recommended=p.proposed,
                    target=g.target,
                    guard=g.note if g.target != p.proposed or i in fallback else None,
                    demand_rps=self.windows.demand(i),
                    capacity_rps=self.capacity(i),
                    outstanding=int(outstanding[i]),
                    decisions=decisions,
                    capacity_note=self.capacity_notes[i],
                    spec=advice[i],
                )
            )
        return plans

    def stale(self, i: int, now: float) -> str | None:
        """Why model ``i`` falls back to its ``fallback_replicas`` (its newest event is older than
        ``ingest.stale_s``), or None (no fallback configured, or fresh events)."""
        if self.fallback_replicas[i] is None:
            return None
        if self.started_at is None:
            self.started_at = now
        stale_s = self.cfg.ingest.stale_s
        last = self.windows.last_event[i]
        age = now - (last if last > -math.inf else self.started_at)
        if age > stale_s and now - self.started_at > stale_s:
            return f"fallback: no traffic events for {age:.0f} s (ingest.stale_s {stale_s:g})"
        return None

    def _fallback_to(self, i: int) -> int:
        n = self.fallback_replicas[i]
        assert n is not None
        return n

    def applied(self, index: int, replicas: int, now: float) -> None:
        """The actuator set model ``index`` to ``replicas`` (the next observation confirms it)."""
        if int(self.replicas[index]) != replicas:
            self.guards.changed(index, now)
        self.replicas[index] = replicas
