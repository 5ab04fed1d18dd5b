"""Hand-written fakes for the agent's ports (no MagicMock): a virtual clock, a scripted source, a recording
actuator and an in-memory sink."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from shadowscale.agent.config import AgentConfig, parse_config
from shadowscale.agent.events import TRAFFIC_V1, TrafficEvent, encode
from shadowscale.policies.ports import Position, RecordBatch, ScaleResult, WorkloadState


class Msg(NamedTuple):
    """One raw message, for writing tests; :func:`batches` groups them the way a source hands them out."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def batches(msgs: Sequence[Msg]) -> list[RecordBatch]:
    """Consecutive messages of the same (topic, partition) as one batch each, in order."""
    out: list[RecordBatch] = []
    for (topic, part), group in itertools.groupby(msgs, key=lambda m: (m.topic, m.partition)):
        g = list(group)
        out.append(RecordBatch(topic, part, [m.offset for m in g], [m.key for m in g], [m.value for m in g]))
    return out


class VirtualClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    def wall_timeout(self, until: float) -> float:
        return 0.0


@dataclass
class Step:
    """What the scripted source hands out at one poll: the clock is set to ``at`` first."""

    at: float
    records: list[Msg] = field(default_factory=list)


class ScriptedSource:
    """Hands out ``steps`` one per poll (setting the clock), then sets ``stop`` and returns nothing."""

    def __init__(
        self,
        clock: VirtualClock,
        steps: Sequence[Step],
        stop: asyncio.Event,
        owned: set[str] | None = None,
        partitions: Mapping[str, int] | None = None,
    ):
        self.clock = clock
        self.steps = list(steps)
        self.stop = stop
        self.owned = owned
        self.partitions = partitions
        """Model -> traffic partition (``position_of``); None: the source cannot say (as a non-Kafka source)."""
        self.commits: list[dict[Position, int]] = []
        self.polls = 0

    async def poll(self, max_records: int, timeout_s: float) -> Sequence[RecordBatch]:
        await asyncio.sleep(0)
        if self.polls >= len(self.steps):
            self.stop.set()
            return []
        step = self.steps[self.polls]
        self.polls += 1
        self.clock.t = step.at
        return batches(step.records)

    async def commit(self, offsets: Mapping[Position, int]) -> None:
        self.commits.append(dict(offsets))

    def owns(self, keys: Sequence[str]) -> frozenset[str]:
        return frozenset(keys) if self.owned is None else frozenset(k for k in keys if k in self.owned)

    def position_of(self, key: str) -> Position | None:
        return None if self.partitions is None else ("shadowscale.traffic", self.partitions[key])

    def committed(self) -> dict[Position, int]:
        out: dict[Position, int] = {}
        for c in self.commits:
            out.update(c)
        return out


class RecordingActuator:
    """Keeps replica counts; ``ready`` follows replicas unless ``ready_fn`` says otherwise; can fail on demand."""

    def __init__(self, replicas: Mapping[str, int], *, ready_fn: Callable[[str, int], int] | None = None):
        self.replicas = dict(replicas)
        self.ready_fn = ready_fn
        self.calls: list[dict[str, int]] = []
        self.fail_next = 0
        self.always_fail: set[str] = set()
        self.settings: dict[str, dict[str, Any]] = {}
        """Per model: extra :class:`WorkloadState` fields (min_replicas, max_replicas, hold) as a workload's
        annotations would set them."""
        self.observations = 0

    async def observe(self) -> Mapping[str, WorkloadState]:
        self.observations += 1
        return {
            m: WorkloadState(m, r, r if self.ready_fn is None else self.ready_fn(m, r), **self.settings.get(m, {}))
            for m, r in self.replicas.items()
        }

    async def scale(self, targets: Mapping[str, int]) -> ScaleResult:
        self.calls.append(dict(targets))
        if self.fail_next > 0:
            self.fail_next -= 1
            return ScaleResult(failed={m: "HTTP 500 (injected)" for m in targets})
        applied = {}
        missing = []
        failed = {m: "HTTP 403 (injected)" for m in targets if m in self.always_fail}
        for m, r in targets.items():
            if m in failed:
                continue
            if m not in self.replicas:
                missing.append(m)
                continue
            self.replicas[m] = r
            applied[m] = r
        return ScaleResult(applied=applied, failed=failed, missing=tuple(missing))


class MemorySink:
    def __init__(self) -> None:
        self.records: dict[str, list[tuple[bytes | None, bytes]]] = {}
        self.fail_next = 0

    async def write(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise ConnectionError("broker down (injected)")
        self.records.setdefault(topic, []).extend(records)


def config(models: Sequence[str] = ("m1",), **over: Any) -> AgentConfig:
    data: dict[str, Any] = {
        "models": [{"name": m, "capacity_rps": 10.0, "min_replicas": 1, "max_replicas": 50} for m in models],
        "policy": "kpa",
        "http": {"enabled": False},
        "agent_id": "test-agent",
        "guards": {"scale_down_cooldown_s": 0.0},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    return parse_config(data, source="test")


def traffic(model: str, t: float, *, pod: str = "p0", window_s: float = 1.0, arrivals: int = 0, **kw: Any) -> bytes:
    fields: dict[str, Any] = {"completions": arrivals, **kw}
    return encode(
        TrafficEvent(
            schema=TRAFFIC_V1, model=model, pod=pod, event_time=t, window_s=window_s, arrivals=arrivals, **fields
        )
    )


def record(value: bytes | None, offset: int, *, topic: str = "shadowscale.traffic", partition: int = 0) -> Msg:
    return Msg(topic, partition, offset, b"k", value)
