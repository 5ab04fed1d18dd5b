"""Profiling searches in the live agent: a stale profile's re-trial runs a search whose profile the decision core
then uses; searches of several models share the trial gate; a failing search leaves the capacity alone and the
service goes on; stopping cancels searches in flight; transfer warm-starts from other models' stored profiles;
``serve`` with the local runner profiles a model with the real model server and stores the profile in the topic;
and the ``profiling`` section of the configuration is validated field by field."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from agent_fakes import MemorySink, RecordingActuator, ScriptedSource, Step, VirtualClock, config, record, traffic
from agent_k8s import K8s
from structlog.testing import capture_logs

from shadowscale.agent.app import Running, open_profiling, serve
from shadowscale.agent.broker import LocalBroker
from shadowscale.agent.config import ConfigError, parse_config, profiling_plans
from shadowscale.agent.kube import api_client
from shadowscale.agent.loop import Agent
from shadowscale.agent.metrics import Metrics
from shadowscale.agent.profiling.book import ProfileBook
from shadowscale.agent.profiling.driver import DriverSettings
from shadowscale.agent.profiling.service import ModelPlan, ProfilingService, ServiceSettings
from shadowscale.agent.profiling.shadow import ShadowTrialRunner, Workload
from shadowscale.agent.profiling.store import KafkaProfileStore
from shadowscale.policies.ports import RecordBatch
from shadowscale.policies.profiling.codec import StoredProfile
from shadowscale.policies.profiling.drift import RetrialSettings
from shadowscale.policies.profiling.objective import Objective
from shadowscale.policies.profiling.planner import PlannerSettings
from shadowscale.policies.profiling.ports import MemoryProfileStore
from shadowscale.policies.profiling.replay import Measured, ReplayRunner
from shadowscale.policies.profiling.space import Levels, Point, SearchSpace
from shadowscale.policies.profiling.types import Observation, Profile, Trial, TrialResult, TrialStatus

DECISIONS = "shadowscale.decisions"
SPACE = SearchSpace((Levels("batch", (1, 2, 4, 8), log=True, integer=True),))
OBJECTIVE = Objective(slo_ms=100.0)
PLAN = ModelPlan(SPACE, OBJECTIVE)
# the model's new version: batch 4 is the best configuration within the 100 ms SLO, at 24 req/s per replica
ROWS: dict[Point, Measured] = {
    (1,): Measured(8.0, 20.0),
    (2,): Measured(14.0, 40.0),
    (4,): Measured(24.0, 80.0),
    (8,): Measured(40.0, 300.0),
}
EVERY = ServiceSettings(planner=PlannerSettings(budget=4, ei_threshold=0.0, restarts=0), transfer=False)
"""Every configuration tried (the budget is the space): the outcome does not depend on the planner's choices."""


def stored(model: str, capacity: float, *, batch: int = 4, stale: bool = False) -> StoredProfile:
    obs = Observation((batch,), TrialResult(TrialStatus.MEASURED, throughput=capacity, p99_ms=90.0))
    p = Profile(model, ("batch",), 100.0, (obs,), (), (batch,), capacity, 1.0, "converged")
    return StoredProfile(p, updated_at=0.0, stale=stale, stale_reason="old" if stale else "")


def audits(sink: MemorySink) -> list[dict[str, Any]]:
    return [json.loads(v) for _, v in sink.records.get(DECISIONS, [])]


class Replay:
    """A replay runner that takes a little time per trial and counts the trials in flight, over all models."""

    def __init__(self, rows: dict[Point, Measured] | None = None, delay_s: float = 0.01) -> None:
        self.replay = ReplayRunner(SPACE, ROWS if rows is None else rows)
        self.delay_s = delay_s
        self.in_flight: dict[str, int] = {}
        self.most = 0
        self.overlapped = False
        self.trials: list[Trial] = []

    async def run_trial(self, t: Trial) -> TrialResult:
        self.trials.append(t)
        self.in_flight[t.model] = self.in_flight.get(t.model, 0) + 1
        self.most = max(self.most, sum(self.in_flight.values()))
        self.overlapped |= sum(1 for n in self.in_flight.values() if n) > 1
        try:
            await asyncio.sleep(self.delay_s)
            return self.replay.measure(t)
        finally:
            self.in_flight[t.model] -= 1


