"""Rollouts run by the daemon (``shadowscale serve`` with ``rollout.enabled``), against kmock's Kubernetes emulator
and the bundled tansu broker: the stored profile's chosen spec reaches the model's Deployment through a canary judged
on the canary pods' traffic events read from the traffic topic; a regressing canary is rolled back; the rate limits
(per model, surviving a restart through the start mark on the Deployment, and cluster-wide) and the opt-out
annotation hold; the autoscaler's capacity follows the spec that runs (and the model version: a new image does not
reuse an old profile); only the leader acts; a canary left by a previous agent is resumed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from agent_fakes import RecordingActuator
from agent_k8s import K8s
from agent_k8s import deployment as k8s_deployment

from shadowscale.agent.app import Running, serve
from shadowscale.agent.broker import LocalBroker
from shadowscale.agent.config import AgentConfig, ConfigError, parse_config, rollout_settings
from shadowscale.agent.events import TRAFFIC_V1, TrafficEvent, encode
from shadowscale.agent.kafka import KafkaSink
from shadowscale.agent.profiling.rollout import STARTED_ANNOTATION, running_spec
from shadowscale.agent.profiling.store import KafkaProfileStore
from shadowscale.policies.profiling.codec import StoredProfile
from shadowscale.policies.profiling.rollout import OPT_OUT_ANNOTATION, SPEC_ANNOTATION
from shadowscale.policies.profiling.types import Observation, Prediction, Profile, TrialResult, TrialStatus

NS = "serving"
SLO = 100.0
OLD = {"cpu": 1.0, "batch": 1}
NEW = {"cpu": 2.0, "batch": 8}
OLD_SPEC = '{"batch": 1, "cpu": 1.0}'


def profile(model: str) -> Profile:
    """The running spec (40 req/s on 1 core) and the chosen one (120 req/s on 2 cores): +50 % per cost."""

    def measured(thr: float) -> TrialResult:
        return TrialResult(TrialStatus.MEASURED, throughput=thr, p99_ms=0.8 * SLO)

    old_p, new_p = (1.0, 1), (2.0, 8)
    return Profile(
        model=model,
        names=("cpu", "batch"),
        slo_ms=SLO,
        observations=(Observation(old_p, measured(40.0)), Observation(new_p, measured(120.0))),
        predictions=(Prediction(old_p, 40.0, 36.0, 44.0, 0.99), Prediction(new_p, 60.0, 54.0, 66.0, 0.99)),
        chosen=new_p,
        capacity=120.0,
        cost=2.0,
        stopped="converged",
    )


def deployment(name: str, annotations: dict[str, str] | None = None, image: str = "srv:1") -> dict[str, Any]:
    return k8s_deployment(name, NS, replicas=4, image=image, annotations=annotations)


def agent_config(
    broker: LocalBroker, k8s: K8s, models: list[str], extra: dict[str, Any] | None = None, **rollout: Any
) -> AgentConfig:
    n = time.monotonic_ns()
    return parse_config(
        {
            "policy": "kpa",
            "http": {"enabled": False},
            "agent_id": "test-agent",
            "models": [{"name": m, "namespace": NS, "capacity_rps": 10.0, "max_replicas": 50} for m in models],
            "kafka": {
                "bootstrap": broker.bootstrap,
                "group_id": f"rollout-{n}",
                "create_topics": True,
                "session_timeout_ms": 2000,
                "heartbeat_interval_ms": 500,
                "topics": {"traffic": f"t-{n}", "gpu": f"g-{n}", "decisions": f"d-{n}", "dead_letter": f"x-{n}"},
            },
            "actuator": {"kind": "kubernetes", "kubernetes": {"host": k8s.url, "request_timeout_s": 2.0}},
            "profiles": {"enabled": True, "topic": f"profiles-{n}", "refresh_s": 0},
            "rollout": {
                "enabled": True,
                "check_interval_s": 0.2,
                "canary_window_s": 0.3,
                "canary_windows": 2,
                "canary_min_requests": 10,
                "canary_timeout_s": 60,
                **rollout,
            },
            **(extra or {}),
        },
        source="test",
    )


@contextlib.asynccontextmanager
async def agent(
    cfg: AgentConfig, k8s: K8s, deployments: list[dict[str, Any]], versions: dict[str, str | None] | None = None
) -> AsyncIterator[Running]:
    """The Deployments in the emulator, each model's profile in the store, then ``serve`` until the block ends."""
    k8s.emulator.resources["v1/events"] = {}
    for d in deployments:
        await k8s.create("deployments", NS, d)
    writer = KafkaProfileStore(cfg.kafka, cfg.profiles.topic)
    await writer.start()
    for m in cfg.models:
        await writer.put(StoredProfile(profile(m.name), updated_at=1.0, version=(versions or {}).get(m.name)))
    await writer.stop()
    stop = asyncio.Event()
    up: list[Running] = []
    names = [m.name for m in cfg.models]
    task = asyncio.create_task(serve(cfg, stop, actuator=RecordingActuator(dict.fromkeys(names, 4)), started=up.append))
    try:
        await until(lambda: bool(up), "the agent did not start", task=task)
        yield up[0]
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0


