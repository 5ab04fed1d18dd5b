"""Rollout of a profile's chosen spec to production: whether to start one, how a canary is judged, and what capacity
the autoscaler should use for the spec that is actually running.

Pure: values in, decisions out, time passed in. The agent (:mod:`agent.profiling.rollout`) reads the workload,
creates and deletes the canary and patches the Deployment; every decision is made here.

**Whether** (:func:`plan`), in this order, the first that applies wins:

1. the workload carries the opt-out annotation (``shadowscale.io/rollout: "disabled"`` by default) → skip;
   the profile was measured on another model version than the one running (``StoredProfile.version``) → skip;
2. the profile has no chosen configuration, or it is the one running → skip;
3. the chosen spec's objective (throughput per cost at the SLO) is not better than the running spec's by at least
   ``min_gain`` (when the running spec was measured or predicted by the same profile) → skip: a rollout restarts
   every replica and is not worth a few per cent;
4. the model had a rollout start less than ``model_interval_s`` ago, or one is in progress → wait;
5. cluster-wide, ``cluster_max_active`` rollouts are in progress, or ``cluster_per_hour`` started within the last
   hour → wait;
6. ``dry_run`` → report what would be rolled out, change nothing; otherwise → start with a canary.

**How**: one canary replica with the new spec joins the model's pods (the model's Service sends it live traffic);
:func:`judge_canary` watches its windows and either promotes (the Deployment is patched to the new spec through a
rolling update with ``maxUnavailable: 0`` and ``maxSurge`` from :func:`strategy`, so serving capacity never drops
below what is running) or rolls back (the canary is deleted; production was never touched). A canary regresses
when, over at least ``canary_windows`` windows with ``canary_min_requests`` requests in total, its windows meet the
SLO less often than ``min_attainment``, its errors exceed ``max_error_ratio`` of its completions, or it completed
less than ``1 - throughput_tolerance`` of what arrived (it could not keep up with its share of the traffic).

**Capacity** (:func:`capacity_for`): the autoscaler divides demand by the capacity of the spec that is *running*,
not of the one the profile chose: the measured throughput of the running configuration when the profile tried it
(and it met the SLO), else the configured capacity; only once the chosen spec runs is the profile's capacity used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from shadowscale.policies.profiling.space import Value
from shadowscale.policies.profiling.types import Profile

OPT_OUT_ANNOTATION = "shadowscale.io/rollout"
"""``"disabled"`` on a workload: never roll a profile's spec out to it."""
SPEC_ANNOTATION = "shadowscale.io/spec"
"""JSON of the configuration a rollout applied: how the agent knows the running spec."""

Config = Mapping[str, Value]


@dataclass(frozen=True, slots=True)
class RolloutSettings:
    min_gain: float = 0.10
    """Roll out only when the chosen spec's objective beats the running one's by at least this share."""
    dry_run: bool = False
    model_interval_s: float = 6 * 3600.0
    """At most one rollout start per model in this long."""
    cluster_max_active: int = 1
    """Rollouts in progress at once, cluster-wide."""
    cluster_per_hour: int = 4
    """Rollout starts in any hour, cluster-wide."""
    canary_windows: int = 4
    """Windows with traffic the canary is watched for before it is judged."""
    canary_min_requests: float = 50.0
    """... and requests it must have completed in them."""
    canary_timeout_s: float = 1800.0
    """A canary without enough traffic by then is rolled back (no evidence is not a pass)."""
    min_attainment: float = 0.9
    """Share of the canary's windows whose p99 meets the SLO."""
    max_error_ratio: float = 0.01
    throughput_tolerance: float = 0.1
    """The canary must complete at least ``1 - this`` of the requests that reached it."""
    max_surge_ratio: float = 0.25
    """New pods a rolling update may add at once, as a share of the replicas (at least one)."""
    max_unavailable: int = 0
    """Pods a rolling update may take down before their replacements are ready; 0 (the default) keeps serving
    capacity whole through the update."""
    opt_out_annotation: str = OPT_OUT_ANNOTATION
    """A workload with this annotation set to ``disabled`` is never rolled out to."""

    def __post_init__(self) -> None:
        checks = (
            ("min_gain", self.min_gain >= 0),
            ("model_interval_s", self.model_interval_s >= 0),
            ("cluster_max_active", self.cluster_max_active >= 1),
            ("cluster_per_hour", self.cluster_per_hour >= 1),
            ("canary_windows", self.canary_windows >= 1),
            ("canary_min_requests", self.canary_min_requests >= 0),
            ("canary_timeout_s", self.canary_timeout_s > 0),
            ("min_attainment", 0 <= self.min_attainment <= 1),
            ("max_error_ratio", 0 <= self.max_error_ratio <= 1),
            ("throughput_tolerance", 0 <= self.throughput_tolerance < 1),
            ("max_surge_ratio", 0 < self.max_surge_ratio <= 1),
            ("max_unavailable", self.max_unavailable >= 0),
            ("opt_out_annotation", bool(self.opt_out_annotation.strip())),
        )
        for name, ok in checks:
            v = getattr(self, name)
            if not ok or (isinstance(v, float) and not math.isfinite(v)):
                raise ValueError(f"rollout settings: {name} is out of range: {v!r}")


