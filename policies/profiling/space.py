"""The search space of one model's profiling: named dimensions and the configurations a trial may run.

A *point* is a tuple of values in the order of :attr:`SearchSpace.names`; :meth:`SearchSpace.config` turns it
into the ``{name: value}`` mapping a trial runner applies. Three kinds of dimension:

- :class:`Categorical`: unordered choices (GPU type, framework, any env or arg value);
- :class:`Levels`: ordered numeric values of which only these can be run (batch sizes, CPU cores, GPU share %);
  ``log=True`` when ratios matter more than differences (batch 1, 2, 4 … 256);
- :class:`Range`: a continuous (or integer) interval; a space with one is searched over a seeded sample.

The configurations a trial may run are the product of the dimensions minus the ``forbid`` rules, or an explicit
``candidates`` list (the measured configurations of a dataset, which need not form a product). Validation happens
here, at construction: an empty or contradictory space is a :class:`ValueError` that says what is wrong.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

Value: TypeAlias = str | int | float
"""One dimension's value in a configuration."""
Point: TypeAlias = tuple[Value, ...]
"""A configuration: one value per dimension, in :attr:`SearchSpace.names` order."""

MAX_PRODUCT = 1_000_000
"""Largest product of finite dimensions that is enumerated as candidates."""


@dataclass(frozen=True, slots=True)
class Categorical:
    """Unordered choices. Values may be strings or numbers; they are compared with ``==``."""

    name: str
    values: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Levels:
    """Ordered numeric values; only these can be run. ``integer`` keeps them ints in the configuration."""

    name: str
    values: tuple[float, ...]
    log: bool = False
    integer: bool = False


@dataclass(frozen=True, slots=True)
class Range:
    """A closed interval ``[low, high]``; ``integer`` rounds, ``log`` searches on a log scale."""

    name: str
    low: float
    high: float
    log: bool = False
    integer: bool = False


Dimension: TypeAlias = Categorical | Levels | Range


def _check_dimension(d: Dimension) -> None:
    if not d.name:
        raise ValueError("search space: a dimension has an empty name")
    if isinstance(d, Categorical):
        if not d.values:
            raise ValueError(f"search space: categorical dimension {d.name!r} has no values")
        if len(set(d.values)) != len(d.values):
            raise ValueError(f"search space: categorical dimension {d.name!r} repeats a value")
    elif isinstance(d, Levels):
        if not d.values:
            raise ValueError(f"search space: dimension {d.name!r} has no levels")
        if any(not math.isfinite(v) for v in d.values):
            raise ValueError(f"search space: dimension {d.name!r} has a non-finite level")
        if len(set(d.values)) != len(d.values):
            raise ValueError(f"search space: dimension {d.name!r} repeats a level")
        if list(d.values) != sorted(d.values):
            raise ValueError(f"search space: levels of {d.name!r} must be increasing")
        if d.log and d.values[0] <= 0:
            raise ValueError(f"search space: dimension {d.name!r} is log-scaled but has a level <= 0")
        if d.integer and any(v != int(v) for v in d.values):
            raise ValueError(f"search space: integer dimension {d.name!r} has a non-integer level")
    else:
        if not (math.isfinite(d.low) and math.isfinite(d.high)):
            raise ValueError(f"search space: range {d.name!r} has a non-finite bound")
        if d.low >= d.high:
            raise ValueError(f"search space: range {d.name!r} is empty or contradictory (low {d.low} >= high {d.high})")
        if d.log and d.low <= 0:
            raise ValueError(f"search space: range {d.name!r} is log-scaled but low <= 0")
        if d.integer and math.floor(d.high) < math.ceil(d.low):
            raise ValueError(f"search space: integer range {d.name!r} contains no integer")


def in_dimension(d: Dimension, v: Value) -> bool:
    """Whether ``v`` is a value of ``d``."""
    if isinstance(d, Categorical):
        return v in d.values
    if isinstance(v, str | bool):
        return False
    if isinstance(d, Levels):
        return float(v) in d.values
    return d.low <= float(v) <= d.high and (not d.integer or float(v) == int(v))


def _normalise(d: Dimension, v: Value) -> Value:
    """The canonical representation of ``v`` in ``d`` (ints stay ints, levels are floats unless integer)."""
    if isinstance(d, Categorical) or isinstance(v, str):
        return v
    return int(v) if d.integer else float(v)


