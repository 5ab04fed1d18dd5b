"""Cluster values, hard constraints and the shared selection rule of the placement core."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from shadowscale.policies.placement import (
    ClusterSpec,
    ClusterState,
    Placement,
    PodRequest,
    candidates,
    feasible_nodes,
    select,
)
from shadowscale.policies.placement.feasible import Candidates, whole_gpus


def spec(
    cpu: list[int],
    gpus: list[int],
    models: list[str] | None = None,
    mem: list[int] | None = None,
) -> ClusterSpec:
    n = len(cpu)
    return ClusterSpec.build(cpu, mem or [1 << 20] * n, gpus, models or ["G2"] * n)


def state_with(base: ClusterState, gpu_free: list[list[int]], cpu_free: list[int] | None = None) -> ClusterState:
    """A state with the given free shares per GPU (and free CPU), for hand-made scenarios."""
    g = np.array(gpu_free, dtype=np.int64)
    cpu = np.array(cpu_free, dtype=np.int64) if cpu_free is not None else base.cpu_free.copy()
    return ClusterState(base.spec, cpu, base.memory_free.copy(), g, base.tag_count.copy())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cpu_milli": -1}, "non-negative"),
        ({"cpu_milli": 1, "num_gpu": 0, "gpu_milli": 10}, "gpu_milli must be 0"),
        ({"cpu_milli": 1, "num_gpu": 1, "gpu_milli": 0}, "1..1000"),
        ({"cpu_milli": 1, "num_gpu": 1, "gpu_milli": 1001}, "1..1000"),
        ({"cpu_milli": 1, "num_gpu": 2, "gpu_milli": 500}, "whole GPUs"),
        ({"cpu_milli": 1, "num_gpu": 9, "gpu_milli": 1000}, "num_gpu"),
    ],
)
def test_pod_request_rejects_invalid_shapes(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PodRequest(**kwargs)


@pytest.mark.parametrize(
    ("pod", "share", "tag", "total"),
    [
        (PodRequest(1000), False, -1, 0),
        (PodRequest(1000, num_gpu=1, gpu_milli=460), True, 0, 460),
        (PodRequest(1000, num_gpu=1, gpu_milli=1000), False, 1, 1000),
        (PodRequest(1000, num_gpu=4, gpu_milli=1000), False, 4, 4000),
    ],
)
def test_pod_request_kinds(pod: PodRequest, share: bool, tag: int, total: int) -> None:
    assert (pod.is_share, pod.tag, pod.total_gpu_milli) == (share, tag, total)


def test_cluster_spec_validates_shapes_and_ranks() -> None:
    with pytest.raises(ValueError, match="more than 8 GPUs"):
        spec([1000], [9])
    with pytest.raises(ValueError, match="entries"):
        ClusterSpec(("a", "b"), np.array([1]), np.array([1, 1]), np.array([1, 1]), np.array([0, 0]), ("G2",))
    with pytest.raises(ValueError, match="distinct"):
        spec([1000, 1000], [1, 1]).with_rank([0, 0])
    s = spec([1000, 2000], [2, 8])
    assert s.width == 8 and s.total_gpu_milli == 10_000 and list(s.rank) == [0, 1]


def test_empty_state_has_no_phantom_gpus_and_is_read_only() -> None:
    st = ClusterState.empty(spec([4000, 8000], [2, 4]))
    assert st.gpu_free.tolist() == [[1000, 1000, 0, 0], [1000, 1000, 1000, 1000]]
    assert st.allocated_gpu_milli == 0
    with pytest.raises(ValueError):
        st.gpu_free[0, 0] = 5


def test_apply_returns_a_new_state_and_leaves_the_old_one() -> None:
    st = ClusterState.empty(spec([4000, 8000], [2, 4]))
    pod = PodRequest(1500, memory_mib=100, num_gpu=1, gpu_milli=300)
    after = st.apply(pod, Placement("t", 1, (2,), 0.0, ""))
    assert after.gpu_free[1].tolist() == [1000, 1000, 700, 1000]
    assert after.cpu_free.tolist() == [4000, 6500]
    assert after.memory_free[1] == (1 << 20) - 100
    assert after.tag_count[1, 0] == 1
    assert st.gpu_free[1, 2] == 1000 and st.cpu_free[1] == 8000
    assert after.allocated_gpu_milli == 300


@pytest.mark.parametrize(
    ("pod", "placement"),
    [
        (PodRequest(5000), Placement("t", 0, (), 0, "")),  # CPU
        (PodRequest(1000, memory_mib=1 << 21), Placement("t", 0, (), 0, "")),  # memory
        (PodRequest(1000, num_gpu=1, gpu_milli=500), Placement("t", 0, (2,), 0, "")),  # GPU the node lacks
        (PodRequest(1000, num_gpu=2, gpu_milli=1000), Placement("t", 0, (0, 0), 0, "")),  # same GPU twice
        (PodRequest(1000, num_gpu=1, gpu_milli=500, gpu_models=frozenset({"T4"})), Placement("t", 0, (0,), 0, "")),
    ],
)
def test_apply_refuses_placements_that_do_not_fit(pod: PodRequest, placement: Placement) -> None:
    st = ClusterState.empty(spec([4000], [2]))
    assert not st.fits(pod, placement)
    with pytest.raises(ValueError, match="does not fit"):
        st.apply(pod, placement)


CONSTRAINT_CASES = [
    # (name, pod, expected feasible node indices); nodes: 0 = 8 cores/2 GPUs G2, 1 = 2 cores/8 GPUs G2,
    # 2 = 32 cores/1 GPU T4 (GPU 0 half used), 3 = 16 cores/4 GPUs G2 with 1 GPU fully free, low memory
    ("cpu", PodRequest(4000), [0, 2, 3]),
    ("memory", PodRequest(1000, memory_mib=2048), [0, 1, 2]),
    ("share fits a half-used GPU", PodRequest(1500, num_gpu=1, gpu_milli=500), [0, 2, 3]),
    ("share too big for the half-used GPU", PodRequest(1500, num_gpu=1, gpu_milli=600), [0, 3]),
    ("whole GPU", PodRequest(1500, num_gpu=1, gpu_milli=1000), [0, 3]),
    ("two whole GPUs", PodRequest(1500, num_gpu=2, gpu_milli=1000), [0]),
    ("model constraint", PodRequest(1500, num_gpu=1, gpu_milli=100, gpu_models=frozenset({"T4"})), [2]),
    ("model list", PodRequest(1500, num_gpu=1, gpu_milli=100, gpu_models=frozenset({"T4", "G2"})), [0, 2, 3]),
    ("model ignored for CPU-only pods", PodRequest(1500, gpu_models=frozenset({"T4"})), [0, 2, 3]),
]


@pytest.mark.parametrize(("name", "pod", "expected"), CONSTRAINT_CASES, ids=[c[0] for c in CONSTRAINT_CASES])
def test_constraints_reject_infeasible_nodes(name: str, pod: PodRequest, expected: list[int]) -> None:
    base = ClusterState.empty(
        spec([8000, 2000, 32000, 16000], [2, 8, 1, 4], ["G2", "G2", "T4", "G2"], [4096, 4096, 4096, 1024])
    )
    st = state_with(
        base,
        [
            [1000, 1000, 0, 0, 0, 0, 0, 0],
            [1000] * 8,
            [500, 0, 0, 0, 0, 0, 0, 0],
            [1000, 400, 0, 900, 0, 0, 0, 0],
        ],
        [8000, 1000, 32000, 16000],
    )
    assert np.flatnonzero(feasible_nodes(st, pod)).tolist() == expected
    assert sorted(set(candidates(st, pod).node.tolist())) == expected


def test_share_candidates_are_every_fitting_gpu_and_whole_gpus_are_the_lowest_free() -> None:
    base = ClusterState.empty(spec([8000, 8000], [4, 4]))
    st = state_with(base, [[1000, 300, 1000, 600], [0, 1000, 1000, 1000]])
    cand = candidates(st, PodRequest(100, num_gpu=1, gpu_milli=500))
    assert list(zip(cand.node.tolist(), cand.gpu.tolist(), strict=True)) == [
        (0, 0),
        (0, 2),
        (0, 3),
        (1, 1),
        (1, 2),
        (1, 3),
    ]
    whole = candidates(st, PodRequest(100, num_gpu=2, gpu_milli=1000))
    assert whole.node.tolist() == [0, 1] and whole.gpu.tolist() == [-1, -1]
    assert whole_gpus(st, 0, 2) == (0, 2)
    assert whole_gpus(st, 1, 2) == (1, 2)


def test_select_breaks_node_ties_by_rank_then_prefers_within_the_node() -> None:
    cand = Candidates(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 0, 0, 1]))
    score = np.array([5.0, 5.0, 5.0, 4.0, 9.0])
    pref = np.array([0.0, 1.0, 0.0, 0.0, 0.0])
    # node 2 has the best score, no tie
    assert select(cand, score, pref, np.array([0, 1, 2])) == (4, 1)
    score[4] = 5.0
    # nodes 0, 1, 2 tie at 5; the lowest rank wins; within node 2 only GPU 1 has the top score; within
    # node 0 both GPUs do and the higher pref (GPU 1) wins
    assert select(cand, score, pref, np.array([2, 0, 1])) == (2, 3)
    assert select(cand, score, pref, np.array([2, 1, 0])) == (4, 3)
    assert select(cand, score, pref, np.array([0, 1, 2])) == (1, 3)
