"""The chart's RBAC equals the Kubernetes API calls the agent's features make.

Each feature listed in ``helm/shadowscale/rbac.yaml`` is run here against kmock's emulator; every request the
emulator receives becomes a ``(apiGroup, resource, verb)`` triple, and the rules rendered for the feature must be
exactly those triples: a call the chart does not allow would fail in a cluster, a rule no call needs is an
over-grant. Another feature's calls are added by adding its exercise to ``EXERCISES`` (and its entry in rbac.yaml).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent_k8s import K8s
from kubernetes_asyncio import client

from shadowscale.agent.config import KubernetesConfig, LeaderConfig, ModelConfig
from shadowscale.agent.kube import KubeActuator
from shadowscale.agent.leader import LeaderElector

helm = pytest.importorskip("helm_python")
pytestmark = pytest.mark.asyncio

CHART = Path(__file__).resolve().parents[2] / "helm" / "shadowscale"
Triple = tuple[str, str, str]
VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def recorded(k8s: K8s) -> set[Triple]:
    """Every request the emulator received, as the RBAC triple an API server would authorise."""
    out: set[Triple] = set()
    for method in ("get", "post", "put", "patch", "delete"):
        for r in k8s.requests(method):
            if r.resource is None:
                continue  # discovery (/api, /apis, /version) needs no rule
            if not str(r.headers.get("User-Agent", "")).startswith(("OpenAPI-Generator", "shadowscale-agent/")):
                continue  # the test's own set-up (plain aiohttp), not the agent (kubernetes-asyncio)
            resource = r.resource.plural + (f"/{r.subresource}" if r.subresource else "")
            if method == "get":
                watch = str(r.params.get("watch", "")).lower() == "true"
                verb = "get" if r.name else ("watch" if watch else "list")
            else:
                verb = VERBS[method.upper()]
            out.add((r.resource.group or "", resource, verb))
    return out


def triples(rules: list[dict[str, Any]]) -> set[Triple]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


MODELS = [
    ModelConfig(name="m1", namespace="serving", capacity_rps=10),
    ModelConfig(name="m2", namespace="serving", capacity_rps=10),
]


async def _workloads(k8s: K8s) -> None:
    for kind, name, model in (("deployments", "m1-d", "m1"), ("statefulsets", "m2-s", "m2")):
        obj = {"metadata": {"name": name, "namespace": "serving", "labels": {"shadowscale.io/model": model}}}
        resp = await k8s.http.post(
            f"{k8s.url}/apis/apps/v1/namespaces/serving/{kind}", json={**obj, "spec": {"replicas": 1}}
        )
        assert resp.status < 300 or resp.status == 409  # 409: made by an earlier exercise in the same test


async def _actuator(k8s: K8s, **cfg: Any) -> None:
    await _workloads(k8s)
    act = KubeActuator(KubernetesConfig(host=k8s.url, request_timeout_s=1.0, **cfg), MODELS)
    await act.start(timeout_s=10)
    try:
        seen = await act.observe()
        want = {m: seen[m].replicas + 1 for m in ("m1", "m2")}  # a change, so a scale Event is due
        assert (await act.scale(want)).applied == want
        await asyncio.sleep(0.2)  # the watches are established; events written
    finally:
        await act.stop()


async def scaling(k8s: K8s) -> None:
    await _actuator(k8s, events=False, respect_other_autoscalers=False)


async def events(k8s: K8s) -> None:
    await _actuator(k8s, events=True, respect_other_autoscalers=False)


async def other_autoscalers(k8s: K8s) -> None:
    await _actuator(k8s, events=False, respect_other_autoscalers=True)


async def leader_election(k8s: K8s) -> None:
    cfg = LeaderConfig(
        enabled=True, namespace="autoscaling", name="ss-shadowscale", lease_duration_s=1.0, renew_period_s=0.1
    )
    async with client.ApiClient(client.Configuration(host=k8s.url)) as api:
        e = LeaderElector(cfg, "agent-a", api)
        assert await e.try_acquire_or_renew()  # creates the Lease
        assert await e.try_acquire_or_renew()  # renews it
        await e.release()


async def rollout(k8s: K8s) -> None:
    """The rollout loop's calls: resume (the model's Deployment and its canary), a check that starts a canary (read,
    create it, mark the start on the Deployment), a promotion (read, patch the Deployment, delete the canary)."""
    from shadowscale.agent.clock import WallClock
    from shadowscale.agent.profiling.book import ProfileBook
    from shadowscale.agent.profiling.rollout import RolloutActuator, RolloutController
    from shadowscale.agent.profiling.rollout_loop import RolloutLoop
    from shadowscale.agent.profiling.shadow import Workload
    from shadowscale.policies.profiling.codec import StoredProfile
    from shadowscale.policies.profiling.ports import MemoryProfileStore
    from shadowscale.policies.profiling.rollout import CanaryWindow, RolloutSettings
    from shadowscale.policies.profiling.types import Observation, Profile, TrialResult, TrialStatus

    labels = {"shadowscale.io/model": "m1", "app": "m1"}
    template = {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "s", "image": "srv:1"}]}}
    obj = {
        "metadata": {"name": "m1-d", "namespace": "serving", "labels": labels},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": template},
    }
    resp = await k8s.http.post(f"{k8s.url}/apis/apps/v1/namespaces/serving/deployments", json=obj)
    assert resp.status < 300, await resp.text()
    done = TrialResult(TrialStatus.MEASURED, throughput=10.0, p99_ms=50.0)
    profile = Profile("m1", ("cpu",), 100.0, (Observation((2.0,), done),), (), (2.0,), 10.0, 2.0, "converged")
    book = ProfileBook(["m1"], MemoryProfileStore())
    book.install(StoredProfile(profile, updated_at=0.0))
    async with client.ApiClient(client.Configuration(host=k8s.url)) as api:
        act = RolloutActuator(api, {"m1": Workload("serving", "m1-d")})
        settings = RolloutSettings(canary_windows=1, canary_min_requests=1)
        ctl = RolloutController(act, settings, on_running=book.set_running)
        loop = RolloutLoop(ctl, act, book, WallClock(), traffic=None, check_interval_s=1.0, canary_window_s=1.0)
        await loop.check()
        assert "m1" in ctl.canaries
        ctl.observe("m1", CanaryWindow(1.0, 10, 10, 0, 50.0))
        await loop.judge()
        assert not ctl.canaries and book.running["m1"] == {"cpu": 2.0}


EXERCISES: dict[str, tuple[Callable[[K8s], Awaitable[None]], str | None]] = {
    # feature in rbac.yaml: (its exercise, the feature whose calls it also makes — subtracted)
    "scaling": (scaling, None),
    "events": (events, "scaling"),
    "other-autoscalers": (other_autoscalers, "scaling"),
    "leader-election": (leader_election, None),
    "rollout": (rollout, None),
}
CHECKED_ELSEWHERE = {
    "profiling": "tests/helm/test_helm_chart.py::test_profiling_rbac_is_exactly_what_the_shadow_runner_calls",
    "scheduler": "the placement scheduler's rules (agent/scheduler.py) are checked by its own tests",
}


def features() -> dict[str, Any]:
    out: dict[str, Any] = yaml.safe_load((CHART / "rbac.yaml").read_text())["features"]
    return out


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as ch:
        out: dict[str, str] = ch.render(values, name="ss", namespace="autoscaling")
    return [d for d in yaml.safe_load_all(out["shadowscale/templates/rbac.yaml"]) if d]


@pytest.mark.filterwarnings("ignore:The test <Function")
def test_every_feature_is_checked_somewhere() -> None:
    assert set(features()) == set(EXERCISES) | set(CHECKED_ELSEWHERE)


@pytest.mark.parametrize("feature", sorted(EXERCISES))
async def test_a_features_rules_are_exactly_the_calls_it_makes(k8s: K8s, feature: str) -> None:
    """Catches: a rule no call needs (the unused update on deployments/scale), and a call with no rule."""
    exercise, base = EXERCISES[feature]
    await exercise(k8s)
    calls = recorded(k8s)
    if base is not None:
        calls -= triples(features()[base]["rules"])
    assert calls == triples(features()[feature]["rules"])


async def test_the_default_install_grants_exactly_what_the_default_features_call(k8s: K8s) -> None:
    """Catches: the over-grant of the old chart (cluster-wide create on pods/binding, bindings and pods/eviction for
    a scheduler that is off by default). The rendered RBAC of the default values is compared with the calls of the
    features the default agent runs: scaling, events, other autoscalers, leader election."""
    for feature in ("scaling", "events", "other-autoscalers", "leader-election"):
        await EXERCISES[feature][0](k8s)
    docs = render({"kafka": {"bootstrap": "k:9092"}})
    # the agent's roles (the GPU exporter has its own service account and role: list pods on its node)
    roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole") and not d["metadata"]["name"].endswith("exporter")]
    assert {r["metadata"]["name"] for r in roles} == {"ss-shadowscale", "ss-shadowscale-leader-election"}
    assert triples([rule for r in roles for rule in r["rules"]]) == recorded(k8s)
    (lease_role,) = [r for r in roles if r["metadata"]["name"].endswith("leader-election")]
    # the Lease the agent reads and updates is the one the chart names (configmap: leader_election.name)
    assert ["ss-shadowscale"] in [rule.get("resourceNames") for rule in lease_role["rules"]]
