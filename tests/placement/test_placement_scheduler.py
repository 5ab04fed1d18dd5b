"""The pure scheduling decision: a binding with HAMi's GPU-pinning annotation, or a reason an operator can act on;
inconsistent views are contained, and serialised decisions never book a GPU share twice."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from shadowscale.policies.placement import POLICY_NAMES, make_policy
from shadowscale.policies.placement.scheduler import (
    HAMI_USE_GPUUUID,
    Binding,
    ClusterView,
    Node,
    PendingPod,
    RunningPod,
    Unschedulable,
    decide,
    running_pod,
)


def gpu_node(name: str, gpus: int, model: str = "G2", cpu: int = 32000, mem: int = 65536) -> Node:
    return Node(name, cpu, mem, model, tuple(f"GPU-{name}-{i}" for i in range(gpus)))


NODES = (gpu_node("a", 2, "T4", cpu=16000), gpu_node("b", 8), Node("c", 64000, 262144))
FGD = make_policy("FGD")


IMPOSSIBLE = [
    # (id, pod, kind, reason fragment)
    ("more GPUs than any node", PendingPod("p", 1000, 0, 9, 1000), "Impossible", "asks for 9 GPUs but the largest"),
    ("more GPUs than the largest", PendingPod("p", 1000, 0, 1, 1000), None, None),  # placeable: control case
    (
        "unknown GPU model",
        PendingPod("p", 1000, 0, 1, 500, frozenset({"A100"})),
        "Impossible",
        "unknown GPU model(s) A100; the cluster has G2, T4",
    ),
    ("negative CPU", PendingPod("p", -5, 0, 1, 500), "Invalid", "negative request: cpu_milli -5"),
    ("negative memory", PendingPod("p", 1000, -1), "Invalid", "negative request: memory_mib -1"),
    ("negative GPUs", PendingPod("p", 1000, 0, -1, 0), "Invalid", "num_gpu -1"),
    ("negative share", PendingPod("p", 1000, 0, 1, -300), "Invalid", "gpu_milli -300"),
    ("share above one GPU", PendingPod("p", 1000, 0, 1, 1500), "Invalid", "gpu_milli must be in 1..1000"),
    ("partial multi-GPU", PendingPod("p", 1000, 0, 2, 500), "Invalid", "whole GPUs"),
    ("CPU beyond every node", PendingPod("p", 128000), "Impossible", "no node is large enough"),
    (
        "CPU beyond every node of the model",
        PendingPod("p", 20000, 0, 1, 500, frozenset({"T4"})),
        "Impossible",
        "largest eligible node has 16000 mCPU",
    ),
    ("empty model name", PendingPod("p", 1000, 0, 1, 500, frozenset({" "})), "Invalid", "empty GPU model name"),
]


@pytest.mark.parametrize(("pod", "kind", "fragment"), [c[1:] for c in IMPOSSIBLE], ids=[c[0] for c in IMPOSSIBLE])
def test_impossible_and_invalid_pods_get_a_reason(pod: PendingPod, kind: str | None, fragment: str | None) -> None:
    d = decide(ClusterView(NODES), pod, FGD)
    if kind is None:
        assert isinstance(d, Binding)
        return
    assert isinstance(d, Unschedulable) and d.kind == kind and not d.retry
    assert fragment is not None and fragment in d.reason


def test_a_gpu_pod_on_a_cluster_without_gpus() -> None:
    d = decide(ClusterView((Node("c", 64000, 1024),)), PendingPod("p", 1000, 0, 1, 200), FGD)
    assert isinstance(d, Unschedulable) and d.kind == "Impossible" and "no node has a GPU" in d.reason


def test_binding_carries_hamis_device_annotations() -> None:
    """HAMi's encoding (``EncodePodSingleDevice``): ``UUID,NVIDIA,MiB,cores:`` per GPU, ``;`` per container."""
    d = decide(ClusterView(NODES), PendingPod("ns/p", 4000, 1024, 2, 1000), FGD)
    assert isinstance(d, Binding) and d.node in {"a", "b"}
    assert d.gpu_uuids == tuple(f"GPU-{d.node}-{i}" for i in d.gpu_indices) and len(d.gpu_indices) == 2
    devices = "".join(f"{u},NVIDIA,0,100:" for u in d.gpu_uuids) + ";"
    assert d.annotations == {
        HAMI_USE_GPUUUID: ",".join(d.gpu_uuids),
        "hami.io/vgpu-node": d.node,
        "hami.io/vgpu-devices-to-allocate": devices,
        "hami.io/vgpu-devices-allocated": devices,
    }
    node = Node("m", 8000, 1024, "A10", ("GPU-m0",), gpu_memory_mib=(24000,))
    share = PendingPod("ns/s", 1000, 0, 1, 250, containers=3, gpu_container=2)
    d = decide(ClusterView((node,)), share, FGD)
    assert isinstance(d, Binding)  # a quarter of 24000 MiB, 25 % of the cores, in the third container's entry
    assert d.annotations["hami.io/vgpu-devices-to-allocate"] == ";;GPU-m0,NVIDIA,6000,25:;"
    assert d.reason.startswith(f"FGD: node {d.node} gpus")
    cpu_only = decide(ClusterView(NODES), PendingPod("ns/q", 4000), FGD)
    assert isinstance(cpu_only, Binding) and cpu_only.annotations == {} and cpu_only.gpu_uuids == ()


