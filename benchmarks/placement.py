"""``shadowscale bench placement``: the FGD paper's GPU-sharing placement benchmark on Alibaba's openb trace.

The procedure is the artifact's (``scripts/generate_config_and_run.py -tune 1.3 -tuneseed S --shuffle-pod``),
see ``data/traces/alibaba-gpu-v2023/README.md``:

1. the cluster is the 1,213 GPU nodes of ``openb_node_list_gpu_node.csv`` (6,212 GPUs);
2. the pods are every row of the pod list, sorted by name, then shuffled with the seed;
3. while the total GPU request stays within 130 % of the cluster's GPUs, copies of pods drawn uniformly (with
   replacement) from the name-sorted list are appended; the first draw that would overshoot ends it (like the
   artifact, the check adds the drawn pod's per-GPU share, not its total);
4. the pods are placed one by one, with no departures; a pod that fits nowhere is skipped;
5. after each pod the allocation ratio (allocated / total GPU shares) and the fragmentation rate are recorded
   against the arrived load (cumulative GPU request / capacity, failed pods included); the value at ``x`` % is
   the mean over the pods whose arrived load rounds to ``x`` (the artifact's ``merge_alloc_discrete``).

Nodes with equal scores are ranked by a seeded random permutation (:attr:`ClusterSpec.rank`): the artifact's
kube-scheduler fork picks the smallest node name and prefixes names with ``rand.Perm``. Go's ``rand.Seed(S)``
stream cannot be reproduced in Python: one ``numpy.random.default_rng(S)`` drives, in order, the shuffle, the
inflation, the node ranks and then the policy's own draws, so every policy sees the same pods and ranks for a
seed, but not the artifact's. Compare means over seeds, not single runs. See ``docs/placement.md``.

``--mode churn`` replays the pods' creation and deletion times instead (lifetimes stretched until the requested
load peaks at ``--peak-load`` x capacity) and reports allocation and failures at the peak; ``--defrag`` also runs
each policy with the defragmentation planner (see the churn section below).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from shadowscale.errors import MissingExtra, UsageError
from shadowscale.policies.placement import (
    POLICY_NAMES,
    ClusterSpec,
    ClusterState,
    FragMemo,
    PodRequest,
    TaskClasses,
    canonical_name,
    make_policy,
    task_classes,
)
from shadowscale.policies.placement.cluster import FloatArray, IntArray
from shadowscale.policies.placement.defrag import DEFAULT_MAX_MOVES, BoundTable, apply_plan, plan_defrag, release
from shadowscale.policies.placement.scheduler import Binding, LiveCluster, Node, PendingPod, running_pod
from shadowscale.simulators.datasets import REMOTE, default_root, env_data_dir, locate
from shadowscale.simulators.executor import LocalExecutor, make_executor
from shadowscale.simulators.executor import add_arguments as add_executor_arguments

TRACE = "alibaba-gpu-v2023"
NODE_FILE = "openb_node_list_gpu_node.csv"
POD_PREFIX = "openb_pod_list_"
SUMMARY_FILE = "fgd_expected_alloc_summary.csv"
LOAD_RATIO = 1.3
MAX_PCT = 130
FRAG_WINDOW_PCT = (80, 100)
"""Arrived-load window (%) in which the fragmentation rate is recorded (it costs a pass per pod)."""
PAPER_POLICY = {
    "01-Random": "Random",
    "02-DotProd": "DotProd",
    "03-GpuClustering": "GpuClustering",
    "04-GpuPacking": "GpuPacking",
    "05-BestFit": "BestFit",
    "06-FGD": "FGD",
}
# Fragmentation rate at 90 % arrived, default trace, from the trace README (the authors' cached results).
PAPER_FRAG_RATE_AT_90 = {
    "default": {
        "Random": 96.6,
        "DotProd": 94.2,
        "GpuClustering": 84.3,
        "GpuPacking": 83.6,
        "BestFit": 74.1,
        "FGD": 50.0,
    }
}


def trace_dir() -> Path:
    """The trace's folder under ``$SHADOWSCALE_DATA`` or the package's data (where it may be absent: the files
    are then downloaded on first use, see :mod:`simulators.datasets`)."""
    return default_root() / "traces" / TRACE


def trace_file(name: str) -> Path:
    """A file of the trace, downloaded into the cache on first use when it is not at hand."""
    return locate(f"traces/{TRACE}/{name}")


def pod_list_names(directory: Path | None = None) -> list[str]:
    """The pod-list suffixes available (``default``, ``cpu050``, …): on disk, or downloadable."""
    d = directory or trace_dir()
    names = {p.stem[len(POD_PREFIX) :] for p in d.glob(f"{POD_PREFIX}*.csv")}
    if directory is None and env_data_dir() is None:
        prefix = f"traces/{TRACE}/{POD_PREFIX}"
        names |= {k[len(prefix) : -len(".csv")] for k in REMOTE if k.startswith(prefix)}
    return sorted(names)


# ----------------------------------------------------------------------------------------------- input


def _field_int(path: Path, line: int, row: dict[str, str], name: str) -> int:
    raw = row.get(name)
    if raw is None or raw.strip() == "":
        raise UsageError(f"{path}:{line}:{name}: missing value")
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"{path}:{line}:{name}: not an integer: {raw!r}") from None
    if value < 0:
        raise UsageError(f"{path}:{line}:{name}: negative value {value}")
    return value


def _rows(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (set SHADOWSCALE_DATA to the directory holding traces/)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise UsageError(f"{path}:1:{missing[0]}: missing column (header: {','.join(header)})")
        out = []
        for row in reader:
            if None in row:
                raise UsageError(f"{path}:{reader.line_num}:{header[-1]}: more fields than the header")
            out.append((reader.line_num, row))
    return out


def load_nodes(path: Path) -> ClusterSpec:
    """The cluster of a node list (``sn,cpu_milli,memory_mib,gpu,model``), in file order."""
    names, cpu, mem, gpus, models = [], [], [], [], []
    for line, row in _rows(path, ("sn", "cpu_milli", "memory_mib", "gpu", "model")):
        names.append(row["sn"])
        cpu.append(_field_int(path, line, row, "cpu_milli"))
        mem.append(_field_int(path, line, row, "memory_mib"))
        g = _field_int(path, line, row, "gpu")
        if g > 8:
            raise UsageError(f"{path}:{line}:gpu: at most 8 GPUs per node, got {g}")
        gpus.append(g)
        models.append(row["model"] or "")
    if not names:
        raise UsageError(f"{path}: no nodes")
    return ClusterSpec.build(cpu, mem, gpus, models, names)


def load_pods(path: Path) -> list[PodRequest]:
    """The pods of a pod list (``name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,…]``), in file order."""
    pods = []
    for line, row in _rows(path, ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")):
        values = {k: _field_int(path, line, row, k) for k in ("cpu_milli", "memory_mib", "num_gpu", "gpu_milli")}
        spec = row.get("gpu_spec") or ""
        try:
            pods.append(
                PodRequest(
                    cpu_milli=values["cpu_milli"],
                    memory_mib=values["memory_mib"],
                    num_gpu=values["num_gpu"],
                    gpu_milli=values["gpu_milli"],
                    gpu_models=frozenset(m for m in spec.split("|") if m),
                    name=row["name"],
                )
            )
        except ValueError as exc:
            field = "gpu_milli" if "gpu_milli" in str(exc) else "num_gpu"
            raise UsageError(f"{path}:{line}:{field}: {exc}") from None
    if not pods:
        raise UsageError(f"{path}: no pods")
    return pods


def parse_seeds(text: str) -> list[int]:
    """``"42-51"``, ``"42,45"`` or a mix (``"1,5-7"``) -> sorted distinct seeds."""
    seeds: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise UsageError(f"bad seed list {text!r}: empty item")
        lo_s, dash, hi_s = part.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if dash else lo
        except ValueError:
            raise UsageError(f"bad seed list {text!r}: {part!r} is not N or N-M with integers N, M") from None
        if lo < 0 or hi < lo:
            raise UsageError(f"bad seed range {part!r}: need 0 <= N <= M")
        if hi - lo >= 10_000:
            raise UsageError(f"bad seed range {part!r}: more than 10000 seeds")
        seeds.update(range(lo, hi + 1))
    return sorted(seeds)


def parse_policy_list(text: str | None) -> list[str]:
    """Comma-separated policy names (case-insensitive) -> registered names; ``None`` or ``all`` -> every one."""
    if text is None or text.strip().lower() == "all":
        return list(POLICY_NAMES)
    names = [canonical_name(p) for p in text.split(",") if p.strip()]
    if not names:
        raise UsageError(f"no policy given; valid policies: {', '.join(POLICY_NAMES)}")
    return list(dict.fromkeys(names))


def resolve_pod_list(name: str) -> Path:
    names = pod_list_names()
    if name not in names:
        valid = ", ".join(names) if names else f"none found under {trace_dir()}"
        raise UsageError(f"unknown pod list {name!r}; valid pod lists: {valid}")
    return trace_file(f"{POD_PREFIX}{name}.csv")


# ------------------------------------------------------------------------------------------- procedure


def arrivals(pods: Sequence[PodRequest], capacity_milli: int, rng: np.random.Generator) -> list[PodRequest]:
    """Steps 2-3: sorted by name, shuffled, then inflated (or trimmed) to 130 % of the GPU capacity."""
    by_name = sorted(pods, key=lambda p: p.name)
    order = [by_name[i] for i in rng.permutation(len(by_name))]
    target = LOAD_RATIO * capacity_milli
    total = sum(p.total_gpu_milli for p in order)
    if total > target:  # not reached by the openb lists; the artifact removes random pods
        while total > target and order:
            total -= order.pop(int(rng.integers(len(order)))).total_gpu_milli
        return order
    i = 0
    while True:
        pod = by_name[int(rng.integers(len(by_name)))]
        if total + pod.gpu_milli > target:
            return order
        total += pod.total_gpu_milli
        order.append(
            PodRequest(
                pod.cpu_milli, pod.memory_mib, pod.num_gpu, pod.gpu_milli, pod.gpu_models, f"{pod.name}-tuned-{i}"
            )
        )
        i += 1


@dataclass(frozen=True, slots=True)
class RunResult:
    """One policy on one seed: per-pod records and the per-percent curves."""

    policy: str
    seed: int
    n_pods: int
    failed: int
    seconds: float
    arrived_milli: IntArray
    """Cumulative GPU request (shares) after each pod, failed pods included."""
    allocated_milli: IntArray
    """Allocated GPU shares after each pod."""
    frag_rate: FloatArray
    """Fragmented / free GPU shares after each pod (NaN outside :data:`FRAG_WINDOW_PCT`)."""
    alloc_curve: FloatArray
    """Allocation ratio (%) per integer percent of arrived load, 0..130 (NaN where no pod fell)."""
    frag_curve: FloatArray
    """Fragmentation rate (%) per integer percent of arrived load (NaN outside the window)."""

    @property
    def pods_per_s(self) -> float:
        return self.n_pods / self.seconds if self.seconds > 0 else math.inf


def discretize(arrived_pct: FloatArray, values: FloatArray, round_values: bool) -> FloatArray:
    """Per integer percent 0..130: mean of ``values`` over pods whose arrived load rounds to it (±1 fallback)."""
    bucket = np.round(arrived_pct).astype(np.int64)
    v = np.round(values, 2) if round_values else values
    out = np.full(MAX_PCT + 1, np.nan)
    sums = np.bincount(np.clip(bucket, 0, MAX_PCT + 2), weights=v, minlength=MAX_PCT + 3)
    counts = np.bincount(np.clip(bucket, 0, MAX_PCT + 2), minlength=MAX_PCT + 3)
    for x in range(MAX_PCT + 1):
        if counts[x]:
            out[x] = sums[x] / counts[x]
        else:
            lo, hi = max(x - 1, 0), x + 2
            c = counts[lo:hi].sum()
            if c:
                out[x] = sums[lo:hi].sum() / c
    result: FloatArray = np.round(out, 2) if round_values else out
    return result


def simulate(
    spec: ClusterSpec,
    pods: Sequence[PodRequest],
    classes: TaskClasses,
    policy_name: str,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> RunResult:
    """Steps 2-5 for one policy and one seed."""
    rng = np.random.default_rng(seed)
    order = arrivals(pods, spec.total_gpu_milli, rng)
    spec = spec.with_rank(rng.permutation(spec.n_nodes))
    policy = make_policy(policy_name)
    state = ClusterState.empty(spec)
    memo = policy.init(state, classes)
    frag = FragMemo(state, classes)
    n = len(order)
    arrived = np.empty(n, dtype=np.int64)
    allocated = np.empty(n, dtype=np.int64)
    rate = np.empty(n, dtype=np.float64)
    arr = alloc = failed = 0
    frag_lo, frag_hi = (
        (FRAG_WINDOW_PCT[0] - 0.5) * spec.total_gpu_milli / 100,
        (FRAG_WINDOW_PCT[1] + 0.5) * spec.total_gpu_milli / 100,
    )
    start = time.perf_counter()
    for i, pod in enumerate(order):
        placement, memo = policy.place(state, pod, memo, rng)
        arr += pod.total_gpu_milli
        if placement is None:
            failed += 1
        else:
            state = state.apply(pod, placement)
            alloc += pod.total_gpu_milli
        arrived[i] = arr
        allocated[i] = alloc
        rate[i] = frag.sync(state).rate if frag_lo <= arr <= frag_hi else np.nan
        if progress is not None and (i + 1) % 500 == 0:
            progress(500)
    seconds = time.perf_counter() - start
    if progress is not None:
        progress(n % 500)
    total = spec.total_gpu_milli
    pct = arrived / total * 100
    return RunResult(
        policy=policy.name,
        seed=seed,
        n_pods=n,
        failed=failed,
        seconds=seconds,
        arrived_milli=arrived,
        allocated_milli=allocated,
        frag_rate=rate,
        alloc_curve=discretize(pct, allocated / total * 100, round_values=True),
        frag_curve=discretize(pct, rate * 100, round_values=False),
    )


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    spec: ClusterSpec
    pods: tuple[PodRequest, ...]
    classes: TaskClasses


def load_workload(pods_name: str) -> Workload:
    pod_path = resolve_pod_list(pods_name)
    spec = load_nodes(trace_file(NODE_FILE))
    pods = tuple(load_pods(pod_path))
    return Workload(pods_name, spec, pods, task_classes(pods))


def _rounded(x: float, digits: int) -> float | None:
    """``x`` rounded, or ``None`` (JSON null) when no pod fell in the bucket."""
    return round(x, digits) if math.isfinite(x) else None


def summarize(results: Sequence[RunResult]) -> dict[str, float | None]:
    """Mean over seeds (std of the allocation at 130 % is the sample standard deviation)."""
    at100 = np.array([r.alloc_curve[100] for r in results])
    at130 = np.array([r.alloc_curve[MAX_PCT] for r in results])
    fr90 = np.array([r.frag_curve[90] for r in results])
    return {
        "alloc_pct_at_100": _rounded(float(np.mean(at100)), 2),
        "alloc_pct_at_130": _rounded(float(np.mean(at130)), 2),
        "alloc_std_at_130": _rounded(float(np.std(at130, ddof=1)) if len(at130) > 1 else 0.0, 2),
        "frag_rate_at_90": _rounded(float(np.mean(fr90)), 1),
        "pods_per_s": round(sum(r.n_pods for r in results) / max(sum(r.seconds for r in results), 1e-9), 1),
    }


# ------------------------------------------------------------------------------------------------ live

LIVE_BOUND = 6000
"""Bound pods when the live scheduler's decision time is measured (``--live``)."""
LIVE_DECISIONS = 2000


