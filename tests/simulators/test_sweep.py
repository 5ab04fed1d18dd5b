"""The sweep: a fine knob grid refined near the compared attainment, Pareto frontiers read without interpolation,
and ``fair_ratio`` against the best baseline frontier point."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shadowscale.simulators.sweep import (
    COARSE,
    KNOB_RANGES,
    MIN_REPLICAS,
    Point,
    coarse_grid,
    cost_at,
    fair_ratio,
    frontier,
    refine_grid,
    summary_entries,
)


def pt(policy: str, knob: float, slo: float, cost: float, spec: str = "traced", lo: int = 1) -> Point:
    return Point(policy, knob, lo, spec, slo, cost, cost * 1.1, 0.0)


def test_coarse_grid_has_ten_log_spaced_values_and_the_default() -> None:
    for name, (lo, hi, default) in KNOB_RANGES.items():
        grid = coarse_grid(name)
        assert len(grid) >= COARSE >= 10
        assert grid[0] == pytest.approx(lo) and grid[-1] == pytest.approx(hi) and default in grid
        logs = np.diff(np.log([x for x in grid if x != default or default in np.geomspace(lo, hi, COARSE)]))
        assert logs.max() / logs.min() < 2.5  # log-spaced (the default may split one step)
    assert MIN_REPLICAS["keda"] == MIN_REPLICAS["kpa"] == (0, 1)


def test_refine_adds_values_between_the_knobs_that_bracket_the_target() -> None:
    curve = [pt("kpa", 1.0, 0.999, 10.0), pt("kpa", 10.0, 0.995, 5.0), pt("kpa", 100.0, 0.98, 2.0)]
    more = refine_grid(curve, 0.99)
    assert len(more) == 4 and all(10.0 < k < 100.0 for k in more)
    assert refine_grid(curve, 0.9) == []  # every point is above: nothing to refine
    # no point reaches 99.95 % and the best is the lowest knob: the grid goes one decade lower
    lower = refine_grid(curve, 0.9995)
    assert len(lower) == 4 and all(0.1 <= k < 1.0 for k in lower) and min(lower) == pytest.approx(0.1)


def test_frontier_and_cost_at_are_the_cheapest_point_at_or_above() -> None:
    """No interpolation: the cost at 98.5 % is the cheapest run reaching it (0.5 at 98 % does not)."""
    p = [
        pt("hpa", 0.3, 0.99, 100.0),
        pt("hpa", 0.5, 0.98, 60.0),
        pt("hpa", 0.7, 0.97, 80.0),
        pt("hpa", 0.9, 0.95, 20.0),
    ]
    assert [x.knob for x in frontier(p)] == [0.9, 0.5, 0.3]  # 0.7 is dominated
    assert cost_at(p, 0.985) is p[0]
    assert cost_at(p, 0.97) is p[1]
    assert cost_at(p, 0.995) is None


def test_fair_ratio_reads_every_baseline_spec_and_min_replicas() -> None:
    """The best baseline point may be on any spec set and any min replicas; catches a comparison against the
    traced specs only (it would pick KPA's 40)."""
    sweep = {
        "shadowscale": [pt("shadowscale", 2.0, 0.995, 20.0, "rightsized", 0), pt("shadowscale", 4.0, 0.999, 30.0)],
        "kpa": [pt("kpa", 1.0, 0.996, 40.0, "traced", 0), pt("kpa", 1.0, 0.9955, 25.0, "rightsized", 1)],
        "hpa": [pt("hpa", 0.1, 0.999, 100.0)],
        "keda": [pt("keda", 1.0, 0.99, 5.0, "rightsized", 0)],  # cheap but below our attainment
    }
    r = fair_ratio(sweep)
    assert r is not None
    assert r["best_baseline"] == "kpa"
    assert r["gpu_hours"] == pytest.approx(20.0 / 25.0)
    assert r["best_baseline_point_gpu_hours"]["spec"] == "rightsized"
    assert r["best_baseline_point_gpu_hours"]["min_replicas"] == 1
    none = fair_ratio({"shadowscale": sweep["shadowscale"], "hpa": [pt("hpa", 0.1, 0.99, 1.0)]})
    assert none is not None and none["gpu_hours"] is None and none["best_baseline"] is None


def test_summary_entries_carry_frontier_bound_oracle_and_fair_ratio() -> None:
    sweep = {
        "shadowscale": [pt("shadowscale", 2.0, 0.995, 20.0, "rightsized", 0)],
        "hpa": [pt("hpa", 0.1, 0.999, 100.0), pt("hpa", 0.5, 0.99, 200.0)],
        "oracle": [Point("oracle", math.nan, 0, "rightsized", 1.0, 10.0, 11.0, 1.0)],
    }
    doc = summary_entries(sweep, 1.5)
    assert set(doc) >= {"sweep", "frontier", "fair_ratio", "bound", "oracle"}
    assert [p["knob"] for p in doc["frontier"]["hpa"]] == [0.1]
    for pts in doc["frontier"].values():
        for p in pts:
            assert set(p) >= {"slo_attainment", "gpu_hours", "gpus_held_hours", "knob", "min_replicas", "spec"}
            assert p["spec"] in ("traced", "rightsized")
    assert doc["oracle"]["knob"] is None and doc["bound"]["gpu_hours_all_work"] == 1.5


def test_summary_entries_carry_shadowscales_ratio_to_oracle_and_bound() -> None:
    """Its default point (headroom 2, min 0, right-sized) over the oracle's cost in both measures and over the fluid
    bound for all work and for the work it served. Catches a ratio read off another shadowscale point (the
    headroom-4 one costs 30), inverted ratios, or the held measure divided by GPU-hours."""
    ours = Point("shadowscale", 2.0, 0, "rightsized", 0.995, 20.0, 25.0, 4.0)
    sweep = {
        "shadowscale": [pt("shadowscale", 4.0, 0.999, 30.0, "rightsized", 0), ours],
        "oracle": [Point("oracle", math.nan, 0, "rightsized", 1.0, 10.0, 12.5, 1.0)],
    }
    refs = summary_entries(sweep, 2.0)["shadowscale_vs_references"]
    assert refs["to_oracle"] == {"gpu_hours": pytest.approx(2.0), "gpus_held_hours": pytest.approx(2.0)}
    assert refs["to_bound"] == {"gpu_hours_all_work": pytest.approx(10.0), "gpu_hours_for_served_work": 5.0}
    no_oracle = summary_entries({"shadowscale": [ours]}, 0.0)["shadowscale_vs_references"]
    assert no_oracle["to_oracle"]["gpu_hours"] is None and no_oracle["to_bound"]["gpu_hours_all_work"] is None
    assert "shadowscale_vs_references" not in summary_entries({"hpa": [pt("hpa", 0.1, 0.99, 1.0)]}, 1.0)
