"""Profiles in a compacted Kafka topic keyed by model: the :class:`~policies.profiling.ports.ProfileStore` the agent
starts from.

Why Kafka: the agent already depends on it, and a compacted topic is a durable key-value table with a history: the
broker keeps at least the latest record per key (older ones are compacted away), and a tombstone (a record with no
value) deletes a key. Every agent replica reads the whole table on start; there is no other database to run.

- **Load** (:meth:`KafkaProfileStore.load`): a consumer with no group (nothing to commit, every replica reads
  everything) is assigned every partition, seeks to the beginning and reads until its position reaches each
  partition's high-water mark, the end as the fetch responses report it (``ListOffsets``-based end offsets are not
  used: some Kafka-protocol brokers answer them wrongly, and the fetch's own high-water mark is exact on all).
  The latest record per key wins; a tombstone removes the key. A latest record this agent cannot read — a newer
  schema version, a malformed body, a key that does not match its body — is skipped with a warning and counted in
  :attr:`KafkaProfileStore.skipped` (by kind); the load goes on, and that model starts without a profile (an
  older record of it is superseded, and compaction may have removed it already, so it is not a fallback).
- **Put** (:meth:`KafkaProfileStore.put`): one record, key = model, ``acks=all``; returns once acknowledged. The
  idempotent producer stays off (not every Kafka-protocol broker offers it); a put repeated after a failure writes
  the same value again, which compaction makes harmless.
- **The topic** is created with ``cleanup.policy=compact`` if it is missing (:meth:`KafkaProfileStore.start`); one
  that already exists is used as it is.

This module and :mod:`agent.kafka` are the two that import aiokafka; its types never leave them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from shadowscale.agent.config import KafkaConfig
from shadowscale.agent.kafka import KafkaUnavailable, _security
from shadowscale.policies.profiling.codec import (
    MAX_BYTES,
    ProfileDecodeError,
    StoredProfile,
    decode_profile,
    encode_profile,
)

log = structlog.get_logger("shadowscale.profiles")


class ProfileStoreError(RuntimeError):
    """The profile topic could not be read to its end or written (the message says which topic and why)."""


class KafkaProfileStore:
    """A :class:`~policies.profiling.ports.ProfileStore` on the compacted topic ``topic``.

    ``start()`` creates the topic if needed and connects the producer; ``load()`` opens its own short-lived
    consumer; ``stop()`` closes the producer.
    """

    def __init__(
        self,
        cfg: KafkaConfig,
        topic: str,
        *,
        partitions: int = 1,
        create_topic: bool = True,
        load_timeout_s: float = 30.0,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        if partitions < 1:
            raise ValueError(f"profile topic {topic!r}: partitions must be >= 1, got {partitions}")
        self.cfg = cfg
        self.topic = topic
        self.partitions = partitions
        self.create_topic = create_topic
        self.load_timeout_s = load_timeout_s
        self.max_bytes = max_bytes
        self.skipped: Counter[str] = Counter()
        """Records :meth:`load` skipped, by kind: ``schema`` (a version this agent does not read), ``malformed``,
        ``keyless`` (no key: cannot say which model)."""
        self._producer: Any = None

    # -- lifecycle ----------------------------------------------------------------------------------------------
    async def start(self, timeout_s: float = 30.0) -> None:
        if self.create_topic:
            await self._ensure_topic(timeout_s)
        producer: Any = AIOKafkaProducer(
            bootstrap_servers=self.cfg.bootstrap,
            client_id=self.cfg.client_id,
            acks="all",
            enable_idempotence=False,
            max_request_size=self.max_bytes + 65_536,
            request_timeout_ms=30_000,
            **_security(self.cfg),
        )
        try:
            await asyncio.wait_for(producer.start(), timeout_s)
        except (KafkaError, OSError, TimeoutError) as e:
            await producer.stop()
            raise KafkaUnavailable(f"cannot reach Kafka at {self.cfg.bootstrap}: {e or type(e).__name__}") from e
        self._producer = producer

    async def stop(self, timeout_s: float = 10.0) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            await asyncio.wait_for(producer.stop(), timeout_s)
        except TimeoutError:
            log.warning("profile producer did not stop in time", topic=self.topic, timeout_s=timeout_s)

    async def _ensure_topic(self, timeout_s: float) -> None:
        admin: Any = AIOKafkaAdminClient(
            bootstrap_servers=self.cfg.bootstrap, client_id=self.cfg.client_id, **_security(self.cfg)
        )
        try:
            await asyncio.wait_for(admin.start(), timeout_s)
        except (KafkaError, OSError, TimeoutError) as e:
            await admin.close()
            raise KafkaUnavailable(f"cannot reach Kafka at {self.cfg.bootstrap}: {e or type(e).__name__}") from e
        try:
            if self.topic in set(await admin.list_topics()):
                return
            topic = NewTopic(
                name=self.topic,
                num_partitions=self.partitions,
                replication_factor=1,
                topic_configs={"cleanup.policy": "compact"},
            )
            with contextlib.suppress(TopicAlreadyExistsError):  # another replica created it first
                await admin.create_topics([topic])
            log.info("profile topic created", topic=self.topic, partitions=self.partitions, cleanup_policy="compact")
        finally:
            await admin.close()

    # -- the port -----------------------------------------------------------------------------------------------
    async def put(self, stored: StoredProfile) -> None:
        await self._send(stored.model, encode_profile(stored, max_bytes=self.max_bytes))

    async def delete(self, model: str) -> None:
        await self._send(model, None)

    async def _send(self, model: str, value: bytes | None) -> None:
        if self._producer is None:
            raise ProfileStoreError(f"profile store on {self.topic!r} is not started")
        try:
            await self._producer.send_and_wait(self.topic, value, key=model.encode())
        except KafkaError as e:
            what = "delete" if value is None else "put"
            raise ProfileStoreError(f"profile {what} of {model!r} on topic {self.topic!r} failed: {e!r}") from e

    async def load(self) -> dict[str, StoredProfile]:
        """Every model's latest readable profile, read from the beginning of the topic to its end."""
        consumer: Any = AIOKafkaConsumer(
            bootstrap_servers=self.cfg.bootstrap,
            group_id=None,
            client_id=self.cfg.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
            max_partition_fetch_bytes=self.max_bytes + 65_536,
            **_security(self.cfg),
        )
        deadline = time.monotonic() + self.load_timeout_s
        try:
            await asyncio.wait_for(consumer.start(), self.load_timeout_s)
        except (KafkaError, OSError, TimeoutError) as e:
            await consumer.stop()
            raise KafkaUnavailable(f"cannot reach Kafka at {self.cfg.bootstrap}: {e or type(e).__name__}") from e
        try:
            return await self._read_all(consumer, deadline)
        finally:
            await consumer.stop()

    async def _read_all(self, consumer: Any, deadline: float) -> dict[str, StoredProfile]:
        topics = await consumer.topics()
        parts = consumer.partitions_for_topic(self.topic) if self.topic in topics else None
        if not parts:
            log.info("no profile topic yet; starting without profiles", topic=self.topic)
            return {}
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        latest: dict[str, tuple[int, int, bytes | None]] = {}
        records = 0
        while True:
            # a partition is read once a fetch has reported its high-water mark and the position reached it
            behind = []
            for tp in tps:
                hw = consumer.highwater(tp)
                if hw is None or await consumer.position(tp) < hw:
                    behind.append(tp)
            if not behind:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                where = ", ".join(f"{tp.partition}: high-water {consumer.highwater(tp)}" for tp in behind)
                raise ProfileStoreError(
                    f"profile topic {self.topic!r} not read to its end within {self.load_timeout_s:g} s "
                    f"({records} records read; partitions behind: {where})"
                )
            batches = await consumer.getmany(*behind, timeout_ms=int(min(left, 0.1) * 1000))
            for msgs in batches.values():
                for m in msgs:
                    records += 1
                    if m.key is None:
                        self._skip("keyless", m.partition, m.offset, "a profile record needs the model as its key")
                        continue
                    latest[m.key.decode(errors="replace")] = (m.partition, m.offset, m.value)
        out: dict[str, StoredProfile] = {}
        for model, (partition, offset, value) in latest.items():
            if value is None:
                continue  # tombstone: the model's profile was deleted
            try:
                out[model] = decode_profile(value, key=model)
            except ProfileDecodeError as e:
                # No fallback to an older record of the model: it was superseded (and compaction may already have
                # removed it), so the model starts without a profile, on its configured capacity.
                self._skip(e.kind, partition, offset, str(e), model=model)
        log.info("profiles loaded", topic=self.topic, records=records, models=len(out), skipped=dict(self.skipped))
        return out

    def _skip(self, kind: str, partition: int, offset: int, why: str, *, model: str | None = None) -> None:
        self.skipped[kind] += 1
        log.warning(
            "profile record skipped",
            topic=self.topic,
            kind=kind,
            model=model,
            partition=partition,
            offset=offset,
            reason=why[:500],
        )