async def until(cond: Callable[[], bool], what: str, timeout_s: float = 15.0, task: Any = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert task is None or not task.done(), "the agent stopped"
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def canary_traffic(cfg: AgentConfig, model: str, p99_ms: float, own_p99_ms: float = 10.0) -> AsyncIterator[None]:
    """The canary pod's traffic events and the model's own pods' (which must not count), every 0.1 s."""
    sink = KafkaSink(cfg.kafka)
    await sink.start()

    async def send() -> None:
        while True:
            now = time.time()
            events = [
                TrafficEvent(schema=TRAFFIC_V1, model=model, pod=f"{model}-canary-7d9f-x1", event_time=now,
                             window_s=0.1, arrivals=20, completions=20, latency_p99_ms=p99_ms),
                TrafficEvent(schema=TRAFFIC_V1, model=model, pod=f"{model}-5c4b-a2", event_time=now,
                             window_s=0.1, arrivals=20, completions=20, latency_p99_ms=own_p99_ms),
            ]  # fmt: skip
            await sink.write(cfg.kafka.topics.traffic, [(model.encode(), encode(e)) for e in events])
            await asyncio.sleep(0.1)

    task = asyncio.create_task(send())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sink.stop()


def exists(k8s: K8s, name: str) -> bool:
    """Whether the Deployment is there now (kmock keeps a deleted object's history, marked deleted)."""
    for key in list(k8s.emulator.objects.keys()):
        if key[0].plural == "deployments" and key[1:] == (NS, name):
            return not k8s.emulator.objects[key].deleted
    return False


def container(dep: dict[str, Any]) -> dict[str, Any]:
    return dict(dep["spec"]["template"]["spec"]["containers"][0])


def events(k8s: K8s) -> list[tuple[str, str, str]]:
    """(workload, reason, type) of the Events the agent wrote."""
    return [
        (r.data["involvedObject"]["name"], r.data["reason"], r.data["type"])
        for r in k8s.requests("post")
        if str(r.url).endswith("/events")
    ]


def metric(running: Running, name: str, labels: dict[str, str] | None = None) -> float:
    value = running.agent.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def capacity(running: Running, model: str) -> float:
    core = running.agent.core
    return float(core.capacity_rps[core.models.index(model)])


# -- (a) a profile change rolls out ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_stored_profiles_spec_rolls_out_through_a_canary_judged_on_live_traffic(
    broker: LocalBroker, k8s: K8s
) -> None:
    """The daemon reads m1's Deployment (it runs the old spec), starts a canary with the new one, judges it on the
    canary pod's events from the traffic topic, and patches the Deployment through a rolling update that keeps
    capacity; metrics and Events follow. The model's own pods are slow meanwhile (9x the SLO): they are not the
    canary. Mutations: not starting the rollout task in ``serve`` (as main had it) leaves no canary; counting the
    model's own pods in the canary's windows rolls it back."""
    cfg = agent_config(broker, k8s, ["m1"])
    async with agent(cfg, k8s, [deployment("m1", {SPEC_ANNOTATION: OLD_SPEC})]) as running:
        await until(lambda: exists(k8s, "m1-canary"), "no canary for m1")
        canary = k8s.get("deployments", NS, "m1-canary")
        assert canary["spec"]["replicas"] == 1 and running_spec(canary) == NEW
        assert container(canary)["resources"]["limits"]["cpu"] == "2"
        assert container(k8s.get("deployments", NS, "m1"))["resources"]["limits"]["cpu"] == "1"  # not yet
        marked = lambda: STARTED_ANNOTATION in k8s.get("deployments", NS, "m1")["metadata"]["annotations"]  # noqa: E731
        await until(marked, "no start mark on m1")  # written right after the canary
        await until(lambda: metric(running, "shadowscale_rollouts_in_progress") == 1, "no rollout in progress")
        async with canary_traffic(cfg, "m1", p99_ms=0.5 * SLO, own_p99_ms=9 * SLO):
            await until(lambda: not exists(k8s, "m1-canary"), "the canary was not judged")
        dep = k8s.get("deployments", NS, "m1")
        assert running_spec(dep) == NEW
        assert container(dep)["resources"]["limits"]["cpu"] == "2"
        assert {"name": "BATCH_SIZE", "value": "8"} in container(dep)["env"]
        assert dep["spec"]["strategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
        }
        assert metric(running, "shadowscale_rollouts_total", {"outcome": "started"}) == 1
        await until(
            lambda: metric(running, "shadowscale_rollouts_total", {"outcome": "promoted"}) == 1,
            "metric shadowscale_rollouts_total promoted",
        )
        await until(
            lambda: metric(running, "shadowscale_rollouts_in_progress") == 0, "metric shadowscale_rollouts_in_progress"
        )
        await until(lambda: ("m1", "RolloutPromoted", "Normal") in events(k8s), "no RolloutPromoted Event")
        assert ("m1", "RolloutStarted", "Normal") in events(k8s)


