"""A tick-by-tick driver for scaling policies, shared by the tests in this folder.

It builds :class:`Signals` the way a monitoring pipeline would: counters accumulate over each tick interval
(``busy_s += utilization × ready-replica-seconds``, ``ready_s += ready-replica-seconds``, ``inflight_s +=
concurrency × dt``, ``arrivals += rate × dt``), gauges are sampled at the tick (``outstanding``, ``replicas``,
``ready``). Replicas follow the policy's previous decision (new ones become ready after ``cold_start_s``;
a scale-down removes the replicas that are not ready yet first, as a ReplicaSet does), unless a tick forces
them. Time is passed in (``now = k × tick_s``): no clock, no sleeping, no mocks.

Every decision is also checked for purity: deciding twice from the same (signals, state) gives identical
results, and the state passed in is left as it was.

Imported as ``from policy_harness import ...``: pytest's default ("prepend") import mode puts this folder on
``sys.path`` because it has no ``__init__.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shadowscale.policies.scaling.base import Decisions, ScalingPolicy, Signals
from shadowscale.policies.scaling.demand import Demand
from shadowscale.policies.types import ModelProfile, ServiceConfig

INF = math.inf


def profile(name: str = "m", capacity_rps: float = 20.0) -> ModelProfile:
    """A two-point profile whose capacity at the SLO (``max_batch / latency[max_batch]``) is ``capacity_rps``."""
    lat8 = 8.0 / capacity_rps
    return ModelProfile(
        name=name,
        source="test",
        batch_sizes=(1, 8),
        batch_latency_s=(lat8 / 2.0, lat8),
        slo_s=2.0 * lat8,
        max_batch=8,
    )


def service(
    model: str = "m",
    *,
    min_replicas: int = 0,
    max_replicas: int = 1000,
    capacity_rps: float = 20.0,
    cold_start_s: float = 60.0,
) -> ServiceConfig:
    return ServiceConfig(
        model=model,
        profile=profile(model, capacity_rps),
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        cold_start_s=cold_start_s,
    )


def demand(
    arrivals: Sequence[tuple[float, int, float]], services: Sequence[ServiceConfig], duration_s: float
) -> Demand:
    """A :class:`Demand` from ``(arrival_s, model, size)`` rows (sorted here)."""
    rows = sorted(arrivals)
    return Demand(
        arrival_s=np.array([r[0] for r in rows], dtype=np.float64),
        model=np.array([r[1] for r in rows], dtype=np.int64),
        size=np.array([r[2] for r in rows], dtype=np.float64),
        services=tuple(services),
        duration_s=duration_s,
    )


def uniform(
    start_s: float, end_s: float, count: int, model: int = 0, size: float = 1.0
) -> list[tuple[float, int, float]]:
    """``count`` requests evenly spread over ``[start_s, end_s)``."""
    step = (end_s - start_s) / count
    return [(start_s + i * step, model, size) for i in range(count)]


@dataclass(frozen=True)
class Load:
    """What one model sees over the tick interval ending at ``now`` (counters) and at ``now`` (gauges)."""

    util: float = 0.0
    """Busy fraction of the ready replicas over the interval (GPU utilization)."""
    concurrency: float = 0.0
    """Requests in flight, averaged over the interval."""
    outstanding: int = 0
    """Gauge at ``now``: requests accepted and not completed (queue lag)."""
    rate: float = 0.0
    """Arrivals per second over the interval."""
    replicas: int | None = None
    """Force the replica count over the interval and at ``now`` (all ready unless ``ready`` is given)."""
    ready: int | None = None
    """With ``replicas``: how many of the forced replicas are ready."""


LoadFn = Callable[[float], "Load | Sequence[Load]"]


@dataclass
class Run:
    """Everything a drive produced, one entry per tick (index k at ``now = k × tick_s``)."""

    tick_s: float
    times: list[float] = field(default_factory=list)
    signals: list[Signals] = field(default_factory=list)
    decisions: list[Decisions] = field(default_factory=list)
    states: list[Any] = field(default_factory=list)
    initial: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def index(self, t: float) -> int:
        k = round(t / self.tick_s)
        if k < 0 or k >= len(self.times) or abs(self.times[k] - t) > 1e-6:
            raise KeyError(f"no tick at t={t} (tick {self.tick_s} s, {len(self.times)} ticks)")
        return k

    def at(self, t: float) -> Decisions:
        return self.decisions[self.index(t)]

    def replicas_at(self, t: float, model: int = 0) -> int:
        """The replicas the policy decided at ``t``."""
        return int(self.at(t).replicas[model])

    def reason_at(self, t: float, model: int = 0) -> int:
        return int(self.at(t).reason[model])

    def raw_at(self, t: float, model: int = 0) -> float:
        return float(self.at(t).raw[model])

    def seen_at(self, t: float, model: int = 0) -> tuple[int, int]:
        """(replicas, ready) the policy saw at ``t``."""
        s = self.signals[self.index(t)]
        return int(s.replicas[model]), int(s.ready[model])

    def series(self, model: int = 0) -> list[int]:
        return [int(d.replicas[model]) for d in self.decisions]

    def between(self, t0: float, t1: float, model: int = 0) -> list[int]:
        """Decided replicas at every tick in ``[t0, t1]``."""
        return [self.replicas_at(t, model) for t in self.times if t0 - 1e-9 <= t <= t1 + 1e-9]

    def first_time(self, predicate: Callable[[Decisions], bool]) -> float | None:
        for t, d in zip(self.times, self.decisions, strict=True):
            if predicate(d):
                return t
        return None


def drive(
    policy: ScalingPolicy[Any],
    services: Sequence[ServiceConfig],
    load: LoadFn,
    *,
    until: float,
    cold_start_s: float = 0.0,
    initial: int | Sequence[int] | None = None,
    tick_s: float | None = None,
    check_purity: bool = True,
) -> Run:
    """Run ``policy`` from ``now = 0`` to ``until`` (inclusive) every ``tick_s`` (default: the policy's own).

    ``initial`` overrides the warm replicas at t=0 (default: what ``policy.init`` returns).
    """
    n = len(services)
    tick = float(tick_s if tick_s is not None else policy.tick_s)
    init_replicas, state = policy.init(services)
    start = np.asarray(init_replicas, dtype=np.int64).copy()
    if initial is not None:
        start = np.broadcast_to(np.asarray(initial, dtype=np.int64), (n,)).copy()
    # Each model's replicas as the times they became / become ready.
    fleets: list[list[float]] = [[-INF] * int(r) for r in start]
    arrivals = np.zeros(n)
    busy_s = np.zeros(n)
    ready_s = np.zeros(n)
    inflight_s = np.zeros(n)
    run = Run(tick_s=tick, initial=start)
    n_ticks = round(until / tick) + 1
    for k in range(n_ticks):
        now = k * tick
        loads = _per_model(load(now), n)
        outstanding = np.zeros(n, np.int64)
        for i, ld in enumerate(loads):
            if ld.replicas is not None:
                r_ready = ld.replicas if ld.ready is None else ld.ready
                fleets[i] = [-INF] * r_ready + [INF] * (ld.replicas - r_ready)
            if k > 0:
                t0 = now - tick
                ready_time = sum(max(0.0, now - max(t0, ra)) for ra in fleets[i] if ra < now)
                busy_s[i] += ld.util * ready_time
                ready_s[i] += ready_time
                inflight_s[i] += ld.concurrency * tick
                arrivals[i] += ld.rate * tick
            outstanding[i] = ld.outstanding
        replicas = np.array([len(f) for f in fleets], dtype=np.int64)
        ready = np.array([sum(1 for ra in f if ra <= now + 1e-9) for f in fleets], dtype=np.int64)
        signals = Signals(
            now=now,
            replicas=replicas,
            ready=ready,
            arrivals=arrivals.copy(),
            busy_s=busy_s.copy(),
            ready_s=ready_s.copy(),
            inflight_s=inflight_s.copy(),
            outstanding=outstanding,
        )
        if check_purity:
            assert_pure(policy, signals, state)
        decisions, state = policy.decide(signals, state)
        run.times.append(now)
        run.signals.append(signals)
        run.decisions.append(decisions)
        run.states.append(state)
        for i, target in enumerate(decisions.replicas):
            fleets[i] = _resize(fleets[i], int(target), now + cold_start_s)
    return run


def _per_model(value: Load | Sequence[Load], n: int) -> list[Load]:
    if isinstance(value, Load):
        return [value] * n
    loads = list(value)
    assert len(loads) == n, f"{len(loads)} loads for {n} models"
    return loads


def _resize(fleet: list[float], target: int, ready_at: float) -> list[float]:
    if target >= len(fleet):
        return fleet + [ready_at] * (target - len(fleet))
    # Remove the replicas that are furthest from ready first (a ReplicaSet deletes unready pods first).
    return sorted(fleet)[:target]


def assert_pure(policy: ScalingPolicy[Any], signals: Signals, state: Any) -> tuple[Decisions, Any]:
    """Decide twice from the same inputs: identical outputs, inputs untouched. Returns the first result."""
    state_before = copy.deepcopy(state)
    signals_before = copy.deepcopy(signals)
    d1, s1 = policy.decide(signals, state)
    d2, s2 = policy.decide(signals, state)
    assert same(d1, d2), f"{policy.name}: two decisions from the same inputs differ:\n{d1}\n{d2}"
    assert same(s1, s2), f"{policy.name}: two new states from the same inputs differ"
    assert same(state, state_before), f"{policy.name}: decide() mutated the state it was given"
    assert same(signals, signals_before), f"{policy.name}: decide() mutated the signals it was given"
    return d1, s1


def same(a: Any, b: Any) -> bool:
    """Structural equality over dataclasses, tuples/lists, numpy arrays and floats (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.dtype.kind == "f":
            return bool(np.array_equal(a, b, equal_nan=True))
        return bool(np.array_equal(a, b))
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return bool(a == b)
