"""``--sweep``: every policy across a fine grid of its knob × min replicas × spec set, each baseline compared at its
Pareto frontier.

Grid. Each baseline's knob (HPA target utilization, KEDA lag threshold, KPA target concurrency) runs at
:data:`COARSE` log-spaced values over :data:`KNOB_RANGES` plus its default, × min replicas
(:data:`MIN_REPLICAS`: 0 and 1; the HPA cannot go below 1) × spec set (traced whole-GPU profiles; right-sized
shares, chosen from the warm-up's traffic only; traces whose models have one measured spec each, the LLMs, have the
traced set only). Then, per curve, :data:`REFINE` more values are run log-spaced
between the two neighbouring knob values whose SLO attainments bracket the attainment compared (shadowscale's at
its default), so the frontier is fine where it is read; a curve that never reaches it with its best point at an
end of the range is extended one decade beyond that end instead. shadowscale runs its headroom values on both spec sets
and both min replicas (its default headroom only on the traced specs); the oracle once on right-sized specs.

Comparison. A policy's frontier is its Pareto set over every point it ran (cheapest point at or above each
attainment; no interpolation: every frontier point is a configuration a user can run). ``fair_ratio`` is
shadowscale's cost at its default over the cheapest baseline frontier point at or above its attainment, in
GPU-hours and in GPUs held; null where no baseline reaches it.

Every job is one call of the top-level :func:`run_job` on a workload the worker holds; :func:`_run_jobs` is the
one place that runs jobs (serially or in a process pool).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shadowscale.errors import MissingExtra
from shadowscale.simulators.bound import fluid_bound_hours
from shadowscale.simulators.engine import SimConfig
from shadowscale.simulators.executor import Executor, LocalExecutor
from shadowscale.simulators.report import reference_ratios
from shadowscale.simulators.run import SPEC_SETS, prepare, run_policy, summarize
from shadowscale.simulators.workload import Workload

BASELINES = ("hpa", "keda", "kpa")
OURS = "shadowscale"
OURS_DEFAULT = 2.0
KNOB_RANGES: dict[str, tuple[float, float, float]] = {
    "hpa": (0.05, 0.95, 0.7),  # target GPU utilization: (lowest, highest, Kubernetes' usual 70 %)
    "keda": (0.5, 200.0, 10.0),  # lagThreshold: (lowest, highest, the Kafka scaler's default 10)
    "kpa": (0.3, 300.0, 100.0),  # target concurrency per replica: (lowest, highest, Knative's default 100)
}
"""The knob of each baseline: the range swept log-spaced and the default (always run)."""
COARSE = 10
REFINE = 4
OURS_KNOBS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
"""shadowscale's headroom (standard deviations) values."""
MIN_REPLICAS: dict[str, tuple[int, ...]] = {"hpa": (1,), "keda": (0, 1), "kpa": (0, 1), OURS: (0, 1)}
"""The HPA's minReplicas is at least 1 (scale to zero needs the alpha HPAScaleToZero gate and an object or
external metric, not the utilization metric it scales on here)."""


@dataclass(frozen=True, slots=True)
class Point:
    """One run of the sweep; ``bound_gpu_hours`` is the fluid lower bound for the work this run served."""

    policy: str
    knob: float
    min_replicas: int
    spec: str
    slo_attainment: float
    gpu_hours: float
    gpus_held_hours: float
    bound_gpu_hours: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "slo_attainment": self.slo_attainment,
            "gpu_hours": self.gpu_hours,
            "gpus_held_hours": self.gpus_held_hours,
            "knob": None if math.isnan(self.knob) else self.knob,
            "min_replicas": self.min_replicas,
            "spec": self.spec,
            "bound_gpu_hours": self.bound_gpu_hours,
        }


Job = tuple[str, int, str, float, SimConfig]
"""(spec set, min replicas, policy, knob or NaN for the default, config)."""
Workloads = dict[tuple[str, int], Workload]


def run_job(workloads: Workloads, job: Job) -> Point:
    """One sweep point on the prepared workload ``job`` names (top-level and picklable: the executor sends
    ``workloads`` to each worker once, not per job)."""
    spec, lo, name, knob, config = job
    w = workloads[(spec, lo)]
    result = run_policy(w, name, config, knob=None if math.isnan(knob) else knob)
    s = summarize(result)
    return Point(name, knob, lo, spec, s.slo_attainment, s.gpu_hours, s.gpus_held_hours, fluid_bound_hours(w, result))


def _run_jobs(
    jobs: Sequence[Job], workloads: Workloads, executor: Executor, progress: Callable[[int], None] | None
) -> list[Point]:
    """Run ``jobs`` on ``executor``, results in the order of the list; ``progress(k)`` as k more finish."""
    seen = 0

    def advance(done: int, total: int) -> None:
        nonlocal seen
        if progress is not None and done > seen:
            progress(done - seen)
        seen = max(seen, done)

    return executor.map(run_job, workloads, list(jobs), advance)