# -- (b) a regressing canary rolls back -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_canary_that_misses_the_slo_on_live_traffic_is_rolled_back(broker: LocalBroker, k8s: K8s) -> None:
    """The canary pod's p99 is 3x the SLO while the model's own pods are fast: rolled back, production untouched,
    a Warning Event, the capacity stays the running spec's. Mutation: judging the canary without its SLO attainment
    (errors and throughput only) promotes it."""
    cfg = agent_config(broker, k8s, ["m1"])
    before = deployment("m1", {SPEC_ANNOTATION: OLD_SPEC})
    async with agent(cfg, k8s, [before]) as running:
        await until(lambda: exists(k8s, "m1-canary"), "no canary for m1")
        async with canary_traffic(cfg, "m1", p99_ms=3 * SLO):
            await until(lambda: not exists(k8s, "m1-canary"), "the canary was not judged")
        dep = k8s.get("deployments", NS, "m1")
        assert dep["spec"]["template"] == before["spec"]["template"] and running_spec(dep) == OLD
        await until(
            lambda: metric(running, "shadowscale_rollouts_total", {"outcome": "rolled_back"}) == 1,
            "metric shadowscale_rollouts_total rolled_back",
        )
        assert metric(running, "shadowscale_rollouts_total", {"outcome": "promoted"}) == 0
        await until(lambda: ("m1", "RolloutRolledBack", "Warning") in events(k8s), "no RolloutRolledBack Event")
        await until(lambda: capacity(running, "m1") == 40.0, "capacity is not the running spec's")


