"""The one module that talks to aiokafka (it ships no type hints): its types never leave this file.

- :class:`KafkaSource` — an :class:`~policies.ports.EventSource` over a consumer group: batches from ``getmany``,
  explicit commits (auto-commit off), and ``owns`` from the current partition assignment (keys are routed to
  partitions with Kafka's default murmur2 partitioner, as producers keying by model do).
- :class:`KafkaSink` — an :class:`~policies.ports.AuditSink` and the replayer's producer: sends a batch and returns
  once the broker acknowledged all of it (``acks=all``).
- :class:`KafkaTail` — every partition of one topic from its end, without a consumer group: each agent replica
  sees every record published after it started (the profiler's trial results, which only the replica waiting for
  that trial can use).
- :func:`ensure_topics` — create topics that do not exist yet.

Nothing here depends on a particular broker: the idempotent producer is left off because not every
Kafka-protocol broker offers it, and the loop is at-least-once by design.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import structlog
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    TopicAlreadyExistsError,
)
from aiokafka.partitioner import murmur2

from shadowscale.agent.config import KafkaConfig
from shadowscale.policies.ports import Position, RecordBatch

log = structlog.get_logger("shadowscale.kafka")


class KafkaUnavailable(RuntimeError):
    """The broker could not be reached (bad address, broker down) within the start-up time limit."""


def _security(cfg: KafkaConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"security_protocol": cfg.security_protocol}
    if cfg.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=cfg.ssl_cafile)
        if cfg.ssl_certfile is not None:  # mutual TLS: the brokers check the agent's certificate
            try:
                context.load_cert_chain(cfg.ssl_certfile, cfg.ssl_keyfile, cfg.ssl_key_password)
            except (OSError, ssl.SSLError) as e:
                raise KafkaUnavailable(
                    f"cannot load the client certificate {cfg.ssl_certfile} / key {cfg.ssl_keyfile}: {e}"
                ) from None
        out["ssl_context"] = context
    if cfg.security_protocol.startswith("SASL"):
        out["sasl_mechanism"] = cfg.sasl_mechanism
        out["sasl_plain_username"] = cfg.sasl_username
        out["sasl_plain_password"] = cfg.sasl_password
    return out


def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key`` among ``partitions`` partitions."""
    return int((murmur2(key.encode()) & 0x7FFFFFFF) % partitions)


