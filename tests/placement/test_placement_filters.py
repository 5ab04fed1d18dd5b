"""kube-scheduler's filters in the pure decision, the kubelet's whole GPUs, and the incremental cluster state
(each filter test names the mutation it catches: the filter's line removed, the pod lands on the excluded node)."""

from __future__ import annotations

import numpy as np
import pytest

from shadowscale.policies.placement import make_policy
from shadowscale.policies.placement.filters import Requirement, Taint, Toleration, selects
from shadowscale.policies.placement.scheduler import (
    Binding,
    ClusterView,
    LiveCluster,
    Node,
    PendingPod,
    RunningPod,
    Unschedulable,
    decide,
    running_pod,
)

FGD = make_policy("FGD")


def gpu_node(name: str, gpus: int = 2, **kw: object) -> Node:
    return Node(name, 32000, 65536, "NVIDIA-A100-SXM4-80GB", tuple(f"GPU-{name}-{i}" for i in range(gpus)), **kw)  # type: ignore[arg-type]


def place(nodes: tuple[Node, ...], pod: PendingPod, pods: tuple[RunningPod, ...] = ()) -> Binding | Unschedulable:
    return decide(ClusterView(nodes, pods), pod, FGD)


SHARE = PendingPod("ns/p", 1000, 0, 1, 500)

# (id, the node the pod must avoid, pod, the fragment of the reason when that node is the only one)
FILTERS = [
    ("unschedulable", gpu_node("x", unschedulable=True), SHARE, "1 node(s) unschedulable"),
    ("not ready", gpu_node("x", ready=False), SHARE, "1 node(s) not ready"),
    ("NoSchedule taint", gpu_node("x", taints=(Taint("dedicated", "infra"),)), SHARE, "untolerated taints"),
    (
        "NoExecute taint",
        gpu_node("x", taints=(Taint("gpu", "", "NoExecute"),)),
        SHARE,
        "untolerated taints",
    ),
    (
        "node selector",
        gpu_node("x", labels={"pool": "batch"}),
        PendingPod("ns/p", 1000, 0, 1, 500, node_selector=(("pool", "serving"),)),
        "didn't match the pod's node selector",
    ),
    (
        "required node affinity",
        gpu_node("x", labels={"zone": "b"}),
        PendingPod("ns/p", 1000, 0, 1, 500, affinity=((Requirement("zone", "In", ("a",)),),)),
        "didn't match",
    ),
    ("a share on kubelet-only GPUs", gpu_node("x", shares=False), SHARE, "cannot share a GPU"),
]


@pytest.mark.parametrize(("node", "pod", "fragment"), [f[1:] for f in FILTERS], ids=[f[0] for f in FILTERS])
def test_each_filter_keeps_the_pod_off_the_node(node: Node, pod: PendingPod, fragment: str) -> None:
    ok = gpu_node("ok", labels={"pool": "serving", "zone": "a"})
    # x sorts first and is idle, so without the filter FGD's tie-break would take it
    x = Node("a-" + node.name, *(getattr(node, f) for f in Node.__slots__[1:]))  # type: ignore[arg-type]
    d = place((x, ok), pod)
    assert isinstance(d, Binding) and d.node == "ok", d
    alone = place((x,), pod)
    assert isinstance(alone, Unschedulable) and alone.kind == "Impossible"
    assert alone.reason.startswith("0/1 nodes are available: ") and fragment in alone.reason


def test_tolerations_and_preferences() -> None:
    tainted = gpu_node("a", taints=(Taint("dedicated", "ml"), Taint("soft", "", "PreferNoSchedule")))
    tolerating = PendingPod("ns/p", 1000, 0, 1, 500, tolerations=(Toleration("dedicated", "Equal", "ml"),))
    d = place((tainted,), tolerating)
    assert isinstance(d, Binding) and d.node == "a"  # PreferNoSchedule filters nothing
    wrong_value = PendingPod("ns/p", 1000, 0, 1, 500, tolerations=(Toleration("dedicated", "Equal", "web"),))
    assert isinstance(place((tainted,), wrong_value), Unschedulable)
    everything = PendingPod("ns/p", 1000, 0, 1, 500, tolerations=(Toleration("", "Exists"),))
    assert isinstance(place((tainted,), everything), Binding)


def test_selector_operators() -> None:
    labels = {"gpu": "a100", "mem": "80"}
    assert selects((), (), labels, "n")
    assert not selects((("gpu", "t4"),), (), labels, "n")
    for req, expected in [
        (Requirement("gpu", "NotIn", ("t4",)), True),
        (Requirement("mem", "Gt", ("40",)), True),
        (Requirement("mem", "Lt", ("40",)), False),
        (Requirement("mem", "Gt", ("x",)), False),  # malformed: matches nothing, never raises
        (Requirement("spot", "DoesNotExist"), True),
        (Requirement("gpu", "Exists"), True),
        (Requirement("gpu", "Bogus", ("a100",)), False),
        (Requirement("metadata.name", "In", ("n",), field=True), True),
    ]:
        assert selects((), ((req,),), labels, "n") is expected, req
    assert not selects((), ((),), labels, "n")  # an empty term matches no node
    assert selects((), ((Requirement("gpu", "In", ("t4",)),), (Requirement("gpu", "Exists"),)), labels, "n")