class WaitForSearch(ScriptedSource):
    """The scripted source, except that before the step at ``pause_at`` it waits for the service's searches, so
    the ticks after it see whatever the search published."""

    def __init__(self, *args: Any, service: ProfilingService, pause_at: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.service = service
        self.pause_at = pause_at

    async def poll(self, max_records: int, timeout_s: float) -> list[RecordBatch]:
        if self.polls == self.pause_at and self.service.searches:
            await asyncio.wait(list(self.service.searches.values()), timeout=30)
        return list(await super().poll(max_records, timeout_s))


@pytest.mark.asyncio
async def test_a_stale_profiles_retrial_publishes_a_new_profile_that_the_core_then_uses() -> None:
    cfg = config(["m1", "m2"], kafka={"commit_interval_s": 0.0})  # configured capacity 10 req/s per replica
    store = MemoryProfileStore()
    await store.put(stored("m1", 50.0))
    book = ProfileBook(["m1", "m2"], store, retrials=RetrialSettings(max_parallel=1, cooldown_s=600.0))
    await book.load()
    clock = VirtualClock(0.0)
    runner = Replay()
    metrics = Metrics()
    service = ProfilingService(book, runner, {"m1": PLAN, "m2": PLAN}, clock, EVERY, metrics=metrics)
    book.on_retrial = service.on_retrial
    stop = asyncio.Event()
    # ticks 0-3 (KPA: every 2 s): 30 req/s at a p99 of 2 s on a replica profiled at 50 req/s: stale at tick 3;
    # ticks 4-5: the new version at 30 req/s within its SLO
    steps = [
        Step(2.0 * k, [record(traffic("m1", 2.0 * k, window_s=2.0, arrivals=60, busy_s=1.9, latency_p99_ms=2000), k)])
        for k in range(4)
    ] + [
        Step(2.0 * k, [record(traffic("m1", 2.0 * k, window_s=2.0, arrivals=60, busy_s=1.9, latency_p99_ms=60), k)])
        for k in range(4, 6)
    ]
    sink = MemorySink()
    source = WaitForSearch(clock, steps, stop, service=service, pause_at=4)
    agent = Agent(cfg, source, RecordingActuator({"m1": 1, "m2": 1}), sink, clock, profiles=book)
    await asyncio.wait_for(agent.run(stop), 30)

    assert book.retrials == [(6.0, "m1")]
    assert [t.config["batch"] for t in runner.trials].count(4) == 1 and len(runner.trials) == 4
    assert {t.model for t in runner.trials} == {"m1"}
    assert service.outcomes == {"m1": "published"} and not service.searches
    # the store holds the new profile, fresh, stamped with the clock at publication (the pause before tick 4)
    new = (await store.load())["m1"]
    assert not new.stale and new.profile.capacity == 24.0 and new.profile.chosen == (4,) and new.updated_at == 6.0
    assert len(new.profile.observations) == 4
    m1 = [r for r in audits(sink) if r["model"] == "m1"]
    assert "capacity: observed" in m1[3]["reason"]  # stale: the observed capacity until the re-trial ends
    for r in m1[4:]:  # the decision core divides demand by the re-trial's capacity
        assert r["reason"].endswith("; capacity: profile 24 req/s per replica"), r["reason"]
        assert r["capacity_rps"] == r["ready"] * 24.0
    assert agent.core.capacity_rps[0] == 24.0 and not book.stale
    assert book.planner.running == frozenset()  # the re-trial slot is free again
    text = metrics.render().decode()
    assert 'shadowscale_profiling_searches_total{outcome="published"} 1.0' in text
    assert "shadowscale_profiling_searches_running 0.0" in text


@pytest.mark.asyncio
async def test_searches_of_two_models_share_the_gate_and_one_model_is_never_searched_twice() -> None:
    store = MemoryProfileStore()
    book = ProfileBook(["a", "b", "c"], store)
    runner = Replay(delay_s=0.02)
    st = ServiceSettings(
        max_trials=2,
        driver=DriverSettings(max_parallel=2, trial_timeout_s=5.0),
        planner=PlannerSettings(budget=4, ei_threshold=0.0, restarts=0),
        transfer=False,
    )
    service = ProfilingService(book, runner, {"a": PLAN, "b": PLAN, "c": PLAN}, VirtualClock(5.0), st)
    assert service.request("a", "test") and service.request("b", "test") and service.request("c", "test")
    assert not service.request("a", "again")  # one search per model at a time
    await asyncio.wait_for(asyncio.gather(*service.searches.values()), 30)
    assert runner.overlapped  # the searches did run at the same time …
    assert runner.most == 2  # … but never more than the gate's two trials together (each search alone may run 2)
    assert service.gate.running == 0
    assert service.outcomes == {"a": "published", "b": "published", "c": "published"}
    assert sorted(t.model for t in runner.trials) == ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    assert {m: s.profile.capacity for m, s in (await store.load()).items()} == {"a": 24.0, "b": 24.0, "c": 24.0}
    assert len({t.trial_id for t in runner.trials}) == 12  # every trial has its own id


class Raising:
    async def run_trial(self, t: Trial) -> TrialResult:
        await asyncio.sleep(0)
        raise RuntimeError("server crashed")


class BrokenStore(MemoryProfileStore):
    async def put(self, s: StoredProfile) -> None:
        if not s.stale and s.model == "m1":
            raise OSError("broker away")
        await super().put(s)


@pytest.mark.asyncio
async def test_a_failing_search_keeps_the_capacity_and_the_service_goes_on() -> None:
    store = BrokenStore()
    await store.put(stored("m1", 50.0, stale=True))  # a stale mark is stored; only m1's new profile fails
    book = ProfileBook(["m1", "m2"], store, retrials=RetrialSettings(max_parallel=1, cooldown_s=0.0))
    await book.load()
    metrics = Metrics()
    # a runner that raises on every trial: each is a failed trial, nothing is feasible, nothing is published
    crashing = ProfilingService(book, Raising(), {"m1": PLAN, "m2": PLAN}, VirtualClock(1.0), EVERY, metrics=metrics)
    book.planner = book.planner.started(["m1"], 0.0)  # as the book does when it schedules the re-trial
    crashing.on_retrial("m1")
    await asyncio.wait_for(crashing.searches["m1"], 30)
    assert crashing.outcomes == {"m1": "infeasible"}
    assert book.profiles["m1"].profile.capacity == 50.0 and book.stale.keys() == {"m1"}
    assert book.planner.running == frozenset()

    # a search whose profile cannot be stored fails: logged, the stale profile stays, the service goes on
    service = ProfilingService(book, Replay(), {"m1": PLAN, "m2": PLAN}, VirtualClock(2.0), EVERY, metrics=metrics)
    book.planner = book.planner.started(["m1"], 1.0)
    with capture_logs() as logs:
        service.on_retrial("m1")
        await asyncio.wait_for(service.searches["m1"], 30)
    failed = [e for e in logs if e["event"].startswith("profiling search failed")]
    assert len(failed) == 1 and failed[0]["model"] == "m1" and "OSError: broker away" in failed[0]["error"]
    assert failed[0]["log_level"] == "error"
    assert service.outcomes == {"m1": "failed"} and book.planner.running == frozenset()
    assert book.profiles["m1"].profile.capacity == 50.0 and book.profiles["m1"].stale
    assert service.request("m2", "next")
    await asyncio.wait_for(service.searches["m2"], 30)
    assert service.outcomes["m2"] == "published" and book.profiles["m2"].profile.capacity == 24.0
    text = metrics.render().decode()
    for outcome in ("infeasible", "failed", "published"):
        assert f'shadowscale_profiling_searches_total{{outcome="{outcome}"}} 1.0' in text

    # a model with no search space is not searched: the re-trial slot goes back at once
    other = ProfilingService(book, Replay(), {"m2": PLAN}, VirtualClock(3.0), EVERY)
    book.planner = book.planner.started(["m1"], 2.0)
    other.on_retrial("m1")
    assert not other.searches and book.planner.running == frozenset()
    # a replica that is not the leader leaves searches to the leader
    follower = ProfilingService(book, Replay(), {"m1": PLAN}, VirtualClock(3.0), EVERY, is_leader=lambda: False)
    assert not follower.request("m1", "re-trial") and not follower.searches


class Hanging:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.torn_down = 0

    async def run_trial(self, t: Trial) -> TrialResult:
        self.started.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.torn_down += 1
        raise AssertionError("unreachable")


@pytest.mark.asyncio
async def test_stopping_cancels_searches_in_flight() -> None:
    store = MemoryProfileStore()
    book = ProfileBook(["m1"], store)
    runner = Hanging()
    st = ServiceSettings(profile_missing=True, check_interval_s=0.05, driver=DriverSettings(trial_timeout_s=600.0))
    service = ProfilingService(book, runner, {"m1": PLAN}, VirtualClock(0.0), st)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await asyncio.wait_for(runner.started.wait(), 30)  # profile_missing: m1 has no profile, so it is searched
    assert set(service.searches) == {"m1"} and service.gate.running == 1
    stop.set()
    await asyncio.wait_for(task, 10)
    assert runner.torn_down == 1 and not service.searches and service.outcomes == {"m1": "cancelled"}
    assert service.gate.running == 0 and store.puts == 0
    assert not service.request("m1", "after stop")


@pytest.mark.asyncio
async def test_transfer_warm_starts_from_other_models_with_the_same_dimensions() -> None:
    """A stored profile of another model whose best is batch 2 makes batch 2 the new model's first trial (the warm
    start's seed point); a model whose space has other dimensions is no source."""
    store = MemoryProfileStore()
    obs = tuple(
        Observation((b,), TrialResult(TrialStatus.MEASURED, throughput=t, p99_ms=lat))
        for b, t, lat in ((1, 10.0, 30.0), (2, 30.0, 60.0), (4, 35.0, 400.0), (8, 40.0, 900.0))
    )
    src = Profile("src", ("batch",), 100.0, obs, (), (2,), 30.0, 1.0, "converged")
    await store.put(StoredProfile(src, updated_at=0.0))
    other_space = SearchSpace((Levels("threads", (1, 2), integer=True),))
    other = Profile("other", ("threads",), 100.0, (Observation((1,), obs[0].result),), (), (1,), 10.0, 1.0, "x")
    await store.put(StoredProfile(other, updated_at=0.0))
    book = ProfileBook(["new", "src", "other"], store)
    await book.load()
    plans = {"new": PLAN, "src": PLAN, "other": ModelPlan(other_space, OBJECTIVE)}
    runner = Replay()
    st = ServiceSettings(planner=PlannerSettings(budget=1, restarts=0))
    service = ProfilingService(book, runner, plans, VirtualClock(0.0), st)
    assert [s.model for s in service._sources("new", PLAN)] == ["src"]
    assert service.request("new", "test")
    await asyncio.wait_for(service.searches["new"], 30)
    assert [dict(t.config) for t in runner.trials] == [{"batch": 2}]

    cold = Replay()
    no_transfer = ServiceSettings(planner=st.planner, transfer=False)
    service = ProfilingService(book, cold, plans, VirtualClock(0.0), no_transfer)
    service.request("new", "test")
    await asyncio.wait_for(service.searches["new"], 30)
    assert [dict(t.config) for t in cold.trials] == [{"batch": 8}]  # without the source: the seeded cold start


# -- serve, end to end with the local runner ------------------------------------------------------------------------

QUICK_SERVER = ["--hidden", "128", "--layers", "2"]


@pytest.mark.asyncio
async def test_serve_profiles_a_model_with_the_local_runner_and_stores_the_profile(broker: LocalBroker) -> None:
    n = time.monotonic_ns()
    space = {
        "slo_ms": 200,
        "dimensions": [{"name": "threads", "levels": [1, 2]}, {"name": "batch", "levels": [1, 2]}],
        "pricing": {"terms": [{"dimension": "threads", "price": 1.0}]},
    }
    cfg = config(
        ["m1", "m2"],
        kafka={
            "bootstrap": broker.bootstrap,
            "group_id": f"profiling-{n}",
            "create_topics": True,
            "session_timeout_ms": 2000,
            "heartbeat_interval_ms": 500,
            "topics": {"traffic": f"t-{n}", "gpu": f"g-{n}", "decisions": f"d-{n}", "dead_letter": f"x-{n}"},
        },
        profiles={"enabled": True, "topic": f"profiles-{n}"},
        profiling={
            "enabled": True,
            "runner": "local",
            "profile_missing": True,
            "space": space,
            "models": {"m2": {"enabled": False}},
            "trial_timeout_s": 40,
            "planner": {"budget": 2, "initial_points": 2},
            "local": {"step_s": 0.4, "start_rps": 40, "bisect_steps": 1, "server_args": QUICK_SERVER},
        },
    )
    stop = asyncio.Event()
    up: list[Running] = []
    task = asyncio.create_task(serve(cfg, stop, actuator=RecordingActuator({"m1": 1, "m2": 1}), started=up.append))
    try:
        deadline = time.monotonic() + 60
        while not (up and up[0].agent.profiles is not None and "m1" in up[0].agent.profiles.profiles):
            assert not task.done(), "the agent stopped"
            assert time.monotonic() < deadline, "no profile for m1 within 60 s"
            await asyncio.sleep(0.2)
        book = up[0].agent.profiles
        assert book is not None and "m2" not in book.profiles  # profiling is off for m2
        mine = book.profiles["m1"].profile
        assert len(mine.observations) == 2 and all(o.result.measured for o in mine.observations)
        assert mine.capacity > 0 and mine.chosen is not None
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0
    reader = KafkaProfileStore(cfg.kafka, cfg.profiles.topic, create_topic=False)
    got = await reader.load()  # what an agent starting now would read from the topic
    assert set(got) == {"m1"} and got["m1"].profile.capacity == mine.capacity and not got["m1"].stale
    assert got["m1"].profile.observations == mine.observations


@pytest.mark.asyncio
async def test_open_profiling_enters_the_shadow_runner_with_the_configured_workloads(
    broker: LocalBroker, k8s: K8s
) -> None:
    """The shadow branch of ``serve``: the runner gets each model's workload and the shadow settings from the
    configuration, its results consumer reads ``kafka.topics.trials``, and shadows an earlier agent left behind are
    removed at start."""
    n = time.monotonic_ns()
    k8s.emulator.resources["batch/v1/jobs"] = {}
    k8s.emulator.resources["v1/configmaps"] = {}
    labels = {"shadowscale.io/shadow": "true", "shadowscale.io/trial": "old"}
    orphan = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "m1-shadow-old", "labels": labels}}
    await k8s.create("deployments", "serving", orphan)
    cfg = parse_config(
        {
            "models": [{"name": "m1", "namespace": "serving", "capacity_rps": 10.0}, {"name": "m2", "capacity_rps": 5}],
            "kafka": {"bootstrap": broker.bootstrap, "create_topics": True, "topics": {"trials": f"trials-{n}"}},
            "actuator": {"kind": "kubernetes", "kubernetes": {"host": k8s.url}},
            "profiles": {"enabled": True},
            "profiling": {
                "enabled": True,
                "space": SPACE_CFG,
                "max_trials": 2,
                "models": {
                    "m1": {"deployment": "resnet", "port": 8080, "path": "/v1/predict", "shape": {"sizes": [100]}}
                },
                "shadow": {
                    "kafka_bootstrap": "kafka.shadowscale:9092",
                    "loadgen_image": "img:1",
                    "load": {"step_s": 3},
                },
            },
        }
    )
    book = ProfileBook(["m1", "m2"], MemoryProfileStore())
    api = await api_client(cfg.actuator.kubernetes)
    closers: list[Callable[[], Any]] = []
    try:

        def gaps(model: str) -> tuple[float, ...]:
            return (0.1,) * 30

        service = await open_profiling(cfg, book, api, VirtualClock(0.0), Metrics(), None, closers, observed_gaps=gaps)
        runner = service.runner
        assert isinstance(runner, ShadowTrialRunner)
        assert runner.observed_gaps is gaps  # the load replays the model's recent arrivals
        m1 = runner.workloads["m1"]
        assert (m1.namespace, m1.deployment, m1.port, m1.path) == ("serving", "resnet", 8080, "/v1/predict")
        assert m1.shape is not None and m1.shape.sizes == (100,)
        assert runner.workloads["m2"] == Workload("default", "m2")  # defaults: the model's name and namespace
        st = runner.settings
        assert (st.results_topic, st.kafka_bootstrap, st.loadgen_image) == (
            f"trials-{n}",
            "kafka.shadowscale:9092",
            "img:1",
        )
        assert st.load.step_s == 3.0
        assert service.gate.max_trials == 2 and sorted(service.plans) == ["m1", "m2"]
        assert book.on_retrial == service.on_retrial
        resp = await k8s.http.get(f"{k8s.url}/apis/apps/v1/namespaces/serving/deployments")
        assert [d["metadata"]["name"] for d in (await resp.json())["items"]] == []  # the orphan was cleaned up
        # the model's Deployment narrows its space by annotation: the service reads it through the runner
        annotated = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "resnet", "annotations": {"profiling.shadowscale.io/dim.batch": "1,2", "x": "y"}},
        }
        await k8s.create("deployments", "serving", annotated)
        plan = await service._plan("m1")
        assert plan.space.enumerate() == ((1,), (2,))
        assert len((await service._plan("m2")).space.enumerate()) == 3  # no Deployment "m2": the configured space
    finally:
        for close in reversed(closers):
            await close()
        await api.close()


