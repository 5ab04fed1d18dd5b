"""The objective of a profiling search: throughput per unit of cost, subject to a p99 latency SLO.

``cost(config) = base + Σ value(term.dimension) × price`` where a term's price is fixed, or looked up by the
value of another (categorical) dimension: a GPU fraction priced by GPU type, CPU cores at a price per core. With
no terms and ``base = 0`` the cost is 1 and the objective is plain throughput. A trial runner that knows a
configuration's cost better (a dataset's own cost column) reports it in :attr:`TrialResult.cost`, which wins.

A measured configuration is *feasible* when its p99 latency is within the SLO and its throughput is positive.
The planner models two numbers per trial, both on a log scale so effects multiply rather than add:
``log(throughput / cost)`` (the objective) and ``log(p99 / SLO)`` (the *margin*; feasible iff ``<= 0``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from shadowscale.policies.profiling.space import Categorical, Point, Range, SearchSpace
from shadowscale.policies.profiling.types import TrialResult


@dataclass(frozen=True, slots=True)
class CostTerm:
    """``value(dimension) × price``; with ``price_by``, the price is ``prices[str(value(price_by))]``."""

    dimension: str
    price: float = 1.0
    price_by: str | None = None
    prices: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Pricing:
    """How much a configuration costs per unit of time (any currency; only ratios matter)."""

    terms: tuple[CostTerm, ...] = ()
    base: float = 0.0

    def validate(self, space: SearchSpace) -> None:
        """Raise :class:`ValueError` if a term names an unknown or non-numeric dimension or a price is missing."""
        if self.base < 0 or not math.isfinite(self.base):
            raise ValueError("pricing: base must be finite and >= 0")
        names = set(space.names)
        for t in self.terms:
            if t.dimension not in names:
                raise ValueError(f"pricing: unknown dimension {t.dimension!r}")
            if isinstance(space.dimension(t.dimension), Categorical):
                raise ValueError(f"pricing: dimension {t.dimension!r} is categorical; it cannot be a quantity")
            if t.price_by is None:
                if t.price < 0 or not math.isfinite(t.price):
                    raise ValueError(f"pricing: price of {t.dimension!r} must be finite and >= 0")
                continue
            if t.price_by not in names:
                raise ValueError(f"pricing: unknown dimension {t.price_by!r} (price_by of {t.dimension!r})")
            by = space.dimension(t.price_by)
            if isinstance(by, Range):
                raise ValueError(f"pricing: price_by dimension {t.price_by!r} must have finite values")
            missing = [str(v) for v in by.values if str(v) not in t.prices]
            if missing:
                raise ValueError(f"pricing: no price of {t.dimension!r} for {t.price_by}={', '.join(missing)}")

    def cost(self, space: SearchSpace, point: Point) -> float:
        """The cost of ``point``; 1.0 when there are no terms and no base (plain throughput)."""
        if not self.terms and self.base == 0:
            return 1.0
        cfg = space.config(point)
        total = self.base
        for t in self.terms:
            price = t.price if t.price_by is None else t.prices[str(cfg[t.price_by])]
            total += float(cfg[t.dimension]) * price
        return total


@dataclass(frozen=True, slots=True)
class Objective:
    """Maximise throughput per unit of cost among configurations whose p99 latency is within ``slo_ms``."""

    slo_ms: float
    pricing: Pricing = Pricing()

    def __post_init__(self) -> None:
        if not (self.slo_ms > 0 and math.isfinite(self.slo_ms)):
            raise ValueError(f"objective: slo_ms must be positive and finite, got {self.slo_ms}")

    def cost(self, space: SearchSpace, point: Point, result: TrialResult | None = None) -> float:
        if result is not None and result.cost is not None:
            return result.cost
        return self.pricing.cost(space, point)

    def log_value(self, space: SearchSpace, point: Point, result: TrialResult) -> float | None:
        """``log(throughput / cost)`` of a measured trial (feasible or not); None without a usable throughput."""
        if not result.measured or result.throughput <= 0:
            return None
        c = self.cost(space, point, result)
        if not (c > 0 and math.isfinite(c)):
            return None
        return math.log(result.throughput / c)

    def margin(self, result: TrialResult) -> float | None:
        """``log(p99 / SLO)`` of a measured trial (``<= 0`` meets the SLO); None when there is no latency."""
        if not result.measured or not (result.p99_ms > 0 and math.isfinite(result.p99_ms)):
            return None
        return math.log(result.p99_ms / self.slo_ms)

    def feasible(self, result: TrialResult) -> bool:
        return result.measured and result.throughput > 0 and 0 < result.p99_ms <= self.slo_ms

    def value(self, space: SearchSpace, point: Point, result: TrialResult) -> float | None:
        """Throughput per unit of cost if the trial is feasible, else None."""
        if not self.feasible(result):
            return None
        lv = self.log_value(space, point, result)
        return None if lv is None else math.exp(lv)
