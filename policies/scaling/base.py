"""The autoscaling policy contract, shared by every autoscaler, the simulator and the agent.

A policy is evaluated every ``tick_s`` seconds of (virtual or wall) time with :class:`Signals` — cumulative
counters and gauges, one entry per model, as a monitoring pipeline exposes them — and the state it returned
last time. It returns :class:`Decisions` (a target replica count per model, with a reason) and its new state.
It never reads a clock, never does I/O and holds no hidden fields (Ray Serve's ``(ctx, state) -> (decision,
state)`` shape; Knative's ``Scale(now)``).

Policies are vectorised over models: the simulator evaluates a thousand models in one call; the agent passes
the models it owns. Windowed rates are computed by the policy from the counters it kept in its state, the way
HPA and Knative compute them from their own samples.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, runtime_checkable

import numpy as np

from shadowscale.policies.types import FloatArray, IntArray, ServiceConfig

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Signals:
    """What a real monitoring pipeline would report about each model at ``now`` (index = model).

    Counters only ever grow; a policy differences two samples to get a rate or an average over a window.
    """

    now: float
    replicas: IntArray
    """Replicas the workload's spec asks for (ready or still starting)."""
    ready: IntArray
    """Replicas that are ready to serve."""
    arrivals: FloatArray
    """Counter: requests that arrived."""
    busy_s: FloatArray
    """Counter: replica-seconds spent running batches (GPU busy time, what DCGM's utilization integrates)."""
    ready_s: FloatArray
    """Counter: ready-replica-seconds (the denominator of utilization)."""
    inflight_s: FloatArray
    """Counter: integral of outstanding requests over time (concurrency-seconds, what queue-proxy reports)."""
    outstanding: IntArray
    """Gauge: requests accepted and not yet completed or dropped (queue lag)."""
    capacity_rps: FloatArray | None = None
    """Requests/s one replica serves within the SLO as the model's current profile says (live: the agent's profile
    book, which switches to the observed capacity while a profile is stale); None: the capacity of the profile the
    policy was initialised with. Only profile-driven policies read it."""
    prompt_tokens: FloatArray | None = None
    """Counter: prompt tokens of the requests that arrived (what a router sees in each request); None where the
    pipeline does not count tokens (non-LLM models count 0). Token-planning policies read it (LLM sizing)."""
    output_tokens: FloatArray | None = None
    """Counter: output tokens of the requests that finished (vLLM's ``generation_tokens_total`` over finished
    requests: the length of an answer is known only once it is done)."""
    finished: FloatArray | None = None
    """Counter: requests that finished (vLLM's ``request_success_total``), the denominator of ``output_tokens``."""
    finished_by_output: FloatArray | None = None
    """Counters, shape (models, buckets): finished requests with at most ``policies.llm.OUTPUT_TOKEN_BUCKETS[k]``
    output tokens (vLLM's ``request_generation_tokens`` histogram, cumulative as Prometheus buckets are)."""
    slo_missed: FloatArray | None = None
    """Counter: requests that missed their latency objective (finished over their TTFT or TPOT objective, timed
    out or rejected), counted when that is known — what a router's per-request latencies, or the server's
    per-request TTFT and TPOT histograms with a bucket at the objective, give. None where nobody counts them; the
    error-budget lever of the LLM sizing reads it."""

    @property
    def n_models(self) -> int:
        return int(self.replicas.shape[0])


class Reason(enum.IntEnum):
    """Why a policy chose its target; rendered into the audit-log reason string."""

    HOLD = 0
    NO_METRICS = 1
    WITHIN_TOLERANCE = 2
    SCALE_UP = 3
    SCALE_DOWN = 4
    STABILIZED = 5
    RATE_LIMITED = 6
    PANIC = 7
    SCALE_TO_ZERO = 8
    ACTIVATE = 9
    COOLDOWN = 10
    SCHEDULE = 11
    BOUNDS = 12
    PREWARM = 13


_REASON_TEXT = {
    Reason.HOLD: "hold",
    Reason.NO_METRICS: "no metrics from ready replicas; hold",
    Reason.WITHIN_TOLERANCE: "within tolerance; hold",
    Reason.SCALE_UP: "scale up",
    Reason.SCALE_DOWN: "scale down",
    Reason.STABILIZED: "scale-down held by stabilization window",
    Reason.RATE_LIMITED: "change limited by scaling rate",
    Reason.PANIC: "panic mode",
    Reason.SCALE_TO_ZERO: "idle past grace period; scale to zero",
    Reason.ACTIVATE: "traffic while at zero; activate",
    Reason.COOLDOWN: "idle but within cooldown; hold",
    Reason.SCHEDULE: "hindsight schedule",
    Reason.BOUNDS: "clamped to min/max replicas",
    Reason.PREWARM: "idle gap predicted to end within a cold start; pre-warm",
}


