"""The fragmentation measure, on hand-computed examples, and its vectorised growth against a recount."""

from __future__ import annotations

import numpy as np
import pytest

from shadowscale.policies.placement import (
    ClusterSpec,
    ClusterState,
    FragMemo,
    Placement,
    PodRequest,
    TaskClasses,
    candidates,
    fragmentation_rate,
    make_policy,
    node_fragmentation,
    task_classes,
)
from shadowscale.policies.placement.feasible import gpus_for


def classes(rows: list[tuple[int, int, int, float, frozenset[str]]]) -> TaskClasses:
    """(cpu, num_gpu, gpu_milli, weight, models) per class."""
    return TaskClasses(
        cpu_milli=np.array([r[0] for r in rows]),
        num_gpu=np.array([r[1] for r in rows]),
        gpu_milli=np.array([r[2] for r in rows]),
        gpu_models=tuple(r[4] for r in rows),
        weight=np.array([r[3] for r in rows]),
    )


# A: 4 cores + 500 shares of one GPU (50 %); B: 2 cores + one whole GPU (25 %); C: 1 core, no GPU (25 %).
ABC = classes([(4000, 1, 500, 0.5, frozenset()), (2000, 1, 1000, 0.25, frozenset()), (1000, 0, 0, 0.25, frozenset())])


def one_node(gpu_free: list[int], cpu_free: int, model: str = "G2") -> ClusterState:
    sp = ClusterSpec.build([8000], [1 << 20], [len(gpu_free)], [model])
    base = ClusterState.empty(sp)
    return ClusterState(sp, np.array([cpu_free]), base.memory_free, np.array([gpu_free]), base.tag_count)


@pytest.mark.parametrize(
    ("gpu_free", "cpu_free", "expected"),
    [
        # A fits (GPU 0); its fragment is the 300 on GPU 1. B fits; fragment 300. C needs no GPU: 1300.
        # 0.5 * 300 + 0.25 * 300 + 0.25 * 1300 = 550
        ([1000, 300], 8000, 550.0),
        # 3 cores: A lacks CPU (all 1300 is its fragment), B still fits: 0.5*1300 + 0.25*300 + 0.25*1300 = 1050
        ([1000, 300], 3000, 1050.0),
        # no GPU with 500 free: A and B lack GPU, everything is fragment for everyone
        ([400, 300], 8000, 700.0),
        # A fits on GPU 0 (600 >= 500), B does not: 0.5 * 300 + 0.25 * 900 + 0.25 * 900 = 600
        ([600, 300], 8000, 600.0),
        # a full node has nothing to fragment
        ([0, 0], 8000, 0.0),
    ],
)
def test_node_fragmentation_by_hand(gpu_free: list[int], cpu_free: int, expected: float) -> None:
    st = one_node(gpu_free, cpu_free)
    assert node_fragmentation(st, ABC)[0] == pytest.approx(expected)


def test_a_class_restricted_to_another_model_sees_only_fragments() -> None:
    t4_only = classes([(1000, 1, 100, 1.0, frozenset({"T4"}))])
    assert node_fragmentation(one_node([1000, 300], 8000, "G2"), t4_only)[0] == pytest.approx(1300)
    assert node_fragmentation(one_node([1000, 300], 8000, "T4"), t4_only)[0] == pytest.approx(0)


def test_fragmentation_rate_is_fragment_over_free() -> None:
    sp = ClusterSpec.build([8000, 8000], [1 << 20] * 2, [2, 2], ["G2", "G2"])
    base = ClusterState.empty(sp)
    st = ClusterState(sp, np.array([8000, 8000]), base.memory_free, np.array([[1000, 300], [0, 0]]), base.tag_count)
    assert fragmentation_rate(st, ABC) == pytest.approx(550 / 1300)
    empty = ClusterState(sp, np.array([8000, 8000]), base.memory_free, np.zeros((2, 2), np.int64), base.tag_count)
    assert fragmentation_rate(empty, ABC) == 0.0


def test_memory_aware_classes_count_memory_starved_nodes_as_fragmented() -> None:
    pods = [PodRequest(1000, memory_mib=4096, num_gpu=1, gpu_milli=500, name=f"p{i}") for i in range(3)]
    with_mem = task_classes(pods, memory=True)
    assert with_mem.memory_mib.tolist() == [4096]
    sp = ClusterSpec.build([8000], [2048], [1], ["G2"])
    st = ClusterState.empty(sp)
    assert node_fragmentation(st, with_mem)[0] == pytest.approx(1000)
    assert node_fragmentation(st, task_classes(pods))[0] == pytest.approx(0)