def test_no_room_can_be_retried_and_says_whether_defragmentation_could_help() -> None:
    nodes = (gpu_node("a", 2), gpu_node("b", 2))
    half = [RunningPod(f"h{n}{g}", n, 1000, 0, 1, 600, (f"GPU-{n}-{g}",)) for n in "ab" for g in range(2)]
    d = decide(ClusterView(nodes, tuple(half)), PendingPod("p", 1000, 0, 1, 1000), FGD)
    assert isinstance(d, Unschedulable) and d.kind == "NoRoom" and d.retry
    assert "1600 GPU shares are free on eligible nodes but split" in d.reason
    d = decide(ClusterView(nodes, tuple(half)), PendingPod("p", 1000, 0, 2, 1000), FGD)
    assert isinstance(d, Unschedulable) and "only 1600 GPU shares are free" in d.reason


def test_an_already_bound_pod_is_not_bound_again() -> None:
    view = ClusterView(NODES, (RunningPod("ns/p", "b", 1000, 0),))
    d = decide(view, PendingPod("ns/p", 1000), FGD)
    assert isinstance(d, Unschedulable) and d.kind == "AlreadyBound" and "node b" in d.reason


def test_inconsistent_views_are_contained() -> None:
    nodes = (
        gpu_node("a", 1),
        gpu_node("b", 1),
        gpu_node("b", 2),  # duplicate name
        gpu_node("big", 9),  # more GPUs than supported
        gpu_node("c", 1),
    )
    pods = (
        RunningPod("stale", "a", 1000, 0, 1, 100, ("GPU-a-7",)),  # a GPU node a does not list
        RunningPod("gone", "z", 1000, 0, 1, 100, ("GPU-z-0",)),  # a node that disappeared
        RunningPod("x1", "b", 1000, 0, 1, 700, ("GPU-b-0",)),
        RunningPod("x2", "b", 1000, 0, 1, 700, ("GPU-b-0",)),  # over-committed GPU
    )
    d = decide(ClusterView(nodes, pods), PendingPod("p", 1000, 0, 1, 200), FGD)
    assert isinstance(d, Binding) and d.node == "c"  # a and b are treated as full
    text = "\n".join(d.warnings)
    for fragment in (
        "node b: listed twice",
        "node big: 9 GPUs",
        "pod stale: holds GPUs ['GPU-a-7']",
        "pod gone: bound to node z",
        "node b: bound pods ask for more than it has",
    ):
        assert fragment in text
    full = decide(ClusterView(nodes, pods), PendingPod("q", 1000, 0, 1, 1000), FGD)
    assert isinstance(full, Binding) and full.node == "c"
    none_left = decide(
        ClusterView(nodes, (*pods, running_pod(PendingPod("q", 1000, 0, 1, 1000), full))),
        PendingPod("r", 1000, 0, 1, 100),
        FGD,
    )
    assert isinstance(none_left, Unschedulable) and none_left.kind == "NoRoom"


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_serialised_decisions_never_book_a_share_twice(policy: str) -> None:
    rng = np.random.default_rng(5)
    nodes = tuple(
        gpu_node(f"n{i}", int(g), cpu=int(c)) for i, (g, c) in enumerate([(8, 96000), (2, 24000), (4, 48000)])
    )
    shapes = [(4000, 1, 250), (6000, 1, 500), (8000, 1, 1000), (2000, 0, 0), (12000, 2, 1000), (3000, 1, 700)]
    view = ClusterView(nodes)
    bound = unschedulable = 0
    for i in range(40):
        cpu, k, milli = shapes[int(rng.integers(len(shapes)))]
        pending = PendingPod(f"p{i}", cpu, 1024, k, milli)
        d = decide(view, pending, make_policy(policy), rng=rng)
        if isinstance(d, Binding):
            view = ClusterView(view.nodes, (*view.pods, running_pod(pending, d)))
            bound += 1
        else:
            assert d.kind == "NoRoom"
            unschedulable += 1
    assert bound > 10 and unschedulable > 0
    used: defaultdict[str, int] = defaultdict(int)
    cpu_used: defaultdict[str, int] = defaultdict(int)
    by_node = {n.name: n for n in nodes}
    for p in view.pods:
        cpu_used[p.node] += p.cpu_milli
        assert set(p.gpu_uuids) <= set(by_node[p.node].gpu_uuids) and len(p.gpu_uuids) == p.num_gpu
        for u in p.gpu_uuids:
            used[u] += p.gpu_milli
    assert max(used.values()) <= 1000
    assert all(cpu_used[n] <= by_node[n].cpu_milli for n in cpu_used)