# -- (c) the rate limits --------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_rate_limits_hold_per_model_across_a_restart_and_cluster_wide(broker: LocalBroker, k8s: K8s) -> None:
    """m1's Deployment carries the start mark of a rollout 10 s ago (an earlier agent's): its per-model limit holds
    for this new agent. m2 starts; m3 waits while m2's canary runs (one rollout at a time, cluster-wide).
    Mutations: not reading the start mark back on resume starts m1; dropping the cluster-wide limit starts m3."""
    cfg = agent_config(broker, k8s, ["m1", "m2", "m3"], model_interval_s=3600, cluster_max_active=1)
    marked = {SPEC_ANNOTATION: OLD_SPEC, STARTED_ANNOTATION: repr(time.time() - 10)}
    deps = [
        deployment("m1", marked),
        deployment("m2", {SPEC_ANNOTATION: OLD_SPEC}),
        deployment("m3", {SPEC_ANNOTATION: OLD_SPEC}),
    ]
    async with agent(cfg, k8s, deps) as running:
        await until(lambda: exists(k8s, "m2-canary"), "no canary for m2")
        loop = running.rollout
        assert loop is not None
        await until(lambda: {m for _, m, _ in loop.controller.decisions} >= {"m1", "m3"}, "m1 and m3 not considered")
        await asyncio.sleep(1.0)  # several more check rounds
        assert not exists(k8s, "m1-canary") and not exists(k8s, "m3-canary")
        reasons = {m: d.reason for _, m, d in loop.controller.decisions}
        assert "model rate limit" in reasons["m1"]
        assert "cluster rate limit: 1 rollout(s) in progress" in reasons["m3"]
        assert metric(running, "shadowscale_rollouts_total", {"outcome": "started"}) == 1


# -- (d) the opt-out annotation -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_opt_out_annotation_keeps_a_workload_as_it_is(broker: LocalBroker, k8s: K8s) -> None:
    """m1 opts out (``shadowscale.io/rollout: disabled``); m2 does not and gets a canary (the loop acts). m1's
    Deployment is never patched. m0 has no Deployment at all (a StatefulSet, say): logged, the others go on.
    Mutations: ignoring the annotation starts an m1 canary (cluster limit 2); letting m0's failed read end the
    round (or the resume) leaves m2 without a canary."""
    cfg = agent_config(broker, k8s, ["m0", "m1", "m2"], cluster_max_active=2)
    opted = deployment("m1", {SPEC_ANNOTATION: OLD_SPEC, OPT_OUT_ANNOTATION: "disabled"})
    async with agent(cfg, k8s, [opted, deployment("m2", {SPEC_ANNOTATION: OLD_SPEC})]) as running:
        await until(lambda: exists(k8s, "m2-canary"), "no canary for m2")
        await asyncio.sleep(0.8)
        assert not exists(k8s, "m1-canary")
        assert [r for r in k8s.requests("patch") if "/deployments/m1" in str(r.url)] == []
        loop = running.rollout
        assert loop is not None
        assert any(m == "m1" and "opted out" in d.reason for _, m, d in loop.controller.decisions)


@pytest.mark.asyncio
async def test_dry_run_reports_what_would_roll_out_and_changes_nothing(broker: LocalBroker, k8s: K8s) -> None:
    """``rollout.dry_run``: a RolloutDryRun Event and metric name the spec, no canary, no patch of the workload; the
    decision is reported once, not at every check. Mutation: ignoring ``dry_run`` starts a canary."""
    cfg = agent_config(broker, k8s, ["m1"], dry_run=True)
    async with agent(cfg, k8s, [deployment("m1", {SPEC_ANNOTATION: OLD_SPEC})]) as running:
        await until(lambda: ("m1", "RolloutDryRun", "Normal") in events(k8s), "no RolloutDryRun Event")
        await asyncio.sleep(1.0)  # several more check rounds
        assert not exists(k8s, "m1-canary") and [r for r in k8s.requests("patch")] == []
        assert metric(running, "shadowscale_rollouts_total", {"outcome": "dry_run"}) == 1
        assert metric(running, "shadowscale_rollouts_total", {"outcome": "started"}) == 0
        (message,) = [r.data["message"] for r in k8s.requests("post") if str(r.url).endswith("/events")]
        assert message == 'dry run: would roll out {"batch": 8, "cpu": 2.0}'


