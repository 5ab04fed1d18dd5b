"""The profile store: the codec round-trips a real planner's profile (failed trials, an SLO never met, predictions),
rejects what it cannot read by name, truncates predictions to fit a record; the Kafka store on the bundled broker
keeps the latest profile per model across a new client, skips unreadable records without failing the load, honours
tombstones, and (on durable storage) survives a broker restart."""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import astuple, replace
from pathlib import Path

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from structlog.testing import capture_logs

from shadowscale.agent.broker import LocalBroker
from shadowscale.agent.config import KafkaConfig
from shadowscale.agent.profiling.store import KafkaProfileStore
from shadowscale.policies.profiling.codec import (
    SCHEMA,
    ProfileDecodeError,
    StoredProfile,
    decode_profile,
    encode_profile,
)
from shadowscale.policies.profiling.objective import Objective
from shadowscale.policies.profiling.planner import PlannerSettings, Search
from shadowscale.policies.profiling.ports import MemoryProfileStore, ProfileStore
from shadowscale.policies.profiling.replay import Measured, ReplayRunner
from shadowscale.policies.profiling.space import Categorical, Levels, Point, SearchSpace
from shadowscale.policies.profiling.types import Profile, Trial

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))  # the durable broker helper lives there
from durable_broker import DurableBroker, SeaweedS3

SPACE = SearchSpace((Levels("share", (25, 50, 100), integer=True), Categorical("gpu", ("a", "b", "c"))))
ROWS: dict[Point, Measured] = {
    (s, g): Measured(throughput=s * {"a": 1.0, "b": 2.0, "c": 3.0}[g], latency_ms=10.0 + s / 10)
    for s in (25, 50, 100)
    for g in ("a", "b")
}
ROWS[(100, "b")] = Measured(throughput=500.0, latency_ms=math.nan)  # never met the SLO: p99 is infinite
# gpu "c" is not in the table: its trials fail (p99 NaN)


def searched_profile(model: str, trials: int = 7, seed: int = 0) -> Profile:
    """A profile as the planner makes it, from a search over the replay table above."""
    runner = ReplayRunner(SPACE, ROWS)
    search = Search.start(SPACE, Objective(slo_ms=19.0), PlannerSettings(ei_threshold=0.0, restarts=0), seed=seed)
    for k in range(trials):
        search, sug = search.ask()
        if sug.stop:
            break
        p = sug.points[0]
        search = search.record(p, runner.measure(Trial(f"t{k}", model, SPACE.config(p), slo_ms=19.0)))
    return search.profile(model, stopped="test")


def canon(x: object) -> object:
    """A comparable form: NaN == NaN (a failed trial's p99 is NaN) and types kept (1 is not 1.0)."""
    if isinstance(x, tuple | list):
        return tuple(canon(v) for v in x)
    if isinstance(x, dict):
        return tuple(sorted((k, canon(v)) for k, v in x.items()))
    if isinstance(x, float):
        return ("float", "nan" if math.isnan(x) else x)
    return (type(x).__name__, x)


def same(a: StoredProfile, b: StoredProfile) -> bool:
    return canon(astuple(a)) == canon(astuple(b))


@pytest.fixture(scope="module")
def profile() -> Profile:
    p = searched_profile("resnet50")
    results = [o.result for o in p.observations]
    assert any(not r.measured for r in results), "the search should have hit a failed trial (gpu c)"
    assert p.chosen is not None and p.capacity > 0 and len(p.predictions) == 9
    return p


# -- the codec ------------------------------------------------------------------------------------------------------


def test_codec_round_trips_a_planner_profile_exactly(profile: Profile) -> None:
    stored = StoredProfile(profile, updated_at=1_700_000_000.25, stale=True, stale_reason="p99 over the SLO")
    raw = encode_profile(stored)
    doc = json.loads(raw)  # standard JSON: no NaN/Infinity literals
    assert doc["schema"] == SCHEMA and doc["model"] == "resnet50" and doc["predictions_total"] == 9
    assert "NaN" not in raw.decode().replace('"NaN"', "") and "Infinity" not in raw.decode().replace('"Infinity"', "")
    back = decode_profile(raw, key="resnet50")
    assert same(back, replace(stored, predictions_total=9))
    assert back.profile.chosen_config == profile.chosen_config
    assert any(math.isnan(o.result.p99_ms) for o in back.profile.observations)


def test_codec_keeps_the_most_promising_predictions_when_the_record_would_be_too_big(profile: Profile) -> None:
    stored = StoredProfile(profile, updated_at=0.0)
    full = len(encode_profile(stored))
    one = len(encode_profile(replace(stored, profile=replace(profile, predictions=profile.predictions[:1]))))
    per = (full - one) / 8
    back = decode_profile(encode_profile(stored, max_bytes=int(one + 2.5 * per)))
    kept = back.profile.predictions
    assert 1 <= len(kept) < 9 and back.predictions_total == 9
    ranked = sorted(profile.predictions, key=lambda p: -(p.value * p.p_feasible))
    assert {p.point for p in kept} == {p.point for p in ranked[: len(kept)]}
    order = [p.point for p in profile.predictions]
    assert [order.index(p.point) for p in kept] == sorted(order.index(p.point) for p in kept)
    assert canon(back.profile.observations) == canon(profile.observations)  # trials are never cut
    with pytest.raises(ValueError, match="trials alone take more than 100 bytes"):
        encode_profile(stored, max_bytes=100)


def test_codec_names_what_it_cannot_read(profile: Profile) -> None:
    good = json.loads(encode_profile(StoredProfile(profile, updated_at=0.0)))

    def attempt(doc: object, key: str | None = None) -> ProfileDecodeError:
        with pytest.raises(ProfileDecodeError) as e:
            decode_profile(json.dumps(doc).encode(), key=key)
        return e.value

    newer = attempt({**good, "schema": SCHEMA + 1})
    assert newer.kind == "schema" and f"version {SCHEMA + 1} (newer than this agent)" in str(newer)
    assert attempt({**good, "schema": "1"}).kind == "malformed"
    assert "the record's key names model 'other'" in str(attempt(good, key="other"))
    bad_obs = json.loads(json.dumps(good))
    bad_obs["profile"]["observations"][1]["result"]["throughput"] = "fast"
    e = attempt(bad_obs)
    assert e.kind == "malformed" and str(e).startswith("$.profile.observations[1].result.throughput: expected a number")
    short = json.loads(json.dumps(good))
    short["profile"]["chosen"] = [50]
    assert "$.profile.chosen: expected 2 values (one per dimension), got 1" in str(attempt(short))
    missing = {k: v for k, v in good.items() if k != "updated_at"}
    assert str(attempt(missing)) == "$.updated_at: missing"
    with pytest.raises(ProfileDecodeError, match="not JSON"):
        decode_profile(b"\xff{")
    with pytest.raises(ProfileDecodeError, match=r"\$: expected an object, got list"):
        decode_profile(b"[]")


def test_memory_store_goes_through_the_codec(profile: Profile) -> None:
    store: ProfileStore = MemoryProfileStore()

    async def go() -> None:
        await store.put(StoredProfile(profile, updated_at=1.0))
        await store.put(StoredProfile(searched_profile("bert", trials=4, seed=1), updated_at=2.0))
        await store.delete("bert")
        got = await store.load()
        assert list(got) == ["resnet50"] and same(got["resnet50"], StoredProfile(profile, 1.0, predictions_total=9))
        with pytest.raises(ValueError, match=r"profile.chosen\[0\]: a configuration value must be finite"):
            await store.put(StoredProfile(replace(profile, chosen=(math.inf, "a")), updated_at=3.0))

    asyncio.run(go())


# -- the Kafka store on the bundled broker --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as b:
        yield b


@pytest_asyncio.fixture
async def kafka(broker: LocalBroker) -> AsyncIterator[tuple[KafkaConfig, str]]:
    yield KafkaConfig(bootstrap=broker.bootstrap), f"profiles-{time.monotonic_ns()}"