def coarse_grid(name: str, n: int = COARSE) -> list[float]:
    lo, hi, default = KNOB_RANGES[name]
    grid = {float(f"{x:.4g}") for x in np.geomspace(lo, hi, n)}
    return sorted(grid | {default})


def refine_grid(points: Sequence[Point], target: float, n: int = REFINE) -> list[float]:
    """Knob values log-spaced between neighbouring knobs whose attainments bracket ``target``; where no point
    reaches ``target`` and the best one is at an end of the grid, ``n`` values extending the grid one decade
    beyond that end (the baseline gets the chance to reach it)."""
    pts = sorted(points, key=lambda p: p.knob)
    have = {p.knob for p in pts}
    out: list[float] = []

    def add(xs: Any) -> None:
        for x in xs:
            v = float(f"{x:.4g}")
            if v not in have:
                out.append(v)
                have.add(v)

    for a, b in itertools.pairwise(pts):
        if (a.slo_attainment >= target) != (b.slo_attainment >= target):
            add(np.geomspace(a.knob, b.knob, n + 2)[1:-1])
    if pts and all(p.slo_attainment < target for p in pts):
        best = max(pts, key=lambda p: (p.slo_attainment, -p.gpu_hours))
        if best is pts[0]:
            add(np.geomspace(best.knob / 10.0, best.knob, n + 1)[:-1])
        elif best is pts[-1]:
            add(np.geomspace(best.knob, best.knob * 10.0, n + 1)[1:])
    return out


def run_sweep(
    workload: Workload,
    names: Sequence[str],
    config: SimConfig,
    progress: Callable[[float], None] | None = None,
    workers: int | None = None,
    executor: Executor | None = None,
) -> dict[str, list[Point]]:
    """Every point of every policy in ``names`` (baselines refined near shadowscale's default attainment), run on
    ``executor`` (default: ``workers`` local processes, at most 2 when not given)."""
    lo_sets = sorted({lo for n in names for lo in MIN_REPLICAS.get(n, (0,))})
    # a trace whose models have one measured spec each (the LLMs) has one spec set: traced
    specs = SPEC_SETS if any(s.specs for s in workload.services) else ("traced",)
    workloads = {(spec, lo): prepare(workload, spec, lo, config.warmup_s) for spec in specs for lo in lo_sets}
    jobs: list[Job] = []
    ours_spec = specs[-1]  # right-sized where there is a choice
    # the longest jobs (the oracle's passes) and the point the refinement waits for go first
    if "oracle" in names:
        jobs.append((ours_spec, 0, "oracle", math.nan, config))
    if OURS in names:
        jobs.append((ours_spec, 0, OURS, OURS_DEFAULT, config))
    for name in names:
        if name == OURS:
            jobs += [
                (sp, lo, name, k, config)
                for sp in specs
                for lo in MIN_REPLICAS[name]
                for k in (OURS_KNOBS if sp == ours_spec else (OURS_DEFAULT,))
                if (sp, lo, k) != (ours_spec, 0, OURS_DEFAULT)
            ]
        elif name in BASELINES:
            for sp in specs:
                for lo in MIN_REPLICAS[name]:
                    jobs += [(sp, lo, name, k, config) for k in coarse_grid(name)]
        elif name != "oracle":
            jobs.append(("traced", lo_sets[0], name, math.nan, config))
    ex = executor or LocalExecutor(workers or max(1, min(2, os.cpu_count() or 1)))
    total = len(jobs) + sum(2 * REFINE for n in names if n in BASELINES) * len(specs)
    done = 0

    def tick(k: int) -> None:
        nonlocal done
        done += k
        if progress:
            progress(min(done / total, 1.0))

    points = _run_jobs(jobs, workloads, ex, tick)
    target = _ours_default(points)
    if target is not None:
        more: list[Job] = []
        for name in names:
            if name not in BASELINES:
                continue
            for sp in specs:
                for lo in MIN_REPLICAS[name]:
                    curve = [p for p in points if (p.policy, p.spec, p.min_replicas) == (name, sp, lo)]
                    more += [(sp, lo, name, k, config) for k in refine_grid(curve, target.slo_attainment)]
        points += _run_jobs(more, workloads, ex, tick)
    if progress:
        progress(1.0)
    out: dict[str, list[Point]] = {n: [] for n in names}
    for p in points:
        out[p.policy].append(p)
    for pts in out.values():
        pts.sort(key=lambda p: (p.spec, p.min_replicas, p.knob))
    return out


def _ours_default(points: Sequence[Point]) -> Point | None:
    """shadowscale at its default: headroom 2, min replicas 0, right-sized (traced where there is no choice)."""
    mine = [p for p in points if (p.policy, p.knob, p.min_replicas) == (OURS, OURS_DEFAULT, 0)]
    return min(mine, key=lambda p: p.spec != "rightsized", default=None)


