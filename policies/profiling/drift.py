"""Drift: when live measurements say a model's profile no longer describes it, and what to believe instead.

A profile's capacity (requests/s one replica serves within the SLO) is measured once, by trials. A new model
version, a changed request mix or a noisy neighbour can make it wrong; an autoscaler that keeps dividing demand by a
capacity the replicas no longer have misses the SLO (or wastes replicas, when they got faster). So the agent checks
every model's profile against what its replicas do, window by window (:class:`DriftWindow`: a reconcile tick's
worth of counters), and

- marks it **stale** after ``windows_to_stale`` consecutive windows that contradict it (hysteresis: one noisy
  window never does, and a window without enough requests to say anything neither counts nor resets). A window
  contradicts the profile when
  - **latency**: its p99 is above the SLO by more than ``latency_tolerance`` while each ready replica served at
    most ``load_margin`` of the profiled capacity — a load the profile says is comfortably within the SLO; or
  - **service rate**: only where the busy time means "serving": the server's own busy time (``busy_source``
    ``"server"``), or GPU utilization (``"gpu"``) once it is seen to *track load* (across the windows so far it
    rises with the per-replica rate: correlation at least ``gpu_tracking_corr`` over rates that differ by at least
    ``gpu_tracking_spread``×). A batched or continuous-batching server keeps its GPU near-fully busy at any load,
    so its utilization would put the service rate at a fraction of the real one and mark a right profile stale;
    until its utilization tracks load, only latency is evidence for such a model. The service rate is,
    by the utilisation law (completions per ready replica-second /
    busy fraction), times the share of it the profile's capacity was (``calibrated`` from the windows that agreed
    with the profile; 1.0 before there are enough of them — a service rate below the capacity at the SLO is
    impossible for a profile that is right), is off the profiled capacity by more than ``capacity_tolerance``
    (below; above only once calibrated: then the replicas got faster and the autoscaler is wasting them).
- estimates the **observed capacity** from the evidence since the change (the run of contradicting windows that
  made it stale, and every window after): the per-replica rate that best separates the windows that met the SLO
  from those that missed it (the split that misclassifies the fewest windows, so one window that noise put on the
  wrong side moves it a step, not to that window); when every window met it (or missed it), the median service
  rate times the calibrated share (or ``default_target_utilisation``), but not below the highest rate that met it
  (or above the lowest that missed it). While the profile is stale the autoscaler divides demand by this instead.
- stays stale until a new profile replaces it (:meth:`Drift.start` again). It is deliberately sticky: clearing it
  when live data agree again would flip the autoscaler between two capacities (with the observed one in use, the
  replicas are less loaded and agree with almost any profile), and the re-trial a stale profile triggers
  (:class:`RetrialPlanner`) settles the question with a measurement.

Pure: values in, values out; time is the windows' own.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal


@dataclass(frozen=True, slots=True)
class DriftSettings:
    windows_to_stale: int = 3
    """Consecutive contradicting windows that make a profile stale."""
    latency_tolerance: float = 0.25
    """A window's p99 above ``slo × (1 + this)`` is a latency contradiction (at a load the profile calls safe)."""
    load_margin: float = 0.8
    """... the load being at most this share of the profiled capacity per ready replica."""
    capacity_tolerance: float = 0.2
    """A capacity estimate outside ``profile × (1 ± this)`` is a service-rate contradiction."""
    min_requests: float = 20.0
    """A window with fewer completions says nothing (neither counts towards stale nor resets the run)."""
    min_utilisation: float = 0.05
    """Below this busy fraction the utilisation law's ratio is too noisy to use."""
    calibration_windows: int = 5
    """Agreeing windows needed before the share of the service rate the profile's capacity is, is trusted."""
    default_target_utilisation: float = 0.8
    """Observed capacity = service rate × this, when no calibration exists (the profile was wrong from the start)."""
    memory: int = 40
    """Windows of evidence kept for the observed capacity (and for calibration)."""
    gpu_tracking_corr: float = 0.8
    """GPU utilization counts as busy time once its correlation with the per-replica rate reaches this ..."""
    gpu_tracking_spread: float = 1.5
    """... over windows whose rates differ by at least this factor (max / min), and at least
    ``calibration_windows`` of them."""

    def __post_init__(self) -> None:
        checks = (
            ("windows_to_stale", self.windows_to_stale >= 1, ">= 1"),
            ("latency_tolerance", self.latency_tolerance >= 0, ">= 0"),
            ("load_margin", 0 < self.load_margin <= 1, "in (0, 1]"),
            ("capacity_tolerance", 0 < self.capacity_tolerance < 1, "in (0, 1)"),
            ("min_requests", self.min_requests >= 0, ">= 0"),
            ("min_utilisation", 0 < self.min_utilisation <= 1, "in (0, 1]"),
            ("calibration_windows", self.calibration_windows >= 1, ">= 1"),
            ("default_target_utilisation", 0 < self.default_target_utilisation <= 1, "in (0, 1]"),
            ("memory", self.memory >= self.windows_to_stale, f">= windows_to_stale ({self.windows_to_stale})"),
            ("gpu_tracking_corr", 0 < self.gpu_tracking_corr <= 1, "in (0, 1]"),
            ("gpu_tracking_spread", self.gpu_tracking_spread >= 1, ">= 1"),
        )
        for name, ok, rule in checks:
            value = getattr(self, name)
            if not ok or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(f"drift settings: {name} must be {rule}, got {value!r}")


