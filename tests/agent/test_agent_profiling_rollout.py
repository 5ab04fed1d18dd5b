"""Rolling a new profile's chosen spec out, against kmock's Kubernetes emulator: a canary with the new spec joins the
model's pods, good canary windows promote it (the Deployment patched through a rolling update that keeps capacity,
the canary removed, the autoscaler's capacity switched to the new spec's), a regressing canary is rolled back
(production untouched, capacity unchanged), the per-model and cluster-wide rate limits, the opt-out annotation and
dry-run hold; and the pure policy's rules one by one."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from agent_fakes import VirtualClock
from agent_k8s import deployment as k8s_deployment
from agent_k8s import fixed_guess_k8s
from kubernetes_asyncio import client

from shadowscale.agent.broker import LocalBroker
from shadowscale.agent.config import KafkaConfig
from shadowscale.agent.events import TRAFFIC_V1, TrafficEvent, encode
from shadowscale.agent.kafka import KafkaSink, KafkaTail, ensure_topics
from shadowscale.agent.profiling.book import ProfileBook
from shadowscale.agent.profiling.rollout import (
    CANARY_LABEL,
    CanaryWindows,
    RolloutActuator,
    RolloutController,
    running_spec,
)
from shadowscale.agent.profiling.service import ModelPlan, ProfilingService, ServiceSettings
from shadowscale.agent.profiling.shadow import Workload
from shadowscale.policies.profiling.codec import StoredProfile
from shadowscale.policies.profiling.objective import Objective
from shadowscale.policies.profiling.planner import PlannerSettings
from shadowscale.policies.profiling.ports import MemoryProfileStore
from shadowscale.policies.profiling.replay import Measured, ReplayRunner
from shadowscale.policies.profiling.rollout import (
    OPT_OUT_ANNOTATION,
    SPEC_ANNOTATION,
    CanaryWindow,
    Ledger,
    RolloutSettings,
    capacity_for,
    judge_canary,
    plan,
    strategy,
)
from shadowscale.policies.profiling.space import Levels, Point, SearchSpace
from shadowscale.policies.profiling.types import Observation, Prediction, Profile, TrialResult, TrialStatus

NS = "serving"
SLO = 100.0


def deployment(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return k8s_deployment(name, NS, replicas=6, image=f"{name}:1", annotations=annotations)


OLD = {"cpu": 1.0, "batch": 1}
NEW = {"cpu": 2.0, "batch": 8}


def profile(model: str, new_thr: float = 120.0, old_thr: float = 40.0) -> Profile:
    """Two tried configurations: the running one (40 req/s on 1 core) and the chosen one (120 req/s on 2 cores)."""

    def measured(thr: float) -> TrialResult:
        return TrialResult(TrialStatus.MEASURED, throughput=thr, p99_ms=0.8 * SLO)

    old_p, new_p = (1.0, 1), (2.0, 8)
    return Profile(
        model=model,
        names=("cpu", "batch"),
        slo_ms=SLO,
        observations=(Observation(old_p, measured(old_thr)), Observation(new_p, measured(new_thr))),
        predictions=(
            Prediction(old_p, old_thr / 1.0, old_thr * 0.9, old_thr * 1.1, 0.99),
            Prediction(new_p, new_thr / 2.0, new_thr * 0.45, new_thr * 0.55, 0.99),
        ),
        chosen=new_p,
        capacity=new_thr,
        cost=2.0,
        stopped="converged",
    )


@pytest_asyncio.fixture
async def api(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    import kmock
    from kmock._internal import parsing

    assert importlib.metadata.version("kmock") == "0.8"
    monkeypatch.setattr(parsing, "guess_k8s", fixed_guess_k8s(parsing.guess_k8s))
    async with kmock.KubernetesEmulator() as emu, kmock.Server(emu) as server:
        emulator: Any = emu
        emulator.resources["apps/v1/deployments"] = {}
        conf = client.Configuration(host=str(server.url).rstrip("/"))
        async with client.ApiClient(conf) as api_client:
            apps = client.AppsV1Api(api_client)
            await apps.create_namespaced_deployment(NS, deployment("resnet"))
            await apps.create_namespaced_deployment(NS, deployment("bert"))
            await apps.create_namespaced_deployment(NS, deployment("vit", {OPT_OUT_ANNOTATION: "disabled"}))
            yield api_client


async def read(api: Any, name: str) -> dict[str, Any]:
    d = await client.AppsV1Api(api).read_namespaced_deployment(name, NS)
    return dict(api.sanitize_for_serialization(d))


async def names(api: Any) -> list[str]:
    return sorted(d.metadata.name for d in (await client.AppsV1Api(api).list_namespaced_deployment(NS)).items)


def good(k: int) -> CanaryWindow:
    return CanaryWindow(end=15.0 * k, arrivals=300, completions=300, errors=0, p99_ms=0.6 * SLO)


def slow(k: int) -> CanaryWindow:
    return CanaryWindow(end=15.0 * k, arrivals=300, completions=290, errors=0, p99_ms=3.0 * SLO)


async def setup(api: Any, settings: RolloutSettings) -> tuple[RolloutController, ProfileBook]:
    store = MemoryProfileStore()
    book = ProfileBook(["resnet", "bert", "vit"], store)
    for m in ("resnet", "bert", "vit"):
        book.install(StoredProfile(profile(m), updated_at=0.0))
        book.set_running(m, OLD)  # production runs the old spec (as a previous rollout recorded it)
    workloads = {m: Workload(NS, m) for m in ("resnet", "bert", "vit")}
    return RolloutController(RolloutActuator(api, workloads), settings, on_running=book.set_running), book


def container(dep: dict[str, Any]) -> dict[str, Any]:
    return dict(dep["spec"]["template"]["spec"]["containers"][0])


@pytest.mark.asyncio
async def test_a_new_profile_rolls_out_through_a_canary_and_capacity_follows_the_running_spec(api: Any) -> None:
    """Mutation: promoting without ``maxUnavailable: 0`` fails the strategy check; not telling the book the new
    spec runs leaves the capacity at the old spec's 40 req/s."""
    ctl, book = await setup(api, RolloutSettings())
    assert book.capacity("resnet") == (40.0, "profile 40 req/s per replica (the profile's trial of the running spec)")
    decision = await ctl.consider("resnet", profile("resnet"), now=0.0)
    assert decision.action == "start" and dict(decision.config or {}) == NEW
    assert await names(api) == ["bert", "resnet", "resnet-canary", "vit"]
    canary = await read(api, "resnet-canary")
    assert canary["spec"]["replicas"] == 1
    labels = canary["spec"]["template"]["metadata"]["labels"]
    assert labels == {"app": "resnet", CANARY_LABEL: "true"}  # the model's Service selects it: live traffic
    c = container(canary)
    assert c["resources"]["limits"]["cpu"] == "2" and {"name": "BATCH_SIZE", "value": "8"} in c["env"]
    assert container(await read(api, "resnet"))["resources"]["limits"]["cpu"] == "1"  # production untouched
    for k in range(3):
        ctl.observe("resnet", good(k))
    assert (await ctl.step(now=45.0))["resnet"].action == "wait"  # not enough windows yet
    ctl.observe("resnet", good(3))
    verdict = (await ctl.step(now=60.0))["resnet"]
    assert verdict.action == "promote", verdict
    dep = await read(api, "resnet")
    assert container(dep)["resources"]["limits"]["cpu"] == "2"
    assert {"name": "BATCH_SIZE", "value": "8"} in container(dep)["env"]
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 2}}
    assert running_spec(dep) == NEW and json.loads(dep["metadata"]["annotations"][SPEC_ANNOTATION]) == NEW
    assert await names(api) == ["bert", "resnet", "vit"]  # the canary is gone
    assert book.capacity("resnet") == (120.0, "profile 120 req/s per replica")  # the chosen spec runs now
    assert await ctl.sync("resnet") == NEW


