"""Defragmentation: the fewest pod migrations that make room for a pod that fits nowhere.

When a pod cannot be placed although the cluster has enough free GPU in total, its free capacity is split into
pieces no node can combine. :func:`plan_defrag` proposes moving a few bound pods off one *target* node so the
pod fits there, each moved pod landing on another node. The plan is a value (:class:`DefragPlan`): the moves in
the order they must run, the placement that becomes feasible, and a ``reason`` for the audit log. Nothing is
executed here; :func:`apply_plan` replays a plan on a :class:`ClusterState` (the benchmark and tests use it).

Search, smallest first. For ``s = 1 .. max_moves`` every set of ``s`` *useful* movable pods on one node is
checked at once with numpy: does the pending pod fit there once they are gone (CPU, memory, ``k`` GPUs with
``m`` shares free)? A pod is useful on its node when it frees something the pending pod lacks there (CPU when
CPU is short, memory when memory is short, GPU shares when too few GPUs fit). Nodes whose lower bound on
evictions (greedy, largest first, per resource; the ``k``-th cheapest GPU to clear) exceeds ``s`` are skipped.
The sets that make room are tried in order of fewest GPU shares moved, then least CPU moved, then node rank:
each moved pod is re-placed on another node by best fit (BestFit's node score, tightest GPU; ties to the lowest
rank), one after the other, so each destination is free when its move runs and no GPU is booked twice. The
first set whose pods all land is the plan; as every smaller set was checked first, it has the fewest moves
among plans of this shape (``exhaustive``), unless a search cap cut the enumeration short (then the reason says
so and ``exhaustive`` is False).

Not searched: chains (moving a pod to make room for a moved pod), moves within the target node, and moving
pods that free nothing the pending pod needs. A chain can occasionally make room with fewer moves; "fewest" is
among plans without them (the randomised test checks it against an exhaustive search of such plans that tries
every destination, not just best fit).

Disruption budgets: each bound pod belongs to a ``group`` (its own name when none is given); ``budgets[group]``
is how many of that group's pods one plan may move (Kubernetes' PodDisruptionBudget ``disruptionsAllowed``),
``default_budget`` for groups not listed. A budget of 0 pins the group's pods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from typing import Literal

import numpy as np

from shadowscale.policies.placement.base import choose, tightest_pref
from shadowscale.policies.placement.bestfit import bestfit_score
from shadowscale.policies.placement.cluster import MILLI, BoolArray, ClusterState, IntArray, Placement, PodRequest
from shadowscale.policies.placement.feasible import Candidates, candidates, whole_gpus

POLICY = "defrag"
DEFAULT_MAX_MOVES = 3
DEFAULT_MAX_ATTEMPTS = 256
"""Eviction sets tried for re-placement per plan size before the search gives up on proving minimality."""
DEFAULT_MAX_SETS = 200_000
"""Eviction sets enumerated per plan size before the search is cut short."""
_INF = np.iinfo(np.int64).max // 4
Outcome = Literal["fits", "planned", "no_plan", "short", "never"]


@dataclass(frozen=True, slots=True)
class BoundPod:
    """A pod running on ``node`` with ``gpus`` (indices on the node; empty for a CPU-only pod)."""

    name: str
    pod: PodRequest
    node: int
    gpus: tuple[int, ...] = ()
    group: str = ""
    """Disruption-budget group (e.g. the owning Deployment); empty = the pod alone."""

    @property
    def budget_group(self) -> str:
        return self.group or self.name


@dataclass(frozen=True, slots=True)
class Move:
    """Migrate pod ``name`` from ``src_node``/``src_gpus`` to ``dst_node``/``dst_gpus`` (evict, then rebind)."""

    name: str
    pod: PodRequest
    src_node: int
    src_gpus: tuple[int, ...]
    dst_node: int
    dst_gpus: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class DefragPlan:
    """Moves to run in order, then where the pending pod goes (``placement``; ``None``: no plan, see ``reason``).

    ``exhaustive`` is True when every smaller plan was ruled out (the plan has the fewest moves of its kind, or,
    without a plan, none exists within ``max_moves``); ``searched`` counts the eviction sets examined.
    """

    moves: tuple[Move, ...]
    placement: Placement | None
    reason: str
    exhaustive: bool = True
    searched: int = 0
    outcome: Outcome = "planned"
    """``fits`` (no move needed), ``planned``, ``no_plan`` (none within the limits), ``short`` (the cluster lacks
    the free resources in total: no migration can help) or ``never`` (no node could ever host the pod)."""

    @property
    def feasible(self) -> bool:
        return self.placement is not None


def _frozen(a: IntArray) -> IntArray:
    a.flags.writeable = False
    return a


def release(state: ClusterState, pod: PodRequest, node: int, gpus: Sequence[int]) -> ClusterState:
    """The state after ``pod`` leaves ``node``/``gpus``; raises ``ValueError`` when that frees more than the node
    has (a binding the state never held: stale or double-counted)."""
    spec = state.spec
    what = f"release of pod {pod.name!r} from node {node} {tuple(gpus)}"
    if not 0 <= node < spec.n_nodes:
        raise ValueError(f"{what}: no such node")
    count = int(spec.gpu_count[node])
    if len(gpus) != pod.num_gpu or len(set(gpus)) != len(gpus) or any(not 0 <= g < count for g in gpus):
        raise ValueError(f"{what}: GPU indices do not match the pod's {pod.num_gpu} GPU(s) on a {count}-GPU node")
    cpu = state.cpu_free.copy()
    cpu[node] += pod.cpu_milli
    mem = state.memory_free.copy()
    mem[node] += pod.memory_mib
    if cpu[node] > spec.cpu_milli[node] or mem[node] > spec.memory_mib[node]:
        raise ValueError(f"{what}: frees more CPU or memory than the node has (stale binding?)")
    gpu = state.gpu_free
    tags = state.tag_count
    if pod.num_gpu:
        gpu = gpu.copy()
        gpu[node, list(gpus)] += pod.gpu_milli
        if (gpu[node] > MILLI).any():
            raise ValueError(f"{what}: frees more GPU shares than a GPU has (stale binding?)")
        tags = tags.copy()
        if tags[node, pod.tag] < 1:
            raise ValueError(f"{what}: no such pod is counted on the node (stale binding?)")
        tags[node, pod.tag] -= 1
        _frozen(gpu)
        _frozen(tags)
    return ClusterState(spec, _frozen(cpu), _frozen(mem), gpu, tags)


def apply_plan(state: ClusterState, plan: DefragPlan, pod: PodRequest) -> ClusterState:
    """Run ``plan``'s moves in order, then bind ``pod``; raises ``ValueError`` if any step does not fit."""
    if plan.placement is None:
        raise ValueError(f"plan for pod {pod.name!r} has no placement: {plan.reason}")
    for m in plan.moves:
        state = release(state, m.pod, m.src_node, m.src_gpus)
        state = state.apply(m.pod, Placement(POLICY, m.dst_node, m.dst_gpus, 0.0, f"move {m.name}"))
    return state.apply(pod, plan.placement)