@dataclass(frozen=True, slots=True)
class DriftWindow:
    """One model's measurements over ``(start, end]``, summed over its pods: a reconcile tick's worth of counters.

    ``ready_replica_s`` is ready replica-seconds (one replica ready throughout a 15 s window gives 15),
    ``completions`` the requests completed, ``busy_s`` the replica-seconds spent serving them (0 when the pods do
    not report it: then only latency is evidence), ``p99_ms`` the worst pod's p99 (0: not reported).
    ``busy_source`` says where ``busy_s`` came from: ``"server"`` (the pods' own accounting), ``"gpu"`` (GPU
    utilization, used only once it tracks load) or ``"none"``.
    """

    start: float
    end: float
    ready_replica_s: float
    completions: float
    busy_s: float
    p99_ms: float
    busy_source: Literal["server", "gpu", "none"] = "server"

    def __post_init__(self) -> None:
        for name in ("start", "end", "ready_replica_s", "completions", "busy_s", "p99_ms"):
            v = getattr(self, name)
            if not math.isfinite(v) or (name != "start" and name != "end" and v < 0):
                raise ValueError(
                    f"drift window ({self.start:g}, {self.end:g}]: {name} must be finite and >= 0, got {v}"
                )
        if self.end < self.start:
            raise ValueError(f"drift window: end {self.end:g} is before start {self.start:g}")
        if self.busy_source not in ("server", "gpu", "none"):
            raise ValueError(f"drift window: busy_source must be server, gpu or none, got {self.busy_source!r}")

    @property
    def rate(self) -> float:
        """Completions per ready replica-second: the per-replica load that was served."""
        return self.completions / self.ready_replica_s if self.ready_replica_s > 0 else 0.0

    @property
    def utilisation(self) -> float:
        return self.busy_s / self.ready_replica_s if self.ready_replica_s > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Evidence:
    """What one usable window said: its per-replica rate, service rate (None: utilisation too low or not
    reported) and p99 (0: not reported)."""

    end: float
    rate: float
    service_rate: float | None
    p99_ms: float


@dataclass(frozen=True, slots=True)
class DriftVerdict:
    """What the autoscaler should believe about one model now.

    ``observed_capacity`` is the live estimate (requests/s per replica; None without evidence). While ``stale``
    the autoscaler uses it instead of the profile's capacity; ``reason`` says why the profile is stale.
    """

    stale: bool
    reason: str
    observed_capacity: float | None