# -- configuration --------------------------------------------------------------------------------------------------

SPACE_CFG = {"slo_ms": 100, "dimensions": [{"name": "batch", "levels": [1, 2, 4]}]}


def profiled(**over: Any) -> dict[str, Any]:
    return {"enabled": True, "runner": "local", "space": SPACE_CFG, **over}


def test_profiling_is_off_by_default_and_the_trials_topic_has_a_default() -> None:
    cfg = config(["m1"])
    assert not cfg.profiling.enabled and cfg.profiling.runner == "shadow"
    assert cfg.kafka.topics.trials == "shadowscale.trials"


def test_a_valid_profiling_section() -> None:
    cfg = parse_config(
        {
            "models": [
                {"name": "m1", "capacity_rps": 10.0},
                {"name": "m2", "capacity_rps": 10.0, "slo_ms": 250},
                {"name": "m3", "capacity_rps": 10.0},
            ],
            "profiles": {"enabled": True},
            "profiling": profiled(
                space={"dimensions": [{"name": "batch", "levels": [1, 2]}]},
                models={"m1": {"space": SPACE_CFG}, "m3": {"enabled": False}},
                max_trials=3,
            ),
        }
    )
    plans = profiling_plans(cfg)
    assert sorted(plans) == ["m1", "m2"]
    assert plans["m1"][1].slo_ms == 100 and plans["m1"][0].names == ("batch",)
    assert plans["m2"][1].slo_ms == 250  # the default space without an SLO takes the model's own


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"profiles": {"enabled": False}}, "profiling.enabled needs profiles.enabled"),
        ({"profiling": profiled(runner="shadow")}, "profiling.runner shadow needs actuator.kind kubernetes"),
        ({"profiling": profiled(runner="gpu")}, "at `$.profiling.runner`"),
        ({"profiling": profiled(space=None)}, "model 'm1' has no search space: give profiling.models.m1.space"),
        (
            {"profiling": profiled(models={"m1": {"space": {"slo_ms": 1, "dimensions": []}}})},
            "profiling.models.m1.space (model 'm1'): profiling config: dimensions must be a non-empty list",
        ),
        (
            {"profiling": profiled(space={"dimensions": [{"name": "batch", "levels": [1]}]})},
            "profiling.space (model 'm1'): profiling config: slo_ms is required",
        ),
        ({"profiling": profiled(models={"m9": {}})}, "profiling.models: 'm9' not in models"),
        ({"profiling": profiled(max_trials=0)}, "at `$.profiling.max_trials`"),
        ({"profiling": profiled(trial_timeout_s=-1)}, "at `$.profiling.trial_timeout_s`"),
        ({"profiling": profiled(gpu_share_cap=1.0)}, "profiling.gpu_share_cap needs profiling.gpu_share_dimension"),
        (
            {"profiling": profiled(gpu_share_cap=1.0, gpu_share_dimension="gpu")},
            "profiling.gpu_share_dimension 'gpu' is not a dimension of model 'm1'",
        ),
        ({"profiling": profiled(planner={"budget": 0})}, "profiling.planner: planner: budget must be >= 1"),
        ({"profiling": profiled(planner={"budgett": 3})}, "unknown field `budgett` - at `$.profiling.planner`"),
        ({"profiling": profiled(models={"m1": {"port": 0}})}, "profiling.models.m1: Expected `int` >= 1 - at `$.port`"),
        ({"profiling": profiled(models={"m1": {"path": "predict"}})}, "profiling.models.m1.path must start with '/'"),
        (
            {"profiling": profiled(models={"m1": {"shape": {"payloads": ["a"], "sizes": [1]}}})},
            "profiling.models.m1.shape: give payloads or sizes, not both",
        ),
        (
            {"profiling": profiled(shadow={"kafka_bootstrap": "kafka"})},
            "profiling.shadow.kafka_bootstrap must be HOST:PORT",
        ),
        ({"profiling": profiled(local={"start_rps": 100, "max_rps": 10})}, "profiling.local.start_rps"),
        ({"profiling": profiled(shadow={"loadgen_image": ""})}, "at `$.profiling.shadow.loadgen_image`"),
        (
            {
                "profiling": profiled(runner="shadow"),
                "actuator": {"kind": "kubernetes"},
                "kafka": {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "agent"},
            },
            "profiling.shadow.kafka_sasl_secret: kafka.security_protocol is SASL_SSL",
        ),
    ],
)
def test_profiling_config_errors_name_the_field(over: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"profiles": {"enabled": True}, **over}
    args.setdefault("profiling", profiled())
    with pytest.raises(ConfigError) as e:
        config(["m1"], **args)
    assert message in str(e.value), str(e.value)


