"""Ports: the small interfaces the decision loop talks through, implemented live (``agent``) and offline
(``simulators``) and by hand-written fakes in tests.

Each port is a :class:`typing.Protocol` of one to three methods (KEDA's ``Scaler``, kopf's layering). The values
that cross them are frozen, slotted dataclasses defined here, so neither side leaks its library's types: the
Kafka adapter hands out :class:`RecordBatch`, the Kubernetes adapter :class:`WorkloadState`. Methods that wait on
I/O are ``async``; declaring them needs no event-loop import, so this module stays pure. The profiler's ports (the
trial runner, the profile store) are in :mod:`policies.profiling.ports`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """Raw messages of one ``(topic, partition)``, in offset order, before decoding (columns, not objects: the
    agent handles tens of thousands a second and builds no per-message object until it decodes one).

    ``offsets[k]`` is the position of message ``k``; committing ``offsets[-1] + 1`` says "every message up to and
    including the last one has been handled".
    """

    topic: str
    partition: int
    offsets: Sequence[int]
    keys: Sequence[bytes | None]
    values: Sequence[bytes | None]

    def __len__(self) -> int:
        return len(self.offsets)


Position = tuple[str, int]
"""``(topic, partition)``."""


class EventSource(Protocol):
    """A stream of raw messages that is acknowledged explicitly (at-least-once).

    ``poll`` returns up to ``max_records`` messages that are available, waiting at most ``timeout_s`` when nothing
    is (an empty sequence is a valid answer). ``commit`` records that everything before the given next offsets has
    been handled; a source restarted after a crash resumes from the last commit. ``owns`` says which of the given
    keys this consumer currently receives (the keys routed to its assigned partitions); a source that is not
    partitioned owns every key.
    """

    async def poll(self, max_records: int, timeout_s: float) -> Sequence[RecordBatch]: ...

    async def commit(self, offsets: Mapping[Position, int]) -> None: ...

    def owns(self, keys: Sequence[str]) -> frozenset[str]: ...


@dataclass(frozen=True, slots=True)
class WorkloadState:
    """What the actuator observes about one model's workload: replicas asked for (``replicas``) and ready."""

    model: str
    replicas: int
    ready: int
    gpu_fraction: float = 1.0
    """GPUs (or GPU share) each replica holds; the cluster GPU budget counts ``replicas * gpu_fraction``."""
    min_replicas: int | None = None
    """Bounds set on the workload itself (annotations), within the configured ones; None: the configured bound."""
    max_replicas: int | None = None
    hold: str | None = None
    """Why the agent must leave the replica count alone (paused, or another autoscaler owns it); None: free."""
    target_rps: float | None = None
    """Requests/s one replica is planned to serve, set on the workload itself; None: the configured capacity."""
    slo_ms: float | None = None
    """The workload's own p99 latency objective (ms); None: the configured one."""


@dataclass(frozen=True, slots=True)
class ScaleResult:
    """The outcome of one :meth:`Actuator.scale` call.

    ``applied`` holds the replica count now set for each model that was scaled; ``failed`` a reason for each model
    whose change could not be made after the actuator's own retries (the caller keeps the target and tries again
    later); ``missing`` the models the actuator has no workload for.
    """

    applied: Mapping[str, int] = field(default_factory=dict)
    failed: Mapping[str, str] = field(default_factory=dict)
    missing: tuple[str, ...] = ()


class Actuator(Protocol):
    """Reads and sets replica counts. Targets are absolute and idempotent: applying one twice is harmless."""

    async def observe(self) -> Mapping[str, WorkloadState]: ...

    async def scale(self, targets: Mapping[str, int]) -> ScaleResult: ...


class AuditSink(Protocol):
    """Where decision and dead-letter records go (a Kafka topic, a JSON-lines file). ``write`` returns once the
    records are durable enough for the caller to commit the input that caused them."""

    async def write(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None: ...


class Clock(Protocol):
    """The time the decision loop decides at, in seconds.

    ``now`` is the current time on this clock (wall time live; virtual or sped-up time in simulations and demos).
    ``wall_timeout`` turns a deadline on this clock into real seconds to wait, never negative (0 for a virtual
    clock that is advanced by hand).
    """

    def now(self) -> float: ...

    def wall_timeout(self, until: float) -> float: ...