def live_nodes(spec: ClusterSpec) -> list[Node]:
    """The cluster as the live scheduler sees it: every GPU registered by HAMi (shares allowed)."""
    return [
        Node(
            name,
            int(spec.cpu_milli[i]),
            int(spec.memory_mib[i]),
            spec.models[int(spec.model[i])],
            tuple(f"GPU-{name}-{g}" for g in range(int(spec.gpu_count[i]))),
        )
        for i, name in enumerate(spec.names)
    ]


def pending_of(pod: PodRequest, name: str) -> PendingPod:
    return PendingPod(name, pod.cpu_milli, pod.memory_mib, pod.num_gpu, pod.gpu_milli, pod.gpu_models)


def live_decisions(
    workload: Workload, policy_name: str, seed: int, bound: int = LIVE_BOUND, decisions: int = LIVE_DECISIONS
) -> dict[str, Any]:
    """The live scheduler's decision time on the openb cluster holding ``bound`` pods: fill it with the seed's
    arrivals (each decision then :meth:`LiveCluster.add_pod`, as the agent does), then ``decisions`` times
    remove a random bound pod (a departure) and decide the next arrival; only :meth:`LiveCluster.decide` is
    timed (the bookkeeping around it is reported separately). ``decision_ms_*`` is the thread's CPU time, which
    other processes on a shared machine cannot inflate; ``decision_wall_ms_*`` is wall time, which they can."""
    rng = np.random.default_rng(seed)
    order = arrivals(workload.pods, workload.spec.total_gpu_milli, rng)
    live = LiveCluster(live_nodes(workload.spec))
    policy = make_policy(policy_name)
    n = 0
    misses = 0
    while len(live.pods) < bound and misses < 1000:
        pending = pending_of(order[n % len(order)], f"p{n}")
        n += 1
        d = live.decide(pending, policy, classes=workload.classes, rng=rng)
        if isinstance(d, Binding):
            live.add_pod(running_pod(pending, d))
        else:
            misses += 1
    filled = len(live.pods)
    wall_ns: list[int] = []
    cpu_ns: list[int] = []
    update_ns: list[int] = []
    placed = 0
    names = list(live.pods)
    for _ in range(decisions):
        t0 = time.thread_time_ns()
        gone = names.pop(int(rng.integers(len(names))))
        live.remove_pod(gone)
        pending = pending_of(order[n % len(order)], f"p{n}")
        n += 1
        w1, t1 = time.perf_counter_ns(), time.thread_time_ns()
        d = live.decide(pending, policy, classes=workload.classes, rng=rng)
        w2, t2 = time.perf_counter_ns(), time.thread_time_ns()
        if isinstance(d, Binding):
            live.add_pod(running_pod(pending, d))
            names.append(pending.name)
            placed += 1
        t3 = time.thread_time_ns()
        wall_ns.append(w2 - w1)
        cpu_ns.append(t2 - t1)
        update_ns.append((t1 - t0) + (t3 - t2))
    ms = np.array(cpu_ns) / 1e6
    wall = np.array(wall_ns) / 1e6
    up = np.array(update_ns) / 1e6
    return {
        "policy": policy.name,
        "seed": seed,
        "bound_pods": filled,
        "decisions": decisions,
        "placed": placed,
        "decision_ms_p50": round(float(np.percentile(ms, 50)), 3),
        "decision_ms_p99": round(float(np.percentile(ms, 99)), 3),
        "decision_ms_max": round(float(ms.max()), 3),
        "decision_wall_ms_p50": round(float(np.percentile(wall, 50)), 3),
        "decision_wall_ms_p99": round(float(np.percentile(wall, 99)), 3),
        "update_ms_p99": round(float(np.percentile(up, 99)), 3),
        "decisions_per_s": round(decisions / max(float(ms.sum()) / 1000, 1e-9), 1),
    }