class KafkaSource:
    """Consumer-group source over ``topics``; ``owns`` is answered for keys of ``key_topic``."""

    def __init__(self, cfg: KafkaConfig, topics: Sequence[str], *, key_topic: str | None = None) -> None:
        self.cfg = cfg
        self.topics = list(topics)
        self.key_topic = key_topic or self.topics[0]
        self.assigned_event = asyncio.Event()
        """Set while this consumer has partitions assigned (cleared on revocation)."""
        self.on_revoke: Callable[[], Awaitable[None]] | None = None
        """Awaited (bounded by ``revoke_timeout_s``) when partitions are about to be taken away: the decision loop
        commits what it has handled, so the new owner does not replay it as a burst of stale traffic."""
        self.revoke_timeout_s = 5.0
        self._consumer: Any = AIOKafkaConsumer(
            bootstrap_servers=cfg.bootstrap,
            group_id=cfg.group_id,
            client_id=cfg.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=cfg.max_batch,
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            fetch_max_wait_ms=cfg.fetch_max_wait_ms,
            **_security(cfg),
        )
        self._owned_cache: tuple[frozenset[Any], int, tuple[str, ...], frozenset[str]] | None = None
        self._consumer.subscribe(self.topics, listener=_Listener(self))

    async def start(self, timeout_s: float = 30.0) -> None:
        try:
            await asyncio.wait_for(self._consumer.start(), timeout_s)
        except (KafkaError, OSError, TimeoutError) as e:
            await self._consumer.stop()
            raise KafkaUnavailable(f"cannot reach Kafka at {self.cfg.bootstrap}: {e or type(e).__name__}") from e

    async def stop(self, timeout_s: float = 10.0) -> None:
        try:
            await asyncio.wait_for(self._consumer.stop(), timeout_s)
        except TimeoutError:
            log.warning("consumer did not stop in time", timeout_s=timeout_s)

    async def poll(self, max_records: int, timeout_s: float) -> Sequence[RecordBatch]:
        batches = await self._consumer.getmany(timeout_ms=max(int(timeout_s * 1000), 0), max_records=max_records)
        return [
            RecordBatch(
                tp.topic,
                tp.partition,
                [m.offset for m in msgs],
                [m.key for m in msgs],
                [m.value for m in msgs],
            )
            for tp, msgs in batches.items()
            if msgs
        ]

    async def commit(self, offsets: Mapping[Position, int]) -> None:
        """Commit next offsets for the partitions still assigned (a revoked one is the new owner's to replay)."""
        assigned = self._consumer.assignment()
        tps = {TopicPartition(t, p): o for (t, p), o in offsets.items()}
        mine = {tp: o for tp, o in tps.items() if tp in assigned}
        if not mine:
            return
        try:
            await self._consumer.commit(mine)
        except (CommitFailedError, IllegalStateError) as e:
            log.warning("commit failed after a rebalance; the records will be delivered again", error=str(e))

    def owns(self, keys: Sequence[str]) -> frozenset[str]:
        """The keys routed to partitions assigned to this consumer; none while a rebalance is revoking them."""
        if not self.assigned_event.is_set():
            return frozenset()
        assigned = frozenset(self._consumer.assignment())
        parts = self._consumer.partitions_for_topic(self.key_topic)
        n = len(parts) if parts else 0
        cache = self._owned_cache
        key_tuple = tuple(keys)
        if cache is not None and cache[0] == assigned and cache[1] == n and cache[2] == key_tuple:
            return cache[3]
        mine = {tp.partition for tp in assigned if tp.topic == self.key_topic}
        owned = frozenset(k for k in keys if n and partition_for(k, n) in mine)
        self._owned_cache = (assigned, n, key_tuple, owned)
        return owned

    def position_of(self, key: str) -> Position | None:
        """The ``(topic, partition)`` of ``key_topic`` that carries ``key`` (None before the topic is known)."""
        parts = self._consumer.partitions_for_topic(self.key_topic)
        return (self.key_topic, partition_for(key, len(parts))) if parts else None

    def highwaters(self) -> dict[Position, int]:
        """The broker's high watermark (next offset) of each assigned partition, as of the last fetch."""
        out = {}
        for tp in self._consumer.assignment():
            hw = self._consumer.highwater(tp)
            if hw is not None:
                out[(tp.topic, tp.partition)] = int(hw)
        return out

    def assigned(self) -> int:
        """Partitions currently assigned to this consumer."""
        return len(self._consumer.assignment())


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: Any) -> None:
        src = self.source
        src.assigned_event.clear()
        if src.on_revoke is None or not revoked:
            return
        try:  # the partitions are still ours until this returns: commit what was handled
            await asyncio.wait_for(src.on_revoke(), src.revoke_timeout_s)
        except Exception as e:  # a slow or failing commit must not hold the rebalance: the new owner replays
            log.warning("commit before rebalance failed", error=f"{type(e).__name__}: {e}")

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned", partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))
        if assigned:
            self.source.assigned_event.set()


