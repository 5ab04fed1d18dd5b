"""GPU fragmentation of a node measured against a task-class distribution (FGD, Weng et al., ATC '23).

For task class ``t`` (``k_t`` GPUs of ``m_t`` shares, ``c_t`` CPU, allowed models) a node's fragment ``F_t`` is
the unallocated GPU capacity the class cannot use there:

* the class cannot run on the node at all (wrong model, too little CPU, fewer than ``k_t`` GPUs with ``m_t`` free),
  or it asks for no GPU: every free share on the node is a fragment;
* otherwise: the free shares on GPUs with less than ``m_t`` free.

A class that names a host-memory need (:func:`policies.placement.workload.task_classes` with ``memory=True``, an
extension FGD does not have) also cannot run where less memory is free.

The node's fragmentation is ``sum_t w_t F_t``. This is the artifact's ``NodeGpuShareFragAmountScore``: its
quadrant bookkeeping (Q1 lack both, Q2 lack GPU, Q4 lack CPU, XL/XR CPU-only classes, no access) all count the
whole free capacity, and Q3 (satisfied) counts only the GPUs too small for the class. The cluster's
fragmentation rate is ``sum_n frag_n / sum_n free_n``.

:class:`FragMemo` keeps the per-class counts of every node so that a scoring pass only derives the changed GPU of
each candidate instead of recounting all of them; it is a cache, synced to a :class:`ClusterState` by comparing
arrays (states are immutable, so an unchanged array is the same object).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from shadowscale.policies.placement.cluster import MILLI, BoolArray, ClusterState, FloatArray, IntArray, PodRequest
from shadowscale.policies.placement.feasible import Candidates
from shadowscale.policies.placement.workload import TaskClasses

_MAX_IDS_PER_NODE = 64


def _identity(nodes: IntArray, growth: FloatArray) -> FloatArray:
    return growth


def _counts(gpu_rows: IntArray, milli: IntArray) -> tuple[IntArray, IntArray]:
    """Per row and class: GPUs with at least ``m_t`` free, and the free shares on GPUs below ``m_t``."""
    fits = gpu_rows[:, :, None] >= milli[None, None, :]
    cnt: IntArray = fits.sum(axis=1)
    small: IntArray = np.where(fits, 0, gpu_rows[:, :, None]).sum(axis=1)
    return cnt, small


class FragMemo:
    """Per-node fragmentation statistics for one cluster and one task-class distribution (a mutable cache).

    ``frag[n]`` is node ``n``'s fragmentation and ``total[n]`` its free shares, for the state last passed to
    :meth:`sync`. The memo recomputes only the nodes whose free resources changed.
    """

    __slots__ = (
        "_cpu",
        "_gpu",
        "_ids",
        "_mem",
        "_slot",
        "acc",
        "classes",
        "cnt",
        "cpu_t",
        "frag",
        "k_t",
        "key",
        "m_t",
        "mem_t",
        "model",
        "small",
        "total",
        "w",
    )

    def __init__(self, state: ClusterState, classes: TaskClasses) -> None:
        self.classes = classes
        self.m_t: IntArray = classes.gpu_milli
        self.k_t: IntArray = classes.num_gpu
        self.cpu_t: IntArray = classes.cpu_milli
        self.mem_t: IntArray | None = classes.memory_mib if bool(classes.memory_mib.any()) else None
        self.w: FloatArray = classes.weight
        gpu_class = classes.gpu_milli > 0
        access = classes.access(state.spec) & gpu_class[:, None]
        self.acc: BoolArray = access.T[state.spec.model]  # (N, T): class may use node at all (GPU classes)
        self._gpu = state.gpu_free
        self._cpu = state.cpu_free
        self._mem = state.memory_free
        self.cnt, self.small = _counts(state.gpu_free, self.m_t)
        self.total: IntArray = state.gpu_free.sum(axis=1)
        all_nodes = np.arange(state.spec.n_nodes)
        self.frag: FloatArray = self.fragment(
            all_nodes, self.cnt, self.small, self.total, state.cpu_free, state.memory_free
        )
        self.model = state.spec.model
        self._ids: dict[tuple[int, ...], int] = {}
        self._slot: IntArray = np.empty(0, dtype=np.int64)
        self.key: IntArray = np.zeros(state.spec.n_nodes, dtype=np.int64)
        self._rekey(all_nodes, state)

    def _rekey(self, nodes: IntArray, state: ClusterState) -> None:
        """``key[n]`` names the node's (model, free CPU, [free memory,] sorted free GPU shares): equal keys,
        equal statistics. The id table is rebuilt when it outgrows the cluster, so a long-lived memo stays small."""
        if len(self._ids) > _MAX_IDS_PER_NODE * self.key.shape[0] + 10_000 and nodes.shape[0] < self.key.shape[0]:
            self._ids = {}
            nodes = np.arange(self.key.shape[0])
        rows = np.sort(state.gpu_free[nodes], axis=1).tolist()
        cpu = state.cpu_free[nodes].tolist()
        mem = state.memory_free[nodes].tolist() if self.mem_t is not None else [0] * nodes.shape[0]
        model = self.model[nodes].tolist()
        ids = self._ids
        for i, n in enumerate(nodes.tolist()):
            self.key[n] = ids.setdefault((model[i], cpu[i], mem[i], *rows[i]), len(ids))

    def fragment(
        self, nodes: IntArray, cnt: IntArray, small: IntArray, total: IntArray, cpu: IntArray, mem: IntArray
    ) -> FloatArray:
        """Fragmentation of rows ``nodes`` given their per-class counts, free shares, free CPU and memory."""
        sat = self.acc[nodes] & (cnt >= self.k_t) & (cpu[:, None] >= self.cpu_t)
        if self.mem_t is not None:
            sat &= mem[:, None] >= self.mem_t
        out: FloatArray = np.where(sat, small, total[:, None]) @ self.w
        return out

    def sync(self, state: ClusterState) -> FragMemo:
        """Bring the memo up to date with ``state`` (recomputing changed nodes only); returns ``self``."""
        same_mem = self.mem_t is None or state.memory_free is self._mem
        if state.gpu_free is self._gpu and state.cpu_free is self._cpu and same_mem:
            return self
        diff = (state.gpu_free != self._gpu).any(axis=1) | (state.cpu_free != self._cpu)
        if self.mem_t is not None:
            diff |= state.memory_free != self._mem
        changed = np.flatnonzero(diff)
        if changed.size:
            rows = state.gpu_free[changed]
            cnt, small = _counts(rows, self.m_t)
            total = rows.sum(axis=1)
            self.cnt[changed] = cnt
            self.small[changed] = small
            self.total[changed] = total
            self.frag[changed] = self.fragment(
                changed, cnt, small, total, state.cpu_free[changed], state.memory_free[changed]
            )
            self._rekey(changed, state)
        self._gpu = state.gpu_free
        self._cpu = state.cpu_free
        self._mem = state.memory_free
        return self

    def after(
        self, nodes: IntArray, f_old: IntArray, f_new: IntArray, k: int, cpu_new: IntArray, mem_new: IntArray
    ) -> FloatArray:
        """Fragmentation of each candidate row after ``k`` GPUs go from ``f_old`` to ``f_new``
        free shares and the node's free CPU and memory become ``cpu_new``, ``mem_new`` (rows of ``nodes``;
        ``k = 0`` for a CPU-only pod)."""
        m = self.m_t
        old = f_old[:, None]
        new = f_new[:, None]
        cnt = self.cnt[nodes] + k * ((new >= m).astype(np.int64) - (old >= m))
        small = self.small[nodes] + k * (np.where(new < m, new, 0) - np.where(old < m, old, 0))
        total = self.total[nodes] - k * (f_old - f_new)
        return self.fragment(nodes, cnt, small, total, cpu_new, mem_new)

    def growth(self, state: ClusterState, pod: PodRequest, cand: Candidates) -> FloatArray:
        """How much each candidate grows its node's fragmentation if the pod goes there (shares; may be < 0)."""
        return self.evaluate(state, pod, cand, _identity)[1]

    def evaluate(
        self, state: ClusterState, pod: PodRequest, cand: Candidates, fn: Callable[[IntArray, FloatArray], FloatArray]
    ) -> tuple[FloatArray, FloatArray]:
        """``fn(nodes, growth)`` and ``growth`` (see :meth:`growth`) for every candidate.

        ``fn`` must depend on a node only through what its key fixes (model, free CPU, free GPU shares): it is
        called once per distinct (node key, GPU free shares) pair and gathered back. A packed cluster has a few
        dozen distinct node states among thousands of candidates.
        """
        nodes = cand.node
        if pod.is_share:
            first = np.empty(nodes.shape[0], dtype=np.bool_)
            first[0] = True
            np.not_equal(nodes[1:], nodes[:-1], out=first[1:])
            cnodes = nodes[first]
            pos = np.cumsum(first) - 1
        else:
            cnodes = nodes
        # group candidate nodes by key without sorting: the last node seen with a key represents it
        keys = self.key[cnodes]
        if self._slot.shape[0] < len(self._ids):
            self._slot = np.empty(2 * len(self._ids) + 16, dtype=np.int64)
        self._slot[keys] = np.arange(keys.shape[0])
        rep_of = self._slot[keys]
        mark = np.zeros(keys.shape[0], dtype=np.bool_)
        mark[rep_of] = True
        inv = (np.cumsum(mark) - 1)[rep_of]
        reps = cnodes[mark]
        if pod.is_share:
            rows = state.gpu_free[reps]
            ri, gi = np.nonzero(rows >= pod.gpu_milli)
            f = rows[ri, gi]
            rn = reps[ri]
            after = self.after(
                rn, f, f - pod.gpu_milli, 1, state.cpu_free[rn] - pod.cpu_milli, state.memory_free[rn] - pod.memory_mib
            )
            growth = after - self.frag[rn]
            table = np.empty((2, reps.shape[0], MILLI + 1))
            table[0, ri, f] = fn(rn, growth)
            table[1, ri, f] = growth
            picked = table[:, inv[pos], state.gpu_free[nodes, cand.gpu]]
            return picked[0], picked[1]
        full = np.full(reps.shape[0], MILLI if pod.num_gpu else 0, dtype=np.int64)
        after = self.after(
            reps,
            full,
            full * 0,
            pod.num_gpu,
            state.cpu_free[reps] - pod.cpu_milli,
            state.memory_free[reps] - pod.memory_mib,
        )
        growth = after - self.frag[reps]
        return fn(reps, growth)[inv], growth[inv]

    @property
    def rate(self) -> float:
        """Cluster fragmentation rate: fragmented / unallocated GPU shares (0 when nothing is free)."""
        free = int(self.total.sum())
        return float(self.frag.sum()) / free if free else 0.0


def node_fragmentation(state: ClusterState, classes: TaskClasses) -> FloatArray:
    """Each node's fragmentation (GPU shares) for ``classes``."""
    return FragMemo(state, classes).frag.copy()


def fragmentation_rate(state: ClusterState, classes: TaskClasses) -> float:
    """Fragmented / unallocated GPU shares over the whole cluster."""
    return FragMemo(state, classes).rate