async def raw_send(cfg: KafkaConfig, topic: str, key: bytes | None, value: bytes | None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=cfg.bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


@pytest.mark.asyncio
async def test_kafka_store_survives_a_new_client_and_skips_what_it_cannot_read(
    kafka: tuple[KafkaConfig, str], profile: Profile
) -> None:
    cfg, topic = kafka
    first = KafkaProfileStore(cfg, topic, partitions=2)
    assert await first.load() == {}  # no topic yet: nothing, no error
    await first.start()
    assert await first.load() == {}  # an empty topic: read to its (zero) end at once
    old = StoredProfile(searched_profile("resnet50", trials=3), updated_at=1.0)
    new = StoredProfile(profile, updated_at=2.0, stale=True, stale_reason="capacity below the profile")
    bert = StoredProfile(searched_profile("bert", trials=4, seed=1), updated_at=1.5)
    gone = StoredProfile(searched_profile("gpt", trials=3, seed=2), updated_at=1.0)
    for s in (old, bert, gone, new):
        await first.put(s)
    await first.delete("gpt")
    # what a newer agent, a broken producer and a keyless writer might leave behind
    future = json.loads(encode_profile(StoredProfile(profile, 3.0)))
    await raw_send(cfg, topic, b"llama", json.dumps({**future, "schema": SCHEMA + 1, "model": "llama"}).encode())
    await raw_send(cfg, topic, b"mixtral", b'{"schema": 1, "kind": "shadowscale.profile"}')
    await raw_send(cfg, topic, None, encode_profile(bert))
    await first.stop()

    second = KafkaProfileStore(cfg, topic, partitions=2)  # another agent (or this one after a restart)
    await second.start()
    try:
        with capture_logs() as logs:
            got = await second.load()
    finally:
        await second.stop()
    assert sorted(got) == ["bert", "resnet50"]
    assert same(got["resnet50"], replace(new, predictions_total=9)) and got["resnet50"].stale
    assert same(got["bert"], replace(bert, predictions_total=len(bert.profile.predictions)))
    assert second.skipped == {"schema": 1, "malformed": 1, "keyless": 1}
    warnings = {(e["kind"], e.get("model")): e["reason"] for e in logs if e["event"] == "profile record skipped"}
    assert f"version {SCHEMA + 1} (newer than this agent)" in warnings[("schema", "llama")]
    assert warnings[("malformed", "mixtral")] == "$.model: missing"
    assert ("keyless", None) in warnings


@pytest.mark.asyncio
async def test_kafka_store_tolerates_an_existing_topic(kafka: tuple[KafkaConfig, str], profile: Profile) -> None:
    cfg, topic = kafka
    a = KafkaProfileStore(cfg, topic)
    b = KafkaProfileStore(cfg, topic)
    await a.start()
    await b.start()  # the topic exists: used as it is
    try:
        await b.put(StoredProfile(profile, updated_at=5.0))
        assert list(await a.load()) == ["resnet50"]
    finally:
        await a.stop()
        await b.stop()


# -- a broker restart on durable storage ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_profiles_survive_a_broker_restart_on_durable_storage(s3: SeaweedS3, profile: Profile) -> None:
    broker = DurableBroker(s3)
    broker.start()
    try:
        cfg = KafkaConfig(bootstrap=broker.bootstrap)
        store = KafkaProfileStore(cfg, "shadowscale.profiles")
        await store.start()
        stored = [StoredProfile(profile, 10.0), StoredProfile(searched_profile("bert", trials=4, seed=1), 11.0)]
        for s in stored:
            await store.put(s)
        await store.stop()

        broker.restart()  # same port, same storage

        fresh = KafkaProfileStore(cfg, "shadowscale.profiles", load_timeout_s=60.0)
        got = await fresh.load()
        assert sorted(got) == ["bert", "resnet50"]
        for s in stored:
            assert same(got[s.model], replace(s, predictions_total=len(s.profile.predictions)))
    finally:
        broker.stop()
