"""Search spaces, pricing and the objective: valid ones behave, empty or contradictory ones are clear errors."""

from __future__ import annotations

import math

import pytest

from shadowscale.policies.profiling.config import apply_annotations
from shadowscale.policies.profiling.objective import CostTerm, Objective, Pricing
from shadowscale.policies.profiling.space import Categorical, Levels, Range, SearchSpace
from shadowscale.policies.profiling.types import TrialResult, TrialStatus

GPU = Categorical("gpu_type", ("T4", "A100"))
SHARE = Levels("gpu_fraction", (0.25, 0.5, 1.0))
CPU = Levels("cpu", (1, 2, 4), integer=True)


def test_product_forbid_and_points() -> None:
    space = SearchSpace((GPU, SHARE, CPU), forbid=({"gpu_type": "T4", "gpu_fraction": 0.25},))
    configs = space.enumerate()
    assert len(configs) == 2 * 3 * 3 - 3
    assert ("T4", 0.25, 1) not in configs and ("A100", 0.25, 1) in configs
    assert space.point({"cpu": 2.0, "gpu_type": "A100", "gpu_fraction": 1}) == ("A100", 1.0, 2)
    assert space.config(("A100", 1.0, 2)) == {"gpu_type": "A100", "gpu_fraction": 1.0, "cpu": 2}
    assert space.contains(("A100", 0.5, 4)) and not space.contains(("T4", 0.25, 4))
    assert not space.contains(("H100", 0.5, 4)) and not space.contains(("A100", 0.3, 4))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: SearchSpace(()), "no dimensions"),
        (lambda: SearchSpace((Categorical("gpu", ()),)), "has no values"),
        (lambda: SearchSpace((Levels("batch", ()),)), "has no levels"),
        (lambda: SearchSpace((Levels("batch", (4, 2)),)), "must be increasing"),
        (lambda: SearchSpace((Levels("batch", (0, 2), log=True),)), "log-scaled"),
        (lambda: SearchSpace((Range("cpu", 4, 2),)), "empty or contradictory"),
        (lambda: SearchSpace((Range("cpu", 1.2, 1.8, integer=True),)), "contains no integer"),
        (lambda: SearchSpace((CPU, Levels("cpu", (1.0,)))), "names repeat"),
        (lambda: SearchSpace((GPU,), forbid=({"gpu_type": "T4"}, {"gpu_type": "A100"})), "contradictory"),
        (lambda: SearchSpace((GPU,), forbid=({"gpu": "T4"},)), "unknown dimension"),
        (lambda: SearchSpace((GPU,), forbid=({"gpu_type": "H100"},)), "not in dimension"),
        (lambda: SearchSpace((GPU,), candidates=()), "no candidate"),
        (lambda: SearchSpace((GPU,), candidates=(("H100",),)), "not in dimension"),
        (lambda: SearchSpace((GPU,), candidates=(("T4",), ("T4",))), "listed twice"),
        (lambda: SearchSpace((GPU,), forbid=({"gpu_type": "T4"},), candidates=(("T4",),)), "contradictory"),
    ],
)
def test_empty_or_contradictory_spaces_are_clear_errors(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]


def test_pricing_per_core_and_per_gpu_type() -> None:
    space = SearchSpace((GPU, SHARE, CPU))
    pricing = Pricing(
        (CostTerm("cpu", 0.05), CostTerm("gpu_fraction", price_by="gpu_type", prices={"T4": 0.5, "A100": 3.0})),
        base=0.1,
    )
    pricing.validate(space)
    assert pricing.cost(space, ("A100", 0.5, 4)) == pytest.approx(0.1 + 4 * 0.05 + 0.5 * 3.0)
    assert Pricing().cost(space, ("T4", 1.0, 1)) == 1.0
    with pytest.raises(ValueError, match="no price"):
        Pricing((CostTerm("gpu_fraction", price_by="gpu_type", prices={"T4": 1.0}),)).validate(space)
    with pytest.raises(ValueError, match="categorical"):
        Pricing((CostTerm("gpu_type"),)).validate(space)
    with pytest.raises(ValueError, match="unknown dimension"):
        Pricing((CostTerm("memory"),)).validate(space)


def test_objective_value_margin_and_feasibility() -> None:
    space = SearchSpace((CPU,))
    obj = Objective(100.0, Pricing((CostTerm("cpu", 1.0),)))
    ok = TrialResult(TrialStatus.MEASURED, throughput=40.0, p99_ms=80.0)
    slow = TrialResult(TrialStatus.MEASURED, throughput=90.0, p99_ms=150.0)
    failed = TrialResult.failed("crashed")
    assert obj.value(space, (4,), ok) == pytest.approx(10.0)
    assert obj.value(space, (4,), slow) is None and obj.log_value(space, (4,), slow) == pytest.approx(math.log(22.5))
    assert obj.margin(slow) == pytest.approx(math.log(1.5)) and obj.margin(failed) is None
    assert not obj.feasible(failed) and obj.log_value(space, (1,), failed) is None
    priced = TrialResult(TrialStatus.MEASURED, throughput=40.0, p99_ms=80.0, cost=8.0)
    assert obj.value(space, (4,), priced) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="slo_ms"):
        Objective(0.0)


CONFIG = {
    "slo_ms": 200,
    "dimensions": [
        {"name": "cpu", "levels": [1, 2, 4, 8], "log": True},
        {"name": "gpu_type", "choices": ["T4", "A100"]},
        {"name": "gpu_fraction", "levels": [0.25, 0.5, 1.0]},
        {"name": "threads", "range": [1, 16], "integer": True},
    ],
    "forbid": [{"gpu_type": "T4", "gpu_fraction": 0.25}],
    "pricing": {
        "terms": [
            {"dimension": "cpu", "price": 0.03},
            {"dimension": "gpu_fraction", "price_by": "gpu_type", "prices": {"T4": 0.35, "A100": 2.9}},
        ]
    },
}


def test_space_and_objective_from_config_and_annotations() -> None:
    space, objective = apply_annotations(CONFIG, {})
    assert space.names == ("cpu", "gpu_type", "gpu_fraction", "threads") and not space.is_finite
    assert objective.slo_ms == 200 and objective.pricing.cost(space, (2, "A100", 0.5, 4)) == pytest.approx(1.51)
    space, objective = apply_annotations(
        CONFIG,
        {
            "profiling.shadowscale.io/slo-ms": "150",
            "profiling.shadowscale.io/dim.gpu_type": "A100",
            "profiling.shadowscale.io/dim.threads": "2..4",
            "other.io/ignored": "x",
        },
    )
    assert objective.slo_ms == 150 and space.dimension("gpu_type") == Categorical("gpu_type", ("A100",))
    assert space.dimension("threads") == Range("threads", 2, 4, integer=True) and space.forbid == ()
    with pytest.raises(ValueError, match=r"dim\.memory: no dimension 'memory'"):
        apply_annotations(CONFIG, {"profiling.shadowscale.io/dim.memory": "1"})
    with pytest.raises(ValueError, match="slo_ms is required"):
        apply_annotations({"dimensions": CONFIG["dimensions"]}, {})
    with pytest.raises(ValueError, match="exactly one of levels, choices, range"):
        apply_annotations({**CONFIG, "dimensions": [{"name": "cpu", "levels": [1], "range": [1, 2]}]}, {})
    with pytest.raises(ValueError, match="contradictory"):
        apply_annotations(CONFIG, {"profiling.shadowscale.io/dim.threads": "9..3"})