@dataclass(frozen=True, slots=True)
class SearchSpace:
    """Named dimensions, optional forbidden combinations, optional explicit candidates (see the module doc).

    ``forbid`` holds partial configurations: a candidate that matches every ``name: value`` of one of them is
    excluded (a GPU memory share without a GPU type, say). Raises :class:`ValueError` if the space is empty, a
    dimension is invalid, names repeat, a rule or candidate names an unknown dimension or value, or the rules
    exclude every configuration.
    """

    dimensions: tuple[Dimension, ...]
    forbid: tuple[Mapping[str, Value], ...] = ()
    candidates: tuple[Point, ...] | None = None

    def __post_init__(self) -> None:
        if not self.dimensions:
            raise ValueError("search space has no dimensions")
        for d in self.dimensions:
            _check_dimension(d)
        names = [d.name for d in self.dimensions]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"search space: dimension names repeat: {', '.join(dup)}")
        by_name = {d.name: d for d in self.dimensions}
        for rule in self.forbid:
            if not rule:
                raise ValueError("search space: an empty forbid rule would exclude everything")
            for k, v in rule.items():
                if k not in by_name:
                    raise ValueError(f"search space: forbid rule names unknown dimension {k!r}")
                if not in_dimension(by_name[k], v):
                    raise ValueError(f"search space: forbid rule value {v!r} is not in dimension {k!r}")
        if self.candidates is not None:
            if not self.candidates:
                raise ValueError("search space has no candidate configurations")
            fixed = []
            for p in self.candidates:
                if len(p) != len(self.dimensions):
                    raise ValueError(
                        f"search space: candidate {p!r} has {len(p)} values for {len(self.dimensions)} dimensions"
                    )
                for d, v in zip(self.dimensions, p, strict=True):
                    if not in_dimension(d, v):
                        raise ValueError(f"search space: candidate value {v!r} is not in dimension {d.name!r}")
                fixed.append(tuple(_normalise(d, v) for d, v in zip(self.dimensions, p, strict=True)))
            if len(set(fixed)) != len(fixed):
                raise ValueError("search space: a candidate configuration is listed twice")
            kept = tuple(p for p in fixed if not self._forbidden(p))
            if not kept:
                raise ValueError("search space is contradictory: the forbid rules exclude every candidate")
            object.__setattr__(self, "candidates", kept)
        elif self.is_finite:
            size = math.prod(len(d.values) for d in self.dimensions if not isinstance(d, Range))
            if size > MAX_PRODUCT:
                raise ValueError(f"search space has {size} configurations; list candidates or use ranges")
            if self.forbid and not self.enumerate():
                raise ValueError("search space is contradictory: the forbid rules exclude every configuration")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dimensions)

    @property
    def is_finite(self) -> bool:
        """Whether every configuration can be listed (explicit candidates, or no :class:`Range`)."""
        return self.candidates is not None or not any(isinstance(d, Range) for d in self.dimensions)

    def dimension(self, name: str) -> Dimension:
        for d in self.dimensions:
            if d.name == name:
                return d
        raise KeyError(name)

    def _forbidden(self, p: Point) -> bool:
        idx = {n: i for i, n in enumerate(self.names)}
        return any(all(p[idx[k]] == v for k, v in rule.items()) for rule in self.forbid)

    def enumerate(self) -> tuple[Point, ...]:
        """Every allowed configuration of a finite space, in a fixed order; raises on a space with a range."""
        if self.candidates is not None:
            return self.candidates
        if not self.is_finite:
            raise ValueError("search space has a continuous range; it cannot be enumerated")
        levels: list[Sequence[Value]] = []
        for d in self.dimensions:
            assert not isinstance(d, Range)
            levels.append([_normalise(d, v) for v in d.values])
        return tuple(p for p in itertools.product(*levels) if not self._forbidden(p))

    def contains(self, p: Sequence[Value]) -> bool:
        """Whether ``p`` is a configuration of this space (right length, every value in its dimension, allowed)."""
        if len(p) != len(self.dimensions):
            return False
        if not all(in_dimension(d, v) for d, v in zip(self.dimensions, p, strict=True)):
            return False
        q = self.point(p)
        if self.candidates is not None:
            return q in set(self.candidates)
        return not self._forbidden(q)

    def point(self, values: Sequence[Value] | Mapping[str, Value]) -> Point:
        """A point from values in dimension order or a ``{name: value}`` mapping, canonically typed."""
        if isinstance(values, Mapping):
            missing = [n for n in self.names if n not in values]
            if missing:
                raise ValueError(f"configuration lacks dimension(s) {', '.join(missing)}")
            values = [values[n] for n in self.names]
        return tuple(_normalise(d, v) for d, v in zip(self.dimensions, values, strict=True))

    def config(self, p: Point) -> dict[str, Value]:
        """``{name: value}`` for a point (what a trial runner applies)."""
        return dict(zip(self.names, p, strict=True))