@dataclass(frozen=True, slots=True)
class DriftState:
    """One model's drift bookkeeping against one profile (a new profile starts a new state)."""

    capacity: float
    slo_ms: float
    stale: bool = False
    reason: str = ""
    stale_since: float | None = None
    run: int = 0
    """Consecutive contradicting windows so far."""
    run_reason: str = ""
    evidence: tuple[Evidence, ...] = ()
    calibration: tuple[float, ...] = ()
    """Service rates of the windows that agreed with the profile (while fresh)."""
    gpu_points: tuple[tuple[float, float], ...] = ()
    """``(rate, utilisation)`` of the windows whose busy time was GPU utilization: does it track load?"""


class Drift:
    """Drift detection with fixed settings: ``start`` a state per profile, ``update`` it with each window."""

    def __init__(self, settings: DriftSettings | None = None) -> None:
        self.settings = settings or DriftSettings()

    def start(self, capacity: float, slo_ms: float, *, stale: bool = False, reason: str = "") -> DriftState:
        """A fresh state for a profile of ``capacity`` req/s per replica at ``slo_ms`` (a stored profile that was
        already stale starts stale, with its reason)."""
        if not (math.isfinite(capacity) and capacity > 0):
            raise ValueError(f"drift: a profile's capacity must be a positive number, got {capacity!r}")
        if not (math.isfinite(slo_ms) and slo_ms > 0):
            raise ValueError(f"drift: a profile's slo_ms must be a positive number, got {slo_ms!r}")
        return DriftState(capacity, slo_ms, stale=stale, reason=reason)

    def share(self, state: DriftState) -> float | None:
        """The profiled capacity as a share of the service rate, from the agreeing windows (None: too few)."""
        if len(state.calibration) < self.settings.calibration_windows:
            return None
        return min(state.capacity / statistics.median(state.calibration), 1.0)

    def gpu_tracks_load(self, state: DriftState) -> bool:
        """Whether the model's GPU utilization rises with its load (see the module doc)."""
        s = self.settings
        pts = state.gpu_points
        if len(pts) < s.calibration_windows:
            return False
        rates = [r for r, _ in pts]
        utils = [u for _, u in pts]
        if min(rates) <= 0 or max(rates) / min(rates) < s.gpu_tracking_spread:
            return False
        if statistics.pstdev(utils) <= 1e-9:
            return False
        return statistics.correlation(rates, utils) >= s.gpu_tracking_corr

    def update(self, state: DriftState, window: DriftWindow) -> tuple[DriftState, DriftVerdict]:
        s = self.settings
        if window.ready_replica_s <= 0 or window.completions <= 0 or window.completions < s.min_requests:
            return state, self.verdict(state)  # no evidence either way
        rate = window.rate
        util = window.utilisation
        usable = window.busy_source == "server" or (window.busy_source == "gpu" and self.gpu_tracks_load(state))
        service = rate / util if usable and util >= s.min_utilisation else None
        ev = Evidence(window.end, rate, service, window.p99_ms)
        evidence = (*state.evidence, ev)[-s.memory :]
        if state.stale:
            state = replace(state, evidence=evidence)
            return state, self.verdict(state)
        why = self._contradiction(state, ev)
        if why is None:
            calibration = state.calibration if service is None else (*state.calibration, service)[-s.memory :]
            gpu = state.gpu_points
            if window.busy_source == "gpu":  # whether GPU utilization tracks load is learnt from agreeing windows
                gpu = (*gpu, (rate, util))[-s.memory :]
            state = replace(state, run=0, run_reason="", evidence=evidence, calibration=calibration, gpu_points=gpu)
            return state, self.verdict(state)
        run = state.run + 1
        if run < s.windows_to_stale:
            state = replace(state, run=run, run_reason=why, evidence=evidence)
            return state, self.verdict(state)
        reason = f"{why} ({run} windows in a row)"
        # the change happened where the run began: only the run's windows describe the model as it is now
        state = replace(
            state,
            stale=True,
            reason=reason,
            stale_since=evidence[-run].end,
            run=run,
            run_reason=why,
            evidence=evidence[-run:],
        )
        return state, self.verdict(state)

    def _contradiction(self, state: DriftState, ev: Evidence) -> str | None:
        s = self.settings
        cap = state.capacity
        if ev.p99_ms > state.slo_ms * (1 + s.latency_tolerance) and ev.rate <= s.load_margin * cap:
            return (
                f"p99 {ev.p99_ms:.0f} ms over the {state.slo_ms:g} ms SLO at {ev.rate:.3g} req/s per replica "
                f"({ev.rate / cap:.0%} of the profiled {cap:.3g})"
            )
        if ev.service_rate is not None:
            share = self.share(state)
            estimate = ev.service_rate * (1.0 if share is None else share)
            if estimate < (1 - s.capacity_tolerance) * cap:
                return f"capacity {estimate:.3g} req/s per replica from the service rate, below the profiled {cap:.3g}"
            if share is not None and estimate > (1 + s.capacity_tolerance) * cap:
                return f"capacity {estimate:.3g} req/s per replica from the service rate, above the profiled {cap:.3g}"
        return None

    def observed_capacity(self, state: DriftState) -> float | None:
        """Capacity per replica from the evidence (see the module docstring); None without any."""
        services = [e.service_rate for e in state.evidence if e.service_rate is not None]
        base: float | None = None
        if services:
            share = self.share(state)
            base = statistics.median(services) * (self.settings.default_target_utilisation if share is None else share)
        # (rate, met the SLO?) of the windows that reported a p99, by rate
        judged = sorted((e.rate, e.p99_ms <= state.slo_ms) for e in state.evidence if e.p99_ms > 0)
        if not judged:
            return base
        # The boundary that misclassifies the fewest windows (within below it, missed above it): one window that
        # noise put on the wrong side moves it by a step, not to that window. Ties go to the lowest boundary.
        errors = sum(1 for _, met in judged if met)  # boundary below every window: all called "missed"
        best, best_j = errors, 0
        for j, (_, met) in enumerate(judged, start=1):
            errors += -1 if met else 1
            if errors < best:
                best, best_j = errors, j
        if best_j == 0:  # every rate was beyond capacity
            return min(base if base is not None else math.inf, judged[0][0])
        if best_j == len(judged):  # every rate was within it
            return max(base or 0.0, judged[-1][0])
        return (judged[best_j - 1][0] + judged[best_j][0]) / 2

    def verdict(self, state: DriftState) -> DriftVerdict:
        return DriftVerdict(state.stale, state.reason, self.observed_capacity(state))


