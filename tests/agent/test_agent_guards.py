"""Guard rails, table-driven: min/max always win; cooldowns, max step and the GPU budget leave a note."""

from __future__ import annotations

import math

import pytest

from shadowscale.agent.config import GuardConfig
from shadowscale.agent.guards import Guards, Proposal


def guards(**kw: float | int | None) -> Guards:
    return Guards(GuardConfig(**kw), lo=[1, 0, 2], hi=[10, 10, 4], gpu_fraction=[1.0, 0.5, 1.0])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "proposals", "in_use", "expected"),
    [
        ({}, [(0, 2, 8)], 0.0, [(0, 8, None)]),
        ({}, [(0, 2, 50)], 0.0, [(0, 10, "min/max 1..10")]),
        ({}, [(2, 3, 0)], 0.0, [(2, 2, "min/max 2..4")]),
        ({"max_step": 2}, [(0, 2, 8), (1, 6, 1)], 0.0, [(0, 4, "max step 2"), (1, 4, "max step 2")]),
        # budget 10 GPUs, 8 in use: model 1 frees 2 x 0.5, so model 0 may add 3
        ({"gpu_budget": 10.0}, [(0, 2, 8), (1, 4, 2)], 8.0, [(0, 5, "GPU budget 10 (3.00 GPUs left)"), (1, 2, None)]),
        ({"gpu_budget": 4.0}, [(0, 4, 6)], 6.0, [(0, 4, "GPU budget 4 (0.00 GPUs left)")]),
        # the budget never pushes a model below its minimum
        ({"gpu_budget": 0.0}, [(2, 1, 3)], 9.0, [(2, 2, "min/max 2..4")]),
    ],
)
def test_table(
    kw: dict[str, float], proposals: list[tuple[int, int, int]], in_use: float, expected: list[tuple[int, int, str]]
) -> None:
    g = guards(**kw)
    out = g.apply(100.0, [Proposal(*p) for p in proposals], in_use)
    assert [(o.index, o.target, o.note) for o in out] == expected


def test_cooldowns_run_from_the_last_change() -> None:
    g = guards(scale_up_cooldown_s=5.0, scale_down_cooldown_s=60.0)
    assert g.last_change[0] == -math.inf
    assert g.apply(0.0, [Proposal(0, 2, 5)], 0.0)[0].target == 5
    g.changed(0, 0.0)
    up = g.apply(3.0, [Proposal(0, 5, 7)], 0.0)[0]
    assert up.target == 5 and up.note is not None and "scale-up cooldown" in up.note
    assert g.apply(5.0, [Proposal(0, 5, 7)], 0.0)[0].target == 7
    down = g.apply(30.0, [Proposal(0, 5, 2)], 0.0)[0]
    assert down.target == 5 and down.note is not None and "scale-down cooldown" in down.note
    assert g.apply(60.0, [Proposal(0, 5, 2)], 0.0)[0].target == 2
