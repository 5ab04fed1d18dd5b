"""Event schemas (msgspec, versioned) and the edge decoder that never raises.

Every message on the traffic and GPU topics is one JSON object whose first field ``schema`` names its type and
version (``shadowscale.traffic/v1``, ``shadowscale.gpu/v1``, and the profiler's
``shadowscale.trial-result/v1``). Unknown fields are ignored, so a producer may add
optional fields within a version; anything else is a new version. The agent's own output — decision audit records
and dead-letter records — is versioned the same way. The schemas are documented in ``docs/events.md``.

:class:`Decoder` turns raw bytes into a validated event or a :class:`Rejected` value carrying the reason; it never
raises, so a malformed message cannot stop the loop (it goes to the dead-letter topic and a counter rises).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Annotated, Final, Literal, TypeAlias

import msgspec

TRAFFIC_V1: Final = "shadowscale.traffic/v1"
GPU_V1: Final = "shadowscale.gpu/v1"
DECISION_V1: Final = "shadowscale.decision/v1"
DEAD_LETTER_V1: Final = "shadowscale.dead-letter/v1"
TRIAL_RESULT_V1: Final = "shadowscale.trial-result/v1"

_MAX_COUNT: Final = 1_000_000_000
_MAX_SECONDS: Final = 86_400.0
_MAX_MS: Final = 86_400_000.0
_MAX_BYTES: Final = 2**50

# Kubernetes object names (DNS-1123 subdomain, with '_' tolerated for model names taken from traces) and
# namespaces (DNS-1123 label). The schema bounds their length; the pattern is checked by the decoder once per
# distinct name (a regex per message would triple the decoding cost).
NAME_RE: Final = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.\-]{0,251}[A-Za-z0-9])?")
NAMESPACE_RE: Final = re.compile(r"[a-z0-9]([a-z0-9\-]{0,61}[a-z0-9])?")
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
Namespace = Annotated[str, msgspec.Meta(min_length=1, max_length=63)]
Count = Annotated[int, msgspec.Meta(ge=0, le=_MAX_COUNT)]
Seconds = Annotated[float, msgspec.Meta(ge=0.0, le=_MAX_SECONDS)]
Millis = Annotated[float, msgspec.Meta(ge=0.0, le=_MAX_MS)]
EpochSeconds = Annotated[float, msgspec.Meta(ge=0.0, le=1e11)]
WindowSeconds = Annotated[float, msgspec.Meta(gt=0.0, le=3600.0)]


class TrafficEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What one pod (replica) of a model saw during one window ``(event_time - window_s, event_time]``.

    Counts are over the window; ``queue_depth`` is a gauge at ``event_time``: requests accepted and not yet
    completed (waiting plus running). ``busy_s`` is the time the pod's accelerator ran batches (what GPU utilization
    integrates); ``ready_s`` the time the pod was ready to serve (``window_s`` for a pod ready throughout, 0 for an
    activator or queue proxy that buffers for a model scaled to zero); ``concurrency_s`` the integral of requests in
    flight over the window (what Knative's queue-proxy reports). A pod publishes a window even when it saw no
    traffic, so idleness is visible.
    """

    schema: Literal["shadowscale.traffic/v1"]
    model: Name
    namespace: Namespace = "default"
    pod: Name
    event_time: EpochSeconds
    window_s: WindowSeconds
    arrivals: Count
    completions: Count
    errors: Count = 0
    latency_p50_ms: Millis = 0.0
    latency_p95_ms: Millis = 0.0
    latency_p99_ms: Millis = 0.0
    queue_depth: Count = 0
    batch_size_mean: Annotated[float, msgspec.Meta(ge=0.0, le=1e6)] = 0.0
    busy_s: Seconds = 0.0
    ready_s: Seconds | None = None
    concurrency_s: Annotated[float, msgspec.Meta(ge=0.0, le=1e12)] = 0.0
    shadow_trial: Name | None = None


class GpuPod(msgspec.Struct, frozen=True, kw_only=True):
    namespace: Namespace = "default"
    pod: Name
    model: Name | None = None


class GpuEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One GPU (or one MIG/shared slice of it) at ``event_time``: utilization in [0, 1], memory in bytes, and the
    pods (with their models) that hold it."""

    schema: Literal["shadowscale.gpu/v1"]
    node: Name
    gpu_uuid: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    gpu_index: Annotated[int, msgspec.Meta(ge=0, le=1024)]
    event_time: EpochSeconds
    utilization: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
    memory_used_bytes: Annotated[int, msgspec.Meta(ge=0, le=_MAX_BYTES)]
    memory_total_bytes: Annotated[int, msgspec.Meta(ge=0, le=_MAX_BYTES)]
    pods: tuple[GpuPod, ...] = ()
    power_watts: Annotated[float, msgspec.Meta(ge=0.0, le=100_000.0)] | None = None
    """The whole board's power draw (NVML); None where NVML has none (and on a share's event)."""


class DecisionRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The audit record of one decision, published on the decisions topic (and the optional audit file)."""

    schema: Literal["shadowscale.decision/v1"] = DECISION_V1
    agent: str
    model: str
    policy: str
    at: float
    """The agent clock's time of the decision (seconds)."""
    trigger: Literal["event", "tick"]
    current: int
    ready: int
    recommended: int
    """What the policy asked for."""
    target: int
    """What the guard rails let through (the replica count set, or that would be set in dry-run)."""
    applied: bool
    dry_run: bool
    reason: str
    """``Decisions.explain(i)``, followed by the guard rail that changed it, if any."""
    guard: str | None = None
    demand_rps: float = 0.0
    capacity_rps: float = 0.0
    outstanding: int = 0
    latency_ms: float = 0.0
    """From receiving the batch that caused it (or the tick) to the actuator's answer."""
    spec_recommended: str | None = None
    """The alternative spec (``models[].specs``) policy shadowscale's right-sizing recommends instead of the
    configured one; the agent reports it and does not apply it."""


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A message the agent could not use, with the reason; ``payload_b64`` holds (up to 64 KiB of) the raw bytes."""

    schema: Literal["shadowscale.dead-letter/v1"] = DEAD_LETTER_V1
    agent: str
    at: float
    topic: str
    partition: int
    offset: int
    reason: str
    key: str | None = None
    payload_b64: str = ""
    truncated: bool = False


class TrialStep(msgspec.Struct, frozen=True, kw_only=True):
    """One load level of a shadow trial: the rate offered, requests sent and answered in time, and their p99
    (None when more than 1 % went unanswered: the p99 is infinitely late)."""

    rate: Annotated[float, msgspec.Meta(ge=0.0, le=1e9)]
    sent: Count
    answered: Count
    p99_ms: Millis | None = None
    ttft_p99_ms: Millis | None = None
    """LLM trials: p99 time to first token, p99 time per output token, output tokens per second."""
    tpot_p99_ms: Millis | None = None
    tokens_per_s: Annotated[float, msgspec.Meta(ge=0.0, le=1e12)] | None = None


class TrialResultEvent(msgspec.Struct, frozen=True, kw_only=True):
    """What the load generator of one profiling trial measured, published once on the trials topic keyed by trial.

    A dedicated schema, not a traffic window: a trial's outcome is a capacity found by a search over rates (the
    highest rate whose p99 met ``slo_ms``, and the p99 there), which no single window of a pod can say. ``status``
    ``failed`` means no measurement (the target could not be reached or died under load); ``error`` says why.
    ``throughput_rps`` 0 with ``status`` ``measured`` means even the first rate missed the SLO; ``p99_ms`` None
    means no request was answered in time at that rate.
    """

    schema: Literal["shadowscale.trial-result/v1"]
    trial: Name
    model: Name
    namespace: Namespace = "default"
    event_time: EpochSeconds
    status: Literal["measured", "failed"]
    slo_ms: Annotated[float, msgspec.Meta(gt=0.0, le=_MAX_MS)]
    throughput_rps: Annotated[float, msgspec.Meta(ge=0.0, le=1e9)] = 0.0
    p99_ms: Millis | None = None
    error: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    wall_s: Seconds = 0.0
    target: Annotated[str, msgspec.Meta(max_length=2048)] = ""
    steps: Annotated[tuple[TrialStep, ...], msgspec.Meta(max_length=1000)] = ()


_trial_result_decoder = msgspec.json.Decoder(TrialResultEvent)


def decode_trial_result(raw: bytes | None) -> TrialResultEvent | Rejected:
    """Decode a trial-result message; never raises (a bad message is :class:`Rejected` with the reason)."""
    try:
        if raw is None:
            return Rejected("empty", "empty message (no value)")
        try:
            ev = _trial_result_decoder.decode(raw)
        except msgspec.ValidationError as e:
            return Rejected("invalid", f"invalid trial result: {e}")
        except msgspec.DecodeError as e:
            return Rejected("malformed", f"not JSON: {e}")
        for what, name in (("trial", ev.trial), ("model", ev.model)):
            if NAME_RE.fullmatch(name) is None:
                return Rejected("invalid", f"invalid trial result: {what} {name[:80]!r} is not a valid Kubernetes name")
        if NAMESPACE_RE.fullmatch(ev.namespace) is None:
            return Rejected("invalid", f"invalid trial result: namespace {ev.namespace[:80]!r} is not valid")
        if ev.status == "failed" and not ev.error:
            return Rejected("invalid", "invalid trial result: a failed result needs an error")
        return ev
    except Exception as e:
        return Rejected("error", f"decoder error: {type(e).__name__}: {e}")


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that failed validation: ``reason`` is a one-line explanation, ``kind`` a short label for metrics."""

    kind: str
    reason: str


Event: TypeAlias = TrafficEvent | GpuEvent
Decoded: TypeAlias = TrafficEvent | GpuEvent | Rejected

_PAYLOAD_LIMIT: Final = 65_536


class Decoder:
    """Decodes traffic and GPU messages; never raises.

    ``known_models`` (when given) rejects traffic for models the agent does not manage; given as a mapping of model
    to namespace, it also rejects an event for a known model name from another namespace (another team's ``m1`` is
    not ours). Event times more than
    ``max_future_s`` ahead of ``now`` or more than ``max_age_s`` behind it are rejected: a producer with a broken
    clock must not move windows. Checks beyond the schema's types and bounds: names match Kubernetes' patterns,
    latency quantiles are ordered (p50 <= p95 <= p99), ``errors <= completions``, ``busy_s`` and ``ready_s`` are at
    most ``window_s`` (with 1 % slack), used memory is at most total memory. Fields are bounded against each other
    and against what one pod can plausibly see: ``arrivals`` and ``completions`` at most ``max_rps`` x ``window_s``,
    ``queue_depth`` at most ``max_concurrency``, ``concurrency_s`` at most ``max_concurrency`` x ``window_s`` (a
    mean of more requests in flight than one pod can hold). One forged event cannot claim an implausible load.
    """

    def __init__(
        self,
        known_models: Collection[str] | Mapping[str, str] | None = None,
        *,
        max_future_s: float = 60.0,
        max_age_s: float = 3600.0,
        max_rps: float = 100_000.0,
        max_concurrency: float = 10_000.0,
    ) -> None:
        self.known_models = None if known_models is None else frozenset(known_models)
        self.namespaces: dict[str, str] | None = dict(known_models) if isinstance(known_models, Mapping) else None
        self.max_rps = max_rps
        self.max_concurrency = max_concurrency
        self.max_future_s = max_future_s
        self.max_age_s = max_age_s
        self._traffic = msgspec.json.Decoder(TrafficEvent)
        self._gpu = msgspec.json.Decoder(GpuEvent)
        self._good_names: set[str] = set()
        self._good_namespaces: set[str] = set()

    def _bad_name(self, name: str, namespace: str) -> str | None:
        """Why ``name``/``namespace`` are not valid Kubernetes names, or None (valid ones are remembered)."""
        if name not in self._good_names:
            if NAME_RE.fullmatch(name) is None:
                return f"name {name[:80]!r} is not a valid Kubernetes name"
            if len(self._good_names) > 100_000:
                self._good_names.clear()
            self._good_names.add(name)
        if namespace not in self._good_namespaces:
            if NAMESPACE_RE.fullmatch(namespace) is None:
                return f"namespace {namespace[:80]!r} is not a valid Kubernetes namespace"
            if len(self._good_namespaces) > 10_000:
                self._good_namespaces.clear()
            self._good_namespaces.add(namespace)
        return None

    def traffic(self, raw: bytes | None, now: float) -> TrafficEvent | Rejected:
        try:
            if raw is None:
                return Rejected("empty", "empty message (no value)")
            try:
                ev = self._traffic.decode(raw)
            except msgspec.ValidationError as e:
                return Rejected("invalid", f"invalid traffic event: {e}")
            except msgspec.DecodeError as e:
                return Rejected("malformed", f"not JSON: {e}")
            known = self.known_models
            if known is not None and ev.model not in known:
                problem = self._bad_name(ev.model, ev.namespace)
                if problem is not None:
                    return Rejected("invalid", f"invalid traffic event: model {problem}")
                return Rejected("unknown_model", f"unknown model {ev.model!r} (not in the agent's configuration)")
            namespaces = self.namespaces
            if namespaces is not None and namespaces[ev.model] != ev.namespace:
                return Rejected(
                    "namespace",
                    f"model {ev.model!r} is managed in namespace {namespaces[ev.model]!r}, not {ev.namespace[:80]!r}",
                )
            t = ev.event_time
            w = ev.window_s
            most = self.max_rps * w
            if (
                now - self.max_age_s <= t <= now + self.max_future_s
                and ev.latency_p50_ms <= ev.latency_p95_ms <= ev.latency_p99_ms
                and ev.errors <= ev.completions
                and ev.busy_s <= ev.window_s * 1.01 + 1e-6
                and (ev.ready_s is None or ev.ready_s <= ev.window_s * 1.01 + 1e-6)
                and (ev.pod in self._good_names and ev.namespace in self._good_namespaces)
                and (known is not None or ev.model in self._good_names)
                and ev.shadow_trial is None  # a shadow's trial id is checked on the slow path below
                and ev.arrivals <= most
                and ev.completions <= most
                and ev.queue_depth <= self.max_concurrency
                and ev.concurrency_s <= w * self.max_concurrency
            ):
                return ev  # the fast path: every check passed
            problem = (
                _check_time(t, now, self.max_future_s, self.max_age_s)
                or _check_traffic(ev)
                or _check_bounds(ev, self.max_rps, self.max_concurrency)
                or self._bad_name(ev.pod, ev.namespace)
                or self._bad_name(ev.model, ev.namespace)
                or (None if ev.shadow_trial is None else self._bad_name(ev.shadow_trial, ev.namespace))
            )
            return ev if problem is None else Rejected("invalid", f"invalid traffic event: {problem}")
        except Exception as e:  # a decoder bug must not stop the loop either
            return Rejected("error", f"decoder error: {type(e).__name__}: {e}")

    def gpu(self, raw: bytes | None, now: float) -> GpuEvent | Rejected:
        try:
            if raw is None:
                return Rejected("empty", "empty message (no value)")
            try:
                ev = self._gpu.decode(raw)
            except msgspec.ValidationError as e:
                return Rejected("invalid", f"invalid gpu event: {e}")
            except msgspec.DecodeError as e:
                return Rejected("malformed", f"not JSON: {e}")
            problem = _check_time(ev.event_time, now, self.max_future_s, self.max_age_s)
            if problem is None and ev.memory_used_bytes > ev.memory_total_bytes:
                problem = "memory_used_bytes exceeds memory_total_bytes"
            if problem is None:
                problem = self._bad_name(ev.node, "default")
            for p in ev.pods:
                if problem is None:
                    problem = self._bad_name(p.pod, p.namespace) or (
                        None if p.model is None else self._bad_name(p.model, p.namespace)
                    )
            return ev if problem is None else Rejected("invalid", f"invalid gpu event: {problem}")
        except Exception as e:
            return Rejected("error", f"decoder error: {type(e).__name__}: {e}")