@pytest.mark.asyncio
async def test_a_regressing_canary_rolls_back_and_production_stays(api: Any) -> None:
    """Mutation: judging only errors (not the SLO attainment) promotes this canary."""
    ctl, book = await setup(api, RolloutSettings())
    before = await read(api, "resnet")
    assert (await ctl.consider("resnet", profile("resnet"), now=0.0)).action == "start"
    for k in range(4):
        ctl.observe("resnet", slow(k))
    verdict = (await ctl.step(now=60.0))["resnet"]
    assert verdict.action == "rollback" and "within the 100 ms SLO in 0% of windows" in verdict.reason
    assert await names(api) == ["bert", "resnet", "vit"]
    after = await read(api, "resnet")
    assert after["spec"]["template"] == before["spec"]["template"] and running_spec(after) is None
    assert book.capacity("resnet") is not None and book.capacity("resnet")[0] == 40.0  # type: ignore[index]
    assert ctl.canaries == {} and ctl.ledger.active == {}


@pytest.mark.asyncio
async def test_rate_limits_opt_out_and_dry_run_hold(api: Any) -> None:
    """Mutation: dropping the cluster-wide limit lets bert start while resnet's canary runs."""
    ctl, _ = await setup(api, RolloutSettings(model_interval_s=3600.0, cluster_max_active=1))
    assert (await ctl.consider("resnet", profile("resnet"), now=0.0)).action == "start"
    busy = await ctl.consider("bert", profile("bert"), now=10.0)
    assert busy.action == "wait" and "cluster rate limit: 1 rollout(s) in progress" in busy.reason
    for k in range(4):
        ctl.observe("resnet", slow(k))
    await ctl.step(now=60.0)  # rolled back: the slot is free again, the model's own limit is not
    again = await ctl.consider("resnet", profile("resnet", new_thr=130.0), now=120.0)
    assert again.action == "wait" and "model rate limit" in again.reason
    assert (await ctl.consider("bert", profile("bert"), now=130.0)).action == "start"
    opted = await ctl.consider("vit", profile("vit"), now=7200.0)
    assert opted.action == "skip" and "opted out" in opted.reason
    assert "vit-canary" not in await names(api)

    dry, _ = await setup(api, RolloutSettings(dry_run=True))
    d = await dry.consider("resnet", profile("resnet"), now=0.0)
    assert d.action == "dry_run" and dict(d.config or {}) == NEW
    assert "resnet-canary" not in await names(api) and running_spec(await read(api, "resnet")) is None