def test_pod_limit_and_extended_resources_leave_room_for_later() -> None:
    """NoRoom, not Impossible: the resources come back when pods end. Catches counting neither."""
    full = gpu_node("a", max_pods=1)
    one = (RunningPod("ns/o", "a", 100, 0),)
    d = place((full,), PendingPod("ns/p", 1000), one)
    assert isinstance(d, Unschedulable) and d.kind == "NoRoom" and "1 node(s) at their pod limit" in d.reason
    rdma = gpu_node("b", extended=(("rdma/hca", 2000),))
    plain = gpu_node("c")
    wants = PendingPod("ns/q", 1000, extended=(("rdma/hca", 1000),))
    d = place((plain, rdma), wants, (RunningPod("ns/r", "b", 100, 0, extended=(("rdma/hca", 1000),)),))
    assert isinstance(d, Binding) and d.node == "b"
    d = place(
        (plain, rdma),
        wants,
        tuple(RunningPod(f"ns/r{i}", "b", 100, 0, extended=(("rdma/hca", 1000),)) for i in range(2)),
    )
    assert isinstance(d, Unschedulable) and d.kind == "NoRoom" and "insufficient rdma/hca" in d.reason


def test_hami_gpu_types_are_case_insensitive_substrings() -> None:
    nodes = (gpu_node("a"), Node("b", 32000, 65536, "Tesla-T4", ("GPU-b-0",)))
    d = place(nodes, PendingPod("ns/p", 1000, 0, 1, 500, gpu_models=frozenset({"t4"})))
    assert isinstance(d, Binding) and d.node == "b"
    d = place(nodes, PendingPod("ns/p", 1000, 0, 1, 500, gpu_models_excluded=frozenset({"A100"})))
    assert isinstance(d, Binding) and d.node == "b"
    d = place(nodes, PendingPod("ns/p", 1000, 0, 1, 500, gpu_models=frozenset({"H100"})))
    assert isinstance(d, Unschedulable) and d.kind == "Impossible" and "unknown GPU model(s) H100" in d.reason


def test_a_one_gpu_node_without_hami_is_never_double_booked() -> None:
    """The kubelet hands out whole devices: a second ``nvidia.com/gpu: 1`` pod has no room, whatever share it
    says it needs, and no device annotation is written. Catches sharing the kubelet's GPUs (the issue's bug)."""
    node = gpu_node("k", 1, shares=False)
    whole = PendingPod("ns/a", 1000, 0, 1, 1000)
    first = place((node,), whole)
    assert isinstance(first, Binding) and first.annotations == {} and first.gpu_uuids == ()
    second = place((node,), PendingPod("ns/b", 1000, 0, 1, 1000), (running_pod(whole, first),))
    assert isinstance(second, Unschedulable) and second.kind == "NoRoom"
    # a pod another scheduler bound there with a share still takes the whole device
    other = (RunningPod("ns/o", "k", 100, 0, 1, 300),)
    assert isinstance(place((node,), whole, other), Unschedulable)


def test_incremental_updates_equal_a_rebuild() -> None:
    """Adds, removals, node changes and deletion applied one at a time give the arrays a fresh build gives."""
    rng = np.random.default_rng(3)
    nodes = [gpu_node(f"n{i}", 4) for i in range(6)]
    live = LiveCluster(nodes)
    policy = make_policy("shadowscale")
    for i in range(60):
        k, milli = [(1, 250), (1, 500), (2, 1000), (0, 0)][int(rng.integers(4))]
        pending = PendingPod(f"ns/p{i}", 2000, 512, k, milli)
        d = live.decide(pending, policy)
        if isinstance(d, Binding):
            live.add_pod(running_pod(pending, d))
        if i % 7 == 3 and live.pods:
            live.remove_pod(sorted(live.pods)[int(rng.integers(len(live.pods)))])
        if i == 30:
            live.set_node(Node("n1", 32000, 65536, nodes[1].gpu_model, nodes[1].gpu_uuids, taints=(Taint("t"),)))
        if i == 40:
            live.remove_node("n2")
    fresh = LiveCluster(list(live._nodes.values()), list(live.pods.values()))
    a, b = live.state(), fresh.state()
    assert a.spec.names == b.spec.names
    for name in ("cpu_free", "memory_free", "gpu_free", "tag_count"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert live.warnings() == fresh.warnings() and any(
        "node n2, which is not in the view" in w for w in live.warnings()
    )
