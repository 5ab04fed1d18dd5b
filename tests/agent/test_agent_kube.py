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
from shadowscale.policies.ports import WorkloadState

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


def k8s_events(k8s: K8s) -> list[dict[str, Any]]:
    """Events the agent wrote, from the emulator's own request log (kmock ignores generateName)."""
    return [r.data for r in k8s.requests("post") if str(r.url).endswith("/events")]


async def settle(k8s: K8s, n: int, timeout_s: float = 3.0) -> list[dict[str, Any]]:
    for _ in range(int(timeout_s / 0.02)):
        if len(k8s_events(k8s)) >= n:
            break
        await asyncio.sleep(0.02)
    return k8s_events(k8s)


async def test_every_scale_writes_an_event_on_the_workload(cluster: tuple[K8s, KubeActuator]) -> None:
    """Catches: scaling without a Kubernetes Event (KEDA and Knative users read `kubectl describe` for them)."""
    k8s, act = cluster
    await act.scale({"resnet": 4})
    (ev,) = await settle(k8s, 1)
    assert ev["type"] == "Normal" and ev["reason"] == "Scaled" and "from 2 to 4" in ev["message"]
    assert ev["involvedObject"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "resnet-d",
        "namespace": "serving",
    }


@pytest.mark.parametrize(
    ("annotations", "words"),
    [
        ({"shadowscale.io/gpu-fraction": "nan"}, "gpu-fraction='nan' ignored"),
        ({"shadowscale.io/gpu-fraction": "inf"}, "gpu-fraction='inf' ignored"),
        ({"shadowscale.io/gpu-fraction": "-0.5"}, "gpu-fraction='-0.5' ignored"),
        ({"shadowscale.io/min-replicas": "-1"}, "min-replicas='-1' ignored"),
        ({"shadowscale.io/max-replicas": "1e9"}, "max-replicas='1e9' ignored"),
        ({"shadowscale.io/min-replicas": "4", "shadowscale.io/max-replicas": "2"}, "both ignored"),
        ({"shadowscale.io/paused": "yes"}, "paused='yes' ignored"),
        ({"shadowscale.io/target-rps": "0"}, "target-rps='0' ignored"),
        ({"shadowscale.io/target-rps": "nan"}, "target-rps='nan' ignored"),
        ({"shadowscale.io/target-rps": "-5"}, "target-rps='-5' ignored"),
        ({"shadowscale.io/target-rps": "1e9"}, "target-rps='1e9' ignored"),
        ({"shadowscale.io/slo-ms": "fast"}, "slo-ms='fast' ignored"),
        ({"shadowscale.io/slo-ms": "inf"}, "slo-ms='inf' ignored"),
    ],
)
async def test_a_bad_annotation_is_ignored_with_a_warning_event(
    k8s: K8s, annotations: dict[str, str], words: str
) -> None:
    """Catches: trusting annotations — ``gpu-fraction: nan`` raised in the guards and crash-looped the agent, inf
    and negatives misbehaved. The value is ignored (the default applies) and a Warning Event names it."""
    await k8s.create("deployments", "serving", workload("resnet-d", "resnet", 2, 2, annotations=annotations))
    act = KubeActuator(KubernetesConfig(host=k8s.url, request_timeout_s=0.5), MODELS)
    await act.start(timeout_s=10)
    try:
        seen = await act.observe()
        other = WorkloadState("x", 2, 2, 1.0)
        assert seen["resnet"].gpu_fraction == 1.0 and seen["resnet"].hold is None
        assert (seen["resnet"].min_replicas, seen["resnet"].max_replicas) == (other.min_replicas, other.max_replicas)
        assert (seen["resnet"].target_rps, seen["resnet"].slo_ms) == (None, None)
        warnings = [e for e in await settle(k8s, 1) if e["type"] == "Warning"]
        assert warnings and warnings[0]["reason"] == "InvalidAnnotation" and words in warnings[0]["message"]
        assert (await act.scale({"resnet": 3})).applied == {"resnet": 3}
    finally:
        await act.stop()


async def test_workload_annotations_narrow_bounds_and_pause(k8s: K8s) -> None:
    """Catches: ignoring per-workload settings (min/max narrowed on the workload, paused) — users set them without
    restarting the agent, as with KEDA's ScaledObject."""
    ann = {"shadowscale.io/max-replicas": "3", "shadowscale.io/min-replicas": "2"}
    await k8s.create("deployments", "serving", workload("resnet-d", "resnet", 2, 2, annotations=ann))
    await k8s.create(
        "statefulsets", "serving", workload("bert-s", "bert", 1, 1, annotations={"shadowscale.io/paused": "true"})
    )
    act = KubeActuator(KubernetesConfig(host=k8s.url, request_timeout_s=0.5), MODELS)
    await act.start(timeout_s=10)
    try:
        seen = await act.observe()
        assert (seen["resnet"].min_replicas, seen["resnet"].max_replicas) == (2, 3)
        assert seen["bert"].hold is not None and "paused" in seen["bert"].hold
        result = await act.scale({"resnet": 5, "bert": 2})
        assert result.applied == {"resnet": 3} and "paused" in result.failed["bert"]
        assert k8s.get("statefulsets", "serving", "bert-s")["spec"]["replicas"] == 1
        # annotations change without a restart: the watch brings them in
        await k8s.patch(
            "statefulsets", "serving", "bert-s", {"metadata": {"annotations": {"shadowscale.io/paused": "false"}}}
        )
        for _ in range(100):
            if (await act.observe())["bert"].hold is None:
                break
            await asyncio.sleep(0.02)
        assert (await act.scale({"bert": 2})).applied == {"bert": 2}
    finally:
        await act.stop()