@lru_cache(maxsize=512)
def _combos(n: int, s: int) -> IntArray:
    """All ``s``-subsets of ``range(n)`` as rows (lexicographic)."""
    out = np.array(list(combinations(range(n), s)), dtype=np.int64).reshape(-1, s)
    return _frozen(out)


def _best_fit(state: ClusterState, pod: PodRequest, exclude_node: int) -> Placement | None:
    """Best-fit destination for a moved pod on any node but ``exclude_node`` (``None``: nowhere)."""
    cand = candidates(state, pod)
    keep = cand.node != exclude_node
    if not keep.any():
        return None
    cand = Candidates(cand.node[keep], cand.gpu[keep])
    return choose(POLICY, state, pod, cand, bestfit_score(state, pod, cand), tightest_pref(state, pod, cand))


def _target_gpus(state: ClusterState, pod: PodRequest, node: int) -> tuple[int, ...] | None:
    """The GPUs ``pod`` takes on ``node`` in ``state`` (tightest fitting GPU for a share); ``None``: no fit."""
    if pod.num_gpu == 0:
        gpus: tuple[int, ...] = ()
    elif pod.is_share:
        row = state.gpu_free[node]
        fit = np.flatnonzero(row >= pod.gpu_milli)
        if not fit.size:
            return None
        gpus = (int(fit[int(np.argmin(row[fit]))]),)
    else:
        gpus = whole_gpus(state, node, pod.num_gpu)
    ok = state.fits(pod, Placement(POLICY, node, gpus, 0.0, ""))
    return gpus if ok else None


