"""Results to files: ``summary.json``, one time-series CSV per policy, and PNG plots drawn from those CSVs."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from shadowscale.errors import MissingExtra
from shadowscale.policies.types import FloatArray
from shadowscale.simulators.engine import SimResult
from shadowscale.simulators.run import PolicySummary
from shadowscale.simulators.workload import Workload

BIN_S = 60.0
COLUMNS = ("t_s", "arrivals_per_s", "replicas", "ready_replicas", "gpus", "slo_attainment", "dropped")


def timeseries(result: SimResult, workload: Workload, bin_s: float = BIN_S) -> dict[str, FloatArray]:
    """Per ``bin_s`` bin: demand, mean replicas/ready/GPUs over the policy's ticks, SLO attainment, drops."""
    n_bins = max(1, int(np.ceil(workload.duration_s / bin_s - 1e-9)))
    b_req = np.minimum((workload.arrival_s // bin_s).astype(np.int64), n_bins - 1)
    arrivals = np.bincount(b_req, minlength=n_bins).astype(np.float64)
    met = np.bincount(b_req, weights=result.met.astype(np.float64), minlength=n_bins)
    dropped = np.bincount(b_req, weights=result.dropped.astype(np.float64), minlength=n_bins)
    b_tick = np.minimum((result.tick_t // bin_s).astype(np.int64), n_bins - 1)
    ticks = np.maximum(np.bincount(b_tick, minlength=n_bins), 1)

    def mean(x: Any) -> FloatArray:
        out: FloatArray = np.bincount(b_tick, weights=np.asarray(x, np.float64), minlength=n_bins) / ticks
        return out

    # A policy that ticks less often than the bin leaves bins without ticks: carry its last value forward.
    has = np.bincount(b_tick, minlength=n_bins) > 0
    idx = np.maximum.accumulate(np.where(has, np.arange(n_bins), 0))
    return {
        "t_s": np.arange(n_bins) * bin_s,
        "arrivals_per_s": arrivals / bin_s,
        "replicas": mean(result.tick_replicas)[idx],
        "ready_replicas": mean(result.tick_ready)[idx],
        "gpus": mean(result.tick_gpu)[idx],
        "slo_attainment": np.divide(met, arrivals, out=np.ones(n_bins), where=arrivals > 0),
        "dropped": dropped,
    }


def write_timeseries(path: Path, series: Mapping[str, FloatArray]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for row in zip(*(series[c] for c in COLUMNS), strict=True):
            w.writerow([f"{v:.6g}" for v in row])


def read_timeseries(path: Path) -> dict[str, FloatArray]:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {c: np.array([float(r[c]) for r in rows]) for c in COLUMNS}


def reference_ratios(
    ours: tuple[float, float],
    oracle: tuple[float, float] | None,
    bound_all_hours: float | None,
    bound_served_hours: float | None,
) -> dict[str, Any]:
    """shadowscale's cost over the references', as ``summary.json`` carries it (``shadowscale_vs_references``).

    ``ours`` and ``oracle`` are (GPU-hours, GPUs-held hours). ``to_oracle``: over the oracle's cost in both measures;
    ``to_bound``: GPU-hours over the fluid bound for all of the trace's work and for the work this run served. A
    reference that did not run, or costs nothing, gives None.
    """

    def over(a: float, b: float | None) -> float | None:
        return None if b is None or b <= 0.0 else a / b

    return {
        "to_oracle": {
            "gpu_hours": over(ours[0], None if oracle is None else oracle[0]),
            "gpus_held_hours": over(ours[1], None if oracle is None else oracle[1]),
        },
        "to_bound": {
            "gpu_hours_all_work": over(ours[0], bound_all_hours),
            "gpu_hours_for_served_work": over(ours[0], bound_served_hours),
        },
    }


def write_summary(
    out: Path,
    workload: Workload,
    seed: int,
    summaries: Mapping[str, PolicySummary],
    wall_s: float,
    config: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    doc = {
        "trace": workload.name,
        "seed": seed,
        "policies": {name: s.as_dict() for name, s in summaries.items()},
        "wall_s": wall_s,
        "config": dict(config),
        **(extra or {}),
    }
    path = out / "summary.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def plot(out: Path, results: Mapping[str, SimResult], trace_name: str) -> list[Path]:
    """Replicas and demand over time, and the latency CDF per policy, from the CSVs in ``out``."""
    try:
        import matplotlib
    except ImportError as e:
        raise MissingExtra("plots", "sim", "matplotlib") from e

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(11, 5))
    ax2 = ax.twinx()
    demand_drawn = False
    for name in results:
        series = read_timeseries(out / f"timeseries_{name}.csv")
        hours = series["t_s"] / 3600.0
        ax.step(hours, series["replicas"], where="post", label=name, linewidth=1.0)
        if not demand_drawn:
            ax2.fill_between(hours, series["arrivals_per_s"], step="post", color="grey", alpha=0.25, label="demand")
            demand_drawn = True
    ax.set_xlabel("time (h)")
    ax.set_ylabel("replicas (all models)")
    ax2.set_ylabel("demand (requests/s)")
    ax.set_title(f"Replicas and demand over time — {trace_name}")
    lines, labels = ax.get_legend_handles_labels()
    l2, lb2 = ax2.get_legend_handles_labels()
    ax.legend(lines + l2, labels + lb2, loc="upper left", fontsize=8)
    fig.tight_layout()
    p = out / "replicas_demand.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(7, 5))
    for name, r in results.items():
        lat = np.sort(np.where(r.dropped, np.inf, r.latency_s)) * 1000.0
        if lat.size == 0:
            continue
        y = np.arange(1, lat.size + 1) / lat.size
        finite = np.isfinite(lat)
        step = max(1, int(finite.sum()) // 4000)
        ax.plot(lat[finite][::step], y[finite][::step], label=f"{name} (dropped {int(r.dropped.sum())})")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log)")
    ax.set_ylabel("share of requests")
    ax.set_title(f"Latency CDF — {trace_name} (dropped requests never reach 1.0)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = out / "latency_cdf.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths
