"""Issue 3's fault requirement: restart the broker mid-stream, the agent reconnects by itself and resumes from its
committed offsets, nothing lost (at-least-once: duplicates allowed).

The broker is the bundled tansu on durable storage (``s3://`` on a local SeaweedFS, see ``durable_broker``), killed
with SIGTERM while a producer keeps writing and the agent keeps consuming, then started again on the same port with
the same storage. The agent, its consumer and its audit producer are never restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from agent_fakes import traffic
from aiokafka import AIOKafkaConsumer, TopicPartition
from durable_broker import DurableBroker, SeaweedS3

from shadowscale.agent.clock import WallClock
from shadowscale.agent.config import AgentConfig, KafkaConfig, parse_config
from shadowscale.agent.core import services_of
from shadowscale.agent.kafka import KafkaSink, KafkaSource, ensure_topics
from shadowscale.agent.loop import Agent
from shadowscale.policies.ports import RecordBatch
from shadowscale.simulators.actuator import SimulatedCluster

pytestmark = pytest.mark.asyncio

MODELS = [f"m{k}" for k in range(4)]
PARTITIONS = 2
N_BEFORE = 300
"""Events on the topic before the agent starts; some of them are committed before the broker goes down."""
N_STREAM = 600
"""Events produced while the agent runs, in chunks, across the broker's death and restart."""
CHUNK = 20
DOWN_S = 4.0
"""How long the broker stays down (twice the consumer's 2 s session timeout)."""


# -- the durable broker -------------------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def durable(s3: SeaweedS3) -> AsyncIterator[DurableBroker]:
    broker = DurableBroker(s3)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# -- the agent under test -----------------------------------------------------------------------------------------


def agent_config(bootstrap: str) -> AgentConfig:
    stamp = time.monotonic_ns()
    return parse_config(
        {
            "policy": "kpa",
            "agent_id": "restart-it",
            "models": [{"name": m, "capacity_rps": 10.0, "max_replicas": 20} for m in MODELS],
            "http": {"enabled": False},
            "kafka": {
                "bootstrap": bootstrap,
                "group_id": f"restart-{stamp}",
                "topics": {
                    "traffic": f"traffic-{stamp}",
                    "gpu": f"gpu-{stamp}",
                    "decisions": f"decisions-{stamp}",
                    "dead_letter": f"dead-{stamp}",
                },
                "session_timeout_ms": 2000,
                "heartbeat_interval_ms": 500,
                # commits lag the deliveries a little, so some are in flight but uncommitted at the kill
                "commit_interval_s": 0.3,
                "max_batch": 50,
            },
        }
    )


Ident = tuple[str, str, float]
"""What makes a traffic event unique (the agent's windows deduplicate on it): model, pod, event time."""


@dataclass(frozen=True, slots=True)
class Delivery:
    at: float
    partition: int
    offset: int
    ident: Ident


class SpySource(KafkaSource):
    """The agent's real Kafka source; remembers every record it handed to the loop (the loop ingests each one)."""

    def __init__(self, cfg: KafkaConfig, topics: Sequence[str]) -> None:
        super().__init__(cfg, topics)
        self.deliveries: list[Delivery] = []

    async def poll(self, max_records: int, timeout_s: float) -> Sequence[RecordBatch]:
        batches = await super().poll(max_records, timeout_s)
        now = time.monotonic()
        for b in batches:
            for offset, value in zip(b.offsets, b.values, strict=True):
                d = json.loads(value or b"{}")
                self.deliveries.append(Delivery(now, b.partition, offset, (d["model"], d["pod"], d["event_time"])))
        return batches


@dataclass
class Running:
    agent: Agent
    source: SpySource
    task: asyncio.Task[None]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    longest_stall_s: float = 0.0
    """Longest time the loop went without starting an iteration (sampled)."""

    async def watch(self) -> None:
        while not self.task.done():
            self.longest_stall_s = max(self.longest_stall_s, time.monotonic() - self.agent.last_iteration)
            await asyncio.sleep(0.05)

    def check(self) -> None:
        if self.task.done():
            raise AssertionError(f"the agent's loop ended: {self.task.exception()!r}")


