"""Test helpers: a Kafka config per test (fresh topic) and reading a topic back from the start."""

from __future__ import annotations

import itertools
import time

import msgspec

from shadowscale.agent.config import KafkaConfig
from shadowscale.agent.kafka import KafkaSource, ensure_topics

_ids = itertools.count()


async def fresh_topic(bootstrap: str, prefix: str, partitions: int = 2) -> tuple[KafkaConfig, str]:
    cfg = KafkaConfig(bootstrap=bootstrap, client_id="test-producers")
    topic = f"{prefix}-{next(_ids)}-{time.monotonic_ns()}"
    await ensure_topics(cfg, [topic], partitions)
    return cfg, topic


async def read_all(
    cfg: KafkaConfig, topic: str, n: int, timeout_s: float = 20.0
) -> list[tuple[bytes | None, bytes | None]]:
    """At least ``n`` records of ``topic`` from the start (a throw-away group), as ``(key, value)``."""
    fresh = msgspec.structs.replace(
        cfg, group_id=f"r-{time.monotonic_ns()}", session_timeout_ms=2000, heartbeat_interval_ms=500
    )
    src = KafkaSource(fresh, [topic])
    await src.start()
    out: list[tuple[bytes | None, bytes | None]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < deadline:
            for b in await src.poll(1000, 0.5):
                out.extend(zip(b.keys, b.values, strict=True))
    finally:
        await src.stop()
    return out