class KafkaSink:
    """Producer for decisions, dead letters and replayed events; ``write`` waits for the broker's acks."""

    def __init__(self, cfg: KafkaConfig, *, linger_ms: int = 0) -> None:
        self.cfg = cfg
        self._producer: Any = AIOKafkaProducer(
            bootstrap_servers=cfg.bootstrap,
            client_id=cfg.client_id,
            acks="all",
            enable_idempotence=False,
            linger_ms=linger_ms,
            max_batch_size=262_144,
            request_timeout_ms=30_000,
            **_security(cfg),
        )

    async def start(self, timeout_s: float = 30.0) -> None:
        try:
            await asyncio.wait_for(self._producer.start(), timeout_s)
        except (KafkaError, OSError, TimeoutError) as e:
            await self._producer.stop()
            raise KafkaUnavailable(f"cannot reach Kafka at {self.cfg.bootstrap}: {e or type(e).__name__}") from e

    async def stop(self, timeout_s: float = 10.0) -> None:
        try:
            await asyncio.wait_for(self._producer.stop(), timeout_s)
        except TimeoutError:
            log.warning("producer did not stop in time (unsent records dropped)", timeout_s=timeout_s)

    async def write(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        """Send ``(key, value)`` records and wait until the broker acknowledged all of them.

        Records are routed by key with Kafka's default partitioner (keyless ones round-robin) and appended to one
        batch per partition: far cheaper than a ``send`` per record.
        """
        if not records:
            return
        producer = self._producer
        parts = sorted(await producer.partitions_for(topic))
        n = len(parts)
        by_part: dict[int, list[tuple[bytes | None, bytes]]] = {}
        for j, (key, value) in enumerate(records):
            p = parts[(murmur2(key) & 0x7FFFFFFF) % n] if key is not None else parts[j % n]
            by_part.setdefault(p, []).append((key, value))
        futures = []
        for p, recs in by_part.items():
            batch = producer.create_batch()
            for key, value in recs:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    futures.append(await producer.send_batch(batch, topic, partition=p))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        raise ValueError(f"a record of {len(value)} bytes does not fit in one batch")
            if batch.record_count():
                futures.append(await producer.send_batch(batch, topic, partition=p))
        await asyncio.gather(*futures)

    async def write_acked(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> list[tuple[int, int]]:
        """Like :meth:`write`, one batch per record's partition, and return each record's ``(partition, offset)``
        as the broker acknowledged it (benchmarks count from these)."""
        producer = self._producer
        parts = sorted(await producer.partitions_for(topic))
        out: list[tuple[int, int]] = [(-1, -1)] * len(records)
        pending = []
        for j, (key, value) in enumerate(records):
            p = parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)] if key is not None else parts[j % len(parts)]
            batch = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                raise ValueError(f"a record of {len(value)} bytes does not fit in one batch")
            pending.append((j, await producer.send_batch(batch, topic, partition=p)))
        for j, fut in pending:
            meta = await fut
            out[j] = (int(meta.partition), int(meta.offset))
        return out

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """Send one message and wait for its acknowledgement (the lowest-latency path)."""
        await self._producer.send_and_wait(topic, value, key=key)


class KafkaTail:
    """Reads every partition of ``topic`` from where it ends at :meth:`start`, with no consumer group and no commits.

    A group would hand each record to one member; a waiter for one particular record (a trial's result) must see
    all of them, whichever replica it runs in. Records published before :meth:`start` are not read (on tansu the
    last stored batch may come again: readers must tolerate a record they did not wait for). The partitions are
    those the topic has at start.
    """

    def __init__(self, cfg: KafkaConfig, topic: str) -> None:
        self.cfg = cfg
        self.topic = topic
        self._consumer: Any = AIOKafkaConsumer(
            bootstrap_servers=cfg.bootstrap,
            group_id=None,
            client_id=cfg.client_id,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=cfg.fetch_max_wait_ms,
            **_security(cfg),
        )

    async def start(self, timeout_s: float = 30.0) -> None:
        """Connect, assign every partition and fix each position at the current end (before returning, so a
        record published after ``start`` is never skipped)."""
        try:
            await asyncio.wait_for(self._consumer.start(), timeout_s)
            topics = await asyncio.wait_for(self._consumer.topics(), timeout_s)
        except (KafkaError, OSError, TimeoutError) as e:
            await self._consumer.stop()
            raise KafkaUnavailable(f"cannot reach Kafka at {self.cfg.bootstrap}: {e or type(e).__name__}") from e
        parts = self._consumer.partitions_for_topic(self.topic) if self.topic in topics else None
        if not parts:
            await self._consumer.stop()
            raise KafkaUnavailable(f"topic {self.topic!r} does not exist on {self.cfg.bootstrap} (create it first)")
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        for tp in tps:
            await self._consumer.position(tp)

    async def stop(self, timeout_s: float = 10.0) -> None:
        try:
            await asyncio.wait_for(self._consumer.stop(), timeout_s)
        except TimeoutError:
            log.warning("tail consumer did not stop in time", topic=self.topic, timeout_s=timeout_s)

    async def poll_batches(self, max_records: int, timeout_s: float) -> list[RecordBatch]:
        """The records that arrived, as batches per partition (for the decision loop's GPU events: never committed,
        every replica reads them all)."""
        batches = await self._consumer.getmany(timeout_ms=max(int(timeout_s * 1000), 0), max_records=max_records)
        return [
            RecordBatch(tp.topic, tp.partition, [m.offset for m in ms], [m.key for m in ms], [m.value for m in ms])
            for tp, ms in batches.items()
            if ms
        ]

    async def poll(self, max_records: int, timeout_s: float) -> list[tuple[bytes | None, bytes | None]]:
        """``(key, value)`` of the records that arrived, in partition order (empty after ``timeout_s``)."""
        batches = await self._consumer.getmany(timeout_ms=max(int(timeout_s * 1000), 0), max_records=max_records)
        return [(m.key, m.value) for msgs in batches.values() for m in msgs]