def _group_cover(key: IntArray, value: IntArray, need: IntArray) -> IntArray:
    """For rows grouped by ``key`` (``need`` indexed by key): the fewest rows whose ``value`` sum reaches
    ``need[key]`` taking the largest first (exact for a single sum); ``_INF`` when all of them fall short, 0 when
    nothing is needed. Returns one entry per key value ``0 .. len(need) - 1``."""
    out = np.where(need > 0, _INF, 0).astype(np.int64)
    if not key.size:
        return out
    order = np.lexsort((-value, key))
    k, v = key[order], value[order]
    cs = np.cumsum(v)
    start = np.ones(k.shape[0], dtype=np.bool_)
    start[1:] = k[1:] != k[:-1]
    base = np.repeat(cs[start] - v[start], np.diff(np.append(np.flatnonzero(start), k.shape[0])))
    incl = cs - base
    excl = incl - v
    short = excl < need[k]
    count = np.bincount(k, weights=short, minlength=need.shape[0]).astype(np.int64)
    total = np.zeros(need.shape[0], dtype=np.int64)
    np.maximum.at(total, k, incl)
    reach = (need <= 0) | (total >= need)
    return np.where(need > 0, np.where(reach, count, _INF), 0)


class BoundTable:
    """Bound pods as arrays (index = row), for a caller that keeps them up to date between plans.

    ``node[r]`` is row ``r``'s node (-1: not bound now, e.g. departed); ``held[r, g]`` the GPU shares it holds
    on GPU ``g`` of that node; ``group[r]`` indexes ``group_names`` (its disruption-budget group); ``shape[r]``
    is equal for rows with equal requests. :meth:`bind` and :meth:`unbind` update a row in place; the planner
    only reads the table, so it must not change during a call. :meth:`of` builds one from :class:`BoundPod`
    values.
    """

    __slots__ = ("cpu", "group", "group_index", "group_names", "held", "mem", "names", "node", "pods", "shape")

    def __init__(self, pods: Sequence[PodRequest], names: Sequence[str], groups: Sequence[str], width: int) -> None:
        if not len(pods) == len(names) == len(groups):
            raise ValueError("bound table: pods, names and groups differ in length")
        self.pods = pods
        self.names = names
        self.group_index: dict[str, int] = {}
        self.group = np.fromiter(
            (self.group_index.setdefault(g, len(self.group_index)) for g in groups), dtype=np.int64, count=len(groups)
        )
        self.group_names = tuple(self.group_index)
        shapes: dict[tuple[int, int, int, int, frozenset[str]], int] = {}
        self.shape = np.fromiter(
            (
                shapes.setdefault((p.cpu_milli, p.memory_mib, p.num_gpu, p.gpu_milli, p.gpu_models), len(shapes))
                for p in pods
            ),
            dtype=np.int64,
            count=len(pods),
        )
        self.cpu = np.fromiter((p.cpu_milli for p in pods), dtype=np.int64, count=len(pods))
        self.mem = np.fromiter((p.memory_mib for p in pods), dtype=np.int64, count=len(pods))
        self.node = np.full(len(pods), -1, dtype=np.int64)
        self.held = np.zeros((len(pods), width), dtype=np.int64)

    @classmethod
    def of(cls, bound: Sequence[BoundPod], width: int) -> BoundTable:
        """A table of ``bound``, every row bound (``width``: the cluster's :attr:`ClusterSpec.width`)."""
        table = cls([b.pod for b in bound], [b.name for b in bound], [b.budget_group for b in bound], width)
        for r, b in enumerate(bound):
            table.bind(r, b.node, b.gpus)
        return table

    def bind(self, row: int, node: int, gpus: Sequence[int]) -> None:
        """Row ``row`` now runs on ``node`` with ``gpus``."""
        self.node[row] = node
        self.held[row] = 0
        if gpus:
            self.held[row, list(gpus)] = self.pods[row].gpu_milli

    def unbind(self, row: int) -> None:
        """Row ``row`` no longer runs anywhere."""
        self.node[row] = -1
        self.held[row] = 0

    def gpus(self, row: int) -> tuple[int, ...]:
        return tuple(int(g) for g in np.flatnonzero(self.held[row] > 0))


