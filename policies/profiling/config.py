"""A model's search space and objective from configuration, with per-workload annotation overrides.

The agent's configuration (YAML, already parsed into plain mappings) declares, per model or as a default::

    slo_ms: 200
    dimensions:
      - {name: cpu, levels: [1, 2, 4, 8], log: true}            # resource dimensions …
      - {name: gpu_type, choices: [T4, A100]}
      - {name: gpu_fraction, levels: [0.25, 0.5, 1.0]}
      - {name: batch, levels: [1, 2, 4, 8, 16, 32], log: true}  # … and runtime ones (env or args)
      - {name: threads, range: [1, 16], integer: true}
    forbid:
      - {gpu_type: T4, gpu_fraction: 0.25}
    pricing:
      base: 0.0
      terms:
        - {dimension: cpu, price: 0.03}
        - {dimension: gpu_fraction, price_by: gpu_type, prices: {T4: 0.35, A100: 2.9}}

A workload overrides it with annotations (strings, as Kubernetes stores them):
``profiling.shadowscale.io/slo-ms: "150"`` and ``profiling.shadowscale.io/dim.<name>: "1,2,4"`` (the values of a
``levels`` or ``choices`` dimension, or ``"low..high"`` for a ``range``). Everything is validated here; errors
are :class:`ValueError` naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from shadowscale.policies.profiling.objective import CostTerm, Objective, Pricing
from shadowscale.policies.profiling.space import Categorical, Dimension, Levels, Range, SearchSpace, Value, in_dimension

ANNOTATION_PREFIX = "profiling.shadowscale.io/"


def _number(key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise ValueError(f"profiling config: {key} must be a number, got {v!r}")
    try:
        x = float(v)
    except ValueError:
        raise ValueError(f"profiling config: {key} must be a number, got {v!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"profiling config: {key} must be finite, got {v!r}")
    return x


def _dimension(k: int, d: Any) -> Dimension:
    if not isinstance(d, Mapping):
        raise ValueError(f"profiling config: dimensions[{k}] must be a mapping")
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"profiling config: dimensions[{k}] needs a name")
    kinds = [x for x in ("levels", "choices", "range") if x in d]
    if len(kinds) != 1:
        raise ValueError(f"profiling config: dimension {name!r} needs exactly one of levels, choices, range")
    unknown = set(d) - {"name", "levels", "choices", "range", "log", "integer"}
    if unknown:
        raise ValueError(f"profiling config: dimension {name!r} has unknown key(s) {', '.join(sorted(unknown))}")
    log, integer = bool(d.get("log", False)), bool(d.get("integer", False))
    if kinds[0] == "choices":
        values = d["choices"]
        if not isinstance(values, Sequence) or isinstance(values, str):
            raise ValueError(f"profiling config: choices of {name!r} must be a list")
        return Categorical(name, tuple(values))
    if kinds[0] == "levels":
        values = d["levels"]
        if not isinstance(values, Sequence) or isinstance(values, str):
            raise ValueError(f"profiling config: levels of {name!r} must be a list")
        nums = sorted(_number(f"levels of {name!r}", v) for v in values)
        integer = integer or all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        return Levels(name, tuple(nums), log=log, integer=integer)
    rng = d["range"]
    if not isinstance(rng, Sequence) or isinstance(rng, str) or len(rng) != 2:
        raise ValueError(f"profiling config: range of {name!r} must be [low, high]")
    lo, hi = (_number(f"range of {name!r}", v) for v in rng)
    return Range(name, lo, hi, log=log, integer=integer)


def space_from_config(cfg: Mapping[str, Any]) -> SearchSpace:
    dims = cfg.get("dimensions")
    if not isinstance(dims, Sequence) or isinstance(dims, str) or not dims:
        raise ValueError("profiling config: dimensions must be a non-empty list")
    forbid = cfg.get("forbid", ())
    if not isinstance(forbid, Sequence) or not all(isinstance(r, Mapping) for r in forbid):
        raise ValueError("profiling config: forbid must be a list of mappings")
    return SearchSpace(tuple(_dimension(k, d) for k, d in enumerate(dims)), forbid=tuple(dict(r) for r in forbid))


def objective_from_config(cfg: Mapping[str, Any], space: SearchSpace) -> Objective:
    if "slo_ms" not in cfg:
        raise ValueError("profiling config: slo_ms is required")
    pricing_cfg = cfg.get("pricing", {}) or {}
    if not isinstance(pricing_cfg, Mapping):
        raise ValueError("profiling config: pricing must be a mapping")
    terms = []
    for k, t in enumerate(pricing_cfg.get("terms", ()) or ()):
        if not isinstance(t, Mapping) or not isinstance(t.get("dimension"), str):
            raise ValueError(f"profiling config: pricing.terms[{k}] needs a dimension")
        prices = t.get("prices", {}) or {}
        if not isinstance(prices, Mapping):
            raise ValueError(f"profiling config: pricing.terms[{k}].prices must be a mapping")
        terms.append(
            CostTerm(
                t["dimension"],
                _number(f"pricing.terms[{k}].price", t.get("price", 1.0)),
                t.get("price_by"),
                {str(a): _number(f"pricing.terms[{k}].prices.{a}", b) for a, b in prices.items()},
            )
        )
    pricing = Pricing(tuple(terms), _number("pricing.base", pricing_cfg.get("base", 0.0)))
    pricing.validate(space)
    return Objective(_number("slo_ms", cfg["slo_ms"]), pricing)


def _parse_values(key: str, text: str, d: Dimension) -> Dimension:
    if isinstance(d, Range):
        lo, sep, hi = text.partition("..")
        if not sep:
            raise ValueError(f"annotation {key}: a range is written low..high, got {text!r}")
        return Range(d.name, _number(key, lo), _number(key, hi), log=d.log, integer=d.integer)
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ValueError(f"annotation {key}: no values")
    if isinstance(d, Categorical):
        known = {str(v): v for v in d.values}
        values: list[Value] = [known.get(x, x) for x in items]
        return Categorical(d.name, tuple(values))
    return Levels(d.name, tuple(sorted(_number(key, x) for x in items)), log=d.log, integer=d.integer)


def apply_annotations(cfg: Mapping[str, Any], annotations: Mapping[str, str]) -> tuple[SearchSpace, Objective]:
    """The space and objective of ``cfg`` with a workload's ``profiling.shadowscale.io/…`` annotations applied."""
    space = space_from_config(cfg)
    slo = cfg.get("slo_ms")
    if slo is None:
        raise ValueError("profiling config: slo_ms is required")
    dims = {d.name: d for d in space.dimensions}
    for key, text in annotations.items():
        if not key.startswith(ANNOTATION_PREFIX):
            continue
        what = key[len(ANNOTATION_PREFIX) :]
        if what == "slo-ms":
            slo = _number(key, text)
        elif what.startswith("dim."):
            name = what[4:]
            if name not in dims:
                raise ValueError(f"annotation {key}: no dimension {name!r} in the profiling config")
            dims[name] = _parse_values(key, text, dims[name])
        else:
            raise ValueError(f"annotation {key}: unknown (use slo-ms or dim.<name>)")
    # a rule about a value that an override removed no longer applies
    forbid = tuple(r for r in space.forbid if all(in_dimension(dims[k], v) for k, v in r.items()))
    new_space = SearchSpace(tuple(dims[d.name] for d in space.dimensions), forbid=forbid)
    return new_space, objective_from_config({**cfg, "slo_ms": slo}, new_space)