def frontier(points: Sequence[Point], key: str = "gpu_hours") -> list[Point]:
    """The Pareto frontier: points no other point beats on both attainment (higher) and cost (lower), by
    ascending attainment."""
    out: list[Point] = []
    for p in sorted(points, key=lambda p: (-p.slo_attainment, float(getattr(p, key)))):
        if not out or float(getattr(p, key)) < float(getattr(out[-1], key)):
            out.append(p)
    return out[::-1]


def cost_at(points: Sequence[Point], slo: float, key: str = "gpu_hours") -> Point | None:
    """The cheapest point at or above ``slo`` (the frontier read at ``slo``); None when none reaches it."""
    ok = [p for p in points if p.slo_attainment >= slo - 1e-12]
    return min(ok, key=lambda p: float(getattr(p, key))) if ok else None


def fair_ratio(sweep: Mapping[str, Sequence[Point]]) -> dict[str, Any] | None:
    """shadowscale's cost at its default over the best baseline frontier at its attainment (None if it did not
    run); a ratio is None where no baseline reaches that attainment."""
    ours = _ours_default(sweep.get(OURS, ()))
    if ours is None:
        return None
    out: dict[str, Any] = {"slo_attainment": ours.slo_attainment, "best_baseline": None}
    for key in ("gpu_hours", "gpus_held_hours"):
        best: tuple[str, Point] | None = None
        for name in BASELINES:
            p = cost_at(sweep.get(name, ()), ours.slo_attainment, key)
            if p is not None and (best is None or float(getattr(p, key)) < float(getattr(best[1], key))):
                best = (name, p)
        mine = float(getattr(ours, key))
        out[key] = None if best is None else mine / float(getattr(best[1], key))
        out[f"best_baseline_point_{key}"] = None if best is None else {"policy": best[0], **best[1].as_dict()}
        if key == "gpu_hours":
            out["best_baseline"] = None if best is None else best[0]
    return out


def summary_entries(sweep: Mapping[str, Sequence[Point]], bound_all_hours: float) -> dict[str, Any]:
    """What ``summary.json`` carries for a sweep: every point, each policy's frontier, the references,
    ``fair_ratio`` and shadowscale's default over the oracle and the bound (``shadowscale_vs_references``)."""
    doc: dict[str, Any] = {
        "sweep": {n: [p.as_dict() for p in pts] for n, pts in sweep.items()},
        "frontier": {n: [p.as_dict() for p in frontier(pts)] for n, pts in sweep.items() if n != "oracle"},
        "fair_ratio": fair_ratio(sweep),
    }
    bound_points = [p for pts in sweep.values() for p in pts]
    doc["bound"] = {
        "gpu_hours_all_work": bound_all_hours,
        "max_over_points_of_bound_over_gpu_hours": max(
            (p.bound_gpu_hours / p.gpu_hours for p in bound_points if p.gpu_hours > 0), default=None
        ),
        "points_checked": len(bound_points),
    }
    if sweep.get("oracle"):
        doc["oracle"] = sweep["oracle"][0].as_dict()
    ours = _ours_default(sweep.get(OURS, ()))
    if ours is not None:
        oracle = sweep["oracle"][0] if sweep.get("oracle") else None
        doc["shadowscale_vs_references"] = reference_ratios(
            (ours.gpu_hours, ours.gpus_held_hours),
            None if oracle is None else (oracle.gpu_hours, oracle.gpus_held_hours),
            bound_all_hours,
            ours.bound_gpu_hours,
        )
    return doc


def plot_sweep(path: Path, sweep: Mapping[str, Sequence[Point]], trace: str) -> Path:
    try:
        import matplotlib
    except ImportError as e:
        raise MissingExtra("plots", "sim", "matplotlib") from e

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    colors = {name: f"C{i}" for i, name in enumerate(sweep)}
    for ax, spec in zip(axes, SPEC_SETS, strict=True):
        for name, pts in sweep.items():
            for lo in sorted({p.min_replicas for p in pts}):
                sel = sorted(
                    (p for p in pts if p.spec == spec and p.min_replicas == lo), key=lambda p: p.slo_attainment
                )
                if not sel:
                    continue
                ax.plot(
                    [_nines(p.slo_attainment) for p in sel],
                    [p.gpu_hours for p in sel],
                    marker="o" if lo else "x",
                    markersize=3,
                    color=colors[name],
                    linestyle="-" if lo else ":",
                    label=f"{name} min {lo}",
                )
        ax.axvline(_nines(0.999), color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlabel("SLO attainment (nines: 1 = 90 %, 2 = 99 %, 3 = 99.9 %)")
        ax.set_title(f"{spec} specs")
        ax.grid(True, alpha=0.3)
        ax.set_yscale("log")
    axes[0].set_ylabel("GPU-hours (log)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"GPU-hours against SLO attainment: knob × min replicas × spec set — {trace}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _nines(slo: float) -> float:
    return -math.log10(max(1.0 - slo, 1e-6))