def _paper_rows(pods_name: str) -> list[dict[str, str]]:
    path = trace_dir() / SUMMARY_FILE
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [
            row
            for row in csv.DictReader(f)
            if row["workload"] == f"{POD_PREFIX}{pods_name}" and row["policy"] in PAPER_POLICY
        ]


def paper_numbers(pods_name: str) -> dict[str, dict[str, float]]:
    """The authors' means over their 10 seeds for ``pods_name`` (empty when they did not run it)."""
    out: dict[str, dict[str, float]] = {}
    for row in _paper_rows(pods_name):
        name = PAPER_POLICY[row["policy"]]
        entry = {
            "alloc_pct_at_100": float(row["alloc_mean_at_100"]),
            "alloc_pct_at_130": float(row["alloc_mean_at_130"]),
            "alloc_std_at_130": float(row["alloc_std_at_130"]),
        }
        frag = PAPER_FRAG_RATE_AT_90.get(pods_name, {}).get(name)
        if frag is not None:
            entry["frag_rate_at_90"] = frag
        out[name] = entry
    return out


def paper_curves(pods_name: str) -> dict[str, dict[int, float]]:
    """The authors' mean allocation ratio (%) at the arrived loads they report (50, 80, 90, 95, …, 130)."""
    prefix = "alloc_mean_at_"
    return {
        PAPER_POLICY[row["policy"]]: {int(k[len(prefix) :]): float(v) for k, v in row.items() if k.startswith(prefix)}
        for row in _paper_rows(pods_name)
    }