def test_task_classes_keep_the_most_popular_until_the_threshold() -> None:
    a = PodRequest(1000, num_gpu=1, gpu_milli=500)
    b = PodRequest(2000, num_gpu=1, gpu_milli=1000)
    c = PodRequest(4000)
    d = PodRequest(500, num_gpu=1, gpu_milli=100, gpu_models=frozenset({"T4"}))
    pods = [a] * 6 + [b] * 2 + [c] * 1 + [d] * 1
    top = task_classes(pods, threshold=0.75)  # 6 + 2 covers 80 % >= 75 %
    assert top.gpu_milli.tolist() == [500, 1000]
    assert top.weight.tolist() == pytest.approx([0.75, 0.25])
    every = task_classes(pods, threshold=1.0)
    assert len(every) == 4
    # c and d tie at one pod each: the larger key (by CPU first) comes first, as the artifact's reversed sort
    assert every.cpu_milli.tolist()[2:] == [4000, 500]
    assert every.gpu_models[3] == frozenset({"T4"})
    with pytest.raises(ValueError, match="threshold"):
        task_classes(pods, threshold=0)
    with pytest.raises(ValueError, match="at least one pod"):
        task_classes([])
    with pytest.raises(ValueError, match="sum to 1"):
        classes([(1, 0, 0, 0.5, frozenset())])


def _random_state(rng: np.random.Generator, n: int) -> tuple[ClusterState, list[PodRequest]]:
    gpus = rng.choice([1, 2, 4, 8], size=n)
    models = rng.choice(["G2", "T4"], size=n).tolist()
    sp = ClusterSpec.build((gpus * 12_000).tolist(), (gpus * 60_000).tolist(), gpus.tolist(), models)
    pods = []
    for i in range(300):
        kind = rng.integers(4)
        models_req = frozenset({"T4"}) if rng.random() < 0.2 else frozenset()
        if kind == 0:
            pods.append(PodRequest(int(rng.integers(1, 16)) * 1000, 4096, name=f"c{i}"))
        elif kind == 1:
            milli = int(rng.choice([110, 230, 320, 470, 650, 810]))
            pods.append(PodRequest(4000, 4096, 1, milli, models_req, f"s{i}"))
        else:
            k = int(rng.choice([1, 1, 1, 2, 4]))
            pods.append(PodRequest(8000 * k, 8192, k, 1000, models_req, f"w{i}"))
    return ClusterState.empty(sp), pods


def test_vectorised_growth_matches_a_recount_after_applying_each_candidate() -> None:
    rng = np.random.default_rng(7)
    state, pods = _random_state(rng, 25)
    cls = task_classes(pods, threshold=0.9)
    random_fit = make_policy("Random")
    for pod in pods[:150]:  # fill the cluster part way with random placements
        p, _ = random_fit.place(state, pod, None, rng)
        if p is not None:
            state = state.apply(pod, p)
    memo = FragMemo(state, cls)
    before = node_fragmentation(state, cls)
    np.testing.assert_allclose(memo.frag, before)
    checked = 0
    for pod in pods[150:]:
        cand = candidates(state, pod)
        if not len(cand):
            continue
        growth = memo.growth(state, pod, cand)
        for i in range(len(cand)):
            n = int(cand.node[i])
            gpus = gpus_for(state, pod, n, int(cand.gpu[i]))
            after = node_fragmentation(state.apply(pod, Placement("t", n, gpus, 0.0, "")), cls)
            assert growth[i] == pytest.approx(after[n] - before[n], abs=1e-6)
            checked += 1
    assert checked > 300


def test_memo_sync_tracks_a_changing_state() -> None:
    rng = np.random.default_rng(11)
    state, pods = _random_state(rng, 30)
    cls = task_classes(pods)
    memo = FragMemo(state, cls)
    policy = make_policy("FGD")
    pmemo = policy.init(state, cls)
    for pod in pods:
        p, pmemo = policy.place(state, pod, pmemo, rng)
        if p is not None:
            state = state.apply(pod, p)
        if rng.random() < 0.3:
            np.testing.assert_allclose(memo.sync(state).frag, node_fragmentation(state, cls))
    np.testing.assert_allclose(memo.sync(state).total, state.gpu_free.sum(axis=1))