@contextlib.asynccontextmanager
async def running_agent(cfg: AgentConfig) -> AsyncIterator[Running]:
    source = SpySource(cfg.kafka, [cfg.kafka.topics.traffic, cfg.kafka.topics.gpu])
    sink = KafkaSink(cfg.kafka)
    await source.start()
    await sink.start()
    agent = Agent(cfg, source, SimulatedCluster(services_of(cfg), WallClock()), sink, WallClock())
    stop = asyncio.Event()
    run = Running(agent, source, asyncio.create_task(agent.run(stop), name="agent-under-test"), stop)
    watcher = asyncio.create_task(run.watch(), name="stall-watcher")
    try:
        yield run
    finally:
        stop.set()
        try:
            await asyncio.wait_for(run.task, 15)
        finally:
            await watcher
            await source.stop()
            await sink.stop()


async def wait_for(cond: Callable[[], bool], what: str, timeout_s: float, *, run: Running | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if run is not None:
            run.check()
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g} s waiting for {what}"
        await asyncio.sleep(0.05)


# -- producing and reading back -----------------------------------------------------------------------------------


def make_events(n: int, start: int, t0: float) -> list[tuple[bytes, bytes, Ident]]:
    """``n`` distinct traffic events (unique pod and event time per model), keyed by model."""
    out = []
    for k in range(start, start + n):
        model, pod, at = MODELS[k % len(MODELS)], f"p{k % 3}", round(t0 + k * 0.001, 6)
        out.append((model.encode(), traffic(model, at, pod=pod, arrivals=1), (model, pod, at)))
    return out


@dataclass
class Producer:
    """Writes chunks at a steady pace; a chunk the broker did not acknowledge is sent again (at-least-once)."""

    sink: KafkaSink
    topic: str
    events: list[tuple[bytes, bytes, Ident]]
    acked: int = 0
    retries: int = 0
    errors: list[str] = field(default_factory=list)

    async def run(self, pace_s: float = 0.05) -> None:
        for i in range(0, len(self.events), CHUNK):
            chunk = [(k, v) for k, v, _ in self.events[i : i + CHUNK]]
            while True:
                try:
                    await asyncio.wait_for(self.sink.write(self.topic, chunk), 10)
                    break
                except Exception as e:
                    self.retries += 1
                    self.errors.append(f"{type(e).__name__}: {e}")
                    await asyncio.sleep(0.2)
            self.acked += len(chunk)
            await asyncio.sleep(pace_s)


async def committed(cfg: KafkaConfig) -> dict[int, int]:
    """The group's committed next offsets on the traffic topic, by partition (as the broker has them now).

    Asked through a consumer that never joins the group (no subscription): tansu 0.6 answers the admin client's
    OffsetFetch in a form aiokafka 0.14 cannot decode, the consumer's own OffsetFetch works."""
    consumer: Any = AIOKafkaConsumer(
        bootstrap_servers=cfg.bootstrap, group_id=cfg.group_id, client_id="restart-it-probe", enable_auto_commit=False
    )
    await consumer.start()
    try:
        out = {}
        for p in range(PARTITIONS):
            offset = await consumer.committed(TopicPartition(cfg.topics.traffic, p))
            if offset is not None:
                out[p] = int(offset)
        return out
    finally:
        await consumer.stop()


# -- the test -----------------------------------------------------------------------------------------------------