def test_plan_rules() -> None:
    s = RolloutSettings(min_gain=0.1, model_interval_s=100.0, cluster_max_active=2, cluster_per_hour=2)
    p = profile("m")
    assert plan("m", p, NEW, {}, Ledger(), 0.0, s).reason == "the chosen spec is already running"
    small = profile("m", new_thr=84.0)  # 84 / 2 cores = 42 per core vs 40: +5 %
    assert "below the 10% threshold" in plan("m", small, OLD, {}, Ledger(), 0.0, s).reason
    assert plan("m", p, None, {}, Ledger(), 0.0, s).action == "start"  # running spec unknown
    ledger = Ledger().started("a", 0.0, 100.0).finished("a").started("b", 10.0, 100.0).finished("b")
    hourly = plan("m", p, OLD, {}, ledger, 20.0, s)
    assert hourly.action == "wait" and "2 rollout(s) started in the last hour" in hourly.reason
    assert plan("m", p, OLD, {}, ledger, 3700.0, s).action == "start"
    assert plan("m", p, OLD, {OPT_OUT_ANNOTATION: " Disabled "}, Ledger(), 0.0, s).action == "skip"
    none = Profile("m", ("cpu", "batch"), SLO, (), (), None, 0.0, 0.0, "budget")
    assert plan("m", none, OLD, {}, Ledger(), 0.0, s).action == "skip"
    assert strategy(6, s) == {"maxUnavailable": 0, "maxSurge": 2} and strategy(1, s)["maxSurge"] == 1


def test_canary_verdicts_and_running_capacity() -> None:
    s = RolloutSettings(canary_windows=2, canary_min_requests=10, canary_timeout_s=300)
    assert judge_canary([good(0)], SLO, 0.0, 30.0, s).action == "wait"
    assert judge_canary([], SLO, 0.0, 301.0, s).action == "rollback"  # no traffic is no pass
    assert judge_canary([good(0), good(1)], SLO, 0.0, 30.0, s).action == "promote"
    errs = [CanaryWindow(0, 100, 100, 5, 50.0), CanaryWindow(15, 100, 100, 5, 50.0)]
    assert "errors" in judge_canary(errs, SLO, 0.0, 30.0, s).reason
    behind = [CanaryWindow(0, 100, 50, 0, 50.0), CanaryWindow(15, 100, 50, 0, 50.0)]
    assert "cannot keep up" in judge_canary(behind, SLO, 0.0, 30.0, s).reason
    p = profile("m")
    assert capacity_for(p, NEW) == (120.0, "") and capacity_for(p, None) == (120.0, "")
    assert capacity_for(p, OLD) == (40.0, "the profile's trial of the running spec")
    assert capacity_for(p, {"cpu": 4.0, "batch": 8}) is None  # never tried: the configured capacity stands
    assert running_spec({"metadata": {"annotations": {SPEC_ANNOTATION: "{not json"}}}) is None
    assert running_spec({"metadata": {"annotations": {SPEC_ANNOTATION: '{"cpu": [1]}'}}}) is None


# -- end to end: a search publishes, the rollout starts, the canary's traffic arrives through Kafka ----------------


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as b:
        yield b


