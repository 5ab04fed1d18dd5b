"""The Kubernetes shadow runner against kmock's emulator: it creates the shadow and the load generator, returns the
measurement, and always tears both down (also on a failed start and a results event that never arrives); cleanup
removes what a dead agent left behind and nothing else."""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from kubernetes_asyncio import client

from agent.profiling.shadow import SHADOW_LABEL, ShadowSettings, ShadowTrialRunner, Workload
from policies.profiling.types import Trial, TrialResult, TrialStatus

pytestmark = pytest.mark.asyncio

NS = "serving"
MODEL_DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "resnet", "namespace": NS, "labels": {"app": "resnet"}},
    "spec": {
        "replicas": 3,
        "selector": {"matchLabels": {"app": "resnet"}},
        "template": {
            "metadata": {"labels": {"app": "resnet"}},
            "spec": {
                "containers": [
                    {"name": "server", "image": "resnet:1", "env": [{"name": "BATCH_SIZE", "value": "1"}]},
                ]
            },
        },
    },
}


def _fixed_guess_k8s(original: Any) -> Any:
    """kmock 0.8 answers PUT with 404 and expects ``watch=true``; the same test-side fix as the agent's tests."""
    from kmock._internal import enums

    def guess(k8s: Any, method: Any, query: dict[str, str]) -> Any:
        query = dict(query)
        if "watch" in query:
            query["watch"] = query["watch"].lower()
        if method == enums.method.PUT and k8s.group is not None and k8s.name is not None:
            return enums.action.UPDATE
        return original(k8s, method, query)

    return guess


@pytest_asyncio.fixture
async def api(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    import kmock
    from kmock._internal import parsing

    assert importlib.metadata.version("kmock") == "0.8"
    monkeypatch.setattr(parsing, "guess_k8s", _fixed_guess_k8s(parsing.guess_k8s))
    async with kmock.KubernetesEmulator() as emu, kmock.Server(emu) as server:
        emulator: Any = emu
        for kind in ("apps/v1/deployments", "batch/v1/jobs", "v1/pods"):
            emulator.resources[kind] = {}
        conf = client.Configuration(host=str(server.url).rstrip("/"))
        async with client.ApiClient(conf) as api_client:
            await client.AppsV1Api(api_client).create_namespaced_deployment(NS, MODEL_DEPLOYMENT)
            yield api_client


async def names(api: Any, kind: str, selector: str | None = None) -> list[str]:
    if kind == "jobs":
        items = (await client.BatchV1Api(api).list_namespaced_job(NS, label_selector=selector)).items
    else:
        items = (await client.AppsV1Api(api).list_namespaced_deployment(NS, label_selector=selector)).items
    return sorted(i.metadata.name for i in items)


class Results:
    """Hands over a result once the load-generator Job exists (what the agent's event consumer would do)."""

    def __init__(self, api: Any, result: TrialResult | None) -> None:
        self.api = api
        self.result = result
        self.jobs_seen: list[dict[str, Any]] = []

    async def wait(self, trial_id: str, timeout_s: float) -> TrialResult | None:
        jobs = (await client.BatchV1Api(self.api).list_namespaced_job(NS)).items
        self.jobs_seen = [self.api.sanitize_for_serialization(j) for j in jobs]
        if self.result is None:
            await asyncio.sleep(timeout_s)
        return self.result


async def controller(api: Any, seen: list[dict[str, Any]], mode: str) -> None:
    """Plays the Deployment controller and kubelet: marks a shadow ready, or gives its pod an OOMKilled status."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    while True:
        for d in (await apps.list_namespaced_deployment(NS, label_selector=f"{SHADOW_LABEL}=true")).items:
            raw = api.sanitize_for_serialization(d)
            shadow = raw["metadata"].get("labels", {}).get(SHADOW_LABEL) == "true"  # kmock ignores label selectors
            if not shadow or raw["metadata"]["name"] in {s["metadata"]["name"] for s in seen}:
                continue
            seen.append(raw)
            if mode == "ready":
                await apps.patch_namespaced_deployment(raw["metadata"]["name"], NS, {"status": {"readyReplicas": 1}})
            else:
                labels = raw["spec"]["template"]["metadata"]["labels"]
                state = {"terminated": {"reason": "OOMKilled", "exitCode": 137}}
                pod = {
                    "metadata": {"name": "shadow-pod", "namespace": NS, "labels": labels},
                    "status": {"containerStatuses": [{"name": "server", "lastState": state, "state": {}}]},
                }
                await core.create_namespaced_pod(NS, pod)
        await asyncio.sleep(0.02)


async def run(
    api: Any, results: Results, mode: str, config: dict[str, Any], trial_id: str = "run1-resnet-7"
) -> tuple[TrialResult, list[Any]]:
    seen: list[dict[str, Any]] = []
    ctl = asyncio.create_task(controller(api, seen, mode))
    settings = ShadowSettings(ready_timeout_s=5, result_timeout_s=0.3, poll_s=0.02)
    runner = ShadowTrialRunner(api, {"resnet": Workload(NS, "resnet")}, results, settings)
    try:
        result = await runner.run_trial(Trial(trial_id, "resnet", config, slo_ms=100.0, timeout_s=20))
    finally:
        ctl.cancel()
    return result, seen


CONFIG = {"cpu": 2, "gpu_memory_mib": 4096, "gpu_cores_pct": 30, "gpu_type": "T4", "batch": 8, "threads": 4, "x": "y"}


async def test_creates_measures_and_tears_down(api: Any) -> None:
    measured = TrialResult(TrialStatus.MEASURED, throughput=120.0, p99_ms=80.0)
    results = Results(api, measured)
    result, seen = await run(api, results, "ready", CONFIG)
    assert result == measured
    [shadow] = seen
    assert shadow["metadata"]["name"] == "resnet-shadow-run1-resnet-7"
    tpl = shadow["spec"]["template"]
    assert tpl["metadata"]["labels"] == {SHADOW_LABEL: "true", "shadowscale.io/trial": "run1-resnet-7"}
    assert "app" not in tpl["metadata"]["labels"]  # the model's Service does not select the shadow
    c = tpl["spec"]["containers"][0]
    assert c["resources"]["limits"] == {"cpu": "2", "nvidia.com/gpumem": "4096", "nvidia.com/gpucores": "30"}
    assert tpl["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "T4"}
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env == {
        "BATCH_SIZE": "8",
        "NUM_THREADS": "4",
        "SHADOWSCALE_PARAM_X": "y",
        "SHADOWSCALE_TRIAL_ID": "run1-resnet-7",
    }
    [job] = results.jobs_seen
    assert "run1-resnet-7" in job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert await names(api, "deployments") == ["resnet"] and await names(api, "jobs") == []


async def test_failed_start_and_missing_results_are_failed_trials_and_torn_down(api: Any) -> None:
    result, _ = await run(api, Results(api, TrialResult.failed("unused")), "oom", CONFIG)
    assert result.status is TrialStatus.FAILED and "out of memory (OOMKilled)" in result.error
    assert await names(api, "deployments") == ["resnet"] and await names(api, "jobs") == []

    result, _ = await run(api, Results(api, None), "ready", {"cpu": 1}, trial_id="run1-resnet-8")
    assert result.status is TrialStatus.FAILED and "no results event for trial run1-resnet-8" in result.error
    assert await names(api, "deployments") == ["resnet"] and await names(api, "jobs") == []


async def test_cleanup_removes_only_what_shadows_left(api: Any) -> None:
    labels = {SHADOW_LABEL: "true", "shadowscale.io/trial": "old"}
    orphan = {
        "metadata": {"name": "resnet-shadow-old", "namespace": NS, "labels": labels},
        "spec": {**MODEL_DEPLOYMENT["spec"], "selector": {"matchLabels": labels}},  # type: ignore[dict-item]
    }
    await client.AppsV1Api(api).create_namespaced_deployment(NS, orphan)
    job = {"metadata": {"name": "resnet-loadgen-old", "namespace": NS, "labels": labels}, "spec": {"template": {}}}
    await client.BatchV1Api(api).create_namespaced_job(NS, job)
    runner = ShadowTrialRunner(api, {"resnet": Workload(NS, "resnet")}, Results(api, None))
    assert await runner.cleanup() == 2
    assert await names(api, "deployments") == ["resnet"] and await names(api, "jobs") == []
