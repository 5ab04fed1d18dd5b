"""Profiles in the live agent: a stored profile sets a model's capacity (and says so in the audit), live windows
that contradict it make it stale within K ticks and switch the model to the observed capacity, the stale mark is
written back, a re-trial is scheduled, and a new profile clears it; ``serve`` loads profiles from the topic."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from agent_fakes import MemorySink, RecordingActuator, ScriptedSource, Step, VirtualClock, config, record, traffic

from shadowscale.agent.app import Running, serve
from shadowscale.agent.broker import LocalBroker
from shadowscale.agent.loop import Agent
from shadowscale.agent.profiling.book import ProfileBook
from shadowscale.agent.profiling.store import KafkaProfileStore
from shadowscale.policies.profiling.codec import StoredProfile
from shadowscale.policies.profiling.drift import RetrialSettings
from shadowscale.policies.profiling.ports import MemoryProfileStore
from shadowscale.policies.profiling.types import Observation, Profile, TrialResult, TrialStatus

pytestmark = pytest.mark.asyncio

DECISIONS = "shadowscale.decisions"


def profile(model: str, capacity: float, slo_ms: float = 100.0) -> Profile:
    return Profile(
        model=model,
        names=("batch",),
        slo_ms=slo_ms,
        observations=(Observation((4,), TrialResult(TrialStatus.MEASURED, throughput=capacity, p99_ms=0.9 * slo_ms)),),
        predictions=(),
        chosen=(4,),
        capacity=capacity,
        cost=1.0,
        stopped="converged",
    )


def audits(sink: MemorySink) -> list[dict[str, Any]]:
    return [json.loads(v) for _, v in sink.records.get(DECISIONS, [])]


async def test_profile_sets_capacity_goes_stale_on_live_data_and_a_new_profile_clears_it() -> None:
    cfg = config(["m1", "m2"], kafka={"commit_interval_s": 0.0})  # configured capacity: 10 req/s per replica
    store = MemoryProfileStore()
    await store.put(StoredProfile(profile("m1", 50.0), updated_at=0.0))
    book = ProfileBook([m.name for m in cfg.models], store, retrials=RetrialSettings(max_parallel=1, cooldown_s=600.0))
    assert await book.load() == 1
    clock = VirtualClock(0.0)
    stop = asyncio.Event()
    # KPA ticks every 2 s: one 2 s window per tick from one pod serving 30 req/s (60 % of the profiled 50, a load
    # the profile calls safe) at a p99 of 2 s against the 100 ms SLO, 95 % busy
    steps = [
        Step(2.0 * k, [record(traffic("m1", 2.0 * k, window_s=2.0, arrivals=60, busy_s=1.9, latency_p99_ms=2000), k)])
        for k in range(6)
    ]
    source = ScriptedSource(clock, steps, stop)
    sink = MemorySink()
    agent = Agent(cfg, source, RecordingActuator({"m1": 1, "m2": 1}), sink, clock, profiles=book)
    await asyncio.wait_for(agent.run(stop), 10)

    m1 = [r for r in audits(sink) if r["model"] == "m1"]
    m2 = [r for r in audits(sink) if r["model"] == "m2"]
    assert [r["at"] for r in m1] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    # ticks 0-2: the profile's capacity; tick 0 is the counters' baseline, ticks 1-3 contradict it: stale at tick 3
    for r in m1[:3]:
        assert r["reason"].endswith("; capacity: profile 50 req/s per replica"), r["reason"]
        assert r["capacity_rps"] == r["ready"] * 50.0
    for r in m1[3:]:
        assert "; capacity: observed 25.26 req/s (profile 50 stale: p99 2000 ms over the 100 ms SLO" in r["reason"]
        assert r["capacity_rps"] == pytest.approx(r["ready"] * 0.8 * 30 / 0.95)  # service rate × 0.8, uncalibrated
    assert all("capacity:" not in r["reason"] and r["capacity_rps"] == r["ready"] * 10.0 for r in m2)  # no profile
    assert book.stale.keys() == {"m1"}

    # the stale mark was written back (an agent that restarts will not trust the profile again)
    stored = (await store.load())["m1"]
    assert stored.stale and stored.stale_reason.startswith("p99 2000 ms") and stored.updated_at == 6.0
    # one re-trial, at the tick it went stale; nothing runs it yet, and the cooldown keeps it from repeating
    assert book.retrials == [(6.0, "m1")]

    # a re-trial measured the new version: its profile replaces the stale one, fresh
    await book.publish(StoredProfile(profile("m1", 24.0), updated_at=20.0))
    book.apply(agent.core)
    assert agent.core.capacity_rps[0] == 24.0 and agent.core.capacity_notes[0] == "profile 24 req/s per replica"
    assert not book.stale and not (await store.load())["m1"].stale


async def test_serve_loads_profiles_from_the_topic(broker: LocalBroker) -> None:
    n = time.monotonic_ns()
    cfg = config(
        ["m1", "m2"],
        kafka={
            "bootstrap": broker.bootstrap,
            "group_id": f"profiles-{n}",
            "create_topics": True,
            "session_timeout_ms": 2000,
            "heartbeat_interval_ms": 500,
            "topics": {"traffic": f"t-{n}", "gpu": f"g-{n}", "decisions": f"d-{n}", "dead_letter": f"x-{n}"},
        },
        profiles={"enabled": True, "topic": f"profiles-{n}"},
    )
    writer = KafkaProfileStore(cfg.kafka, cfg.profiles.topic)
    await writer.start()
    await writer.put(StoredProfile(profile("m2", 42.0), updated_at=1.0))
    await writer.put(StoredProfile(profile("elsewhere", 7.0), updated_at=1.0))  # not this agent's model
    await writer.stop()

    stop = asyncio.Event()
    up: list[Running] = []
    actuator = RecordingActuator({"m1": 1, "m2": 1})
    task = asyncio.create_task(serve(cfg, stop, actuator=actuator, started=up.append))
    try:
        deadline = time.monotonic() + 30
        while not up and not task.done():
            assert time.monotonic() < deadline, "the agent did not start"
            await asyncio.sleep(0.05)
        core = up[0].agent.core
        assert list(core.capacity_rps) == [10.0, 42.0]  # m1 keeps its configured capacity; m2 has a profile
        assert core.capacity_notes == [None, "profile 42 req/s per replica"]
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0


async def _shadowscale_run(p99_ms: float, busy_s: float) -> list[dict[str, Any]]:
    cfg = config(["m1"], policy="shadowscale", kafka={"commit_interval_s": 0.0})
    store = MemoryProfileStore()
    await store.put(StoredProfile(profile("m1", 50.0), updated_at=0.0))
    book = ProfileBook(["m1"], store, retrials=RetrialSettings(max_parallel=1, cooldown_s=600.0))
    await book.load()
    clock = VirtualClock(0.0)
    stop = asyncio.Event()
    steps = [
        Step(
            2.0 * k,
            [record(traffic("m1", 2.0 * k, window_s=2.0, arrivals=60, busy_s=busy_s, latency_p99_ms=p99_ms), k)],
        )
        for k in range(10)
    ]
    sink = MemorySink()
    agent = Agent(cfg, ScriptedSource(clock, steps, stop), RecordingActuator({"m1": 1}), sink, clock, profiles=book)
    await asyncio.wait_for(agent.run(stop), 10)
    return audits(sink)


async def test_shadowscale_plans_with_the_profile_and_with_observed_capacity_while_stale() -> None:
    """The profile-driven policy plans with the book's capacity: the same 30 req/s needs about twice the replicas
    once live data (p99 far over the SLO) makes the profiled 50 req/s stale and the observed ~25 req/s is used."""
    fresh = await _shadowscale_run(p99_ms=50.0, busy_s=1.2)  # 30 req/s keep a 50 req/s replica 60 % busy
    stale = await _shadowscale_run(p99_ms=2000.0, busy_s=1.9)
    assert all("capacity: profile 50" in r["reason"] for r in fresh)
    assert "capacity: observed" in stale[-1]["reason"]
    assert fresh[-1]["recommended"] >= 2
    assert stale[-1]["recommended"] >= 1.6 * fresh[-1]["recommended"]


async def test_refresh_takes_what_another_replica_published_and_keeps_its_own_stale_state() -> None:
    """Two agent replicas on one store: the leader publishes a new profile; the other takes it at its next refresh.
    An older record never replaces a newer one, and a replica's own stale mark read back is not news (its drift
    state, with the observed capacity, survives the refresh)."""
    store = MemoryProfileStore()
    await store.put(StoredProfile(profile("m1", 50.0), updated_at=0.0))
    leader = ProfileBook(["m1", "m2"], store)
    other = ProfileBook(["m1", "m2"], store)
    assert await leader.load() == 1 and await other.load() == 1
    await leader.publish(StoredProfile(profile("m1", 24.0), updated_at=10.0))
    await leader.publish(StoredProfile(profile("m2", 50.0), updated_at=1.0))
    assert other.profiles["m1"].profile.capacity == 50.0
    assert await other.refresh() == 2
    assert other.profiles["m1"].profile.capacity == 24.0 and other.profiles["m2"].profile.capacity == 50.0
    await store.put(StoredProfile(profile("m1", 99.0), updated_at=5.0))  # a late write of an older profile
    assert await other.refresh() == 0 and other.profiles["m1"].profile.capacity == 24.0

    # the other replica's own drift on m2: 30 req/s at a 2 s p99 against the 100 ms SLO, stale at the third window
    cfg = config(["m1", "m2"], kafka={"commit_interval_s": 0.0})
    clock = VirtualClock(0.0)
    stop = asyncio.Event()
    steps = [
        Step(2.0 * k, [record(traffic("m2", 2.0 * k, window_s=2.0, arrivals=60, busy_s=1.9, latency_p99_ms=2000), k)])
        for k in range(6)
    ]
    source = ScriptedSource(clock, steps, stop)
    agent = Agent(cfg, source, RecordingActuator({"m1": 1, "m2": 1}), MemorySink(), clock, profiles=other)
    await asyncio.wait_for(agent.run(stop), 10)
    await other.close()
    assert other.stale.keys() == {"m2"} and (await store.load())["m2"].stale
    observed = other.capacity("m2")
    assert observed is not None and observed[1].startswith("observed")
    assert await other.refresh() == 0  # its own stale mark, read back
    assert other.capacity("m2") == observed


async def test_refresh_every_runs_until_stopped() -> None:
    store = MemoryProfileStore()
    book = ProfileBook(["m1"], store)
    stop = asyncio.Event()
    task = asyncio.create_task(book.refresh_every(0.01, stop))
    await store.put(StoredProfile(profile("m1", 42.0), updated_at=1.0))
    for _ in range(200):
        if "m1" in book.profiles:
            break
        await asyncio.sleep(0.01)
    assert book.profiles["m1"].profile.capacity == 42.0
    stop.set()
    await asyncio.wait_for(task, 1)