async def test_broker_restart_mid_stream_resumes_from_committed_offsets(durable: DurableBroker) -> None:
    t_start = time.monotonic()
    cfg = agent_config(durable.bootstrap)
    t = cfg.kafka.topics
    await ensure_topics(cfg.kafka, [t.traffic, t.gpu, t.decisions, t.dead_letter], PARTITIONS)
    now = time.time()
    before = make_events(N_BEFORE, 0, now)
    stream = make_events(N_STREAM, N_BEFORE, now)
    produced = {ident for _, _, ident in before + stream}
    assert len(produced) == N_BEFORE + N_STREAM

    seed = KafkaSink(cfg.kafka)
    await seed.start()
    try:
        await seed.write(t.traffic, [(k, v) for k, v, _ in before])
    finally:
        await seed.stop()

    producer_sink = KafkaSink(cfg.kafka)
    await producer_sink.start()
    producer = Producer(producer_sink, t.traffic, stream)
    producing: asyncio.Task[None] | None = None
    try:
        async with running_agent(cfg) as run:
            # 1. the agent consumes and commits
            await wait_for(lambda: run.agent.counts.commits >= 1, "a first commit", 20, run=run)
            first = await committed(cfg.kafka)
            assert sum(first.values()) > 0, first

            # 2. events keep coming; the broker dies mid-stream and comes back on the same port, same storage
            producing = asyncio.create_task(producer.run(), name="producer")
            await wait_for(lambda: producer.acked >= 4 * CHUNK, "the stream to be flowing", 20, run=run)
            at_kill = await committed(cfg.kafka)
            assert all(at_kill.get(p, 0) >= o for p, o in first.items()), (first, at_kill)
            port = durable.port
            durable.stop()
            killed_at = time.monotonic()
            acked_at_kill = producer.acked
            await asyncio.sleep(DOWN_S)
            run.check()
            assert durable.start() == f"127.0.0.1:{port}"
            restarted_at = time.monotonic()

            # 3. the committed offsets survived the restart
            after = await committed(cfg.kafka)
            assert after and all(after.get(p, 0) >= o for p, o in at_kill.items()), (at_kill, after)

            # 4. the agent reconnects by itself and catches up with everything produced, before and after
            await asyncio.wait_for(producing, 40)
            seen = run.source.deliveries
            await wait_for(lambda: {d.ident for d in seen} >= produced, "every event to reach the agent", 30, run=run)

            def delivered_end() -> dict[int, int]:
                return {p: max(d.offset for d in seen if d.partition == p) + 1 for p in {d.partition for d in seen}}

            async def all_committed() -> tuple[dict[int, int], dict[int, int]]:
                """Wait until the group's commits reach the end of what was delivered, on every partition."""
                deadline = time.monotonic() + 15
                while True:
                    got, end = await committed(cfg.kafka), delivered_end()
                    if got == end:
                        return got, end
                    assert time.monotonic() < deadline, f"commits never reached the end: {got} != {end}"
                    run.check()
                    await asyncio.sleep(0.2)

            final, end = await all_committed()
            counts = run.agent.counts
            stats = run.agent.core.windows.stats
    finally:
        if producing is not None and not producing.done():
            producing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producing
        await producer_sink.stop()

    # nothing lost: every produced event was handed to the agent and accepted exactly once by its windows
    delivered = {d.ident for d in seen}
    assert delivered == produced
    assert stats.accepted == len(produced), stats
    assert stats.late == 0 and counts.dead_lettered == 0, (stats, counts)
    assert counts.events_in == len(seen) and counts.traffic == len(seen)
    assert counts.events_in - stats.duplicates == len(produced), (counts, stats)  # the rest were duplicates

    # the broker really was away while events were being produced, and events produced across the outage arrived
    assert producer.acked == N_STREAM and acked_at_kill < N_STREAM, (acked_at_kill, producer.acked)
    assert any(d.at > restarted_at for d in seen), "nothing was delivered after the restart"

    # resumed from the committed offsets, not from zero: nothing under the offsets committed when the broker was
    # killed was delivered again after the kill
    replayed = [d for d in seen if d.at > killed_at and d.offset < at_kill.get(d.partition, 0)]
    assert not replayed, f"{len(replayed)} records under the committed offsets {at_kill} came again: {replayed[:5]}"
    assert sum(at_kill.values()) > 0 and final == end
    print(
        f"broker restart: {len(produced)} events, {len(seen)} deliveries ({stats.duplicates} duplicates), "
        f"committed at kill {at_kill}, final {final}, producer retries {producer.retries}, "
        f"down {restarted_at - killed_at:.1f} s, total {time.monotonic() - t_start:.1f} s, "
        # not asserted: today the loop waits in its audit flush for the broker (KafkaSink.write awaits the acks)
        f"longest loop stall {run.longest_stall_s:.1f} s"
    )

    # a new member of the group starts after the final commits: it gets only what is new
    extra = make_events(1, N_BEFORE + N_STREAM, time.time())
    sink = KafkaSink(cfg.kafka)
    await sink.start()
    try:
        await sink.write(t.traffic, [(k, v) for k, v, _ in extra])
    finally:
        await sink.stop()
    async with running_agent(cfg) as again:
        await wait_for(lambda: again.agent.counts.events_in >= 1, "the new event", 20, run=again)
        await asyncio.sleep(0.5)
        assert [d.ident for d in again.source.deliveries] == [extra[0][2]]
