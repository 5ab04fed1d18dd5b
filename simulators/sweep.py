"""``--sweep``: each policy across its main knob, GPU-hours against SLO attainment, and the comparison at equal SLO.

Two comparisons: the baselines on the traced specs (whole GPUs), and the baselines on the right-sized specs
shadowscale chooses, so the gain from scaling and the gain from right-sizing show apart. At shadowscale's SLO
attainment each baseline's cost is read off its Pareto frontier (the cheapest sweep point at least as good,
interpolated linearly between frontier points); a baseline that never reaches it has no cost there.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shadowscale.errors import MissingExtra
from shadowscale.simulators.engine import SimConfig
from shadowscale.simulators.executor import Executor, LocalExecutor
from shadowscale.simulators.run import right_sized, run_policy, summarize
from shadowscale.simulators.workload import Workload

KNOBS: dict[str, tuple[float, ...]] = {
    "hpa": (0.1, 0.2, 0.3, 0.5, 0.7, 0.9),  # target GPU utilization (down to 0.1: its frontier must reach 99.9 %)
    "keda": (1.0, 3.0, 10.0, 30.0),  # lagThreshold
    "kpa": (1.0, 5.0, 20.0, 100.0),  # target concurrency per replica
    "shadowscale": (0.0, 1.0, 2.0, 4.0, 8.0, 16.0),  # headroom (standard deviations)
}
"""The main knob of each policy and the values swept (each includes the system's default)."""
BASELINES = ("hpa", "keda", "kpa")


@dataclass(frozen=True, slots=True)
class Point:
    knob: float
    slo_attainment: float
    gpu_hours: float
    gpus_held_hours: float

    def as_dict(self) -> dict[str, float]:
        return {
            "knob": self.knob,
            "slo_attainment": self.slo_attainment,
            "gpu_hours": self.gpu_hours,
            "gpus_held_hours": self.gpus_held_hours,
        }


def _one(args: tuple[Workload, str, float, SimConfig]) -> Point:
    workload, name, knob, config = args
    s = summarize(run_policy(workload, name, config, knob=None if math.isnan(knob) else knob))
    return Point(knob, s.slo_attainment, s.gpu_hours, s.gpus_held_hours)


def _one_of(shared: tuple[Workload, Workload], job: tuple[int, str, float, SimConfig]) -> Point:
    """:func:`_one` on the workload ``job[0]`` names in ``shared`` (sent to each worker once, not per job)."""
    which, name, knob, config = job
    return _one((shared[which], name, knob, config))


def run_sweep(
    workload: Workload,
    names: Sequence[str],
    config: SimConfig,
    progress: Callable[[float], None] | None = None,
    workers: int | None = None,
    executor: Executor | None = None,
) -> tuple[dict[str, list[Point]], dict[str, list[Point]]]:
    """(sweep on the traced specs, sweep of the baselines on right-sized specs). Runs on ``executor`` (default:
    ``workers`` local processes, at most 2 when not given)."""
    rs = right_sized(workload)
    jobs: list[tuple[str, bool, tuple[Workload, str, float, SimConfig]]] = []
    for name in names:
        for knob in KNOBS.get(name, (math.nan,)):
            jobs.append((name, False, (workload, name, knob, config)))
            if name in BASELINES:
                jobs.append((name, True, (rs, name, knob, config)))
    plain: dict[str, list[Point]] = {n: [] for n in names}
    sized: dict[str, list[Point]] = {n: [] for n in names if n in BASELINES}
    ex = executor or LocalExecutor(workers or 2)
    items = [(int(a[0] is rs), a[1], a[2], a[3]) for _, _, a in jobs]
    results = ex.map(_one_of, (workload, rs), items, None if progress is None else lambda d, t: progress(d / t))
    for (name, is_sized, _), point in zip(jobs, results, strict=True):
        (sized if is_sized else plain)[name].append(point)
    return plain, sized


def cost_at(points: Sequence[Point], slo: float, key: str = "gpu_hours") -> float | None:
    """The cheapest cost reaching ``slo`` on the points' Pareto frontier, interpolated; None if never reached."""
    pts = sorted(points, key=lambda p: p.slo_attainment)
    frontier: list[tuple[float, float]] = []
    for p in reversed(pts):  # from the best SLO down: keep points cheaper than every better one
        c = float(getattr(p, key))
        if not frontier or c < frontier[-1][1]:
            frontier.append((p.slo_attainment, c))
    frontier.reverse()  # ascending SLO, ascending cost
    if not frontier or slo > frontier[-1][0] + 1e-12:
        return None
    if slo <= frontier[0][0]:
        return frontier[0][1]
    for (s0, c0), (s1, c1) in itertools.pairwise(frontier):
        if s0 <= slo <= s1:
            return c0 + (c1 - c0) * (slo - s0) / (s1 - s0) if s1 > s0 else c1
    return frontier[-1][1]


def compare(
    plain: Mapping[str, Sequence[Point]], sized: Mapping[str, Sequence[Point]], ours: str = "shadowscale"
) -> dict[str, Any]:
    """shadowscale's default point against the baselines at equal SLO attainment, both cost measures."""
    if ours not in plain or not plain[ours]:
        return {}
    default = dict(zip(KNOBS[ours], plain[ours], strict=False)).get(2.0, plain[ours][0])
    slo = default.slo_attainment
    out: dict[str, Any] = {"policy": ours, "knob": default.knob, "slo_attainment": slo}
    for key in ("gpu_hours", "gpus_held_hours"):
        mine = float(getattr(default, key))
        base = {n: cost_at(plain[n], slo, key) for n in BASELINES if n in plain}
        base_rs = {n: cost_at(sized[n], slo, key) for n in BASELINES if n in sized}
        reached = {n: c for n, c in base.items() if c is not None}
        reached_rs = {n: c for n, c in base_rs.items() if c is not None}
        best = min(reached.items(), key=lambda kv: kv[1]) if reached else None
        best_rs = min(reached_rs.items(), key=lambda kv: kv[1]) if reached_rs else None
        entry: dict[str, Any] = {
            "shadowscale": mine,
            "baselines_at_equal_slo": base,
            "baselines_right_sized_at_equal_slo": base_rs,
            "best_baseline": best[0] if best else None,
            "ratio_to_best_baseline": mine / best[1] if best else None,
            "ratio_to_best_right_sized_baseline": mine / best_rs[1] if best_rs else None,
        }
        if plain.get("oracle"):
            entry["ratio_to_oracle"] = mine / float(getattr(plain["oracle"][0], key))
        entry.update(_split(plain, sized, ours, slo, mine, key))
        # Where no baseline reaches our SLO: its best point, for the record.
        entry["baseline_best_points"] = {
            n: max(plain[n], key=lambda p: (p.slo_attainment, -getattr(p, key))).as_dict()
            for n in BASELINES
            if plain.get(n)
        }
        out[key] = entry
    return out


def _best_cost(sweeps: Mapping[str, Sequence[Point]], slo: float, key: str) -> float | None:
    costs = [c for n in BASELINES if sweeps.get(n) for c in [cost_at(sweeps[n], slo, key)] if c is not None]
    return min(costs) if costs else None


def _max_slo(sweeps: Mapping[str, Sequence[Point]]) -> float:
    return max((p.slo_attainment for n in BASELINES for p in sweeps.get(n, ())), default=0.0)


def _split(
    plain: Mapping[str, Sequence[Point]],
    sized: Mapping[str, Sequence[Point]],
    ours: str,
    slo: float,
    mine_at_slo: float,
    key: str,
) -> dict[str, float]:
    """The gain from right-sizing (best baseline / best right-sized baseline) and from scaling (best right-sized
    baseline / shadowscale), both at one SLO attainment: shadowscale's own, or — when no right-sized baseline
    reaches it — the highest one the right-sized baselines reach, with shadowscale's cost there read from its own
    sweep (``split_at_slo`` says which)."""
    at = min(slo, _max_slo(sized), _max_slo(plain))
    base = _best_cost(plain, at, key)
    base_rs = _best_cost(sized, at, key)
    mine = mine_at_slo if at >= slo else cost_at(plain[ours], at, key)
    if base is None or base_rs is None or mine is None or at <= 0.0:
        return {}
    return {"split_at_slo": at, "right_sizing_gain": base / base_rs, "scaling_gain": base_rs / mine}


def plot_sweep(
    path: Path, plain: Mapping[str, Sequence[Point]], sized: Mapping[str, Sequence[Point]], trace: str
) -> Path:
    try:
        import matplotlib
    except ImportError as e:
        raise MissingExtra("plots", "sim", "matplotlib") from e

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    panels = (("traced specs (whole GPUs)", plain), ("baselines on right-sized specs", {**plain, **sized}))
    for ax, (title, curves) in zip(axes, panels, strict=True):
        for name, pts in curves.items():
            if not pts:
                continue
            pts = sorted(pts, key=lambda p: p.slo_attainment)
            x = [_nines(p.slo_attainment) for p in pts]
            y = [p.gpu_hours for p in pts]
            ax.plot(x, y, marker="o", label=name)
            for p, xi, yi in zip(pts, x, y, strict=True):
                if not math.isnan(p.knob):
                    ax.annotate(f"{p.knob:g}", (xi, yi), fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.axvline(_nines(0.999), color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlabel("SLO attainment (nines: 1 = 90 %, 2 = 99 %, 3 = 99.9 %)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.set_yscale("log")
    axes[0].set_ylabel("GPU-hours (log)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"GPU-hours against SLO attainment across each policy's knob — {trace}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _nines(slo: float) -> float:
    return -math.log10(max(1.0 - slo, 1e-6))