# -- (e) the capacity follows the running spec and version ----------------------------------------------------------


@pytest.mark.asyncio
async def test_the_autoscalers_capacity_follows_the_running_spec_and_model_version(
    broker: LocalBroker, k8s: K8s
) -> None:
    """Same profile for all (chosen spec 120 req/s, old spec 40): m1 runs the old spec → 40; m2 records no spec
    (opted out, nothing applied) → the configured 10, not the chosen spec's 120; m3's profile was measured on image
    srv:0 and srv:1 runs → configured 10 and the profile is marked stale in the store. After m1's rollout → 120.
    Mutations: using the profile's capacity while the running spec is unknown gives m2 120; ignoring the version
    gives m3 40."""
    cfg = agent_config(broker, k8s, ["m1", "m2", "m3"], cluster_max_active=1)
    deps = [
        deployment("m1", {SPEC_ANNOTATION: OLD_SPEC}),
        deployment("m2", {OPT_OUT_ANNOTATION: "disabled"}),
        deployment("m3", {SPEC_ANNOTATION: OLD_SPEC}),
    ]
    async with agent(cfg, k8s, deps, versions={"m1": "srv:1", "m3": "srv:0"}) as running:
        await until(lambda: exists(k8s, "m1-canary"), "no canary for m1")
        await until(lambda: capacity(running, "m1") == 40.0, "m1 is not at the running spec's 40")
        await until(lambda: capacity(running, "m2") == 10.0 and capacity(running, "m3") == 10.0, "not configured")
        book = running.agent.profiles
        assert book is not None and book.profiles["m3"].stale
        assert "model version changed" in book.profiles["m3"].stale_reason
        async with canary_traffic(cfg, "m1", p99_ms=0.5 * SLO):
            await until(lambda: not exists(k8s, "m1-canary"), "the canary was not judged")
        await until(lambda: capacity(running, "m1") == 120.0, "m1's capacity did not follow the new spec")
        assert capacity(running, "m2") == 10.0 and capacity(running, "m3") == 10.0
        assert not exists(k8s, "m3-canary")  # another version's profile is not rolled out
    reader = KafkaProfileStore(cfg.kafka, cfg.profiles.topic, create_topic=False)
    stored = await reader.load()
    assert stored["m3"].stale and stored["m3"].version == "srv:0" and not stored["m1"].stale


# -- leader fencing and resuming ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_only_the_leader_acts_and_a_new_leader_resumes_the_canary_in_flight(
    broker: LocalBroker, k8s: K8s
) -> None:
    """Another agent holds the Lease: this one rolls nothing out. A canary that agent started (spec and start
    annotations) is there; once the Lease expires this agent leads, resumes that canary and judges it on the
    traffic (promoted, no second canary started). Mutations: not asking ``is_leader`` starts acting at once (the
    canary is judged while the other leads); not resuming deletes nothing but starts judging nothing either."""
    election = {"enabled": True, "namespace": NS, "name": "ss", "lease_duration_s": 3.0, "renew_period_s": 0.2}
    cfg = agent_config(broker, k8s, ["m1"], {"leader_election": election})
    now = time.time()
    canary = deployment("m1-canary", {SPEC_ANNOTATION: '{"batch": 8, "cpu": 2.0}', STARTED_ANNOTATION: repr(now)})
    k8s.emulator.resources["v1/events"] = {}
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(now))
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "ss", "namespace": NS},
        "spec": {"holderIdentity": "other", "leaseDurationSeconds": 3, "acquireTime": stamp, "renewTime": stamp},
    }
    await k8s.create("leases", NS, lease)
    async with agent(cfg, k8s, [deployment("m1", {SPEC_ANNOTATION: OLD_SPEC}), canary]) as running:
        async with canary_traffic(cfg, "m1", p99_ms=0.5 * SLO):
            await asyncio.sleep(1.5)  # the other agent leads: nothing is judged or patched
            assert exists(k8s, "m1-canary") and [r for r in k8s.requests("patch")] == []
            assert running.leader is not None and not running.leader.is_leader()
            await until(lambda: not exists(k8s, "m1-canary"), "the resumed canary was not judged", timeout_s=20)
        assert running.leader.is_leader()
        assert running_spec(k8s.get("deployments", NS, "m1")) == NEW
        await until(
            lambda: metric(running, "shadowscale_rollouts_total", {"outcome": "promoted"}) == 1,
            "metric shadowscale_rollouts_total promoted",
        )
        assert metric(running, "shadowscale_rollouts_total", {"outcome": "started"}) == 0