@dataclass(frozen=True, slots=True)
class Ledger:
    """Rollouts so far: which are in progress and when each model's (and the cluster's) started."""

    active: Mapping[str, float] = field(default_factory=dict)
    """Model -> when its rollout in progress started."""
    starts: tuple[tuple[float, str], ...] = ()
    """(time, model) of every start within the last ``model_interval_s`` or hour, whichever is longer."""

    def started(self, model: str, now: float, keep_s: float) -> Ledger:
        cut = now - max(keep_s, 3600.0)
        starts = (*(x for x in self.starts if x[0] >= cut), (now, model))
        return replace(self, active={**self.active, model: now}, starts=starts)

    def finished(self, model: str) -> Ledger:
        return replace(self, active={m: t for m, t in self.active.items() if m != model})


@dataclass(frozen=True, slots=True)
class Decision:
    action: Literal["skip", "wait", "dry_run", "start"]
    reason: str
    config: Config | None = None


def objective_at(profile: Profile, config: Config) -> float | None:
    """The profile's belief about ``config``'s objective (throughput per cost at the SLO): 0 when a trial there
    missed the SLO, else the surrogate's value (near the measurement for a tried configuration) times P(feasible)
    for an untried one; None when ``config`` is not one of the profile's candidates."""
    if set(config) != set(profile.names):
        return None
    point = tuple(config[n] for n in profile.names)
    tried = [o for o in profile.observations if o.point == point]
    if tried:
        r = tried[-1].result
        if not (r.measured and r.throughput > 0 and 0 < r.p99_ms <= profile.slo_ms):
            return 0.0
    pred = next((p for p in profile.predictions if p.point == point), None)
    if pred is None:
        return None
    return pred.value if tried else pred.value * pred.p_feasible


def plan(
    model: str,
    profile: Profile,
    running: Config | None,
    annotations: Mapping[str, str],
    ledger: Ledger,
    now: float,
    settings: RolloutSettings,
    *,
    profile_version: str | None = None,
    running_version: str | None = None,
) -> Decision:
    """Whether to roll ``profile``'s chosen spec out to ``model`` now (see the module doc). ``profile_version``
    and ``running_version``: the model version the profile was measured on and the one running (None: unknown)."""
    opt_out = settings.opt_out_annotation
    if annotations.get(opt_out, "").strip().lower() == "disabled":
        return Decision("skip", f"opted out ({opt_out}: disabled)")
    if profile_version is not None and running_version is not None and profile_version != running_version:
        return Decision("skip", f"the profile is of model version {profile_version!r}, {running_version!r} runs")
    chosen = profile.chosen_config
    if chosen is None:
        return Decision("skip", "the profile chose no configuration (none met the SLO)")
    if running is not None and dict(running) == dict(chosen):
        return Decision("skip", "the chosen spec is already running")
    if running is not None:
        new, old = objective_at(profile, chosen), objective_at(profile, running)
        if new is not None and old is not None and old > 0 and new < (1 + settings.min_gain) * old:
            return Decision("skip", f"gain {new / old - 1:+.1%} is below the {settings.min_gain:.0%} threshold")
    if model in ledger.active:
        return Decision("wait", "a rollout of this model is in progress")
    last = max((t for t, m in ledger.starts if m == model), default=-math.inf)
    if now - last < settings.model_interval_s:
        return Decision("wait", f"model rate limit: last rollout {now - last:.0f} s ago")
    if len(ledger.active) >= settings.cluster_max_active:
        return Decision("wait", f"cluster rate limit: {len(ledger.active)} rollout(s) in progress")
    hour = sum(1 for t, _ in ledger.starts if now - t < 3600.0)
    if hour >= settings.cluster_per_hour:
        return Decision("wait", f"cluster rate limit: {hour} rollout(s) started in the last hour")
    if settings.dry_run:
        return Decision("dry_run", "dry run: would roll out", chosen)
    return Decision("start", "the chosen spec differs from production's", chosen)


