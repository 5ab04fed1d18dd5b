"""Against the real bundled broker: the Kafka adapter, and the agent end to end (Kafka in, simulated cluster out,
decisions and dead letters out, offsets committed and resumed)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import pytest
from agent_fakes import Msg, traffic

from shadowscale.agent.broker import LocalBroker
from shadowscale.agent.clock import WallClock
from shadowscale.agent.config import AgentConfig, KafkaConfig, parse_config
from shadowscale.agent.kafka import KafkaSink, KafkaSource, KafkaUnavailable, ensure_topics, partition_for
from shadowscale.agent.loop import Agent
from shadowscale.simulators.actuator import SimulatedCluster

pytestmark = pytest.mark.asyncio

_ids = itertools.count()


def kcfg(broker: LocalBroker, **over: Any) -> KafkaConfig:
    n = next(_ids)
    data: dict[str, Any] = {
        "bootstrap": broker.bootstrap,
        "group_id": f"g-{n}-{time.monotonic_ns()}",
        "topics": {
            "traffic": f"traffic-{n}",
            "gpu": f"gpu-{n}",
            "decisions": f"decisions-{n}",
            "dead_letter": f"dead-{n}",
        },
        "session_timeout_ms": 2000,
        "heartbeat_interval_ms": 500,
        "commit_interval_s": 0.0,
        **over,
    }
    return parse_config({"models": [{"name": "x", "capacity_rps": 1}], "kafka": data}).kafka


async def read_all(cfg: KafkaConfig, topic: str, n: int, timeout_s: float = 20.0) -> list[Msg]:
    """Read ``n`` records of ``topic`` from the start (a throw-away group)."""
    fresh = parse_config(
        {"models": [{"name": "x", "capacity_rps": 1}], "kafka": dict(_plain(cfg), group_id=f"r-{time.monotonic_ns()}")}
    ).kafka
    src = KafkaSource(fresh, [topic])
    await src.start()
    out: list[Msg] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < deadline:
            for b in await src.poll(1000, 0.5):
                out.extend(
                    Msg(b.topic, b.partition, o, k, v) for o, k, v in zip(b.offsets, b.keys, b.values, strict=True)
                )
    finally:
        await src.stop()
    return out


def _plain(cfg: KafkaConfig) -> dict[str, Any]:
    import msgspec

    d: dict[str, Any] = msgspec.to_builtins(cfg)
    return d


async def test_source_and_sink_round_trip(broker: LocalBroker) -> None:
    cfg = kcfg(broker)
    topic = cfg.topics.traffic
    await ensure_topics(cfg, [topic], 3)
    await ensure_topics(cfg, [topic], 3)  # idempotent
    sink = KafkaSink(cfg)
    await sink.start()
    try:
        await sink.write(topic, [(f"m{k}".encode(), f"v{k}".encode()) for k in range(300)])
    finally:
        await sink.stop()
    got = await read_all(cfg, topic, 300)
    assert sorted(r.value or b"" for r in got) == sorted(f"v{k}".encode() for k in range(300))
    # keys land on the partition Kafka's default partitioner picks, which is what `owns` assumes
    assert all(r.partition == partition_for((r.key or b"").decode(), 3) for r in got)


async def test_unreachable_broker_is_a_clear_error() -> None:
    cfg = parse_config({"models": [{"name": "x", "capacity_rps": 1}], "kafka": {"bootstrap": "127.0.0.1:1"}}).kafka
    with pytest.raises(KafkaUnavailable, match=r"cannot reach Kafka at 127\.0\.0\.1:1"):
        await KafkaSink(cfg).start(timeout_s=5)


def agent_config(kafka: KafkaConfig, **over: Any) -> AgentConfig:
    return parse_config(
        {
            "policy": "kpa",
            "agent_id": "it",
            "models": [{"name": f"m{k}", "capacity_rps": 10.0, "max_replicas": 20} for k in range(4)],
            "kafka": _plain(kafka),
            "http": {"enabled": False},
            **over,
        }
    )


async def run_agent(cfg: AgentConfig, cluster: SimulatedCluster, until: Any, timeout_s: float = 30.0) -> Agent:
    source = KafkaSource(cfg.kafka, [cfg.kafka.topics.traffic, cfg.kafka.topics.gpu])
    sink = KafkaSink(cfg.kafka)
    await source.start()
    await sink.start()
    agent = Agent(cfg, source, cluster, sink, WallClock())
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop), name="agent-under-test")
    try:
        deadline = time.monotonic() + timeout_s
        while not until(agent):
            assert time.monotonic() < deadline, f"timed out: {agent.counts}"
            assert not task.done(), task.exception()
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await source.stop()
        await sink.stop()
    return agent


async def test_agent_end_to_end_and_resume_from_committed_offsets(broker: LocalBroker) -> None:
    kafka = kcfg(broker)
    t = kafka.topics
    await ensure_topics(kafka, [t.traffic, t.gpu, t.decisions, t.dead_letter], 2)
    cfg = agent_config(kafka)
    clock = WallClock()
    cluster = SimulatedCluster(_services(cfg), clock)

    now = time.time()
    good = [(b"m1", traffic("m1", now - 0.2 + k * 0.01, arrivals=5)) for k in range(20)]
    step = [(b"m2", traffic("m2", now, pod="big", arrivals=500, concurrency_s=900.0))]
    bad = [(b"m0", b"{not json"), (b"zz", traffic("zz", now))]
    producer = KafkaSink(kafka)
    await producer.start()
    await producer.write(t.traffic, good + bad + step)
    await producer.stop()

    agent = await run_agent(cfg, cluster, lambda a: a.counts.events_in >= 23 and a.counts.commits >= 1)
    assert agent.counts.dead_lettered == 2 and agent.core.windows.stats.accepted == 21
    assert cluster.state("m2").replicas > 1, cluster.calls
    assert any(c.targets.get("m2", 0) > 1 for c in cluster.calls)

    decisions = [json.loads(r.value or b"") for r in await read_all(kafka, t.decisions, 5)]
    m2 = [d for d in decisions if d["model"] == "m2" and d["trigger"] == "event"]
    assert m2 and m2[0]["applied"] and m2[0]["target"] > 1
    dead = [json.loads(r.value or b"") for r in await read_all(kafka, t.dead_letter, 2)]
    assert sorted(d["reason"][:13] for d in dead) == ["not JSON: JSO", "unknown model"]

    # A second agent in the same group starts after the committed offsets: it sees only the new events.
    producer = KafkaSink(kafka)
    await producer.start()
    await producer.write(t.traffic, [(b"m3", traffic("m3", time.time(), arrivals=1))])
    await producer.stop()
    again = await run_agent(cfg, SimulatedCluster(_services(cfg), clock), lambda a: a.counts.events_in >= 1)
    await asyncio.sleep(0.5)
    assert again.counts.events_in == 1 and again.core.windows.stats.accepted == 1


def _services(cfg: AgentConfig) -> list[Any]:
    from shadowscale.agent.core import services_of

    return services_of(cfg)


async def test_replicas_share_models_through_the_consumer_group(broker: LocalBroker) -> None:
    kafka = kcfg(broker)
    t = kafka.topics
    await ensure_topics(kafka, [t.traffic], 4)
    models = [f"model-{k}" for k in range(40)]
    a = KafkaSource(kafka, [t.traffic])
    b = KafkaSource(kafka, [t.traffic])
    await a.start()
    await b.start()
    try:
        deadline = time.monotonic() + 30
        while not (a.assigned() and b.assigned() and a.assigned() + b.assigned() == 4):
            assert time.monotonic() < deadline, (a.assigned(), b.assigned())
            await asyncio.gather(a.poll(100, 0.2), b.poll(100, 0.2))  # keep both members active
        mine_a, mine_b = a.owns(models), b.owns(models)
        assert mine_a and mine_b and not (mine_a & mine_b) and mine_a | mine_b == set(models)
        await b.stop()  # b leaves: a takes every partition and every model
        deadline = time.monotonic() + 30
        while a.assigned() != 4:
            assert time.monotonic() < deadline
            await a.poll(100, 0.2)
        assert a.owns(models) == set(models)
    finally:
        await a.stop()
        await b.stop()


async def test_a_replica_losing_partitions_commits_first_so_the_new_owner_does_not_replay(broker: LocalBroker) -> None:
    """Agent A has handled every event but not committed (a long commit interval); agent B joins the group. Before
    A's partitions move, A commits what it handled: B starts after it and replays nothing."""
    kafka = kcfg(broker, commit_interval_s=3600.0)
    t = kafka.topics
    await ensure_topics(kafka, [t.traffic, t.gpu, t.decisions, t.dead_letter], 2)
    cfg = agent_config(kafka)
    now = time.time()
    events = [(f"m{k % 4}".encode(), traffic(f"m{k % 4}", now + k * 0.001, pod=f"p{k}", arrivals=1)) for k in range(40)]
    producer = KafkaSink(kafka)
    await producer.start()

    clock = WallClock()
    sources = [KafkaSource(cfg.kafka, [t.traffic, t.gpu]) for _ in range(2)]
    sinks = [KafkaSink(cfg.kafka) for _ in range(2)]
    agents = [
        Agent(cfg, s, SimulatedCluster(_services(cfg), clock), k, clock) for s, k in zip(sources, sinks, strict=True)
    ]
    started: list[Any] = []
    tasks: list[asyncio.Task[None]] = []
    stop = asyncio.Event()
    try:
        for x in (sources[0], sinks[0]):
            await x.start()
            started.append(x)
        tasks.append(asyncio.create_task(agents[0].run(stop)))
        # a first batch, handled and committed (the first commit does not wait for the interval) …
        await producer.write(t.traffic, events[:4])
        deadline = time.monotonic() + 30
        while agents[0].counts.events_in < 4 or agents[0].counts.commits < 1:
            assert time.monotonic() < deadline, agents[0].counts
            await asyncio.sleep(0.05)
        first = agents[0].counts.commits
        # … then the rest, handled but not committed: the next periodic commit is an hour away
        await producer.write(t.traffic, events[4:])
        while agents[0].counts.events_in < 40:
            assert time.monotonic() < deadline, agents[0].counts
            await asyncio.sleep(0.05)
        assert agents[0].counts.commits == first
        for x in (sources[1], sinks[1]):
            await x.start()
            started.append(x)
        tasks.append(asyncio.create_task(agents[1].run(stop)))
        deadline = time.monotonic() + 30
        while not (sources[0].assigned() and sources[1].assigned()):
            assert time.monotonic() < deadline, (sources[0].assigned(), sources[1].assigned())
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # B polls its partition from the committed offset
        assert agents[0].counts.commits > first  # committed in the revocation callback
        assert agents[1].counts.events_in == 0  # nothing replayed
    finally:
        stop.set()
        await producer.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        for x in started:
            await x.stop()