@pytest.mark.asyncio
async def test_workload_annotations_narrow_a_search_and_a_bad_one_is_logged_and_ignored() -> None:
    """``profiling.shadowscale.io/dim.batch: "1,2"`` on the workload: the search tries only those batches (its best
    is batch 2 at 14 req/s). An annotation naming no dimension is rejected with its reason, and the configured space
    is searched."""
    raw = {"slo_ms": 100, "dimensions": [{"name": "batch", "levels": [1, 2, 4, 8], "log": True}]}
    plan = ModelPlan(SPACE, OBJECTIVE, raw)
    seen: dict[str, dict[str, str]] = {
        "good": {"profiling.shadowscale.io/dim.batch": "1,2", "team": "vision"},
        "bad": {"profiling.shadowscale.io/dim.threads": "1,2"},
    }

    async def annotations(model: str) -> dict[str, str]:
        return seen[model]

    store = MemoryProfileStore()
    book = ProfileBook(["good", "bad"], store)
    runner = Replay()
    service = ProfilingService(
        book, runner, {"good": plan, "bad": plan}, VirtualClock(1.0), EVERY, annotations=annotations
    )
    with capture_logs() as logs:
        assert service.request("good", "test") and service.request("bad", "test")
        await asyncio.wait_for(asyncio.gather(*service.searches.values()), 30)
    assert sorted(t.config["batch"] for t in runner.trials if t.model == "good") == [1, 2]
    assert sorted(t.config["batch"] for t in runner.trials if t.model == "bad") == [1, 2, 4, 8]
    profiles = await store.load()
    assert profiles["good"].profile.capacity == 14.0 and profiles["bad"].profile.capacity == 24.0
    rejected = [e for e in logs if e["event"] == "workload annotation rejected; searching the configured space"]
    assert [e["model"] for e in rejected] == ["bad"] and "no dimension 'threads'" in rejected[0]["error"]