# --------------------------------------------------------------------------------------------- churn
#
# ``--mode churn`` replays the pods' creation and deletion times (columns ``creation_time``, ``deletion_time``;
# seconds from the trace start) instead of placing pods with no departures. The arrival set is the static
# procedure's (steps 2-3: shuffled, inflated to 130 % with copies; a copy is another replica of its source pod and
# inherits its times), so every policy again sees the same pods for a seed. Events run in time order; at equal
# times departures go first (a pod with zero lifetime leaves after its own arrival), then arrivals in the arrival
# sequence. A pod that fits nowhere fails and is dropped (it never departs). Departures after the last arrival
# cannot change a placement and are not replayed.
#
# Replayed literally the trace is light: at most ~56 of its pods (1.3 % of the cluster's GPUs with the copies)
# are alive at once. Lifetimes are therefore stretched by one factor S (departure = creation + S x lifetime;
# creation times stay as recorded): by default the smallest S at which the *requested* concurrent GPU load (every
# arrived pod that has not reached its stretched deletion time, placed or not) peaks at ``--peak-load`` x the
# cluster's GPUs. The requested load does not depend on the policy, so the peak is the same instant for all of
# them. ``--stretch S`` fixes S instead (``--stretch 1`` is the literal replay).

TIME_COLUMNS = ("creation_time", "deletion_time")
DEFAULT_PEAK_LOAD = 1.0
_ARRIVE, _DEPART, _DEPART_SAME_TIME = 1, 0, 2
"""Event kinds, in their order at equal times."""
_MAX_STRETCH = 1e9


def load_pod_times(path: Path) -> dict[str, tuple[int, int | None]]:
    """Creation and deletion time (s) per pod name; ``None`` deletion = never deleted.

    Raises ``ValueError`` naming the file when the list has no time columns (the ``multigpu*`` lists carry only
    ``name, cpu_milli, memory_mib, num_gpu, gpu_milli``) or a row has a deletion before its creation.
    """
    with path.open(newline="") as f:
        header = csv.DictReader(f).fieldnames or []
    missing = [c for c in TIME_COLUMNS if c not in header]
    if missing:
        raise UsageError(
            f"{path}: no {'/'.join(missing)} column, so churn mode cannot replay this pod list (the multigpu* "
            f"lists carry only name, cpu_milli, memory_mib, num_gpu, gpu_milli); use --mode static"
        )
    out: dict[str, tuple[int, int | None]] = {}
    for line, row in _rows(path, ("name", *TIME_COLUMNS)):
        created = _field_int(path, line, row, "creation_time")
        deleted = (
            None if (row.get("deletion_time") or "").strip() == "" else _field_int(path, line, row, "deletion_time")
        )
        if deleted is not None and deleted < created:
            raise UsageError(f"{path}:{line}:deletion_time: {deleted} is before creation_time {created}")
        out[row["name"]] = (created, deleted)
    return out


def source_name(pod: PodRequest) -> str:
    """The trace pod a (possibly inflated) arrival copies: ``p-tuned-7`` -> ``p``."""
    return pod.name.split("-tuned-", 1)[0]


@dataclass(frozen=True, slots=True)
class ChurnSchedule:
    """Arrivals and departures in replay order (index = event)."""

    pods: tuple[PodRequest, ...]
    """The arrival sequence (index = pod)."""
    stretch: float
    time: FloatArray
    kind: IntArray
    """:data:`_ARRIVE`, :data:`_DEPART` or :data:`_DEPART_SAME_TIME` per event."""
    pod: IntArray
    """Index into ``pods`` per event."""
    demand_milli: IntArray
    """Requested concurrent GPU shares after each event (every arrived pod not yet departed, placed or not)."""
    rank: IntArray | None = None
    """Node tie-break order (``None``: node order)."""
    rng_state: dict[str, Any] | None = None
    """The seed's generator state after the arrival and rank draws (the policy's own draws continue from it)."""

    @property
    def peak(self) -> int:
        """The event at which the requested load first reaches its maximum."""
        return int(np.argmax(self.demand_milli))