# -- re-trials ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetrialSettings:
    max_parallel: int = 1
    """Re-trial searches running at once, across all models (trials hold GPUs: the global budget)."""
    cooldown_s: float = 3600.0
    """A model is not re-profiled again sooner than this after its last re-trial started."""

    def __post_init__(self) -> None:
        if self.max_parallel < 1:
            raise ValueError(f"retrial settings: max_parallel must be >= 1, got {self.max_parallel}")
        if not (math.isfinite(self.cooldown_s) and self.cooldown_s >= 0):
            raise ValueError(f"retrial settings: cooldown_s must be a finite number >= 0, got {self.cooldown_s!r}")


@dataclass(frozen=True, slots=True)
class RetrialPlanner:
    """Which stale models get a re-trial now: at most ``max_parallel`` running, none sooner than ``cooldown_s``
    after the model's previous one, the longest-stale first (ties by name, so the answer is deterministic)."""

    settings: RetrialSettings = field(default_factory=RetrialSettings)
    running: frozenset[str] = frozenset()
    last_started: Mapping[str, float] = field(default_factory=dict)

    def due(self, now: float, stale_since: Mapping[str, float]) -> tuple[str, ...]:
        """The models (of ``stale_since``: model -> when it went stale) to start re-trials for at ``now``."""
        free = self.settings.max_parallel - len(self.running)
        if free <= 0:
            return ()
        cool = self.settings.cooldown_s
        ready = [
            (since, m)
            for m, since in stale_since.items()
            if m not in self.running and now - self.last_started.get(m, -math.inf) >= cool
        ]
        return tuple(m for _, m in sorted(ready)[:free])

    def started(self, models: Collection[str], now: float) -> RetrialPlanner:
        return replace(
            self,
            running=self.running | frozenset(models),
            last_started={**self.last_started, **dict.fromkeys(models, now)},
        )

    def finished(self, model: str) -> RetrialPlanner:
        return replace(self, running=self.running - {model})