class CommittedOffsets:
    """Reads consumer group ``group``'s committed offsets (the broker's record) without joining the group: a
    consumer that never subscribes only asks the coordinator (OffsetFetch)."""

    def __init__(self, cfg: KafkaConfig, group: str) -> None:
        self._consumer: Any = AIOKafkaConsumer(
            bootstrap_servers=cfg.bootstrap,
            group_id=group,
            client_id=f"{cfg.client_id}-observer",
            enable_auto_commit=False,
            **_security(cfg),
        )

    async def start(self, timeout_s: float = 10.0) -> None:
        await asyncio.wait_for(self._consumer.start(), timeout_s)

    async def read(self, topic: str, partitions: Sequence[int], timeout_s: float = 2.0) -> dict[int, int]:
        """Committed next offset per partition of ``topic`` (partitions with no commit are left out)."""
        out = {}
        for p in partitions:
            off = await asyncio.wait_for(self._consumer.committed(TopicPartition(topic, p)), timeout_s)
            if off is not None and off >= 0:
                out[p] = int(off)
        return out

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._consumer.stop(), 5.0)


async def read_topic(
    cfg: KafkaConfig, topic: str, ends: Mapping[int, int] | None = None, timeout_s: float = 30.0, idle_s: float = 1.5
) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """Every record of ``topic`` below ``ends`` (partition -> next offset; None: every partition, until nothing new
    came for ``idle_s``), as ``(partition, offset, key, value)``, read without a consumer group (stops at
    ``timeout_s`` with what it has)."""
    consumer: Any = AIOKafkaConsumer(
        bootstrap_servers=cfg.bootstrap,
        group_id=None,
        client_id=cfg.client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **_security(cfg),
    )
    out: list[tuple[int, int, bytes | None, bytes | None]] = []
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
        if ends is None:
            await asyncio.wait_for(consumer.topics(), timeout_s)
            parts = consumer.partitions_for_topic(topic) or set()
            limit = {p: 2**62 for p in parts}
        else:
            limit = {p: end for p, end in ends.items() if end > 0}
        tps = [TopicPartition(topic, p) for p in sorted(limit)]
        if not tps:
            return out
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        left = set(limit)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last_new = loop.time() + 3.0  # the first fetch may be slow: idle counts from 3 s in, or from a record
        while left and loop.time() < deadline and (ends is not None or loop.time() - last_new < idle_s):
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for tp, msgs in batches.items():
                if msgs:
                    last_new = loop.time()
                for m in msgs:
                    if m.offset < limit[tp.partition]:
                        out.append((tp.partition, m.offset, m.key, m.value))
                if msgs and msgs[-1].offset + 1 >= limit[tp.partition]:
                    left.discard(tp.partition)
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
    return out


async def ensure_topics(cfg: KafkaConfig, names: Sequence[str], partitions: int) -> None:
    """Create the topics in ``names`` that do not exist yet, with ``partitions`` partitions each."""
    admin: Any = AIOKafkaAdminClient(bootstrap_servers=cfg.bootstrap, client_id=cfg.client_id, **_security(cfg))
    try:
        await admin.start()
    except (KafkaError, OSError) as e:
        await admin.close()
        raise KafkaUnavailable(f"cannot reach Kafka at {cfg.bootstrap}: {e or type(e).__name__}") from e
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in dict.fromkeys(names) if n not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(name=n, num_partitions=partitions, replication_factor=1) for n in missing]
                )
    finally:
        await admin.close()