def churn_schedule(
    pods: Sequence[PodRequest], times: dict[str, tuple[int, int | None]], stretch: float
) -> ChurnSchedule:
    """Events for ``pods`` (an arrival sequence) with lifetimes multiplied by ``stretch``."""
    if not stretch > 0 or not math.isfinite(stretch):
        raise UsageError(f"stretch must be a positive number, got {stretch}")
    n = len(pods)
    try:
        created = np.array([times[source_name(p)][0] for p in pods], dtype=np.float64)
        deleted = [times[source_name(p)][1] for p in pods]
    except KeyError as exc:
        raise UsageError(f"no creation/deletion time for pod {exc.args[0]!r}") from None
    lives = np.array([np.inf if d is None else d for d in deleted], dtype=np.float64) - created
    departs = np.flatnonzero(np.isfinite(lives))
    dep_time = created[departs] + stretch * lives[departs]
    last = float(created.max()) if n else 0.0
    keep = dep_time <= last
    departs, dep_time = departs[keep], dep_time[keep]
    dep_kind = np.where(lives[departs] == 0, _DEPART_SAME_TIME, _DEPART)
    time = np.concatenate([created, dep_time])
    kind = np.concatenate([np.full(n, _ARRIVE), dep_kind]).astype(np.int64)
    pod = np.concatenate([np.arange(n), departs]).astype(np.int64)
    order = np.lexsort((pod, kind, time))
    gpu = np.array([p.total_gpu_milli for p in pods], dtype=np.int64)
    sign = np.where(kind[order] == _ARRIVE, 1, -1)
    demand = np.cumsum(sign * gpu[pod[order]])
    return ChurnSchedule(tuple(pods), float(stretch), time[order], kind[order], pod[order], demand)


def stretch_for_peak(
    pods: Sequence[PodRequest], times: dict[str, tuple[int, int | None]], capacity_milli: int, peak_load: float
) -> float:
    """The smallest lifetime stretch (to 0.1 %) at which the requested load peaks at ``peak_load`` x capacity.

    The peak only grows with the stretch (longer lives, nested alive sets), so bisection finds it.
    """
    target = peak_load * capacity_milli
    if not peak_load > 0:
        raise UsageError(f"--peak-load must be positive, got {peak_load}")

    def peak(s: float) -> int:
        return int(churn_schedule(pods, times, s).demand_milli.max())

    if peak(1.0) >= target:
        return 1.0
    top = peak(_MAX_STRETCH)
    if top < target:
        raise UsageError(
            f"--peak-load {peak_load} is out of reach: with lifetimes stretched x{_MAX_STRETCH:.0e} the requested "
            f"load peaks at {top / capacity_milli:.3f} x capacity"
        )
    lo, hi = 0.0, math.log(_MAX_STRETCH)
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        if peak(math.exp(mid)) >= target:
            hi = mid
        else:
            lo = mid
    return math.exp(hi)


@dataclass(frozen=True, slots=True)
class DefragSettings:
    """How the churn replay calls :func:`policies.placement.defrag.plan_defrag` when a pod fails."""

    max_moves: int = DEFAULT_MAX_MOVES
    budget: int = 1
    """Pods of one budget group (the replicas of one trace pod) a plan may move."""


@dataclass(frozen=True, slots=True)
class ChurnResult:
    """One policy on one seed under churn (with or without defragmentation)."""

    policy: str
    seed: int
    defrag: bool
    stretch: float
    n_pods: int
    departures: int
    failed: int
    failed_gpu_milli: int
    arrived_gpu_milli: int
    rescued: int
    """Pods placed only thanks to a defragmentation plan."""
    migrations: int
    plans_not_found: int
    """Failures where the cluster had enough free in total but no plan within the limits was found."""
    seconds: float
    defrag_seconds: float
    time: FloatArray
    demand_milli: IntArray
    allocated_milli: IntArray
    peak: int
    frag_rate_at_peak: float
    capacity_milli: int

    @property
    def alloc_pct_at_peak(self) -> float:
        return float(self.allocated_milli[self.peak]) / self.capacity_milli * 100

    @property
    def demand_pct_at_peak(self) -> float:
        return float(self.demand_milli[self.peak]) / self.capacity_milli * 100


def simulate_churn(
    spec: ClusterSpec,
    schedule: ChurnSchedule,
    classes: TaskClasses,
    policy_name: str,
    seed: int,
    defrag: DefragSettings | None = None,
) -> ChurnResult:
    """Replay ``schedule`` with one policy; with ``defrag``, a failed pod triggers a migration plan.

    Node ranks and the generator the policy draws from come with the schedule (:func:`churn_schedule_for_seed`
    draws them as :func:`simulate` does); without them, node order and ``default_rng(seed)``.
    """
    rng = np.random.default_rng(seed)
    if schedule.rng_state is not None:
        rng.bit_generator.state = schedule.rng_state
    if schedule.rank is not None:
        spec = spec.with_rank(schedule.rank)
    policy = make_policy(policy_name)
    state = ClusterState.empty(spec)
    memo = policy.init(state, classes)
    pods = schedule.pods
    table = BoundTable(pods, [p.name for p in pods], [source_name(p) for p in pods], spec.width)
    row_of = {p.name: i for i, p in enumerate(pods)}
    n_events = schedule.time.shape[0]
    allocated = np.empty(n_events, dtype=np.int64)
    alloc = failed = failed_gpu = arrived_gpu = departures = rescued = migrations = not_found = 0
    frag_at_peak = math.nan
    peak = schedule.peak
    defrag_s = 0.0
    start = time.perf_counter()
    for e, (kind, i) in enumerate(zip(schedule.kind.tolist(), schedule.pod.tolist(), strict=True)):
        pod = pods[i]
        if kind == _ARRIVE:
            arrived_gpu += pod.total_gpu_milli
            placement, memo = policy.place(state, pod, memo, rng)
            if placement is not None:
                state = state.apply(pod, placement)
                table.bind(i, placement.node, placement.gpus)
                alloc += pod.total_gpu_milli
            elif defrag is not None:
                t0 = time.perf_counter()
                plan = plan_defrag(state, table, pod, max_moves=defrag.max_moves, default_budget=defrag.budget)
                defrag_s += time.perf_counter() - t0
                if plan.placement is not None:
                    state = apply_plan(state, plan, pod)
                    for mv in plan.moves:
                        table.bind(row_of[mv.name], mv.dst_node, mv.dst_gpus)
                    table.bind(i, plan.placement.node, plan.placement.gpus)
                    alloc += pod.total_gpu_milli
                    rescued += 1
                    migrations += len(plan.moves)
                else:
                    failed += 1
                    failed_gpu += pod.total_gpu_milli
                    not_found += plan.outcome == "no_plan"
            else:
                failed += 1
                failed_gpu += pod.total_gpu_milli
        elif table.node[i] >= 0:
            state = release(state, pod, int(table.node[i]), table.gpus(i))
            table.unbind(i)
            alloc -= pod.total_gpu_milli
            departures += 1
        allocated[e] = alloc
        if e == peak:
            frag_at_peak = FragMemo(state, classes).rate
    seconds = time.perf_counter() - start
    return ChurnResult(
        policy=policy.name,
        seed=seed,
        defrag=defrag is not None,
        stretch=schedule.stretch,
        n_pods=len(pods),
        departures=departures,
        failed=failed,
        failed_gpu_milli=failed_gpu,
        arrived_gpu_milli=arrived_gpu,
        rescued=rescued,
        migrations=migrations,
        plans_not_found=not_found,
        seconds=seconds,
        defrag_seconds=defrag_s,
        time=schedule.time,
        demand_milli=schedule.demand_milli,
        allocated_milli=allocated,
        peak=peak,
        frag_rate_at_peak=frag_at_peak,
        capacity_milli=spec.total_gpu_milli,
    )


