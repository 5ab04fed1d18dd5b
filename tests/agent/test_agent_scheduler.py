"""The secondary scheduler (``schedulerName: shadowscale``) against kmock's emulator through kubernetes-asyncio.

kmock 0.8 does not implement the ``binding`` and ``eviction`` subresources (a POST on a named pod is no known
action): the fixture declares them as reactions that do what the API server does (set ``spec.nodeName``; delete
the pod, or answer 429 as a PodDisruptionBudget would), and the tests also read kmock's request record."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from agent_k8s import K8s

from shadowscale.agent.broker import LocalBroker
from shadowscale.agent.config import KubernetesConfig, SchedulerConfig
from shadowscale.agent.kube import api_client
from shadowscale.agent.scheduler import HAMI_NODE_REGISTER, HamiDevice, SecondaryScheduler, hami_devices, quantity

pytestmark = pytest.mark.asyncio

PIN = "nvidia.com/use-gpuuuid"
MERGE = {"Content-Type": "application/merge-patch+json"}


def node(name: str, gpus: int, cpu: str = "32", memory: str = "128Gi", model: str = "NVIDIA-T4") -> dict[str, Any]:
    register = ":".join(f"GPU-{name}-{i},10,15360,100,{model},0,true" for i in range(gpus)) + ":"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "annotations": {HAMI_NODE_REGISTER: register}},
        # HAMi's device plugin advertises each GPU DeviceSplitCount (here 10) times
        "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": "110", "nvidia.com/gpu": str(10 * gpus)}},
    }


def pod(
    name: str,
    *,
    gpus: int = 1,
    milli: int | None = None,
    cpu: str = "1",
    scheduler: str = "shadowscale",
    node_name: str | None = None,
    pinned: str | None = None,
    owner: str | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    ann = dict(annotations or {})
    if milli is not None:
        ann["shadowscale.io/gpu-milli"] = str(milli)
    if pinned is not None:
        ann[PIN] = pinned
    limits = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    meta: dict[str, Any] = {"name": name, "namespace": "ml", "uid": f"uid-{name}", "annotations": ann}
    meta["creationTimestamp"] = f"2026-01-01T00:00:{len(name):02d}Z"
    if owner:
        meta["ownerReferences"] = [{"kind": "ReplicaSet", "name": owner, "controller": True}]
    spec: dict[str, Any] = {
        "schedulerName": scheduler,
        "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}, "limits": limits}}],
    }
    if node_name:
        spec["nodeName"] = node_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": {"phase": "Pending"}}


@dataclass
class Cluster:
    k8s: K8s
    sched: SecondaryScheduler
    refuse: list[int] = field(default_factory=lambda: [0])
    """How many of the next evictions a PodDisruptionBudget refuses."""

    async def add_node(self, obj: dict[str, Any]) -> None:
        resp = await self.k8s.http.post(f"{self.k8s.url}/api/v1/nodes", json=obj)
        assert resp.status < 300, await resp.text()

    async def add_pod(self, obj: dict[str, Any]) -> None:
        resp = await self.k8s.http.post(f"{self.k8s.url}/api/v1/namespaces/ml/pods", json=obj)
        assert resp.status < 300, await resp.text()

    def pod(self, name: str) -> dict[str, Any] | None:
        for (res, ns, n), obj in self.k8s.emulator.objects.items():
            if res.plural == "pods" and ns == "ml" and n == name and not obj.deleted:
                raw: dict[str, Any] = obj.raw
                return raw
        return None

    async def events(self) -> list[dict[str, Any]]:
        resp = await self.k8s.http.get(f"{self.k8s.url}/api/v1/namespaces/ml/events")
        items: list[dict[str, Any]] = (await resp.json())["items"]
        return items

    def posts(self, subresource: str) -> list[Any]:
        return [r for r in self.k8s.requests("POST") if r.subresource == subresource]


async def until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest_asyncio.fixture
async def cluster(k8s: K8s) -> AsyncIterator[Cluster]:
    from kmock._internal.k8s import KubernetesError

    emu = k8s.emulator
    for r in ("v1/pods", "v1/nodes", "v1/events", "policy/v1/poddisruptionbudgets"):
        emu.resources[r] = {}
    refuse = [0]

    async def bind(req: Any) -> dict[str, Any]:  # what the API server does with a Binding
        target = req.data["target"]["name"]
        url = f"{k8s.url}/api/v1/namespaces/{req.namespace}/pods/{req.name}"
        resp = await k8s.http.patch(url, json={"spec": {"nodeName": target}}, headers=MERGE)
        assert resp.status < 300
        return {"apiVersion": "v1", "kind": "Status", "status": "Success", "code": 201}

    async def evict(req: Any) -> dict[str, Any]:
        if refuse[0] > 0:
            refuse[0] -= 1
            raise KubernetesError(429, "TooManyRequests", "Cannot evict pod as it would violate the disruption budget.")
        resp = await k8s.http.delete(f"{k8s.url}/api/v1/namespaces/{req.namespace}/pods/{req.name}")
        assert resp.status < 300
        return {"apiVersion": "v1", "kind": "Status", "status": "Success", "code": 201}

    emu[lambda req: req.method == "POST" and req.subresource == "binding"] << bind
    emu[lambda req: req.method == "POST" and req.subresource == "eviction"] << evict
    kube = KubernetesConfig(host=k8s.url, retry_delays_s=(0.01, 0.02), request_timeout_s=2.0)
    api = await api_client(kube)
    sched = SecondaryScheduler(SchedulerConfig(enabled=True, retry_s=0.2, migrations=True, migration_interval_s=0), kube, api)
    c = Cluster(k8s, sched, refuse)
    await c.add_node(node("n1", 2))
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))
    try:
        yield c
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await api.close()


def bound(c: Cluster, name: str) -> bool:
    p = c.pod(name)
    return p is not None and bool(p["spec"].get("nodeName"))


async def test_pending_pod_is_bound_with_the_gpu_annotation(cluster: Cluster) -> None:
    await cluster.add_pod(pod("web-0", milli=500))
    await until(lambda: bound(cluster, "web-0"))
    p = cluster.pod("web-0")
    assert p is not None and p["spec"]["nodeName"] == "n1"
    assert p["metadata"]["annotations"][PIN] in ("GPU-n1-0", "GPU-n1-1")
    [binding] = cluster.posts("binding")
    assert binding.data["target"] == {"apiVersion": "v1", "kind": "Node", "name": "n1"}
    assert binding.url.path == "/api/v1/namespaces/ml/pods/web-0/binding"
    patches = [r for r in cluster.k8s.requests("PATCH") if r.url.path.endswith("/pods/web-0")]
    assert patches and patches[0].id < binding.id  # the annotation is written before the binding


async def test_concurrent_pods_never_double_book_a_gpu(cluster: Cluster) -> None:
    await cluster.add_node(node("n2", 1))  # 3 GPUs in all, 1000 shares each
    await asyncio.gather(*(cluster.add_pod(pod(f"p{i}", milli=400)) for i in range(9)))
    await until(lambda: sum(bound(cluster, f"p{i}") for i in range(9)) == 6)
    await until(lambda: cluster.sched.stats.unschedulable >= 3)
    await asyncio.sleep(0.3)  # a retry round: still nothing more
    held: dict[str, int] = {}
    for i in range(9):
        p = cluster.pod(f"p{i}")
        assert p is not None
        if p["spec"].get("nodeName"):
            uuid = p["metadata"]["annotations"][PIN]
            assert uuid.startswith(f"GPU-{p['spec']['nodeName']}-")
            held[uuid] = held.get(uuid, 0) + 400
    assert sum(bound(cluster, f"p{i}") for i in range(9)) == 6
    assert len(held) == 3 and max(held.values()) <= 1000
    no_room = [e for e in await cluster.events() if e["reason"] == "FailedScheduling"]
    assert len(no_room) == 3 and all("NoRoom" in e["message"] for e in no_room)
    assert len(cluster.posts("binding")) == 6


async def test_impossible_and_invalid_pods_get_an_event_and_the_scheduler_goes_on(cluster: Cluster) -> None:
    await cluster.add_pod(pod("huge", gpus=4))
    await cluster.add_pod(pod("bad", cpu="lots"))
    await cluster.add_pod(pod("a100", annotations={"nvidia.com/use-gputype": "NVIDIA-A100"}))
    await cluster.add_pod(pod("neg", milli=-5))

    def reasons() -> dict[str, str]:
        return {e["involvedObject"]["name"]: e["message"] for e in events if e["reason"] == "FailedScheduling"}

    events: list[dict[str, Any]] = []

    async def poll() -> None:
        while len(reasons()) < 4:
            events[:] = await cluster.events()
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), 10)
    r = reasons()
    assert r["huge"].startswith("Impossible: asks for 4 GPUs but the largest node has 2")
    assert r["bad"].startswith("Invalid:") and "lots" in r["bad"]
    assert r["a100"].startswith("Impossible: unknown GPU model(s) NVIDIA-A100")
    assert r["neg"].startswith("Invalid:")
    await cluster.add_pod(pod("ok", milli=1000))
    await until(lambda: bound(cluster, "ok"))
    await asyncio.sleep(0.3)  # retry rounds do not repeat the events
    assert len([e for e in await cluster.events() if e["reason"] == "FailedScheduling"]) == 4
    assert not any(bound(cluster, n) for n in ("huge", "bad", "a100", "neg"))


async def test_pods_for_another_scheduler_are_ignored(cluster: Cluster) -> None:
    await cluster.add_pod(pod("theirs", milli=1000, scheduler="default-scheduler"))
    await cluster.add_pod(pod("mine", milli=1000))
    await until(lambda: bound(cluster, "mine"))
    await asyncio.sleep(0.2)
    assert not bound(cluster, "theirs")
    assert [r.name for r in cluster.posts("binding")] == ["mine"]
    assert not [e for e in await cluster.events() if e["involvedObject"]["name"] == "theirs"]


async def test_bound_pods_of_others_count_and_stale_gpus_fill_the_node(cluster: Cluster) -> None:
    # n1's GPU 0 is held by a pod another scheduler placed; n3's pod names a GPU n3 does not have (stale)
    await cluster.add_node(node("n3", 2))
    await cluster.add_pod(pod("other", milli=1000, scheduler="hami", node_name="n1", pinned="GPU-n1-0"))
    await cluster.add_pod(pod("stale", milli=100, scheduler="hami", node_name="n3", pinned="GPU-gone"))
    await cluster.add_pod(pod("w0", milli=1000))
    await cluster.add_pod(pod("w1", milli=1000))
    await until(lambda: bound(cluster, "w0"))
    await until(lambda: cluster.sched.stats.unschedulable >= 1)
    w0 = cluster.pod("w0")
    assert w0 is not None and w0["metadata"]["annotations"][PIN] == "GPU-n1-1"
    assert not bound(cluster, "w1")


async def test_migration_evicts_one_pod_to_make_room(cluster: Cluster) -> None:
    await cluster.add_node(node("n2", 1))
    # n1: GPU 0 and GPU 1 each hold 300 shares; n2: 300 shares; a whole-GPU pod fits nowhere, though 2100 are free
    for name, where, gpu in (("a", "n1", "GPU-n1-0"), ("b", "n1", "GPU-n1-1"), ("c", "n2", "GPU-n2-0")):
        await cluster.add_pod(pod(name, milli=300, node_name=where, pinned=gpu, owner=f"rs-{name}"))
    cluster.refuse[0] = 1  # the first plan is refused by a budget; the pod is then left alone
    await cluster.add_pod(pod("whole", milli=1000))
    await until(lambda: bound(cluster, "whole"), timeout_s=15)
    first, second = (r.name for r in cluster.posts("eviction"))  # one refused, one done
    assert first != second
    reports = cluster.sched.stats.migrations
    assert len(reports) == 2
    assert reports[0].refused == f"ml/{first}" and reports[0].stopped and "PodDisruptionBudget" in reports[0].stopped
    assert reports[1].stopped is None and reports[1].done == (f"ml/{second}",)
    assert [n for n in "abc" if cluster.pod(n) is None] == [second]
    stopped = [e for e in await cluster.events() if e["reason"] == "MigrationStopped"]
    assert len(stopped) == 1 and first in stopped[0]["message"]


async def test_quantities_and_hami_registration() -> None:
    assert quantity("500m") * 1000 == 500 and quantity("1Gi") == 1024**3 and quantity(2) == 2
    with pytest.raises(ValueError):
        quantity("lots")
    a100 = hami_devices('[{"id": "GPU-1", "type": "NVIDIA-A100", "devmem": 81920, "health": true}]')
    assert a100 == [HamiDevice("GPU-1", "NVIDIA-A100", 81920)]
    old = hami_devices("GPU-a,10,15360,100,T4,0,true:GPU-b,10,15360,100,T4,0,false:")
    assert old == [HamiDevice("GPU-a", "T4", 15360), HamiDevice("GPU-b", "T4", 15360, healthy=False)]


async def test_config_section() -> None:
    from shadowscale.agent.config import ConfigError, parse_config

    base = {"models": [{"name": "m", "capacity_rps": 1}]}
    cfg = parse_config(base)
    assert cfg.scheduler == SchedulerConfig() and not cfg.scheduler.enabled and not cfg.scheduler.migrations
    on = parse_config({**base, "scheduler": {"enabled": True, "policy": "fgd", "migrations": True}})
    assert on.scheduler.enabled and on.scheduler.policy == "fgd" and on.scheduler.name == "shadowscale"
    with pytest.raises(ConfigError, match=r"scheduler\.policy: unknown placement policy 'nope'"):
        parse_config({**base, "scheduler": {"enabled": True, "policy": "nope"}})


async def test_the_agent_app_starts_the_scheduler(k8s: K8s, broker: LocalBroker) -> None:
    from shadowscale.agent.app import Running, serve
    from shadowscale.agent.config import parse_config

    for r in ("v1/pods", "v1/nodes", "v1/events"):
        k8s.emulator.resources[r] = {}

    async def bind(req: Any) -> dict[str, Any]:
        url = f"{k8s.url}/api/v1/namespaces/{req.namespace}/pods/{req.name}"
        await k8s.http.patch(url, json={"spec": {"nodeName": req.data["target"]["name"]}}, headers=MERGE)
        return {"kind": "Status", "status": "Success"}

    k8s.emulator[lambda req: req.method == "POST" and req.subresource == "binding"] << bind
    c = Cluster(k8s, None)  # type: ignore[arg-type]
    await c.add_node(node("n1", 1))
    await c.add_pod(pod("p", milli=250))
    n = time.monotonic_ns()
    cfg = parse_config(
        {
            "agent_id": "sched-test",
            "models": [{"name": "m1", "namespace": "serving", "capacity_rps": 10}],
            "kafka": {
                "bootstrap": broker.bootstrap,
                "group_id": f"sched-{n}",
                "create_topics": True,
                "topics": {"traffic": f"t-{n}", "gpu": f"g-{n}", "decisions": f"d-{n}", "dead_letter": f"x-{n}"},
            },
            "actuator": {"kind": "kubernetes", "kubernetes": {"host": k8s.url, "retry_delays_s": [0.01]}},
            "leader_election": {"enabled": True, "namespace": "ops", "lease_duration_s": 2, "renew_period_s": 0.2},
            "scheduler": {"enabled": True, "policy": "FGD"},
            "http": {"enabled": False},
        }
    )
    stop = asyncio.Event()
    running: list[Running] = []
    task = asyncio.create_task(serve(cfg, stop, started=running.append))
    try:
        await until(lambda: bound(c, "p"), timeout_s=30)
        assert "placement-scheduler" in {t.get_name() for t in asyncio.all_tasks()}
        p = c.pod("p")
        assert p is not None and p["metadata"]["annotations"][PIN] == "GPU-n1-0"
    finally:
        stop.set()
        status = await asyncio.wait_for(task, 20)
    assert status == 0