@dataclass(frozen=True, slots=True)
class Decisions:
    """Target replicas for every model at ``now``; ``metric``/``target``/``raw`` explain them."""

    policy: str
    now: float
    replicas: IntArray
    reason: IntArray
    metric: FloatArray
    target: FloatArray
    raw: FloatArray
    spec: IntArray | None = None
    """Per model, the index into its service's ``specs`` it should run (−1: keep what runs); None: no opinion for
    any model. The simulator moves a model at zero replicas at once and one at one replica by a surge rollout
    (:mod:`simulators.engine`); models with more replicas keep their spec until they are back at one."""

    def explain(self, i: int) -> str:
        """The audit-log reason for model ``i``, with the numbers that produced it."""
        text = _REASON_TEXT[Reason(int(self.reason[i]))]
        return (
            f"{self.policy}: {text}; metric={self.metric[i]:.4g} target={self.target[i]:.4g} "
            f"recommended={self.raw[i]:.4g} -> {int(self.replicas[i])} replicas"
        )


class ScalingPolicy(Protocol, Generic[S]):
    """A vectorised autoscaler. ``init`` builds the state for the given models; ``decide`` is pure."""

    @property
    def name(self) -> str: ...

    @property
    def tick_s(self) -> float:
        """How often the real system evaluates this policy (HPA sync 15 s, KPA tick 2 s, KEDA poll 30 s)."""
        ...

    @property
    def hindsight(self) -> bool:
        """True for the oracle: it knows the future and its replicas are warm exactly when needed."""
        ...

    def init(self, services: Sequence[ServiceConfig]) -> tuple[IntArray, S]:
        """Initial replicas per model (warm at time 0) and the initial state."""
        ...

    def decide(self, signals: Signals, state: S) -> tuple[Decisions, S]: ...


@runtime_checkable
class Resumable(Protocol[S]):
    """A policy whose state, learnt from one source of cumulative counters (the simulator), can go on with another
    that starts from zero (the agent): ``rebase`` keeps what was learnt and zeroes the counter snapshots."""

    def rebase(self, state: S) -> S: ...


def bounds(services: Sequence[ServiceConfig]) -> tuple[IntArray, IntArray]:
    """Per-model (min_replicas, max_replicas) arrays."""
    lo = np.fromiter((s.min_replicas for s in services), np.int64, len(services))
    hi = np.fromiter((s.max_replicas for s in services), np.int64, len(services))
    return lo, hi


def clamp(replicas: IntArray, lo: IntArray, hi: IntArray) -> IntArray:
    return np.minimum(np.maximum(replicas, lo), hi)


def ceil_int(x: FloatArray) -> IntArray:
    """Ceiling that forgives float noise (2.0000000001 -> 2), as Kubernetes' math on milli-quantities does."""
    return np.ceil(x - 1e-9).astype(np.int64)


def full(n: int, value: float) -> FloatArray:
    return np.full(n, value, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class Sample:
    """A snapshot of counters a policy keeps to compute windowed averages later."""

    t: float
    values: FloatArray


def window_start(history: tuple[Sample, ...], now: float, window_s: float) -> Sample:
    """The oldest kept sample no older than ``window_s`` before ``now`` (the window start, or the first sample)."""
    for s in history:
        if s.t >= now - window_s - 1e-9:
            return s
    return history[-1]


def push(history: tuple[Sample, ...], sample: Sample, keep_s: float) -> tuple[Sample, ...]:
    """Append ``sample`` and drop samples older than ``keep_s`` before it (immutable: returns a new tuple)."""
    cut = sample.t - keep_s - 1e-9
    start = 0
    while start < len(history) and history[start].t < cut:
        start += 1
    return (*history[start:], sample)


@dataclass(frozen=True, slots=True)
class WindowMax:
    """Element-wise maximum of the arrays pushed within a sliding time window — an immutable two-stack queue.

    ``push`` and ``expire`` return new values (amortised O(1) array operations each); nothing is mutated, so a
    policy state holding one can be decided from twice with the same result.
    """

    front_t: tuple[float, ...] = ()
    front_max: tuple[IntArray, ...] = ()
    """``front_max[i]`` = maximum of front entries ``i..``; the front holds the oldest entries."""
    back_t: tuple[float, ...] = ()
    back_vals: tuple[IntArray, ...] = ()
    back_max: IntArray | None = None

    def push(self, t: float, values: IntArray) -> WindowMax:
        back_max = values if self.back_max is None else np.maximum(self.back_max, values)
        return WindowMax(self.front_t, self.front_max, (*self.back_t, t), (*self.back_vals, values), back_max)

    def expire(self, cut: float) -> WindowMax:
        """Drop the entries at or before ``cut``."""
        w = self
        while True:
            k = 0
            while k < len(w.front_t) and w.front_t[k] <= cut:
                k += 1
            if k:
                w = WindowMax(w.front_t[k:], w.front_max[k:], w.back_t, w.back_vals, w.back_max)
            if w.front_t or not w.back_t or w.back_t[0] > cut:
                return w
            # front exhausted and the back has expired entries: move the back to the front
            suffix: list[IntArray] = []
            running: IntArray | None = None
            for v in reversed(w.back_vals):
                running = v if running is None else np.maximum(running, v)
                suffix.append(running)
            w = WindowMax(w.back_t, tuple(reversed(suffix)), (), (), None)

    def max(self) -> IntArray | None:
        if self.front_max and self.back_max is not None:
            out: IntArray = np.maximum(self.front_max[0], self.back_max)
            return out
        if self.front_max:
            return self.front_max[0]
        return self.back_max