@pytest.mark.asyncio
async def test_a_published_profile_rolls_out_judged_on_the_canarys_live_traffic_events(
    api: Any, broker: LocalBroker
) -> None:
    """The profiling service's search publishes a new profile (batch 4, 24 req/s, where batch 1 served 8); the
    rollout controller starts a canary; the canary pods' traffic events (and the model's own pods', which must not
    count) go through the bundled broker; the windows built from them promote the canary; the Deployment runs batch
    4 and the capacity is 24. Mutation: counting the model's own slow pods in the canary windows rolls it back."""
    space = SearchSpace((Levels("batch", (1, 2, 4, 8), log=True, integer=True),))
    rows: dict[Point, Measured] = {
        (1,): Measured(8.0, 20.0),
        (2,): Measured(14.0, 40.0),
        (4,): Measured(24.0, 80.0),
        (8,): Measured(40.0, 300.0),
    }
    old = Profile(
        "resnet",
        ("batch",),
        SLO,
        (Observation((1,), TrialResult(TrialStatus.MEASURED, throughput=8.0, p99_ms=20.0)),),
        (),
        (1,),
        8.0,
        1.0,
        "converged",
    )
    store = MemoryProfileStore()
    book = ProfileBook(["resnet"], store)
    book.install(StoredProfile(old, updated_at=0.0))
    book.set_running("resnet", {"batch": 1})
    clock = VirtualClock(100.0)
    ctl = RolloutController(
        RolloutActuator(api, {"resnet": Workload(NS, "resnet")}), RolloutSettings(), on_running=book.set_running
    )
    settings = ServiceSettings(planner=PlannerSettings(budget=4, ei_threshold=0.0, restarts=0), transfer=False)
    service = ProfilingService(
        book,
        ReplayRunner(space, rows),
        {"resnet": ModelPlan(space, Objective(slo_ms=SLO))},
        clock,
        settings,
        on_published=lambda model, profile: ctl.consider(model, profile, clock.now()),
    )
    assert service.request("resnet", "test")
    await asyncio.wait_for(service.searches["resnet"], 30)
    assert book.profiles["resnet"].profile.chosen == (4,)
    assert "resnet-canary" in await names(api) and "resnet" in ctl.canaries
    assert book.capacity("resnet") is not None and book.capacity("resnet")[0] == 8.0  # type: ignore[index]

    kafka = KafkaConfig(bootstrap=broker.bootstrap)
    topic = f"traffic-{time.monotonic_ns()}"
    await ensure_topics(kafka, [topic], 1)
    tail = KafkaTail(kafka, topic)
    await tail.start()
    sink = KafkaSink(kafka)
    await sink.start()
    windows = CanaryWindows(RolloutActuator.canary_name(Workload(NS, "resnet")))
    try:
        for k in range(4):
            t = 1000.0 + 15.0 * k
            events = [
                TrafficEvent(schema=TRAFFIC_V1, model="resnet", pod="resnet-canary-7d9f-x1", event_time=t,
                             window_s=15.0, arrivals=300, completions=300, latency_p99_ms=70.0),
                TrafficEvent(schema=TRAFFIC_V1, model="resnet", pod="resnet-5c4b-a2", event_time=t,
                             window_s=15.0, arrivals=100, completions=100, latency_p99_ms=900.0),
            ]  # fmt: skip
            await sink.write(topic, [(e.pod.encode(), encode(e)) for e in events])
            got = 0
            deadline = time.monotonic() + 20
            while got < 2 and time.monotonic() < deadline:
                for _, value in await tail.poll(100, 0.5):
                    assert value is not None
                    windows.add(msgspec.json.decode(value, type=TrafficEvent))
                    got += 1
            assert got == 2
            ctl.observe("resnet", windows.take(t))
    finally:
        await sink.stop()
        await tail.stop()
    verdict = (await ctl.step(now=clock.now() + 60.0))["resnet"]
    assert verdict.action == "promote", verdict
    dep = await read(api, "resnet")
    assert {"name": "BATCH_SIZE", "value": "4"} in container(dep)["env"] and running_spec(dep) == {"batch": 4}
    assert "resnet-canary" not in await names(api)
    assert book.capacity("resnet") == (24.0, "profile 24 req/s per replica")


def test_plan_skips_another_model_versions_profile_and_takes_the_configured_opt_out_annotation() -> None:
    """Mutation: dropping the version rule rolls out a profile measured on the old image."""
    s = RolloutSettings(opt_out_annotation="example.com/no-rollout", max_unavailable=1)
    p = profile("m")
    other = plan("m", p, OLD, {}, Ledger(), 0.0, s, profile_version="srv:1", running_version="srv:2")
    assert other.action == "skip" and "model version 'srv:1', 'srv:2' runs" in other.reason
    assert plan("m", p, OLD, {}, Ledger(), 0.0, s, profile_version="srv:2", running_version="srv:2").action == "start"
    assert plan("m", p, OLD, {}, Ledger(), 0.0, s, profile_version=None, running_version="srv:2").action == "start"
    assert plan("m", p, OLD, {"example.com/no-rollout": "disabled"}, Ledger(), 0.0, s).action == "skip"
    assert plan("m", p, OLD, {OPT_OUT_ANNOTATION: "disabled"}, Ledger(), 0.0, s).action == "start"  # not this one
    assert strategy(6, s) == {"maxUnavailable": 1, "maxSurge": 2}