def churn_schedule_for_seed(
    workload: Workload,
    times: dict[str, tuple[int, int | None]],
    seed: int,
    peak_load: float = DEFAULT_PEAK_LOAD,
    stretch: float | None = None,
) -> ChurnSchedule:
    """The seed's arrival sequence and node ranks (drawn as in :func:`simulate`) with its churn events."""
    rng = np.random.default_rng(seed)
    order = arrivals(workload.pods, workload.spec.total_gpu_milli, rng)
    rank = rng.permutation(workload.spec.n_nodes)
    s = stretch if stretch is not None else stretch_for_peak(order, times, workload.spec.total_gpu_milli, peak_load)
    return replace(churn_schedule(order, times, s), rank=rank, rng_state=dict(rng.bit_generator.state))


def summarize_churn(results: Sequence[ChurnResult]) -> dict[str, Any]:
    """Means over seeds; ``alloc_std_at_peak`` is the sample standard deviation; ``per_seed`` lists the
    allocation at the peak and the failed pods of each seed (in seed order)."""
    at_peak = np.array([r.alloc_pct_at_peak for r in results])

    def mean(values: Sequence[float], digits: int) -> float | None:
        return _rounded(float(np.mean(values)), digits)

    out: dict[str, Any] = {
        "alloc_pct_at_peak": mean(at_peak.tolist(), 2),
        "alloc_std_at_peak": _rounded(float(np.std(at_peak, ddof=1)) if len(at_peak) > 1 else 0.0, 2),
        "demand_pct_at_peak": mean([r.demand_pct_at_peak for r in results], 2),
        "alloc_pct_max": mean([float(r.allocated_milli.max()) / r.capacity_milli * 100 for r in results], 2),
        "failed_pods": mean([float(r.failed) for r in results], 1),
        "failed_pct": mean([r.failed / r.n_pods * 100 for r in results], 2),
        "failed_gpu_pct": mean([r.failed_gpu_milli / max(r.arrived_gpu_milli, 1) * 100 for r in results], 2),
        "frag_rate_at_peak": mean([r.frag_rate_at_peak * 100 for r in results], 1),
        "arrivals": mean([float(r.n_pods) for r in results], 1),
        "departures": mean([float(r.departures) for r in results], 1),
        "stretch": mean([r.stretch for r in results], 1),
        "pods_per_s": round(sum(r.n_pods for r in results) / max(sum(r.seconds for r in results), 1e-9), 1),
        "per_seed": {
            "seed": [r.seed for r in sorted(results, key=lambda r: r.seed)],
            "alloc_pct_at_peak": [round(r.alloc_pct_at_peak, 2) for r in sorted(results, key=lambda r: r.seed)],
            "failed_pods": [r.failed for r in sorted(results, key=lambda r: r.seed)],
        },
    }
    if results and results[0].defrag:
        rescued = sum(r.rescued for r in results)
        out |= {
            "rescued_pods": mean([float(r.rescued) for r in results], 1),
            "migrations": mean([float(r.migrations) for r in results], 1),
            "migrations_per_rescued": _rounded(sum(r.migrations for r in results) / rescued, 2) if rescued else None,
            "plans_not_found": mean([float(r.plans_not_found) for r in results], 1),
            "defrag_s": mean([r.defrag_seconds for r in results], 2),
        }
    return out


def _churn_job(
    shared: tuple[Workload, dict[str, tuple[int, int | None]]],
    job: tuple[str, int, float, float | None, DefragSettings | None],
) -> ChurnResult:
    """One churn run on the shared workload and pod times (sent to each worker once)."""
    w, times = shared
    policy, seed, peak_load, stretch, defrag = job
    return simulate_churn(
        w.spec, churn_schedule_for_seed(w, times, seed, peak_load, stretch), w.classes, policy, seed, defrag
    )


def run_churn(args: argparse.Namespace, seeds: list[int], policies: list[str]) -> int:
    """``--mode churn``: each policy without (and with ``--defrag``, also with) defragmentation."""
    if args.stretch is not None and args.peak_load is not None:
        raise UsageError("give --stretch or --peak-load, not both")
    peak_load = args.peak_load if args.peak_load is not None else DEFAULT_PEAK_LOAD
    if args.max_moves < 1 or args.budget < 0:
        raise UsageError("--max-moves must be at least 1 and --budget at least 0")
    workload = load_workload(args.pods)
    times = load_pod_times(resolve_pod_list(args.pods))
    settings = DefragSettings(args.max_moves, args.budget)
    variants: list[DefragSettings | None] = [None, settings] if args.defrag else [None]
    jobs = [(args.pods, p, s, peak_load, args.stretch, d) for p in policies for d in variants for s in seeds]
    if (args.dask is None and (args.jobs or 1) == 1) or len(jobs) == 1:
        schedules = {s: churn_schedule_for_seed(workload, times, s, peak_load, args.stretch) for s in seeds}
        done = []
        for _, p, s, _, _, d in jobs:
            r = simulate_churn(workload.spec, schedules[s], workload.classes, p, s, d)
            done.append(r)
            if not args.json:
                print(f"churn {p} seed {s} defrag={d is not None}: {r.seconds:.1f} s", file=sys.stderr)
    else:
        with make_executor(args.jobs, args.dask, default=1) as ex:
            done = ex.map(_churn_job, (workload, times), [j[1:] for j in jobs])
    plain: dict[str, list[ChurnResult]] = {p: [] for p in policies}
    with_defrag: dict[str, list[ChurnResult]] = {p: [] for p in policies}
    for r in done:
        (with_defrag if r.defrag else plain)[r.policy].append(r)
    summary: dict[str, dict[str, Any]] = {}
    for p in policies:
        summary[p] = dict(summarize_churn(plain[p]))
        if with_defrag[p]:
            summary[p]["defrag"] = summarize_churn(with_defrag[p])
    out: dict[str, Any] = {
        "pods": args.pods,
        "seeds": seeds,
        "mode": "churn",
        "peak_load": None if args.stretch is not None else peak_load,
        "defrag_settings": {"max_moves": settings.max_moves, "budget": settings.budget} if args.defrag else None,
        "policies": summary,
    }
    if args.plot is not None:
        plot_churn(Path(args.plot), args.pods, plain, with_defrag)
    if not args.json:
        _print_churn_table(out)
    print(json.dumps(out, indent=2))
    return 0


