"""The profiler's ports: the trial runner and the profile store.

The trial runner has one method, implemented by the replay runner (datasets), the local runner (a real model
server on this machine) and the Kubernetes shadow runner.

A runner *measures*; the planner decides. It never raises for a trial that went wrong (crash, out of memory,
failed start, SLO never met, timeout): it returns a result saying so, and always cleans up what it created.
Declaring an ``async`` method needs no event loop, so this module stays pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from shadowscale.policies.profiling.codec import MAX_BYTES, StoredProfile, decode_profile, encode_profile
from shadowscale.policies.profiling.types import Trial, TrialResult


class TrialRunner(Protocol):
    """Runs one profiling trial and returns what it measured (or why it could not)."""

    async def run_trial(self, trial: Trial) -> TrialResult: ...


class ProfileStore(Protocol):
    """Where profiles outlive the agent: the latest :class:`~policies.profiling.codec.StoredProfile` per model.

    Implemented by a compacted Kafka topic keyed by model (:class:`agent.profiling.store.KafkaProfileStore`) and by
    :class:`MemoryProfileStore` (tests, the simulator). ``load`` returns what an agent starting now should believe;
    a record it cannot read is skipped (and reported by the implementation), never fatal. ``put`` returns once the
    profile is durable; ``delete`` removes a model's profile (a tombstone in the topic).
    """

    async def load(self) -> Mapping[str, StoredProfile]: ...

    async def put(self, stored: StoredProfile) -> None: ...

    async def delete(self, model: str) -> None: ...


class MemoryProfileStore:
    """A :class:`ProfileStore` in memory that keeps each model's *encoded* record, so whatever uses it also proves
    that its profiles survive the codec (a profile the Kafka store could not write fails here too)."""

    def __init__(self, *, max_bytes: int = MAX_BYTES) -> None:
        self.records: dict[str, bytes] = {}
        self.max_bytes = max_bytes
        self.puts = 0

    async def load(self) -> dict[str, StoredProfile]:
        return {m: decode_profile(v, key=m) for m, v in self.records.items()}

    async def put(self, stored: StoredProfile) -> None:
        self.records[stored.model] = encode_profile(stored, max_bytes=self.max_bytes)
        self.puts += 1

    async def delete(self, model: str) -> None:
        self.records.pop(model, None)
