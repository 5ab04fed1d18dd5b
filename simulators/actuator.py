"""The simulated cluster behind the live agent's actuator port, and the pods' traffic windows it serves.

:class:`SimulatedCluster` implements :class:`policies.ports.Actuator`: ``scale`` sets absolute replica counts
(new replicas are ready after the cold start; removals take the replica Kubernetes' ReplicaSet controller deletes
first, as in :mod:`simulators.cluster`), ``observe`` reports replicas and ready replicas at the clock's time. It is
the agent's embedded default and the world of the demo and the benchmark; every scale call is recorded.

:meth:`SimulatedCluster.serve` turns one window of a model's arrivals into the windows its pods would report (the
replayer publishes them as traffic events). It is a *fluid* approximation, not the request-level simulator of
:mod:`simulators.engine`: work is shared among ready pods in proportion to their ready time, a pod serves at most
``capacity_rps`` unit requests per second, work beyond capacity waits in a backlog (work older than ``timeout_s``
is dropped and reported as errors), and latency quantiles follow an M/D/1 waiting time plus the backlog's delay.
With no ready replica an ``activator`` pseudo-pod reports the arrivals and the backlog (ready time 0), as Knative's
activator does for a revision at zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from shadowscale.policies.ports import Clock, ScaleResult, WorkloadState
from shadowscale.policies.types import ServiceConfig


@dataclass(frozen=True, slots=True)
class PodWindow:
    """What one pod saw in one window (the fields of a traffic event, without the envelope)."""

    pod: str
    arrivals: int
    completions: int
    errors: int
    busy_s: float
    ready_s: float
    concurrency_s: float
    queue_depth: int
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    batch_size_mean: float


@dataclass(slots=True)
class _Pod:
    name: str
    created: float
    ready_at: float


@dataclass(slots=True)
class _Model:
    service: ServiceConfig
    pods: list[_Pod] = field(default_factory=list)
    serial: int = 0
    backlog: float = 0.0
    min_replicas: int = 0
    max_replicas: int = 1000


@dataclass(frozen=True, slots=True)
class ScaleCall:
    """One recorded ``scale`` call: when (clock time) and what was asked."""

    at: float
    targets: Mapping[str, int]


class SimulatedCluster:
    """Replica counts per model on a shared clock; an :class:`~policies.ports.Actuator`."""

    def __init__(
        self,
        services: Sequence[ServiceConfig],
        clock: Clock,
        *,
        initial: Mapping[str, int] | None = None,
        cold_start_s: float | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.clock = clock
        self.cold_start_s = cold_start_s
        self.timeout_s = timeout_s
        self.calls: list[ScaleCall] = []
        self._models: dict[str, _Model] = {}
        now = clock.now()
        for s in services:
            m = _Model(s, min_replicas=s.min_replicas, max_replicas=s.max_replicas)
            self._models[s.model] = m
            want = (initial or {}).get(s.model, max(s.min_replicas, 1))
            for _ in range(min(max(want, s.min_replicas), s.max_replicas)):
                self._add(m, now, warm=True)

    def _cold(self, m: _Model) -> float:
        return m.service.cold_start_s if self.cold_start_s is None else self.cold_start_s

    def _add(self, m: _Model, now: float, *, warm: bool = False) -> None:
        m.serial += 1
        m.pods.append(_Pod(f"{m.service.model}-{m.serial}", now, now if warm else now + self._cold(m)))

    def _remove_one(self, m: _Model, now: float) -> None:
        # Not-ready before ready; among not-ready the newest; among ready the most recently ready.
        best = min(
            range(len(m.pods)),
            key=lambda k: (0, -m.pods[k].created, -k) if m.pods[k].ready_at > now else (1, -m.pods[k].ready_at, -k),
        )
        del m.pods[best]

    # -- the actuator port --------------------------------------------------------------------------------
    async def observe(self) -> Mapping[str, WorkloadState]:
        return {name: self.state(name) for name in self._models}

    async def scale(self, targets: Mapping[str, int]) -> ScaleResult:
        now = self.clock.now()
        self.calls.append(ScaleCall(now, dict(targets)))
        applied: dict[str, int] = {}
        missing: list[str] = []
        for name, want in targets.items():
            m = self._models.get(name)
            if m is None:
                missing.append(name)
                continue
            want = min(max(int(want), m.min_replicas), m.max_replicas)
            while len(m.pods) < want:
                self._add(m, now)
            while len(m.pods) > want:
                self._remove_one(m, now)
            applied[name] = want
        return ScaleResult(applied=applied, missing=tuple(missing))

    # -- views ---------------------------------------------------------------------------------------------
    def state(self, model: str) -> WorkloadState:
        m = self._models[model]
        now = self.clock.now()
        ready = sum(1 for p in m.pods if p.ready_at <= now)
        return WorkloadState(model, len(m.pods), ready, m.service.profile.gpu_fraction)

    @property
    def models(self) -> list[str]:
        return list(self._models)

    # -- the pods' traffic ----------------------------------------------------------------------------------
    def serve(self, model: str, arrivals: int, work: float, t_end: float, window_s: float) -> list[PodWindow]:
        """Windows ``(t_end - window_s, t_end]`` of every pod of ``model`` given ``arrivals`` requests carrying
        ``work`` unit requests of work (times on the cluster's clock, rates per second of that clock)."""
        m = self._models[model]
        prof = m.service.profile
        cap = prof.capacity_rps
        l1 = float(prof.latency_table()[1])
        t0 = t_end - window_s
        ready_s = [min(max(t_end - max(p.ready_at, t0), 0.0), window_s) for p in m.pods]
        total_ready = sum(ready_s)
        backlog0 = m.backlog
        todo = backlog0 + work
        if total_ready <= 0:
            dropped = max(todo - cap * self.timeout_s, 0.0) if todo > 0 else 0.0
            m.backlog = todo - dropped
            q = m.backlog
            return [
                PodWindow(
                    pod=f"{model}-activator",
                    arrivals=arrivals,
                    completions=0,
                    errors=0,
                    busy_s=0.0,
                    ready_s=0.0,
                    concurrency_s=(backlog0 + q) / 2.0 * window_s,
                    queue_depth=math.ceil(q - 1e-9),
                    latency_p50_ms=0.0,
                    latency_p95_ms=0.0,
                    latency_p99_ms=0.0,
                    batch_size_mean=0.0,
                )
            ]
        capacity = cap * total_ready
        served = min(todo, capacity)
        left = todo - served
        limit = cap * (total_ready / window_s) * self.timeout_s
        dropped = max(left - limit, 0.0)
        m.backlog = left - dropped
        rho = min(served / capacity, 0.99) if capacity > 0 else 0.0
        wait = l1 * rho / (2.0 * (1.0 - rho))
        delay = m.backlog / (cap * total_ready / window_s)
        mean = l1 + wait + delay
        size = work / arrivals if arrivals else 1.0
        p50 = (l1 + 0.7 * wait + delay) * size
        p95 = (l1 + 3.0 * wait + delay) * size
        p99 = (l1 + 4.6 * wait + delay) * size
        served_n = served / max(size, 1e-9)
        dropped_n = dropped / max(size, 1e-9)
        out = []
        ready_pods = [(p, r) for p, r in zip(m.pods, ready_s, strict=True) if r > 0]
        arr_split = _split(arrivals, [r for _, r in ready_pods])
        done_split = _split(round(served_n + dropped_n), [r for _, r in ready_pods])
        err_split = _split(round(dropped_n), [r for _, r in ready_pods])
        for (p, r), a, done, err in zip(ready_pods, arr_split, done_split, err_split, strict=True):
            share = r / total_ready
            queue = (m.backlog + served * mean / window_s) * share
            out.append(
                PodWindow(
                    pod=p.name,
                    arrivals=a,
                    completions=max(done, err),
                    errors=err,
                    busy_s=min(served * share / cap, r),
                    ready_s=r,
                    concurrency_s=a * mean + (backlog0 + m.backlog) / 2.0 * share * window_s,
                    queue_depth=math.ceil(queue - 1e-9),
                    latency_p50_ms=p50 * 1000.0 if a else 0.0,
                    latency_p95_ms=p95 * 1000.0 if a else 0.0,
                    latency_p99_ms=p99 * 1000.0 if a else 0.0,
                    batch_size_mean=1.0 + rho * (prof.max_batch - 1) if a else 0.0,
                )
            )
        return out


def _split(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (largest remainders; deterministic)."""
    if not weights:
        return []
    s = sum(weights)
    raw = [total * w / s for w in weights]
    base = [math.floor(x) for x in raw]
    rest = total - sum(base)
    order = sorted(range(len(raw)), key=lambda k: (-(raw[k] - base[k]), k))
    for k in order[:rest]:
        base[k] += 1
    return base
