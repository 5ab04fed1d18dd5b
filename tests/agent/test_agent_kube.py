"""The Kubernetes actuator against kmock's emulator through kubernetes-asyncio: discovery by label, state from the
watch, scale-subresource patches, retries of 409/429/5xx/time-outs, never outside min/max."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from agent_k8s import K8s

from shadowscale.agent.config import KubernetesConfig, ModelConfig
from shadowscale.agent.kube import KubeActuator

pytestmark = pytest.mark.asyncio

LABEL = "shadowscale.io/model"


def workload(name: str, model: str | None, replicas: int, ready: int = 0, **meta: Any) -> dict[str, Any]:
    labels = {LABEL: model} if model else {"app": name}
    return {
        "metadata": {"name": name, "labels": labels, **meta},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": {}},
        "status": {"readyReplicas": ready},
    }


def first_patches(n: int) -> Any:
    """A kmock criterion matching the first ``n`` PATCH requests (stable when evaluated more than once)."""
    ids: list[int] = []

    def match(req: Any) -> bool:
        if req.method != "PATCH":
            return False
        if req.id not in ids and len(ids) < n:
            ids.append(req.id)
        return req.id in ids

    return match


MODELS = [
    ModelConfig(name="resnet", namespace="serving", min_replicas=1, max_replicas=5, capacity_rps=10),
    ModelConfig(name="bert", namespace="serving", min_replicas=0, max_replicas=3, capacity_rps=10, gpu_fraction=0.5),
    ModelConfig(name="ghost", namespace="serving", capacity_rps=10),
]


@pytest_asyncio.fixture
async def cluster(k8s: K8s) -> AsyncIterator[tuple[K8s, KubeActuator]]:
    await k8s.create("deployments", "serving", workload("resnet-d", "resnet", 2, 2))
    await k8s.create("statefulsets", "serving", workload("bert-s", "bert", 1, 1))
    await k8s.create("deployments", "other", workload("llama-d", "llama", 4, 4))  # another team's model
    await k8s.create("deployments", "serving", workload("web", None, 9, 9))  # not labelled: ignored
    cfg = KubernetesConfig(host=k8s.url, retry_delays_s=(0.01, 0.02, 0.05), request_timeout_s=0.5)
    act = KubeActuator(cfg, MODELS)
    await act.start(timeout_s=10)
    try:
        yield k8s, act
    finally:
        await act.stop()


async def test_discovers_labelled_workloads(cluster: tuple[K8s, KubeActuator]) -> None:
    _, act = cluster
    seen = await act.observe()
    assert seen["resnet"].replicas == 2 and seen["resnet"].ready == 2
    assert seen["bert"].replicas == 1 and seen["bert"].gpu_fraction == 0.5
    assert "ghost" not in seen
    assert [w.model for k, w in seen.items() if k not in ("resnet", "bert")] == ["llama"]


async def test_scale_patches_the_subresource_within_bounds(cluster: tuple[K8s, KubeActuator]) -> None:
    k8s, act = cluster
    result = await act.scale({"resnet": 4, "bert": 9, "ghost": 2})
    assert result.applied == {"resnet": 4, "bert": 3} and result.missing == ("ghost",) and not result.failed
    assert k8s.get("deployments", "serving", "resnet-d")["spec"]["replicas"] == 4
    assert k8s.get("statefulsets", "serving", "bert-s")["spec"]["replicas"] == 3  # clamped to max 3
    patches = k8s.requests("PATCH")
    assert {r.url.path for r in patches} == {
        "/apis/apps/v1/namespaces/serving/deployments/resnet-d/scale",
        "/apis/apps/v1/namespaces/serving/statefulsets/bert-s/scale",
    }
    assert (await act.observe())["resnet"].replicas == 4
    assert (await act.scale({"resnet": 0})).applied == {"resnet": 1}  # min 1


async def test_state_follows_the_watch(cluster: tuple[K8s, KubeActuator]) -> None:
    k8s, act = cluster
    v = act.version
    await k8s.patch("deployments", "serving", "resnet-d", {"status": {"readyReplicas": 1}, "spec": {"replicas": 3}})
    while (await act.observe())["resnet"].ready != 1:
        v = await act.wait_changed(v)
    assert (await act.observe())["resnet"].replicas == 3
    await k8s.create("deployments", "serving", workload("ghost-d", "ghost", 1, 0))
    while "ghost" not in await act.observe():
        v = await act.wait_changed(v)


@pytest.mark.parametrize("status", [409, 429, 500, 503])
async def test_retryable_answers_are_retried(cluster: tuple[K8s, KubeActuator], status: int) -> None:
    k8s, act = cluster
    k8s.emulator[first_patches(2)] << status
    result = await act.scale({"resnet": 3})
    assert result.applied == {"resnet": 3} and not result.failed
    assert len(k8s.requests("PATCH")) == 3


async def test_time_outs_are_retried(cluster: tuple[K8s, KubeActuator]) -> None:
    k8s, act = cluster
    k8s.emulator[first_patches(1)] << (lambda: asyncio.sleep(2))
    result = await act.scale({"resnet": 5})
    assert result.applied == {"resnet": 5}
    assert len(k8s.requests("PATCH")) == 2  # the first timed out after 0.5 s and was retried


async def test_persistent_failure_is_reported_not_lost(cluster: tuple[K8s, KubeActuator]) -> None:
    k8s, act = cluster
    k8s.emulator[lambda req: req.method == "PATCH"] << 500
    result = await act.scale({"resnet": 5})
    assert result.applied == {} and "HTTP 500" in result.failed["resnet"]
    assert len(k8s.requests("PATCH")) == 4  # 1 + 3 retries


async def test_forbidden_is_not_retried(cluster: tuple[K8s, KubeActuator]) -> None:
    k8s, act = cluster
    k8s.emulator[lambda req: req.method == "PATCH"] << 403
    result = await act.scale({"resnet": 5})
    assert "HTTP 403" in result.failed["resnet"]
    assert len(k8s.requests("PATCH")) == 1


async def test_a_fenced_model_is_never_patched(cluster: tuple[K8s, KubeActuator]) -> None:
    """Catches: the actuator patching without asking the fence (the decision loop's partition ownership) right
    before the call: a replica that lost the model mid-batch would still scale it."""
    k8s, act = cluster
    act.fence = lambda model: model != "resnet"
    result = await act.scale({"resnet": 4, "bert": 2})
    assert result.applied == {"bert": 2} and "fenced" in result.failed["resnet"]
    assert k8s.get("deployments", "serving", "resnet-d")["spec"]["replicas"] == 2
    assert [r for r in k8s.requests("patch") if "resnet" in str(r.url)] == []