def _check_time(t: float, now: float, max_future_s: float, max_age_s: float) -> str | None:
    if t > now + max_future_s:
        return f"event_time {t:.3f} is {t - now:.1f} s in the future (limit {max_future_s:g} s)"
    if t < now - max_age_s:
        return f"event_time {t:.3f} is {now - t:.1f} s old (limit {max_age_s:g} s)"
    return None


def _check_traffic(ev: TrafficEvent) -> str | None:
    if not ev.latency_p50_ms <= ev.latency_p95_ms <= ev.latency_p99_ms:
        return "latency quantiles must satisfy p50 <= p95 <= p99"
    if ev.errors > ev.completions:
        return "errors exceed completions"
    slack = ev.window_s * 1.01 + 1e-6
    if ev.busy_s > slack:
        return f"busy_s {ev.busy_s:g} exceeds the window ({ev.window_s:g} s)"
    if ev.ready_s is not None and ev.ready_s > slack:
        return f"ready_s {ev.ready_s:g} exceeds the window ({ev.window_s:g} s)"
    if not math.isfinite(ev.concurrency_s):
        return "concurrency_s must be finite"
    return None


def _check_bounds(ev: TrafficEvent, max_rps: float, max_concurrency: float) -> str | None:
    w = ev.window_s
    for name in ("arrivals", "completions"):
        v = getattr(ev, name)
        if v > max_rps * w:
            return f"{name} {v} over {w:g} s is above the plausible {max_rps:g} req/s of one pod (ingest.max_rps)"
    if ev.queue_depth > max_concurrency:
        return f"queue_depth {ev.queue_depth} is above the plausible {max_concurrency:g} (ingest.max_concurrency)"
    if ev.concurrency_s > max_concurrency * w:
        return (
            f"concurrency_s {ev.concurrency_s:g} over {w:g} s means more than {max_concurrency:g} requests in flight "
            "(ingest.max_concurrency)"
        )
    return None


def dead_letter(
    agent: str, at: float, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, reason: str
) -> DeadLetter:
    """The dead-letter record for a rejected message (payload base64, cut at 64 KiB)."""
    payload = value or b""
    truncated = len(payload) > _PAYLOAD_LIMIT
    return DeadLetter(
        agent=agent,
        at=at,
        topic=topic,
        partition=partition,
        offset=offset,
        reason=reason,
        key=None if key is None else key.decode("utf-8", "replace"),
        payload_b64=base64.b64encode(payload[:_PAYLOAD_LIMIT]).decode("ascii"),
        truncated=truncated,
    )


_encoder = msgspec.json.Encoder()


def encode(obj: msgspec.Struct) -> bytes:
    """JSON bytes of an event or record (the wire format)."""
    return _encoder.encode(obj)
