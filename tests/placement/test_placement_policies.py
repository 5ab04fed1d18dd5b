"""Each policy's choice on tiny hand-made clusters, plus invariants every policy must keep."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowscale.policies.placement import (
    POLICY_NAMES,
    ClusterSpec,
    ClusterState,
    PodRequest,
    TaskClasses,
    UnknownPolicyError,
    canonical_name,
    feasible_nodes,
    make_policy,
    task_classes,
)
from shadowscale.policies.placement.shadowscale import cpu_per_gpu_share

ANY_CLASSES = TaskClasses(
    cpu_milli=np.array([4000, 8000]),
    num_gpu=np.array([1, 1]),
    gpu_milli=np.array([500, 1000]),
    gpu_models=(frozenset(), frozenset()),
    weight=np.array([0.5, 0.5]),
)


def cluster(
    gpu_free: list[list[int]],
    cpu_free: list[int],
    gpu_count: list[int] | None = None,
    cpu_cap: list[int] | None = None,
    rank: list[int] | None = None,
    tags: list[list[int]] | None = None,
    models: list[str] | None = None,
) -> ClusterState:
    """A state with the given free shares per GPU; capacity defaults to the row width / the free CPU."""
    n = len(gpu_free)
    width = max(len(r) for r in gpu_free)
    counts = gpu_count or [len(r) for r in gpu_free]
    sp = ClusterSpec.build(cpu_cap or cpu_free, [1 << 20] * n, counts, models or ["G2"] * n)
    if rank is not None:
        sp = sp.with_rank(rank)
    g = np.zeros((n, max(width, sp.width)), dtype=np.int64)
    for i, r in enumerate(gpu_free):
        g[i, : len(r)] = r
    t = np.zeros((n, 9), dtype=np.int64)
    for i, row in enumerate(tags or []):
        t[i, : len(row)] = row
    return ClusterState(sp, np.array(cpu_free), np.full(n, 1 << 20), g, t)


def place(
    name: str, state: ClusterState, pod: PodRequest, classes: TaskClasses = ANY_CLASSES
) -> tuple[int, tuple[int, ...]]:
    policy = make_policy(name)
    p, _ = policy.place(state, pod, policy.init(state, classes), np.random.default_rng(0))
    assert p is not None
    assert p.policy == name and name in p.reason
    return p.node, p.gpus


SHARE = PodRequest(1000, num_gpu=1, gpu_milli=250)
WHOLE = PodRequest(1000, num_gpu=1, gpu_milli=1000)

CASES: list[tuple[str, str, dict[str, Any], PodRequest, tuple[int, tuple[int, ...]]]] = [
    # BestFit: least weighted leftover (CPU, GPU) after placing; tightest GPU in the node
    (
        "bestfit tightest node",
        "BestFit",
        {"gpu_free": [[1000] * 8, [1000, 0]], "cpu_free": [96000, 16000]},
        WHOLE,
        (1, (0,)),
    ),
    ("bestfit tightest gpu", "BestFit", {"gpu_free": [[1000, 600, 300, 900]], "cpu_free": [8000]}, SHARE, (0, (2,))),
    # GpuPacking: a partly used GPU beats a free GPU on a used node, which beats an idle node
    (
        "packing partly used gpu",
        "GpuPacking",
        {"gpu_free": [[1000, 1000], [1000, 0], [1000, 400]], "cpu_free": [8000] * 3},
        SHARE,
        (2, (1,)),
    ),
    (
        "packing used node",
        "GpuPacking",
        {"gpu_free": [[1000, 1000], [1000, 0], [1000] * 4], "cpu_free": [8000] * 3},
        SHARE,
        (1, (0,)),
    ),
    (
        "packing smaller idle node",
        "GpuPacking",
        {"gpu_free": [[1000] * 8, [1000] * 2], "cpu_free": [8000] * 2},
        SHARE,
        (1, (0,)),
    ),
    # GpuClustering (tag 0 = shares, k = k whole GPUs): a node running only the same kind > a mixed node >
    # an idle node > other kinds only
    (
        "clustering same kind",
        "GpuClustering",
        {"gpu_free": [[1000, 1000]] * 4, "cpu_free": [8000] * 4, "tags": [[0, 1], [1, 1], [], [1]]},
        SHARE,
        (3, (0,)),
    ),
    (
        "clustering idle before other kinds",
        "GpuClustering",
        {"gpu_free": [[1000, 1000]] * 2, "cpu_free": [8000] * 2, "tags": [[0, 1], []]},
        SHARE,
        (1, (0,)),
    ),
    # DotProd: smallest dot product of free and requested resources (the fullest node)
    (
        "dotprod fullest",
        "DotProd",
        {"gpu_free": [[1000] * 4, [1000, 1000]], "cpu_free": [64000, 16000]},
        WHOLE,
        (1, (0,)),
    ),
    # FGD: 500 on the half-used GPU keeps the whole GPU for the 1000-share class (growth -250 vs +250)
    (
        "fgd keeps whole gpu",
        "FGD",
        {"gpu_free": [[1000, 500]], "cpu_free": [16000]},
        PodRequest(1000, num_gpu=1, gpu_milli=500),
        (0, (1,)),
    ),
    # FGD across nodes: the node whose leftover the classes can still use
    (
        "fgd across nodes",
        "FGD",
        {"gpu_free": [[750], [500]], "cpu_free": [16000, 16000]},
        PodRequest(1000, num_gpu=1, gpu_milli=500),
        (1, (0,)),
    ),
    # ties go to the lowest rank
    (
        "rank tie-break",
        "FGD",
        {"gpu_free": [[1000], [1000]], "cpu_free": [16000] * 2, "rank": [1, 0]},
        WHOLE,
        (1, (0,)),
    ),
    # model constraint honoured by every policy
    *[
        (
            f"{name.lower()} model constraint",
            name,
            {"gpu_free": [[1000], [1000]], "cpu_free": [16000] * 2, "models": ["G2", "T4"]},
            PodRequest(1000, num_gpu=1, gpu_milli=300, gpu_models=frozenset({"T4"})),
            (1, (0,)),
        )
        for name in POLICY_NAMES
    ],
    # multi-GPU pods take whole, free GPUs (the lowest indices)
    *[
        (
            f"{name.lower()} multi-gpu",
            name,
            {"gpu_free": [[1000, 300, 1000, 1000], [1000, 1000, 200, 0]], "cpu_free": [16000] * 2},
            PodRequest(1000, num_gpu=3, gpu_milli=1000),
            (0, (0, 2, 3)),
        )
        for name in POLICY_NAMES
    ],
]


@pytest.mark.parametrize(("case", "name", "kwargs", "pod", "expected"), CASES, ids=[c[0] for c in CASES])
def test_policy_choice(
    case: str, name: str, kwargs: dict[str, Any], pod: PodRequest, expected: tuple[int, tuple[int, ...]]
) -> None:
    assert place(name, cluster(**kwargs), pod) == expected


def test_shadowscale_keeps_cpu_for_the_gpus_of_a_cpu_poor_node() -> None:
    # node 0: 8 GPUs and 96 cores (12 per GPU); node 1: 2 GPUs and 104 cores. The GPU classes need 10 cores
    # per GPU. A 32-core CPU-only pod leaves node 0 with 1600 shares it cannot feed; FGD sees no fragment
    # either way and takes the lowest rank (node 0); shadowscale takes node 1.
    cls = TaskClasses(
        cpu_milli=np.array([10_000, 32_000]),
        num_gpu=np.array([1, 0]),
        gpu_milli=np.array([1000, 0]),
        gpu_models=(frozenset(), frozenset()),
        weight=np.array([0.8, 0.2]),
    )
    assert cpu_per_gpu_share(cls) == pytest.approx(10.0)
    st = cluster([[1000] * 8, [1000] * 2], [96_000, 104_000], rank=[0, 1])
    cpu_pod = PodRequest(32_000)
    assert place("FGD", st, cpu_pod, cls) == (0, ())
    assert place("shadowscale", st, cpu_pod, cls) == (1, ())


def test_random_spreads_over_feasible_nodes_only() -> None:
    st = cluster([[1000], [1000], [200], [1000]], [8000, 8000, 8000, 500])
    policy = make_policy("Random")
    rng = np.random.default_rng(3)
    counts = np.zeros(4, dtype=int)
    for _ in range(300):
        p, _ = policy.place(st, SHARE, None, rng)
        assert p is not None
        counts[p.node] += 1
    assert counts[2] == 0 and counts[3] == 0  # too little GPU / CPU
    assert counts[0] > 100 and counts[1] > 100


def test_nowhere_to_go_returns_none() -> None:
    st = cluster([[100]], [8000])
    for name in POLICY_NAMES:
        policy = make_policy(name)
        p, _ = policy.place(st, SHARE, policy.init(st, ANY_CLASSES), np.random.default_rng(0))
        assert p is None


def test_registry_is_case_insensitive_and_lists_names_on_error() -> None:
    assert canonical_name("fgd") == "FGD" and canonical_name(" BESTFIT ") == "BestFit"
    assert make_policy("ShadowScale").name == "shadowscale"
    with pytest.raises(UnknownPolicyError, match="valid policies: Random, DotProd"):
        make_policy("tetris")
    with pytest.raises(ValueError):
        canonical_name("")


def _random_cluster(rng: np.random.Generator, n: int) -> tuple[ClusterState, list[PodRequest]]:
    counts = rng.choice([0, 1, 2, 4, 8], size=n)
    models = rng.choice(["G2", "T4", "P100"], size=n).tolist()
    sp = ClusterSpec.build(
        rng.integers(1, 64, size=n) * 2000, rng.integers(1, 64, size=n) * 4096, counts.tolist(), models
    )
    pods = []
    for i in range(60):
        kind = int(rng.integers(4))
        models_req = frozenset(rng.choice(["G2", "T4", "P100"], size=int(rng.integers(0, 3)), replace=False).tolist())
        cpu, mem = int(rng.integers(0, 16)) * 1000, int(rng.integers(0, 32)) * 1024
        if kind == 0:
            pods.append(PodRequest(cpu, mem, name=f"c{i}"))
        elif kind in (1, 2):
            pods.append(PodRequest(cpu, mem, 1, int(rng.integers(1, 100)) * 10, models_req, f"s{i}"))
        else:
            pods.append(PodRequest(cpu, mem, int(rng.choice([1, 2, 4, 8])), 1000, models_req, f"w{i}"))
    return ClusterState.empty(sp), pods


@pytest.mark.parametrize("name", POLICY_NAMES)
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 12))
def test_no_resource_is_ever_over_allocated(name: str, seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    state, pods = _random_cluster(rng, n)
    classes = task_classes(pods)
    policy = make_policy(name)
    memo = policy.init(state, classes)
    for pod in pods:
        feasible = bool(feasible_nodes(state, pod).any())
        p, memo = policy.place(state, pod, memo, rng)
        assert (p is not None) == feasible  # a pod fails only when it fits nowhere
        if p is None:
            continue
        assert state.fits(pod, p)
        if pod.num_gpu and pod.gpu_models:
            assert state.spec.models[state.spec.model[p.node]] in pod.gpu_models
        state = state.apply(pod, p)
        assert (state.gpu_free >= 0).all() and (state.cpu_free >= 0).all() and (state.memory_free >= 0).all()
        assert (state.gpu_free <= 1000).all()
    used = state.spec.total_gpu_milli - int(state.gpu_free.sum())
    assert used == state.allocated_gpu_milli


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_same_seed_same_placements(name: str) -> None:
    def run(seed: int) -> list[tuple[int, tuple[int, ...]] | None]:
        rng = np.random.default_rng(seed)
        state, pods = _random_cluster(np.random.default_rng(5), 10)
        policy = make_policy(name)
        memo = policy.init(state, task_classes(pods))
        out: list[tuple[int, tuple[int, ...]] | None] = []
        for pod in pods:
            p, memo = policy.place(state, pod, memo, rng)
            out.append(None if p is None else (p.node, p.gpus))
            if p is not None:
                state = state.apply(pod, p)
        return out

    assert run(1) == run(1)


def test_fgd_and_bestfit_disagree_where_the_tightest_gpu_strands_shares() -> None:
    """The target workload asks for halves: BestFit takes node 0's 700 free shares (tightest fit, leaving 200 no
    half can use), FGD takes the idle GPU of node 1 (leaving 500, exactly one half). Catches FGD scoring like
    BestFit and a fragmentation measure that ignores the task classes."""
    halves = TaskClasses(
        cpu_milli=np.array([1000]),
        num_gpu=np.array([1]),
        gpu_milli=np.array([500]),
        gpu_models=(frozenset(),),
        weight=np.array([1.0]),
    )
    state = cluster([[700], [1000]], [8000, 8000])
    pod = PodRequest(1000, num_gpu=1, gpu_milli=500)
    assert place("BestFit", state, pod, halves) == (0, (0,))
    assert place("FGD", state, pod, halves) == (1, (0,))