# -- the model version on published profiles, and the configuration -------------------------------------------------


@pytest.mark.asyncio
async def test_a_published_profile_carries_the_model_version_read_when_its_search_started() -> None:
    """The profiling service stamps the version the workload ran when the search started (what the trials cloned)
    on the profile it publishes; the store keeps it. Mutation: publishing without the version leaves it None, and
    a new image would reuse the profile."""
    from agent_fakes import VirtualClock

    from shadowscale.agent.profiling.book import ProfileBook
    from shadowscale.agent.profiling.service import ModelPlan, ProfilingService, ServiceSettings
    from shadowscale.policies.profiling.objective import Objective
    from shadowscale.policies.profiling.planner import PlannerSettings
    from shadowscale.policies.profiling.ports import MemoryProfileStore
    from shadowscale.policies.profiling.replay import Measured, ReplayRunner
    from shadowscale.policies.profiling.space import Levels, SearchSpace

    space = SearchSpace((Levels("batch", (1, 2), integer=True),))
    store = MemoryProfileStore()
    book = ProfileBook(["m1"], store)
    versions = iter(["srv:7", "srv:8"])

    async def version(model: str) -> str:
        return next(versions)

    service = ProfilingService(
        book,
        ReplayRunner(space, {(1,): Measured(8.0, 20.0), (2,): Measured(14.0, 40.0)}),
        {"m1": ModelPlan(space, Objective(slo_ms=SLO))},
        VirtualClock(5.0),
        ServiceSettings(planner=PlannerSettings(budget=2, ei_threshold=0.0, restarts=0), transfer=False),
        version=version,
    )
    assert service.request("m1", "test")
    await asyncio.wait_for(service.searches["m1"], 30)
    assert (await store.load())["m1"].version == "srv:7" and book.profiles["m1"].version == "srv:7"


@pytest.mark.parametrize(
    ("rollout", "message"),
    [
        ({"min_gain": -0.5}, "rollout.min_gain is out of range: -0.5"),
        ({"canary_windows": 0}, "rollout.canary_windows is out of range: 0"),
        ({"min_attainment": 1.5}, "rollout.min_attainment is out of range"),
        ({"max_unavailable": -1}, "rollout.max_unavailable is out of range"),
        ({"opt_out_annotation": " "}, "rollout.opt_out_annotation is out of range"),
        ({"canary_window_s": 0}, "at `$.rollout.canary_window_s`"),
        ({"cluster_per_hour": "x"}, "at `$.rollout.cluster_per_hour`"),
        ({"max_surge": 2}, "unknown field `max_surge` - at `$.rollout`"),
    ],
)
def test_rollout_config_errors_name_the_field(rollout: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"models": [{"name": "m", "capacity_rps": 5}], "rollout": rollout}, source="t")
    assert message in str(e.value), str(e.value)


