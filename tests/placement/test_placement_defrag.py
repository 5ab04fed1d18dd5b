"""The defragmentation planner: minimal plans on hand-made clusters, budgets, and invariants on random ones
(no GPU booked twice, budgets kept, and as few moves as an exhaustive search that tries every destination)."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowscale.policies.placement import ClusterSpec, ClusterState, Placement, PodRequest, candidates
from shadowscale.policies.placement.defrag import BoundPod, BoundTable, DefragPlan, apply_plan, plan_defrag, release
from shadowscale.policies.placement.feasible import gpus_for

Bind = tuple[str, PodRequest, int, tuple[int, ...], str]


def share(milli: int, cpu: int = 1000) -> PodRequest:
    return PodRequest(cpu, num_gpu=1, gpu_milli=milli)


WHOLE = PodRequest(1000, num_gpu=1, gpu_milli=1000)


def build(cpu: list[int], gpus: list[int], binds: Sequence[Bind]) -> tuple[ClusterState, list[BoundPod]]:
    """A cluster of G2 nodes with the given CPU and GPU counts, and pods bound as ``(name, pod, node, gpus, group)``."""
    state = ClusterState.empty(ClusterSpec.build(cpu, [1 << 20] * len(cpu), gpus, ["G2"] * len(cpu)))
    bound = []
    for name, pod, node, on, group in binds:
        state = state.apply(pod, Placement("test", node, on, 0.0, ""))
        bound.append(BoundPod(name, pod, node, on, group))
    return state, bound


# (id, cpu per node, GPUs per node, bound pods, pending pod, kwargs, expected moves as (name, dst node), target)
CASES: list[tuple[str, list[int], list[int], list[Bind], PodRequest, dict[str, object], list[tuple[str, int]], int]] = [
    (
        "fewest shares moved wins among one-move plans",
        [32000, 32000],
        [2, 1],
        [("a", share(300), 0, (0,), ""), ("b", share(700), 0, (1,), ""), ("c", share(600), 1, (0,), "")],
        WHOLE,
        {},
        [("a", 1)],  # c (600) could also move, to node 0's 700-share hole; b (700) fits nowhere else
        0,
    ),
    (
        "a budget of 0 pins a pod",
        [32000, 32000],
        [2, 1],
        [("a", share(300), 0, (0,), "web"), ("b", share(700), 0, (1,), ""), ("c", share(600), 1, (0,), "")],
        WHOLE,
        {"budgets": {"web": 0}},
        [("c", 0)],
        1,
    ),
    (
        "two pods must leave one GPU",
        [32000, 32000],
        [2, 2],
        [
            ("a", share(500), 0, (0,), ""),
            ("b", share(500), 0, (0,), ""),
            ("c", share(500), 0, (1,), ""),
            ("d", share(500), 0, (1,), ""),
            ("e", share(500), 1, (0,), ""),
            ("f", share(500), 1, (1,), ""),
        ],
        WHOLE,
        {},
        [("a", 1), ("b", 1)],  # e or f alone would clear a GPU of node 1 but could go nowhere
        0,
    ),
    (
        "a group may lose only its budget",
        [32000, 32000],
        [2, 2],
        [
            ("a", share(500), 0, (0,), "web"),
            ("b", share(500), 0, (0,), "web"),
            ("c", share(500), 0, (1,), ""),
            ("d", share(500), 0, (1,), ""),
            ("e", share(500), 1, (0,), ""),
            ("f", share(500), 1, (1,), ""),
        ],
        WHOLE,
        {},
        [("c", 1), ("d", 1)],
        0,
    ),
    (
        "CPU, not GPU, is what is short",
        [8000, 32000],
        [1, 1],
        [("g", PodRequest(6000), 0, (), ""), ("h", PodRequest(4000, num_gpu=1, gpu_milli=1000), 1, (0,), "")],
        PodRequest(4000, num_gpu=1, gpu_milli=1000),
        {},
        [("g", 1)],  # h could only go to node 0's free GPU, which lacks the CPU
        0,
    ),
    (
        "two whole GPUs: the cheaper node is cleared",
        [32000, 32000],
        [2, 2],
        [
            ("p", share(500), 0, (0,), ""),
            ("q", share(500), 0, (1,), ""),
            ("r", share(300), 1, (0,), ""),
            ("s", share(300), 1, (1,), ""),
        ],
        PodRequest(1000, num_gpu=2, gpu_milli=1000),
        {},
        [("r", 0), ("s", 0)],
        1,
    ),
]


@pytest.mark.parametrize(
    ("cpu", "gpus", "binds", "pod", "kwargs", "moves", "target"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_minimal_plan(
    cpu: list[int],
    gpus: list[int],
    binds: list[Bind],
    pod: PodRequest,
    kwargs: dict[str, object],
    moves: list[tuple[str, int]],
    target: int,
) -> None:
    state, bound = build(cpu, gpus, binds)
    assert not len(candidates(state, pod))
    plan = plan_defrag(state, bound, pod, **kwargs)  # type: ignore[arg-type]
    assert plan.placement is not None, plan.reason
    assert sorted((m.name, m.dst_node) for m in plan.moves) == sorted(moves)
    assert plan.placement.node == target and plan.exhaustive
    assert f"{len(moves)} migration(s) make room on node node-{target:04d}" in plan.reason
    after = apply_plan(state, plan, pod)
    assert after.allocated_gpu_milli == state.allocated_gpu_milli + pod.total_gpu_milli


def test_too_few_moves_allowed_says_how_many_are_needed() -> None:
    _, cpu, gpus, binds, pod, _, _, _ = CASES[2]
    state, bound = build(cpu, gpus, binds)
    plan = plan_defrag(state, bound, pod, max_moves=1)
    assert plan.placement is None and plan.moves == () and plan.outcome == "no_plan"
    assert "every node needs at least 2 migrations, more than max_moves 1" in plan.reason


def test_group_budget_of_one_blocks_the_only_plan() -> None:
    _, cpu, gpus, binds, pod, _, _, _ = CASES[2]
    regrouped = [(n, p, node, on, "web" if node == 0 else "") for n, p, node, on, _ in binds]
    state, bound = build(cpu, gpus, regrouped)
    assert plan_defrag(state, bound, pod, budgets={"web": 2}).feasible
    plan = plan_defrag(state, bound, pod, budgets={"web": 1})
    assert not plan.feasible and "budgets" in plan.reason


@pytest.mark.parametrize(
    ("pod", "fragment"),
    [
        (PodRequest(1000, num_gpu=1, gpu_milli=100), "fits without migrations"),
        (PodRequest(1000, num_gpu=1, gpu_milli=1000), "not enough free in the whole cluster (GPU shares 800 < 1000)"),
        (PodRequest(1000, num_gpu=2, gpu_milli=1000), "no node could ever host it"),
        (PodRequest(1000, num_gpu=1, gpu_milli=500, gpu_models=frozenset({"T4"})), "no node could ever host it"),
        (PodRequest(64000), "no node could ever host it"),
    ],
)
def test_plans_without_moves_say_why(pod: PodRequest, fragment: str) -> None:
    state, bound = build([32000, 32000], [1, 1], [("a", share(600), 0, (0,), ""), ("b", share(600), 1, (0,), "")])
    plan = plan_defrag(state, bound, pod)
    assert plan.moves == () and fragment in plan.reason
    assert plan.feasible == (fragment == "fits without migrations")
    outcome = {"fits without": "fits", "not enough": "short", "no node could": "never"}
    assert plan.outcome == next(v for k, v in outcome.items() if fragment.startswith(k))


def test_a_table_and_a_list_give_the_same_plan() -> None:
    _, cpu, gpus, binds, pod, _, _, _ = CASES[3]
    state, bound = build(cpu, gpus, binds)
    table = BoundTable.of(bound, state.spec.width)
    assert plan_defrag(state, table, pod) == plan_defrag(state, bound, pod)
    table.unbind(0)  # a departed row is no longer a candidate (and the state must agree)
    state = release(state, bound[0].pod, bound[0].node, bound[0].gpus)
    assert plan_defrag(state, table, pod) == plan_defrag(state, bound[1:], pod)


def test_release_refuses_stale_bindings() -> None:
    state, bound = build([8000], [2], [("a", share(500), 0, (0,), "")])
    a = bound[0]
    state = release(state, a.pod, a.node, a.gpus)
    with pytest.raises(ValueError, match="stale"):
        release(state, a.pod, a.node, a.gpus)
    with pytest.raises(ValueError, match="GPU indices"):
        release(state, a.pod, 0, (5,))
    with pytest.raises(ValueError, match="no such node"):
        release(state, a.pod, 3, (0,))


# ------------------------------------------------------------------------------------- random clusters

SHAPES = [(2000, 1, 250), (2000, 1, 500), (4000, 1, 700), (4000, 1, 1000), (3000, 0, 0), (6000, 2, 1000)]


def random_case(seed: int) -> tuple[ClusterState, list[BoundPod], PodRequest, dict[str, int]]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 5))
    spec = ClusterSpec.build(
        rng.choice([8000, 16000, 32000], n), [1 << 20] * n, rng.integers(1, 5, n), ["G2"] * n
    ).with_rank(rng.permutation(n))
    state = ClusterState.empty(spec)
    bound = []
    for j in range(int(rng.integers(4, 16))):
        cpu, k, milli = SHAPES[int(rng.integers(len(SHAPES)))]
        pod = PodRequest(cpu, 0, k, milli, name=f"q{j}")
        cand = candidates(state, pod)
        if len(cand):
            i = int(rng.integers(len(cand)))
            node = int(cand.node[i])
            on = gpus_for(state, pod, node, int(cand.gpu[i]))
            state = state.apply(pod, Placement("random", node, on, 0.0, ""))
            bound.append(BoundPod(pod.name, pod, node, on, f"g{int(rng.integers(4))}"))
    budgets = {f"g{i}": int(rng.integers(0, 3)) for i in range(4)}
    pending = [PodRequest(cpu, 0, k, milli, name="pending") for cpu, k, milli in SHAPES]
    rng.shuffle(pending)
    return state, bound, next((p for p in pending if not len(candidates(state, p))), pending[0]), budgets


def fewest_moves(
    state: ClusterState, bound: list[BoundPod], pod: PodRequest, max_moves: int, budgets: dict[str, int]
) -> int | None:
    """Exhaustive reference: evict any set of pods from one node, try every destination on other nodes."""

    def lands(st: ClusterState, rest: list[BoundPod], target: int) -> bool:
        if not rest:
            return True
        b, cand, seen = rest[0], candidates(st, rest[0].pod), set()
        for i in range(len(cand)):
            node = int(cand.node[i])
            on = gpus_for(st, b.pod, node, int(cand.gpu[i]))
            if node != target and (node, on) not in seen:
                seen.add((node, on))
                if lands(st.apply(b.pod, Placement("x", node, on, 0.0, "")), rest[1:], target):
                    return True
        return False

    for size in range(1, max_moves + 1):
        for node in range(state.spec.n_nodes):
            on_node = [b for b in bound if b.node == node and budgets.get(b.budget_group, 1) >= 1]
            for evict in itertools.combinations(on_node, size):
                if any(c > budgets.get(g, 1) for g, c in Counter(b.budget_group for b in evict).items()):
                    continue
                st = state
                for b in evict:
                    st = release(st, b.pod, b.node, b.gpus)
                cand = candidates(st, pod)
                for i in np.flatnonzero(cand.node == node).tolist():
                    on = gpus_for(st, pod, node, int(cand.gpu[i]))
                    if lands(st.apply(pod, Placement("x", node, on, 0.0, "")), list(evict), node):
                        return size
    return None


def check_plan(
    state: ClusterState, bound: list[BoundPod], pod: PodRequest, plan: DefragPlan, budgets: dict[str, int]
) -> None:
    """No GPU booked twice, budgets kept, moves are real and leave the target node."""
    assert plan.placement is not None
    by_name = {b.name: b for b in bound}
    moved = [by_name[m.name] for m in plan.moves]
    assert len({b.name for b in moved}) == len(moved)
    for m, b in zip(plan.moves, moved, strict=True):
        assert (m.src_node, m.src_gpus, m.pod) == (b.node, b.gpus, b.pod)
        assert m.src_node == plan.placement.node != m.dst_node
    for group, count in Counter(b.budget_group for b in moved).items():
        assert count <= budgets.get(group, 1)
    after = apply_plan(state, plan, pod)  # ClusterState.apply refuses anything that does not fit
    spec = after.spec
    assert (after.gpu_free >= 0).all() and (after.cpu_free >= 0).all() and (after.memory_free >= 0).all()
    assert (after.gpu_free <= 1000).all() and (after.cpu_free <= spec.cpu_milli).all()
    assert after.allocated_gpu_milli == state.allocated_gpu_milli + pod.total_gpu_milli


@settings(max_examples=150, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), max_moves=st.integers(1, 3))
def test_random_plans_are_valid_and_minimal(seed: int, max_moves: int) -> None:
    state, bound, pod, budgets = random_case(seed)
    plan = plan_defrag(state, bound, pod, max_moves=max_moves, budgets=budgets)
    if not plan.moves and plan.feasible:  # it fitted already
        assert len(candidates(state, pod))
        return
    reference = fewest_moves(state, bound, pod, max_moves, budgets)
    if plan.feasible:
        check_plan(state, bound, pod, plan, budgets)
        assert len(plan.moves) <= max_moves
        if plan.exhaustive:
            assert len(plan.moves) == reference
    elif plan.exhaustive:
        assert reference is None, plan.reason
