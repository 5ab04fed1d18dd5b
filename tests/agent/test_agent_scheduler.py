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

import numpy as np
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


def node(
    name: str,
    gpus: int,
    cpu: str = "32",
    memory: str = "128Gi",
    model: str = "NVIDIA-T4",
    *,
    hami: bool = True,
    labels: dict[str, str] | None = None,
    spec: dict[str, Any] | None = None,
    conditions: list[dict[str, str]] | None = None,
    allocatable: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A node; with ``hami`` it carries HAMi's registration (each GPU split 10 ways, 15 GiB) and advertises
    ``nvidia.com/gpu`` as HAMi's device plugin does (GPUs x 10), else only the kubelet's whole GPUs."""
    register = ":".join(f"GPU-{name}-{i},10,15360,100,{model},0,true" for i in range(gpus)) + ":"
    alloc = {"cpu": cpu, "memory": memory, "pods": "110", "nvidia.com/gpu": str(10 * gpus if hami else gpus)}
    meta: dict[str, Any] = {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}}
    if hami:
        meta["annotations"] = {HAMI_NODE_REGISTER: register}
    status: dict[str, Any] = {"allocatable": {**alloc, **(allocatable or {})}}
    if conditions is not None:
        status["conditions"] = conditions
    return {"apiVersion": "v1", "kind": "Node", "metadata": meta, "spec": spec or {}, "status": status}


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
    labels: dict[str, str] | None = None,
    spec: dict[str, Any] | None = None,
    requests: dict[str, str] | None = None,
) -> dict[str, Any]:
    ann = dict(annotations or {})
    if milli is not None:
        ann["shadowscale.io/gpu-milli"] = str(milli)
    if pinned is not None:
        ann[PIN] = pinned
    limits = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    meta: dict[str, Any] = {"name": name, "namespace": "ml", "uid": f"uid-{name}", "annotations": ann}
    meta["labels"] = labels or {}
    meta["resourceVersion"] = "1"
    meta["creationTimestamp"] = f"2026-01-01T00:00:{len(name):02d}Z"
    if owner:
        meta["ownerReferences"] = [{"kind": "ReplicaSet", "name": owner, "controller": True}]
    req = {"cpu": cpu, "memory": "1Gi", **(requests or {})}
    spec = {
        "schedulerName": scheduler,
        "containers": [{"name": "c", "resources": {"requests": req, "limits": limits}}],
        **(spec or {}),
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
    bind_race: dict[str, str] = field(default_factory=dict)
    """Pod -> node another binder takes it to just before our Binding arrives (which then gets 409)."""
    patch_race: dict[str, str] = field(default_factory=dict)
    """Pod -> node another binder takes it to just before our annotation PATCH arrives (stale resourceVersion)."""
    plugin_releases: bool = True
    """The fake device plugin releases HAMi's node lock once the pod is bound."""
    preconditions: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    """(pod, resourceVersion a PATCH required, the one the pod had) for every PATCH of a pod."""

    async def add_node(self, obj: dict[str, Any]) -> None:
        resp = await self.k8s.http.post(f"{self.k8s.url}/api/v1/nodes", json=obj)
        assert resp.status < 300, await resp.text()

    async def add_pod(self, obj: dict[str, Any]) -> None:
        resp = await self.k8s.http.post(f"{self.k8s.url}/api/v1/namespaces/ml/pods", json=obj)
        assert resp.status < 300, await resp.text()

    def node(self, name: str) -> dict[str, Any] | None:
        for (res, _, n), obj in self.k8s.emulator.objects.items():
            if res.plural == "nodes" and n == name and not obj.deleted:
                raw: dict[str, Any] = obj.raw
                return raw
        return None

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


def enforce_resource_versions(k8s: K8s, c: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Races and a record of preconditions on top of the emulator's optimistic concurrency (the conftest's
    ``enforcing_resource_version`` bumps ``metadata.resourceVersion`` on every write and refuses a PATCH naming an
    older one with 409, as the API server does): a pod in ``c.patch_race`` is bound by another binder just before
    our PATCH arrives, and every PATCH of a pod records the resourceVersion it required next to the stored one."""
    from kmock._internal import enums

    emu = k8s.emulator
    original = type(emu)._handle

    async def handle(self: Any, request: Any) -> Any:
        res = request.resource
        if (
            res is not None
            and res.plural == "pods"
            and isinstance(request.data, dict)
            and request.action == enums.action.UPDATE
            and request.name is not None
        ):
            other = c.patch_race.pop(request.name, None)
            if other is not None:  # someone else binds it first
                url = f"{k8s.url}/api/v1/namespaces/{request.namespace}/pods/{request.name}"
                await k8s.http.patch(url, json={"spec": {"nodeName": other}}, headers=MERGE)
            want = (request.data.get("metadata") or {}).get("resourceVersion")
            stored = c.pod(request.name) or {}
            c.preconditions.append((request.name, want, stored.get("metadata", {}).get("resourceVersion")))
        return await original(self, request)

    monkeypatch.setattr(type(emu), "_handle", handle)


@pytest_asyncio.fixture
async def cluster(k8s: K8s, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    from kmock._internal.k8s import KubernetesError

    emu = k8s.emulator
    for r in ("v1/pods", "v1/nodes", "v1/events", "policy/v1/poddisruptionbudgets"):
        emu.resources[r] = {}
    refuse = [0]
    races: dict[str, str] = {}

    async def bind(req: Any) -> dict[str, Any]:  # what the API server does with a Binding
        url = f"{k8s.url}/api/v1/namespaces/{req.namespace}/pods/{req.name}"
        current = (await (await k8s.http.get(url)).json())["spec"].get("nodeName")
        other = races.pop(req.name, None)
        if other is not None:
            await k8s.http.patch(url, json={"spec": {"nodeName": other}}, headers=MERGE)
            current = other
        if current:
            raise KubernetesError(409, "Conflict", f"pod {req.name} is already assigned to node {current}")
        target = req.data["target"]["name"]
        resp = await k8s.http.patch(url, json={"spec": {"nodeName": target}}, headers=MERGE)
        assert resp.status < 300
        if c.plugin_releases:  # HAMi's device plugin: Allocate, then ReleaseNodeLock
            unlock = {"metadata": {"annotations": {"hami.io/mutex.lock": None}}}
            await k8s.http.patch(f"{k8s.url}/api/v1/nodes/{target}", json=unlock, headers=MERGE)
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
    cfg = SchedulerConfig(enabled=True, retry_s=0.2, migrations=True, migration_interval_s=0)
    sched = SecondaryScheduler(cfg, kube, api)
    c = Cluster(k8s, sched, refuse, races)
    enforce_resource_versions(k8s, c, monkeypatch)
    await c.add_node(node("n1", 2, labels={"pool": "serving"}))
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
    assert len({r.name for r in cluster.posts("binding")}) == 6  # a timed-out POST may be retried (409: ours)


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
    assert hami_devices('[{"id": "GPU-2", "type": "T4"}]') == [HamiDevice("GPU-2", "T4", 0, healthy=False)]
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
        text = running[0].agent.metrics.render().decode()
        assert "shadowscale_placement_decision_seconds_count 1.0" in text
        await until(
            lambda: (
                'shadowscale_placement_outcomes_total{outcome="bound"} 1.0'
                in running[0].agent.metrics.render().decode()
            )
        )
    finally:
        stop.set()
        status = await asyncio.wait_for(task, 20)
    assert status == 0


# -- issue 14: kube-scheduler's filters, the kubelet's GPUs, HAMi's protocol, conflicts, restarts, nodes going away


def _not_ready() -> list[dict[str, str]]:
    return [{"type": "Ready", "status": "False"}]


# (id, the idle node "a-bad" that sorts first (FGD's tie-break would take it), the pod's extra fields, where it goes)
FILTER_CASES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("node selector", {"labels": {"pool": "batch"}}, {"spec": {"nodeSelector": {"pool": "serving"}}}, "n1"),
    (
        "required node affinity",
        {"labels": {"zone": "b"}},
        {
            "spec": {
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["b"]}]}
                            ]
                        }
                    }
                }
            }
        },
        "n1",
    ),
    (
        "taint",
        {"spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}},
        {},
        "n1",
    ),
    ("not ready", {"conditions": _not_ready()}, {}, "n1"),
    ("cordoned", {"spec": {"unschedulable": True}}, {}, "n1"),
    ("pod limit", {"allocatable": {"pods": "0"}}, {}, "n1"),
    ("allocatable CPU", {"cpu": "500m"}, {}, "n1"),
    ("allocatable memory", {"memory": "512Mi"}, {}, "n1"),
    ("extended resource", {}, {"requests": {"example.com/fpga": "1"}}, "z-fpga"),
]


@pytest.mark.parametrize(("bad", "extra", "where"), [c[1:] for c in FILTER_CASES], ids=[c[0] for c in FILTER_CASES])
async def test_each_kube_scheduler_filter_is_respected(
    cluster: Cluster, bad: dict[str, Any], extra: dict[str, Any], where: str
) -> None:
    """One kmock test per filter: an idle node that wins every tie is skipped for its constraint. Mutation: drop
    the filter's line in LiveCluster (``_static``/``_dynamic``) and the pod lands on ``a-bad``."""
    await cluster.add_node(node("a-bad", 2, **bad))
    await cluster.add_node(node("z-fpga", 2, allocatable={"example.com/fpga": "1"}))
    await until(lambda: cluster.sched.live.node("z-fpga") is not None)
    await cluster.add_pod(pod("p", milli=500, **extra))
    await until(lambda: bound(cluster, "p"))
    p = cluster.pod("p")
    assert p is not None and p["spec"]["nodeName"] == where


async def test_a_tolerated_taint_admits_the_pod(cluster: Cluster) -> None:
    taint = {"key": "dedicated", "value": "ml", "effect": "NoSchedule"}
    await cluster.add_node(node("a-ml", 2, spec={"taints": [taint]}))
    await until(lambda: cluster.sched.live.node("a-ml") is not None)
    toleration = {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    await cluster.add_pod(pod("p", milli=500, spec={"tolerations": [toleration]}))
    await until(lambda: bound(cluster, "p"))
    assert (cluster.pod("p") or {})["spec"]["nodeName"] == "a-ml"


async def test_a_one_gpu_node_without_hami_is_never_double_booked(cluster: Cluster) -> None:
    """The issue's bug: two ``nvidia.com/gpu: 1`` pods were bound to the one GPU of a node without HAMi's
    registration. Now the kubelet's GPU is a whole device: one pod gets it, with no HAMi annotation, the other
    waits; a share cannot go there at all. Mutation: build such nodes with ``shares=True`` (as before)."""
    await cluster.add_node(node("k1", 1, hami=False, labels={"pool": "plain"}))
    on_k1 = {"spec": {"nodeSelector": {"pool": "plain"}}}
    await cluster.add_pod(pod("w0", **on_k1))
    await cluster.add_pod(pod("w1", **on_k1))
    await cluster.add_pod(pod("half", milli=500, **on_k1))
    await until(lambda: bound(cluster, "w0") or bound(cluster, "w1"))
    await until(lambda: cluster.sched.stats.unschedulable >= 2)
    await asyncio.sleep(0.3)
    assert sum(bound(cluster, n) for n in ("w0", "w1", "half")) == 1
    winner = cluster.pod("w0") if bound(cluster, "w0") else cluster.pod("w1")
    assert winner is not None and not any(
        k.startswith(("hami.io/", "nvidia.com/")) for k in winner["metadata"]["annotations"]
    )
    failed = {
        e["involvedObject"]["name"]: e["message"] for e in await cluster.events() if e["reason"] == "FailedScheduling"
    }
    assert "cannot share a GPU" in failed["half"] and failed["half"].startswith("Impossible")
    loser = "w1" if bound(cluster, "w0") else "w0"
    assert failed[loser].startswith("NoRoom")


async def test_hami_bind_annotations_are_present_and_consistent(cluster: Cluster) -> None:
    """What HAMi's device plugin reads (``GetPendingPod``, ``GetNextDeviceRequest``): phase ``allocating`` with a
    bind time, the assigned node equal to the bound node, the devices to allocate for the GPU container (init
    containers first), equal to the allocated ones, and written before the Binding with the pod's
    resourceVersion as a precondition."""
    spec = {"initContainers": [{"name": "init", "resources": {"requests": {"cpu": "100m"}}}]}
    await cluster.add_pod(pod("web-0", milli=250, spec=spec))
    await until(lambda: bound(cluster, "web-0"))
    p = cluster.pod("web-0")
    assert p is not None
    ann = p["metadata"]["annotations"]
    assert ann["hami.io/vgpu-node"] == p["spec"]["nodeName"] == "n1"
    assert ann["hami.io/bind-phase"] == "allocating" and int(ann["hami.io/bind-time"]) > 1_700_000_000
    uuid = ann[PIN]
    assert uuid in ("GPU-n1-0", "GPU-n1-1")
    assert ann["hami.io/vgpu-devices-to-allocate"] == f";{uuid},NVIDIA,3840,25:;"  # a quarter of 15360 MiB
    assert ann["hami.io/vgpu-devices-allocated"] == ann["hami.io/vgpu-devices-to-allocate"]
    [patch] = [
        r
        for r in cluster.k8s.requests("PATCH")
        if r.url.path.endswith("/pods/web-0") and "annotations" in r.data["metadata"]
    ]
    [binding] = cluster.posts("binding")
    assert patch.id < binding.id
    first = next(pc for pc in cluster.preconditions if pc[0] == "web-0")
    assert first[1] is not None and first[1] == first[2]  # annotated on condition of the version it read


async def test_a_409_on_the_binding_rereads_the_pod_and_never_overwrites_it(cluster: Cluster) -> None:
    """Someone else binds the pod to n2 just before our Binding: 409. The scheduler reads the pod, sees it
    bound elsewhere, writes nothing more, and counts it where it really is. Mutation: treat the 409 as our
    success (the pod is reported bound to n1 with a Scheduled event)."""
    await cluster.add_node(node("n2", 1))
    cluster.bind_race["p"] = "n2"
    await cluster.add_pod(pod("p", milli=1000, annotations={"nvidia.com/use-gputype": "T4"}))
    await until(lambda: cluster.sched.stats.conflicts >= 1 and "ml/p" not in cluster.sched._inflight)
    await until(lambda: cluster.sched.live.pods.get("ml/p") is not None)
    await asyncio.sleep(0.1)
    assert cluster.sched.live.pods["ml/p"].node == "n2" and cluster.sched.stats.bound == 0
    assert not [e for e in await cluster.events() if e["reason"] == "Scheduled"]
    gets = [r for r in cluster.k8s.requests("GET") if r.url.path.endswith("/pods/p")]
    [binding] = cluster.posts("binding")
    assert any(g.id > binding.id for g in gets)  # re-read after the 409
    ours = [
        r
        for r in cluster.k8s.requests("PATCH")
        if r.url.path.endswith("/pods/p") and "annotations" in r.data["metadata"]
    ]
    assert ours and all(r.id < binding.id for r in ours)


async def test_a_stale_annotation_patch_gets_409_and_a_pod_bound_meanwhile_is_left_alone(cluster: Cluster) -> None:
    """The pod is bound by someone else between our decision and our PATCH: the PATCH carries the old
    resourceVersion, the API server refuses it (409), the scheduler re-reads, sees the pod bound, and neither
    annotates nor binds it. Mutation: drop the resourceVersion precondition (our device annotations would land
    on a pod bound to another node)."""
    await cluster.add_node(node("n2", 1))
    cluster.patch_race["p"] = "n2"
    await cluster.add_pod(pod("p", milli=500))
    await until(lambda: cluster.sched.stats.conflicts >= 1 and "ml/p" not in cluster.sched.assumed)
    await asyncio.sleep(0.2)
    p = cluster.pod("p")
    assert p is not None and p["spec"]["nodeName"] == "n2"
    assert "hami.io/vgpu-node" not in p["metadata"]["annotations"]
    assert not cluster.posts("binding") and cluster.sched.stats.bound == 0
    assert not [e for e in await cluster.events() if e["reason"] == "Scheduled"]


async def test_a_restart_with_bound_pods_rebuilds_the_same_state(cluster: Cluster) -> None:
    """A second scheduler started on the same cluster (a restart, a new leader) counts the pods the first bound
    exactly as the first does: equal free CPU, memory, per-GPU shares and tags. Mutation: write only the first
    GPU's UUID into ``nvidia.com/use-gpuuuid`` (the restarted scheduler distrusts the 2-GPU pod's node)."""
    await cluster.add_node(node("n2", 4))
    await cluster.add_node(node("k1", 2, hami=False))
    for i, milli in enumerate((250, 500, 1000, 300, 700, 1000, 200)):
        await cluster.add_pod(pod(f"p{i}", milli=milli, cpu="2"))
    await cluster.add_pod(pod("cpu", gpus=0, cpu="3"))
    await cluster.add_pod(pod("two", gpus=2, cpu="1"))
    await until(
        lambda: all(bound(cluster, f"p{i}") for i in range(7)) and bound(cluster, "cpu") and bound(cluster, "two")
    )
    await until(lambda: not cluster.sched.assumed)
    kube = KubernetesConfig(host=cluster.k8s.url, retry_delays_s=(0.01,), request_timeout_s=2.0)
    api = await api_client(kube)
    again = SecondaryScheduler(SchedulerConfig(enabled=True), kube, api)
    stop = asyncio.Event()
    task = asyncio.create_task(again.run(stop))
    try:
        await asyncio.wait_for(again._all_synced(), 10)
        a, b = cluster.sched.live.state(), again.live.state()
        assert a.spec.names == b.spec.names
        for name in ("cpu_free", "memory_free", "tag_count"):
            assert (getattr(a, name) == getattr(b, name)).all(), name
        assert (np.sort(a.gpu_free, axis=1) == np.sort(b.gpu_free, axis=1)).all()
        assert again.live.warnings() == () and set(again.live.pods) == set(cluster.sched.live.pods)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await api.close()


async def test_node_deletion_takes_its_capacity_away(cluster: Cluster) -> None:
    """A deleted node stops being a candidate at once; its pods are ignored (with a warning) until they go, and
    a pod that only fit there waits. Mutation: keep deleted nodes in the cluster state."""
    await cluster.add_node(node("n2", 4, labels={"pool": "big"}))
    await cluster.add_pod(pod("a", milli=1000, spec={"nodeSelector": {"pool": "big"}}))
    await until(lambda: bound(cluster, "a"))
    resp = await cluster.k8s.http.delete(f"{cluster.k8s.url}/api/v1/nodes/n2")
    assert resp.status < 300
    await until(lambda: cluster.sched.live.node("n2") is None)
    assert any("bound to node n2, which is not in the view" in w for w in cluster.sched.live.warnings())
    await cluster.add_pod(pod("b", milli=1000, spec={"nodeSelector": {"pool": "big"}}))
    await until(lambda: cluster.sched.stats.unschedulable >= 1)
    assert not bound(cluster, "b") and "n2" not in cluster.sched.live.state().spec.names
    await cluster.add_pod(pod("c", milli=1000))
    await until(lambda: bound(cluster, "c"))
    assert (cluster.pod("c") or {})["spec"]["nodeName"] == "n1"


def pdb(name: str, app: str, allowed: int) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": "ml"},
        "spec": {"selector": {"matchLabels": {"app": app}}, "maxUnavailable": 0},
        "status": {"disruptionsAllowed": allowed},
    }


async def test_migrations_respect_pdbs_and_steer_the_replacement_to_the_reserved_node(cluster: Cluster) -> None:
    """Budgets with no disruption allowed pin a and b, so the plan moves c (the only movable pod) off n2; c's
    replacement (same ReplicaSet) is steered to the destination the plan reserved, and the pending whole-GPU pod
    gets the freed n2. Mutations: ignore the budgets (the plan evicts a or b first: the tie-break prefers n1),
    drop the reservation (c's replacement is placed by the policy, not necessarily on its planned GPU)."""
    await cluster.add_node(node("n2", 1))
    for name, where, gpu in (("a", "n1", "GPU-n1-0"), ("b", "n1", "GPU-n1-1"), ("c", "n2", "GPU-n2-0")):
        await cluster.add_pod(
            pod(name, milli=300, node_name=where, pinned=gpu, owner=f"rs-{name}", labels={"app": name})
        )
    for name in ("a", "b"):
        resp = await cluster.k8s.http.post(
            f"{cluster.k8s.url}/apis/policy/v1/namespaces/ml/poddisruptionbudgets", json=pdb(f"pdb-{name}", name, 0)
        )
        assert resp.status < 300, await resp.text()
    await cluster.add_pod(pod("whole", milli=1000))
    await until(lambda: bool(cluster.sched.stats.migrations), timeout_s=15)
    assert [r.name for r in cluster.posts("eviction")] == ["c"]
    [report] = cluster.sched.stats.migrations
    assert report.done == ("ml/c",) and report.stopped is None
    await until(lambda: bound(cluster, "whole"))
    assert (cluster.pod("whole") or {})["spec"]["nodeName"] == "n2"
    [reserved] = cluster.sched.reservations["ReplicaSet/rs-c"]
    await cluster.add_pod(pod("c-2", milli=300, owner="rs-c", labels={"app": "c"}))
    await until(lambda: bound(cluster, "c-2"))
    assert (cluster.pod("c-2") or {})["spec"]["nodeName"] == reserved.node == "n1"
    assert cluster.sched.stats.steered == 1 and not cluster.sched.reservations
    assert not any(n.startswith("reservation/") for n in cluster.sched.live.pods)


async def test_a_refused_plan_releases_its_reservations_and_plans_are_rate_limited(cluster: Cluster) -> None:
    """A 429 abandons the plan: no reservation is left holding capacity. With a long interval a second pod that
    finds no room does not start another plan. Mutation: keep the reservations of an abandoned plan."""
    import msgspec

    await cluster.add_node(node("n2", 1))
    for name, where, gpu in (("a", "n1", "GPU-n1-0"), ("b", "n1", "GPU-n1-1"), ("c", "n2", "GPU-n2-0")):
        await cluster.add_pod(pod(name, milli=300, node_name=where, pinned=gpu, owner=f"rs-{name}"))
    cluster.sched.cfg = msgspec.structs.replace(cluster.sched.cfg, migration_interval_s=3600)
    cluster.refuse[0] = 1
    await cluster.add_pod(pod("whole", milli=1000))
    await until(lambda: bool(cluster.sched.stats.migrations), timeout_s=15)
    [first] = cluster.sched.stats.migrations
    assert first.refused is not None and "PodDisruptionBudget" in (first.stopped or "")
    assert not cluster.sched.reservations and not any(n.startswith("reservation/") for n in cluster.sched.live.pods)
    await asyncio.sleep(0.6)  # NoRoom retries queue the pod again; the interval holds the next plan back
    assert len(cluster.sched.stats.migrations) == 1 and len(cluster.posts("eviction")) == 1
    assert not bound(cluster, "whole")


async def test_the_target_workload_comes_from_config_or_arrivals_not_running_pods() -> None:
    """FGD scores against the configured classes, else the shapes of pods that arrived for this scheduler;
    pods already running (DaemonSets, other schedulers' pods) never weigh in. Mutation: derive the classes from
    the bound pods (the issue's bug: 4 DaemonSet pods per node made a CPU-only class 47 % of the weight)."""
    from shadowscale.agent.config import ConfigError, parse_config
    from shadowscale.agent.scheduler import pod_of

    kube = KubernetesConfig(host="http://127.0.0.1:1")
    base = {"models": [{"name": "m", "capacity_rps": 1}]}
    cfg = parse_config(
        {
            **base,
            "scheduler": {
                "enabled": True,
                "workload": [
                    {"cpu_milli": 4000, "num_gpu": 1, "gpu_milli": 500, "weight": 3},
                    {"cpu_milli": 8000, "num_gpu": 1, "gpu_milli": 1000, "weight": 1},
                ],
            },
        }
    )
    configured = SecondaryScheduler(cfg.scheduler, kube, None).classes()
    assert configured is not None and list(configured.weight) == [0.75, 0.25]
    with pytest.raises(ConfigError, match=r"scheduler\.workload\[0\]: gpu_milli must be 0"):
        parse_config({**base, "scheduler": {"enabled": True, "workload": [{"cpu_milli": 1, "gpu_milli": 5}]}})

    observed = SecondaryScheduler(SchedulerConfig(enabled=True), kube, None)
    assert observed.classes() is None
    for i in range(4):  # DaemonSet pods running everywhere: not arrivals of ours
        observed.pods[f"kube-system/ds-{i}"] = pod_of(pod(f"ds-{i}", gpus=0, cpu="100m", node_name="n1"))
    for i in range(3):
        observed._note_arrival(pod_of(pod(f"w{i}", milli=500, cpu="4")))
    observed._note_arrival(pod_of(pod("w0", milli=500, cpu="4")))  # seen again: counted once
    classes = observed.classes()
    assert classes is not None and len(classes) == 1
    assert (int(classes.cpu_milli[0]), int(classes.gpu_milli[0]), float(classes.weight[0])) == (4000, 500, 1.0)


async def test_hami_node_lock_serialises_allocations_on_a_node(cluster: Cluster) -> None:
    """HAMi's scheduler locks a node (``hami.io/mutex.lock``) before binding a GPU pod there; its device plugin
    releases it after Allocate. While another pod holds n1's lock our pod waits; once released it is locked
    for our pod, then annotated and bound. Mutation: skip the lock (the pod binds while n1 is locked)."""
    lock = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + ",ml,someone-else"
    resp = await cluster.k8s.http.patch(
        f"{cluster.k8s.url}/api/v1/nodes/n1",
        json={"metadata": {"annotations": {"hami.io/mutex.lock": lock}}},
        headers=MERGE,
    )
    assert resp.status < 300
    await cluster.add_pod(pod("p", milli=500))
    await asyncio.sleep(0.5)
    assert not bound(cluster, "p") and not cluster.posts("binding")
    cluster.plugin_releases = False
    unlock = {"metadata": {"annotations": {"hami.io/mutex.lock": None}}}
    await cluster.k8s.http.patch(f"{cluster.k8s.url}/api/v1/nodes/n1", json=unlock, headers=MERGE)
    await until(lambda: bound(cluster, "p"))
    held = ((cluster.node("n1") or {}).get("metadata", {}).get("annotations") or {}).get("hami.io/mutex.lock")
    assert held is not None and held.endswith(",ml,p")  # ours, until the device plugin releases it
    node_patches = [r for r in cluster.k8s.requests("PATCH") if r.url.path == "/api/v1/nodes/n1"]
    [binding] = cluster.posts("binding")
    assert node_patches[-1].id < binding.id