def _has_elsewhere(state: ClusterState, table: BoundTable, rows: IntArray) -> BoolArray:
    """For bound ``rows``: does a node other than the row's own have room for it now? Evictions only free room
    on the target node, which moved pods may not use, so a pod without such a node can never be moved.
    (:func:`policies.placement.feasible.feasible_nodes` for every distinct request shape at once.)"""
    _, first, inverse = np.unique(table.shape[rows], return_index=True, return_inverse=True)
    reps = rows[first]
    k = np.array([table.pods[int(r)].num_gpu for r in reps], dtype=np.int64)
    m = np.array([table.pods[int(r)].gpu_milli for r in reps], dtype=np.int64)
    fit = (state.cpu_free[None, :] >= table.cpu[reps][:, None]) & (
        state.memory_free[None, :] >= table.mem[reps][:, None]
    )
    gpus_fit = (state.gpu_free[None, :, :] >= m[:, None, None]).sum(axis=2) >= k[:, None]
    fit &= gpus_fit
    for j, r in enumerate(reps.tolist()):
        p = table.pods[r]
        if p.num_gpu and p.gpu_models:
            fit[j] &= state.spec.model_mask(p.gpu_models)
    count = fit.sum(axis=1)
    own = fit[inverse, table.node[rows]]
    out: BoolArray = count[inverse] - own > 0
    return out


def _lower_bound(
    state: ClusterState, pod: PodRequest, table: BoundTable, rows: IntArray, dc: IntArray, dm: IntArray
) -> IntArray:
    """Per node, a lower bound on how many of ``rows`` must leave it before ``pod`` fits (``_INF``: never)."""
    spec = state.spec
    n_nodes, width = spec.n_nodes, spec.width
    node = table.node[rows]
    lb = np.maximum(_group_cover(node, table.cpu[rows], dc), _group_cover(node, table.mem[rows], dm))
    k = pod.num_gpu
    if k:
        m = pod.gpu_milli
        real = np.arange(width)[None, :] < spec.gpu_count[:, None]
        held = table.held[rows]
        pi, gi = np.nonzero(held > 0)
        cell = node[pi] * width + gi
        need = np.where(real & (state.gpu_free < m), m - state.gpu_free, 0).ravel()
        cost = _group_cover(cell, held[pi, gi], need).reshape(n_nodes, width)
        cost = np.where(real, cost, _INF)
        lb = np.maximum(lb, np.sort(cost, axis=1)[:, k - 1])
    return lb


