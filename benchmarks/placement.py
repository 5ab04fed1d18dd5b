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
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policies.placement import (
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
from policies.placement.cluster import FloatArray, IntArray

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


def data_dir() -> Path:
    """Where ``traces/`` lives: ``$SHADOWSCALE_DATA`` or the repository's ``data/``."""
    env = os.environ.get("SHADOWSCALE_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "data"


def trace_dir() -> Path:
    return data_dir() / "traces" / TRACE


def pod_list_names(directory: Path | None = None) -> list[str]:
    """The pod-list suffixes available (``default``, ``cpu050``, …)."""
    d = directory or trace_dir()
    return sorted(p.stem[len(POD_PREFIX) :] for p in d.glob(f"{POD_PREFIX}*.csv"))


# ----------------------------------------------------------------------------------------------- input


def _field_int(path: Path, line: int, row: dict[str, str], name: str) -> int:
    raw = row.get(name)
    if raw is None or raw.strip() == "":
        raise ValueError(f"{path}:{line}:{name}: missing value")
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{path}:{line}:{name}: not an integer: {raw!r}") from None
    if value < 0:
        raise ValueError(f"{path}:{line}:{name}: negative value {value}")
    return value


def _rows(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (set SHADOWSCALE_DATA to the directory holding traces/)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{path}:1:{missing[0]}: missing column (header: {','.join(header)})")
        out = []
        for row in reader:
            if None in row:
                raise ValueError(f"{path}:{reader.line_num}:{header[-1]}: more fields than the header")
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
            raise ValueError(f"{path}:{line}:gpu: at most 8 GPUs per node, got {g}")
        gpus.append(g)
        models.append(row["model"] or "")
    if not names:
        raise ValueError(f"{path}: no nodes")
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
            raise ValueError(f"{path}:{line}:{field}: {exc}") from None
    if not pods:
        raise ValueError(f"{path}: no pods")
    return pods


def parse_seeds(text: str) -> list[int]:
    """``"42-51"``, ``"42,45"`` or a mix (``"1,5-7"``) -> sorted distinct seeds."""
    seeds: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise ValueError(f"bad seed list {text!r}: empty item")
        lo_s, dash, hi_s = part.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if dash else lo
        except ValueError:
            raise ValueError(f"bad seed list {text!r}: {part!r} is not N or N-M with integers N, M") from None
        if lo < 0 or hi < lo:
            raise ValueError(f"bad seed range {part!r}: need 0 <= N <= M")
        if hi - lo >= 10_000:
            raise ValueError(f"bad seed range {part!r}: more than 10000 seeds")
        seeds.update(range(lo, hi + 1))
    return sorted(seeds)


def parse_policy_list(text: str | None) -> list[str]:
    """Comma-separated policy names (case-insensitive) -> registered names; ``None`` or ``all`` -> every one."""
    if text is None or text.strip().lower() == "all":
        return list(POLICY_NAMES)
    names = [canonical_name(p) for p in text.split(",") if p.strip()]
    if not names:
        raise ValueError(f"no policy given; valid policies: {', '.join(POLICY_NAMES)}")
    return list(dict.fromkeys(names))


def resolve_pod_list(name: str) -> Path:
    names = pod_list_names()
    if name not in names:
        valid = ", ".join(names) if names else f"none found under {trace_dir()}"
        raise ValueError(f"unknown pod list {name!r}; valid pod lists: {valid}")
    return trace_dir() / f"{POD_PREFIX}{name}.csv"


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
    spec = load_nodes(trace_dir() / NODE_FILE)
    pods = tuple(load_pods(pod_path))
    return Workload(pods_name, spec, pods, task_classes(pods))


def _run_job(job: tuple[str, str, int]) -> RunResult:
    pods_name, policy, seed = job
    w = load_workload(pods_name)
    return simulate(w.spec, w.pods, w.classes, policy, seed)


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
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default: 1)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    seeds = parse_seeds(args.seeds)
    policies = parse_policy_list(args.policies)
    if args.jobs < 1:
        raise ValueError("--jobs must be at least 1")
    if args.plot is not None and not str(args.plot).lower().endswith(".png"):
        raise ValueError(f"--plot wants a .png path, got {args.plot!r}")
    workload = load_workload(args.pods)
    jobs = [(args.pods, p, s) for p in policies for s in seeds]
    results: dict[str, list[RunResult]] = {p: [] for p in policies}
    if args.json:
        for r in _execute(workload, jobs, args.jobs, None):
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

            for r in _execute(workload, jobs, args.jobs, advance):
                results[r.policy].append(r)
    summary = {p: summarize(rs) for p, rs in results.items()}
    paper = {p: v for p, v in paper_numbers(args.pods).items() if p in results}
    out = {"pods": args.pods, "seeds": seeds, "policies": summary, "paper": paper}
    if args.plot is not None:
        plot_curves(Path(args.plot), args.pods, results, paper_curves(args.pods))
    if not args.json:
        _print_table(out)
    print(json.dumps(out, indent=2))
    return 0


def _execute(
    workload: Workload, jobs: list[tuple[str, str, int]], n_jobs: int, advance: Callable[[int], None] | None
) -> list[RunResult]:
    if n_jobs == 1 or len(jobs) == 1:
        return [simulate(workload.spec, workload.pods, workload.classes, p, s, advance) for _, p, s in jobs]
    out = []
    with ProcessPoolExecutor(max_workers=n_jobs) as pool:
        for r in pool.map(_run_job, jobs):
            if advance is not None:
                advance(r.n_pods)
            out.append(r)
    return out


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


def plot_curves(
    path: Path, pods_name: str, results: dict[str, list[RunResult]], paper: dict[str, dict[int, float]]
) -> None:
    """Mean allocation ratio vs arrived load per policy (lines), the paper's means as markers."""
    import matplotlib

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
