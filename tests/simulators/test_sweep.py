"""The sweep comparison: Pareto frontiers interpolated at equal SLO attainment, and the split of the gain into
right-sizing and scaling."""

from __future__ import annotations

import pytest

from shadowscale.simulators.sweep import Point, compare, cost_at


def pts(*xs: tuple[float, float, float]) -> list[Point]:
    return [Point(k, s, c, c) for k, s, c in xs]


def test_cost_at_interpolates_the_pareto_frontier_and_ignores_dominated_points() -> None:
    p = pts((0.3, 0.99, 100.0), (0.5, 0.98, 60.0), (0.7, 0.97, 80.0), (0.9, 0.95, 20.0))  # 0.7 is dominated
    assert cost_at(p, 0.99) == pytest.approx(100.0)
    assert cost_at(p, 0.985) == pytest.approx(80.0)
    assert cost_at(p, 0.97) == pytest.approx(20.0 + 40.0 * (0.02 / 0.03))
    assert cost_at(p, 0.90) == pytest.approx(20.0)
    assert cost_at(p, 0.995) is None


def test_compare_at_our_slo_and_the_split_where_right_sized_baselines_reach_it() -> None:
    plain = {"hpa": pts((0.3, 0.999, 200.0), (0.9, 0.99, 100.0)), "shadowscale": pts((2.0, 0.995, 40.0))}
    sized = {"hpa": pts((0.3, 0.999, 100.0), (0.9, 0.99, 50.0))}
    c = compare(plain, sized)
    g = c["gpu_hours"]
    assert g["best_baseline"] == "hpa"
    hpa_at = 100.0 + 100.0 * (0.005 / 0.009)
    rs_at = 50.0 + 50.0 * (0.005 / 0.009)
    assert g["ratio_to_best_baseline"] == pytest.approx(40.0 / hpa_at)
    assert g["split_at_slo"] == pytest.approx(0.995)
    assert g["right_sizing_gain"] == pytest.approx(hpa_at / rs_at)
    assert g["scaling_gain"] == pytest.approx(rs_at / 40.0)


def test_split_falls_back_to_the_best_slo_the_right_sized_baselines_reach() -> None:
    """No right-sized baseline reaches our 99.9 %: the split is measured at their best (99.5 %), where our cost is
    read off our own sweep."""
    plain = {
        "hpa": pts((0.1, 0.9995, 300.0), (0.5, 0.99, 200.0)),
        "shadowscale": pts((0.0, 0.996, 30.0), (2.0, 0.999, 40.0), (4.0, 0.9995, 50.0)),
    }
    sized = {"hpa": pts((0.1, 0.995, 90.0), (0.5, 0.99, 80.0))}
    g = compare(plain, sized)["gpu_hours"]
    assert g["ratio_to_best_right_sized_baseline"] is None
    assert g["split_at_slo"] == pytest.approx(0.995)
    hpa_at = 200.0 + 100.0 * (0.005 / 0.0095)
    assert g["right_sizing_gain"] == pytest.approx(hpa_at / 90.0)
    assert g["scaling_gain"] == pytest.approx(90.0 / 30.0)