async def test_target_and_slo_annotations_are_read_live(k8s: K8s) -> None:
    """Catches: ignoring the per-workload target and SLO (KEDA's trigger target, Knative's
    ``autoscaling.knative.dev/target``), reading them only at start (a change needs no restart), and keeping a
    value once the annotation is removed."""
    ann = {"shadowscale.io/target-rps": "12.5", "shadowscale.io/slo-ms": "250"}
    await k8s.create("deployments", "serving", workload("resnet-d", "resnet", 2, 2, annotations=ann))
    act = KubeActuator(KubernetesConfig(host=k8s.url, request_timeout_s=0.5), MODELS)
    await act.start(timeout_s=10)
    try:
        seen = await act.observe()
        assert (seen["resnet"].target_rps, seen["resnet"].slo_ms) == (12.5, 250.0)
        new = {"shadowscale.io/target-rps": "40", "shadowscale.io/slo-ms": None}
        await k8s.patch("deployments", "serving", "resnet-d", {"metadata": {"annotations": new}})
        for _ in range(100):
            seen = await act.observe()
            if seen["resnet"].target_rps == 40.0:
                break
            await asyncio.sleep(0.02)
        assert (seen["resnet"].target_rps, seen["resnet"].slo_ms) == (40.0, None)
    finally:
        await act.stop()


async def test_a_workload_scaled_by_an_hpa_is_left_alone(k8s: K8s) -> None:
    """Catches: fighting another autoscaler — an HPA already scaling the Deployment would see its replica count
    flip back and forth. The agent holds the model, says why in a Warning Event, and scales it again once the HPA
    is gone."""
    k8s.emulator.resources["autoscaling/v2/horizontalpodautoscalers"] = {}
    await k8s.create("deployments", "serving", workload("resnet-d", "resnet", 2, 2))
    hpa = {
        "metadata": {"name": "resnet-hpa", "namespace": "serving"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "resnet-d"},
            "maxReplicas": 5,
        },
    }
    resp = await k8s.http.post(f"{k8s.url}/apis/autoscaling/v2/namespaces/serving/horizontalpodautoscalers", json=hpa)
    assert resp.status < 300
    act = KubeActuator(KubernetesConfig(host=k8s.url, request_timeout_s=0.5), MODELS)
    await act.start(timeout_s=10)
    try:
        seen = await act.observe()
        assert seen["resnet"].hold is not None and "HorizontalPodAutoscaler serving/resnet-hpa" in seen["resnet"].hold
        result = await act.scale({"resnet": 4})
        assert not result.applied and k8s.get("deployments", "serving", "resnet-d")["spec"]["replicas"] == 2
        warnings = [e for e in await settle(k8s, 1) if e["type"] == "Warning"]
        assert warnings and warnings[0]["reason"] == "OtherAutoscaler"
        await k8s.http.delete(f"{k8s.url}/apis/autoscaling/v2/namespaces/serving/horizontalpodautoscalers/resnet-hpa")
        await act.check_other_autoscalers()
        assert (await act.scale({"resnet": 4})).applied == {"resnet": 4}
    finally:
        await act.stop()


async def test_a_scale_based_on_a_stale_view_is_refused(cluster: tuple[K8s, KubeActuator]) -> None:
    """Catches: unconditional scale patches — a request that reached the API server late (after a client-side
    time-out, after another replica had taken the model over and written) overwrote the newer count. The patch
    carries the resourceVersion last seen, so the server refuses a stale one with 409."""
    import dataclasses

    k8s, act = cluster
    key = ("deployments", "serving", "resnet-d")
    await act.scale({"resnet": 3})
    fresh = act._objects[key]
    assert fresh.resource_version
    act._objects[key] = dataclasses.replace(fresh, resource_version="1")  # what a late request would carry
    result = await act.scale({"resnet": 5})
    assert "resnet" in result.failed and "409" in result.failed["resnet"]
    assert k8s.get("deployments", "serving", "resnet-d")["spec"]["replicas"] == 3
    act._objects[key] = fresh
    assert (await act.scale({"resnet": 5})).applied == {"resnet": 5}