def _print_churn_table(out: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"placement under churn, pods={out['pods']}, seeds={len(out['seeds'])}")
    cols = ("policy", "defrag", "alloc % @peak", "demand % @peak", "failed pods", "failed GPU %", "frag % @peak")
    for col in (*cols, "migrations/rescued"):
        table.add_column(col, justify="right")
    for name, s in out["policies"].items():
        for label, row in (("no", s), ("yes", s.get("defrag"))):
            if row is None:
                continue
            table.add_row(
                name,
                label,
                f"{_fmt(row['alloc_pct_at_peak'], '.2f')} ± {_fmt(row['alloc_std_at_peak'], '.2f')}",
                _fmt(row["demand_pct_at_peak"], ".1f"),
                _fmt(row["failed_pods"], ".1f"),
                _fmt(row["failed_gpu_pct"], ".2f"),
                _fmt(row["frag_rate_at_peak"], ".1f"),
                _fmt(row.get("migrations_per_rescued"), ".2f") if label == "yes" else "",
            )
    Console(stderr=True, width=140).print(table)


def plot_churn(
    path: Path, pods_name: str, plain: dict[str, list[ChurnResult]], with_defrag: dict[str, list[ChurnResult]]
) -> None:
    """Allocation ratio and requested load over the busy part of the replay (mean over seeds), per policy."""
    try:
        import matplotlib
    except ImportError as e:
        raise MissingExtra("plots", "sim", "matplotlib") from e

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for rs in plain.values() for r in rs]
    if not runs:
        return
    first = runs[0]  # every run of a seed replays the same events; the first seed's times set the axis
    busy = np.flatnonzero(first.demand_milli >= 0.2 * first.demand_milli.max())
    t0, t1 = float(first.time[busy[0]]), float(first.time[-1])
    grid = np.linspace(t0, t1, 600)
    days = (grid - t0) / 86400

    def on_grid(r: ChurnResult, values: IntArray) -> FloatArray:
        at = np.clip(np.searchsorted(r.time, grid, side="right") - 1, 0, r.time.shape[0] - 1)
        out: FloatArray = values[at] / r.capacity_milli * 100
        return out

    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(13, 4.5))
    seeds = len(plain[next(iter(plain))])
    requested = np.mean([on_grid(r, r.demand_milli) for r in plain[next(iter(plain))]], axis=0)
    late = days >= days[int(np.argmax(requested >= 0.8 * requested.max()))]
    for a, keep in ((ax, np.ones_like(late)), (zoom, late)):
        a.plot(days[keep], requested[keep], ":", color="grey", label="requested (alive pods)")
        for i, (name, rs) in enumerate(plain.items()):
            curve = np.mean([on_grid(r, r.allocated_milli) for r in rs], axis=0)
            a.plot(days[keep], curve[keep], color=f"C{i}", label=name)
            if with_defrag.get(name):
                curve = np.mean([on_grid(r, r.allocated_milli) for r in with_defrag[name]], axis=0)
                a.plot(days[keep], curve[keep], "--", color=f"C{i}", label=f"{name} + defrag")
        a.set_xlabel("days since the requested load first reached 20 % of its peak")
        a.grid(alpha=0.3)
    ax.set_ylabel("% of the cluster's GPUs")
    stretch = float(np.mean([r.stretch for r in runs]))
    ax.set_title(f"openb {pods_name} under churn (lifetimes x{stretch:.0f}, mean of {seeds} seed(s))")
    zoom.set_title("zoom: requested load above 80 % of its peak")
    zoom.legend(loc="lower right", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# ------------------------------------------------------------------------------------------------- CLI


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser(
        "placement",
        help="FGD paper's GPU-sharing placement benchmark (Alibaba openb trace)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--pods", default="default", help="pod-list suffix: default, gpushare100, cpu050, … (default: default)"
    )
    parser.add_argument(
        "--seeds", default="42-51", help="seeds: ranges and comma lists, e.g. 42-51 or 42,45 (default: 42-51)"
    )
    parser.add_argument("--policies", default=None, help=f"comma-separated (default: all): {','.join(POLICY_NAMES)}")
    parser.add_argument("--json", action="store_true", help="print only the JSON object (no progress bar or table)")
    parser.add_argument("--plot", default=None, metavar="PATH.png", help="write allocation-vs-arrived-load curves")
    add_executor_arguments(parser, default_help="1")
    parser.add_argument(
        "--mode",
        choices=("static", "churn"),
        default="static",
        help="static: the paper's procedure (default); churn: replay creation and deletion times",
    )
    parser.add_argument(
        "--peak-load",
        type=float,
        default=None,
        help=f"churn: stretch lifetimes so the requested load peaks at this x capacity (default {DEFAULT_PEAK_LOAD})",
    )
    parser.add_argument("--stretch", type=float, default=None, help="churn: fixed lifetime stretch (1 = as recorded)")
    parser.add_argument("--defrag", action="store_true", help="churn: also run with the defragmentation planner")
    parser.add_argument(
        "--live",
        action="store_true",
        help=f"static: also time the live scheduler's decisions (LiveCluster) at {LIVE_BOUND} bound pods, first seed",
    )
    parser.add_argument(
        "--max-moves",
        type=int,
        default=DEFAULT_MAX_MOVES,
        help=f"churn: migrations per plan (default {DEFAULT_MAX_MOVES})",
    )
    parser.add_argument(
        "--budget", type=int, default=1, help="churn: replicas of one trace pod a plan may move (default 1)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import rich  # noqa: F401  # progress bar and tables
    except ImportError as e:
        raise MissingExtra("shadowscale bench placement", "sim", "rich") from e
    seeds = parse_seeds(args.seeds)
    policies = parse_policy_list(args.policies)
    if args.plot is not None and not str(args.plot).lower().endswith(".png"):
        raise UsageError(f"--plot wants a .png path, got {args.plot!r}")
    if getattr(args, "mode", "static") == "churn":
        return run_churn(args, seeds, policies)
    workload = load_workload(args.pods)
    jobs = [(args.pods, p, s) for p in policies for s in seeds]
    results: dict[str, list[RunResult]] = {p: [] for p in policies}
    if args.json:
        for r in _execute(workload, jobs, args, None):
            results[r.policy].append(r)
    else:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(stderr=True)
        per_seed = {
            s: len(arrivals(workload.pods, workload.spec.total_gpu_milli, np.random.default_rng(s))) for s in seeds
        }
        with Progress(
            TextColumn("[bold]placement[/] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as bar:
            task = bar.add_task(
                f"{args.pods}: {len(policies)} policies x {len(seeds)} seeds",
                total=sum(per_seed[s] for _, _, s in jobs),
            )

            def advance(k: int) -> None:
                bar.advance(task, k)

            for r in _execute(workload, jobs, args, advance):
                results[r.policy].append(r)
    summary = {p: summarize(rs) for p, rs in results.items()}
    paper = {p: v for p, v in paper_numbers(args.pods).items() if p in results}
    out: dict[str, Any] = {"pods": args.pods, "seeds": seeds, "policies": summary, "paper": paper}
    if getattr(args, "live", False):
        bound = min(LIVE_BOUND, len(workload.pods))
        out["live"] = {p: live_decisions(workload, p, seeds[0], bound=bound) for p in policies}
    if args.plot is not None:
        plot_curves(Path(args.plot), args.pods, results, paper_curves(args.pods))
    if not args.json:
        _print_table(out)
    print(json.dumps(out, indent=2))
    return 0


def _execute(
    workload: Workload,
    jobs: list[tuple[str, str, int]],
    args: argparse.Namespace,
    advance: Callable[[int], None] | None,
) -> list[RunResult]:
    with make_executor(args.jobs, args.dask, default=1) as ex:
        if (isinstance(ex, LocalExecutor) and ex.jobs == 1) or len(jobs) == 1:
            return [simulate(workload.spec, workload.pods, workload.classes, p, s, advance) for _, p, s in jobs]

        def progress(done: int, total: int) -> None:
            if advance is not None:
                s = jobs[done - 1][2]
                advance(len(arrivals(workload.pods, workload.spec.total_gpu_milli, np.random.default_rng(s))))

        return ex.map(_placement_job, workload, [(p, s) for _, p, s in jobs], progress)


def _placement_job(workload: Workload, job: tuple[str, int]) -> RunResult:
    """One (policy, seed) run on the shared workload (sent to each worker once)."""
    policy, seed = job
    return simulate(workload.spec, workload.pods, workload.classes, policy, seed)


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _print_table(out: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"placement, pods={out['pods']}, seeds={len(out['seeds'])} (FGD artifact in brackets)")
    for col in ("policy", "alloc % @100", "alloc % @130 ± std", "frag rate % @90", "pods/s"):
        table.add_column(col, justify="right")
    for name, s in out["policies"].items():
        p = out["paper"].get(name, {})

        def cell(key: str, spec: str, s: dict[str, float | None] = s, p: dict[str, float] = p) -> str:
            ref = f" [{p[key]:{spec}}]" if key in p else ""
            return f"{_fmt(s[key], spec)}{ref}"

        at130 = f"{_fmt(s['alloc_pct_at_130'], '.2f')} ± {_fmt(s['alloc_std_at_130'], '.2f')}"
        if "alloc_pct_at_130" in p:
            at130 += f" [{p['alloc_pct_at_130']:.2f} ± {p['alloc_std_at_130']:.2f}]"
        table.add_row(
            name, cell("alloc_pct_at_100", ".2f"), at130, cell("frag_rate_at_90", ".1f"), _fmt(s["pods_per_s"], ".0f")
        )
    Console(stderr=True, width=120).print(table)
    if "live" in out:
        live = Table(title="live scheduler: one decision (CPU ms; wall ms in brackets)")
        for col in ("policy", "bound pods", "p50", "p99", "max", "decisions/s"):
            live.add_column(col, justify="right")
        for name, r in out["live"].items():
            live.add_row(
                name,
                str(r["bound_pods"]),
                f"{r['decision_ms_p50']:.3f} [{r['decision_wall_ms_p50']:.3f}]",
                f"{r['decision_ms_p99']:.3f} [{r['decision_wall_ms_p99']:.3f}]",
                f"{r['decision_ms_max']:.3f}",
                f"{r['decisions_per_s']:.0f}",
            )
        Console(stderr=True, width=120).print(live)


def plot_curves(
    path: Path, pods_name: str, results: dict[str, list[RunResult]], paper: dict[str, dict[int, float]]
) -> None:
    """Mean allocation ratio vs arrived load per policy (lines), the paper's means as markers."""
    try:
        import matplotlib
    except ImportError as e:
        raise MissingExtra("plots", "sim", "matplotlib") from e

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = np.arange(MAX_PCT + 1)
    for i, (name, rs) in enumerate(results.items()):
        curve = np.nanmean(np.vstack([r.alloc_curve for r in rs]), axis=0)
        for a in (ax, zoom):
            a.plot(x, curve, color=f"C{i}", label=f"{name} ({len(rs)} seeds)")
            ref = paper.get(name)
            if ref:
                a.plot(list(ref), list(ref.values()), "o", color=f"C{i}", markersize=5, fillstyle="none")
    for a, lo, hi in ((ax, 0, 100), (zoom, 80, 100)):
        a.plot([lo, hi], [lo, hi], ":", color="grey", linewidth=0.8)
        a.set_xlim(lo, MAX_PCT)
        a.set_ylim(lo, 100)
        a.grid(alpha=0.3)
        a.set_xlabel("arrived workload (% of cluster GPU capacity)")
    ax.set_ylabel("GPU allocation ratio (%)")
    ax.set_title(f"openb {pods_name}: lines = this benchmark")
    zoom.set_title("zoom; circles = FGD artifact's means (10 seeds)")
    zoom.legend(loc="lower right", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":  # pragma: no cover - convenience for ad-hoc runs
    p = argparse.ArgumentParser(prog="placement")
    register(p.add_subparsers())
    ns = p.parse_args(["placement", *sys.argv[1:]])
    raise SystemExit(ns.func(ns))