def test_rollout_needs_profiles_and_the_kubernetes_actuator_and_dry_run_implies_it() -> None:
    base: dict[str, Any] = {"models": [{"name": "m", "capacity_rps": 5}], "rollout": {"enabled": True}}
    with pytest.raises(ConfigError, match=r"rollout\.enabled needs profiles\.enabled"):
        parse_config(base)
    with pytest.raises(ConfigError, match=r"rollout\.enabled needs actuator\.kind kubernetes"):
        parse_config({**base, "profiles": {"enabled": True}})
    cfg = parse_config({**base, "profiles": {"enabled": True}, "actuator": {"kind": "kubernetes"}, "dry_run": True})
    assert rollout_settings(cfg).dry_run and not cfg.rollout.dry_run
    assert not parse_config({"models": base["models"]}).rollout.enabled  # off by default


def test_a_profile_of_another_version_is_not_used_whichever_comes_first() -> None:
    """The version read first, then a profile of an older one installed (a re-trial that began before the image
    changed), and the other way round: no capacity from it, marked stale with the reason, so a re-trial is due.
    Mutation: checking the version only when it changes (not on install) keeps the first case's profile fresh."""
    from shadowscale.agent.profiling.book import ProfileBook
    from shadowscale.policies.profiling.ports import MemoryProfileStore

    for version_first in (True, False):
        book = ProfileBook(["m1"], MemoryProfileStore())
        book.set_running("m1", OLD)
        if version_first:
            book.set_version("m1", "srv:2", now=5.0)
        book.install(StoredProfile(profile("m1"), updated_at=3.0, version="srv:1"))
        if not version_first:
            book.set_version("m1", "srv:2", now=5.0)
        assert book.capacity("m1") is None, version_first
        assert book.profiles["m1"].stale and "profiled 'srv:1', running 'srv:2'" in book.profiles["m1"].stale_reason
        book.install(StoredProfile(profile("m1"), updated_at=9.0, version="srv:2"))  # the re-trial's profile
        assert book.capacity("m1") == (40.0, "profile 40 req/s per replica (the profile's trial of the running spec)")


@pytest.mark.asyncio
async def test_a_verdict_whose_call_fails_is_retried_and_the_other_canaries_go_on() -> None:
    """m1's rollback cannot delete its canary (the API answers 500): m2 is still promoted in the same step, m1 stays
    in progress and is rolled back at the next step. Mutation: letting the failure escape ``step`` leaves m2's
    promotion undone."""
    from shadowscale.agent.profiling.rollout import Canary, RolloutController
    from shadowscale.policies.profiling.rollout import CanaryWindow, RolloutSettings

    class Flaky:
        def __init__(self) -> None:
            self.fail = True
            self.calls: list[tuple[str, str]] = []

        async def read(self, model: str) -> dict[str, Any]:
            return {}

        async def create_canary(self, model: str, config: Any, started: float | None = None) -> str:
            return f"{model}-canary"

        async def delete_canary(self, model: str) -> None:
            if model == "m1" and self.fail:
                self.fail = False
                raise RuntimeError("HTTP 500")
            self.calls.append(("delete", model))

        async def promote(self, model: str, config: Any, settings: RolloutSettings) -> None:
            self.calls.append(("promote", model))

        async def mark_started(self, model: str, now: float) -> None:
            pass

        async def read_canary(self, model: str) -> dict[str, Any] | None:
            return None

    act = Flaky()
    ctl = RolloutController(act, RolloutSettings(canary_windows=1, canary_min_requests=1))
    slow = CanaryWindow(1.0, 10, 10, 0, 3 * SLO)
    fast = CanaryWindow(1.0, 10, 10, 0, 0.5 * SLO)
    ctl.canaries = {"m1": Canary(NEW, 0.0, [slow]), "m2": Canary(NEW, 0.0, [fast])}
    ctl.profiles = {"m1": profile("m1"), "m2": profile("m2")}
    first = await ctl.step(2.0)
    assert first["m1"].action == "rollback" and act.calls == [("promote", "m2")] and set(ctl.canaries) == {"m1"}
    await ctl.step(3.0)
    assert act.calls[-1] == ("delete", "m1") and ctl.canaries == {}