def strategy(replicas: int, settings: RolloutSettings) -> dict[str, int]:
    """The rolling update: at most ``max_surge_ratio`` more pods at once, ``max_unavailable`` fewer (0 by default:
    serving capacity never drops)."""
    surge = max(1, math.ceil(max(replicas, 1) * settings.max_surge_ratio))
    return {"maxUnavailable": settings.max_unavailable, "maxSurge": surge}


@dataclass(frozen=True, slots=True)
class CanaryWindow:
    """The canary pod's traffic over one window (from its traffic events)."""

    end: float
    arrivals: float
    completions: float
    errors: float
    p99_ms: float


@dataclass(frozen=True, slots=True)
class CanaryVerdict:
    action: Literal["wait", "promote", "rollback"]
    reason: str


def judge_canary(
    windows: Sequence[CanaryWindow], slo_ms: float, started: float, now: float, settings: RolloutSettings
) -> CanaryVerdict:
    """Promote, roll back or keep watching the canary (see the module doc)."""
    usable = [w for w in windows if w.arrivals > 0 or w.completions > 0]
    done = sum(w.completions for w in usable)
    if len(usable) < settings.canary_windows or done < settings.canary_min_requests:
        if now - started >= settings.canary_timeout_s:
            return CanaryVerdict("rollback", f"no verdict after {now - started:.0f} s: too little traffic")
        return CanaryVerdict("wait", f"{len(usable)} windows, {done:.0f} requests so far")
    judged = [w for w in usable if w.p99_ms > 0]
    met = sum(1 for w in judged if w.p99_ms <= slo_ms)
    attainment = met / len(judged) if judged else 1.0
    if attainment < settings.min_attainment:
        return CanaryVerdict("rollback", f"p99 within the {slo_ms:g} ms SLO in {attainment:.0%} of windows")
    errors = sum(w.errors for w in usable)
    if done > 0 and errors / done > settings.max_error_ratio:
        return CanaryVerdict("rollback", f"errors {errors / done:.1%} of completions")
    arrived = sum(w.arrivals for w in usable)
    if arrived > 0 and done < (1 - settings.throughput_tolerance) * arrived:
        return CanaryVerdict("rollback", f"completed {done / arrived:.0%} of what arrived: cannot keep up")
    return CanaryVerdict("promote", f"SLO met in {attainment:.0%} of {len(judged)} windows, {done:.0f} requests")


def capacity_for(profile: Profile, running: Config | None) -> tuple[float, str] | None:
    """Capacity per replica of the spec that runs and a note when it is not the chosen spec's (see the module doc);
    None: the profile says nothing about it (the configured capacity stands)."""
    chosen = profile.chosen_config
    if running is None or (chosen is not None and dict(running) == dict(chosen)):
        if chosen is None or running is None:
            return None if chosen is None else (profile.capacity, "")
        return profile.capacity, ""
    if set(running) != set(profile.names):
        return None
    point = tuple(running[n] for n in profile.names)
    for o in reversed(profile.observations):
        if o.point == point and o.result.measured:
            if o.result.throughput > 0 and 0 < o.result.p99_ms <= profile.slo_ms:
                return o.result.throughput, "the profile's trial of the running spec"
            return None
    return None