def plan_defrag(
    state: ClusterState,
    bound: Sequence[BoundPod] | BoundTable,
    pod: PodRequest,
    *,
    max_moves: int = DEFAULT_MAX_MOVES,
    budgets: Mapping[str, int] | None = None,
    default_budget: int = 1,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    max_sets: int = DEFAULT_MAX_SETS,
) -> DefragPlan:
    """The fewest migrations (at most ``max_moves``) after which ``pod`` fits; see the module docstring.

    ``bound`` must be the pods ``state`` accounts for. A pod that already fits gets a plan without moves.
    """
    if max_moves < 0 or default_budget < 0 or max_attempts < 1 or max_sets < 1:
        raise ValueError("max_moves and default_budget must be >= 0, max_attempts and max_sets >= 1")
    spec = state.spec
    cand = candidates(state, pod)
    if len(cand):
        p = choose(POLICY, state, pod, cand, bestfit_score(state, pod, cand), tightest_pref(state, pod, cand))
        return DefragPlan((), p, f"fits without migrations: {p.reason}", outcome="fits")
    k = pod.num_gpu
    m = pod.gpu_milli if k else 0
    eligible: BoolArray = (
        (spec.cpu_milli >= pod.cpu_milli) & (spec.memory_mib >= pod.memory_mib) & (spec.gpu_count >= k)
    )
    if k:
        eligible &= spec.model_mask(pod.gpu_models)
    if not eligible.any():
        return DefragPlan(
            (), None, f"pod {pod.name!r}: no node could ever host it (capacity or GPU model)", outcome="never"
        )
    short = [
        f"{what} {have} < {need}"
        for what, have, need in (
            ("GPU shares", int(state.gpu_free.sum()), pod.total_gpu_milli),
            ("CPU milli", int(state.cpu_free.sum()), pod.cpu_milli),
            ("memory MiB", int(state.memory_free.sum()), pod.memory_mib),
        )
        if have < need
    ]
    if short:
        return DefragPlan(
            (),
            None,
            f"pod {pod.name!r}: not enough free in the whole cluster ({', '.join(short)}): migrations cannot help",
            outcome="short",
        )
    table = bound if isinstance(bound, BoundTable) else BoundTable.of(bound, spec.width)
    group_budget = np.full(max(len(table.group_names), 1), default_budget, dtype=np.int64)
    for name, value in (budgets or {}).items():
        if value < 0:
            raise ValueError(f"budget of group {name!r} must be >= 0, got {value}")
        if name in table.group_index:
            group_budget[table.group_index[name]] = value

    # rows a plan may move: bound on an eligible node, within budget, freeing something the pod lacks there
    dc = np.maximum(0, pod.cpu_milli - state.cpu_free)
    dm = np.maximum(0, pod.memory_mib - state.memory_free)
    rows = np.flatnonzero(table.node >= 0)
    node = table.node[rows]
    rows = rows[eligible[node] & (group_budget[table.group[rows]] >= 1)]
    node = table.node[rows]
    useful = ((dc[node] > 0) & (table.cpu[rows] > 0)) | ((dm[node] > 0) & (table.mem[rows] > 0))
    if k:
        gpu_short = (state.gpu_free >= m).sum(axis=1) < k
        below = state.gpu_free < m
        useful |= gpu_short[node] & ((table.held[rows] > 0) & below[node]).any(axis=1)
    rows = rows[useful]
    # two passes: a cheap bound over every useful row picks the nodes worth a closer look; there, rows that
    # could land nowhere else are dropped and the bound recomputed
    first = np.where(eligible, _lower_bound(state, pod, table, rows, dc, dm), _INF)
    rows = rows[first[table.node[rows]] <= max_moves]
    rows = rows[_has_elsewhere(state, table, rows)]
    lower = np.where(first > max_moves, first, np.where(eligible, _lower_bound(state, pod, table, rows, dc, dm), _INF))

    order = rows[np.lexsort((rows, spec.rank[table.node[rows]], table.node[rows]))]  # grouped by node
    searched = 0
    missed = False  # a cap cut the search at a smaller size: a smaller plan may exist
    why_fail = ""
    for s in range(1, max_moves + 1):
        cut = False
        sel = order[lower[table.node[order]] <= s]
        if sel.size < s:
            continue
        sel_node = table.node[sel]
        starts = np.flatnonzero(np.r_[True, sel_node[1:] != sel_node[:-1]])
        sizes = np.diff(np.append(starts, sel.size))
        # nodes by lower bound, then rank, so that a cut keeps the most promising
        heads = sel_node[starts]
        gorder = np.lexsort((spec.rank[heads], lower[heads]))
        sets: list[IntArray] = []
        total = 0
        for gsize in np.unique(sizes[sizes >= s]).tolist():
            combos = _combos(int(gsize), s)
            gs = gorder[sizes[gorder] == gsize]
            room = max_sets - total
            if gs.size * combos.shape[0] > room:
                cut = True
                gs = gs[: room // combos.shape[0]]
            if gs.size:
                sets.append((starts[gs][:, None, None] + combos[None, :, :]).reshape(-1, s))
                total += gs.size * combos.shape[0]
        if not sets:
            missed |= cut
            continue
        combo = sel[np.concatenate(sets)]  # (C, s) rows, one node per set
        searched += combo.shape[0]
        node = table.node[combo[:, 0]]
        fits = (state.cpu_free[node] + table.cpu[combo].sum(axis=1) >= pod.cpu_milli) & (
            state.memory_free[node] + table.mem[combo].sum(axis=1) >= pod.memory_mib
        )
        if k:
            fits &= ((state.gpu_free[node] + table.held[combo].sum(axis=1)) >= m).sum(axis=1) >= k
        g = table.group[combo]
        fits &= ((g[:, :, None] == g[:, None, :]).sum(axis=2) <= group_budget[g]).all(axis=1)
        ok = np.flatnonzero(fits)
        if not ok.size:
            missed |= cut
            continue
        moved_gpu = table.held[combo[ok]].sum(axis=(1, 2))
        moved_cpu = table.cpu[combo[ok]].sum(axis=1)
        ranked = ok[np.lexsort((spec.rank[node[ok]], moved_cpu, moved_gpu))]
        for c in ranked[:max_attempts].tolist():
            tried = _try(state, table, pod, int(node[c]), combo[c].tolist())
            if isinstance(tried, str):
                why_fail = tried
                continue
            moves, placement = tried
            note = "; the search was cut short, a smaller plan may exist" if missed else ""
            names = spec.names
            steps = ", ".join(
                f"{mv.name} {names[mv.src_node]}{list(mv.src_gpus)} -> {names[mv.dst_node]}{list(mv.dst_gpus)}"
                for mv in moves
            )
            reason = (
                f"{len(moves)} migration(s) make room on node {spec.names[placement.node]} gpus "
                f"{list(placement.gpus)}: {steps}; fewest of {searched} eviction set(s) searched{note}"
            )
            return DefragPlan(moves, placement, reason, not missed, searched)
        missed |= cut or ranked.size > max_attempts
    best = int(lower.min())
    if best >= _INF:
        reason = "no node can make room by moving pods that have somewhere else to go within the disruption budgets"
    elif best > max_moves:
        reason = f"every node needs at least {best} migrations, more than max_moves {max_moves}"
    elif why_fail:
        reason = f"no plan with at most {max_moves} migrations: {why_fail}"
    else:
        reason = f"no set of at most {max_moves} movable pods on one node makes room (budgets or resources)"
    if missed:
        reason += "; the search was cut short"
    return DefragPlan((), None, f"pod {pod.name!r}: {reason}", not missed, searched, "no_plan")


def _try(
    state: ClusterState, table: BoundTable, pod: PodRequest, node: int, members: list[int]
) -> tuple[tuple[Move, ...], Placement] | str:
    """Evict rows ``members`` from ``node``, place ``pod`` there, then re-place each evicted pod on another node
    by best fit, largest first."""
    evicted = sorted(members, key=lambda r: (-table.pods[r].total_gpu_milli, -table.pods[r].cpu_milli, r))
    src = {r: table.gpus(r) for r in evicted}
    st = state
    for r in evicted:
        st = release(st, table.pods[r], node, src[r])
    target = _target_gpus(st, pod, node)
    if target is None:  # the vectorised check said it fits; stay honest if they ever disagree
        return f"pod does not fit node {state.spec.names[node]} after the evictions"
    st = st.apply(pod, Placement(POLICY, node, target, 0.0, ""))
    moves = []
    for r in evicted:
        p = table.pods[r]
        dst = _best_fit(st, p, node)
        if dst is None:
            return f"moved pod {table.names[r]!r} fits on no other node"
        st = st.apply(p, dst)
        moves.append(Move(table.names[r], p, node, src[r], dst.node, dst.gpus))
    reason = f"{POLICY}: node {state.spec.names[node]} gpus {list(target)} after {len(moves)} migration(s)"
    return tuple(moves), Placement(POLICY, node, target, 0.0, reason)
