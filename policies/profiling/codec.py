"""The profile record: a :class:`~policies.profiling.types.Profile` with its freshness, as one versioned JSON object.

A profile outlives the agent that found it (it is what the autoscaler divides demand by after a restart), so it is
stored, keyed by model, in a compacted topic (:mod:`agent.profiling.store`) or in memory
(:class:`~policies.profiling.ports.MemoryProfileStore`). Both go through this codec, so a test that uses the memory
store also proves the profile survives serialisation. Pure: stdlib ``json`` only.

The envelope::

    {"schema": 1, "kind": "shadowscale.profile", "model": "m", "updated_at": 1700000000.0,
     "stale": false, "stale_reason": "", "predictions_total": 168, "version": "resnet:1.4" (optional),
     "profile": {"names": [...], "slo_ms": 200.0, "chosen": [...] | null, "capacity": 80.0, "cost": 1.0,
                 "stopped": "converged", "observations": [{"point": [...], "result": {...}}, ...],
                 "predictions": [{"point": [...], "value": ..., "value_low": ..., "value_high": ...,
                                  "p_feasible": ...}, ...]}}

``schema`` is an integer that grows with every incompatible change; a reader skips a record whose version it does
not know (an older agent next to a newer one must not crash or misread). Numbers that may be NaN or infinite (a
failed trial's p99 is NaN, a configuration that never met the SLO has an infinite p99) are written as the strings
``"NaN"``, ``"Infinity"`` and ``"-Infinity"``, so the record is standard JSON that any consumer can read.

A planner's predictions cover every candidate configuration (up to thousands); a Kafka record has a size limit
(1 MiB by default). :func:`encode_profile` keeps the most promising predictions (predicted value × P(feasible))
that fit in ``max_bytes``, in their original order, and records how many there were in ``predictions_total``; the
trials and the chosen configuration are always kept whole.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from shadowscale.policies.profiling.space import Point, Value
from shadowscale.policies.profiling.types import Observation, Prediction, Profile, TrialResult, TrialStatus

SCHEMA: Final = 1
"""The version this code writes and reads."""
KIND: Final = "shadowscale.profile"
MAX_BYTES: Final = 900_000
"""Default record size limit: under Kafka's default ``max.message.bytes`` (1 MiB) with room for the key and headers."""

_SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


@dataclass(frozen=True, slots=True)
class StoredProfile:
    """A model's profile as stored: the search's result, when it was stored, and whether live data disowned it.

    ``stale`` is set when drift detection (:mod:`policies.profiling.drift`) found the profile no longer describes
    the model; it is stored too, so an agent that restarts does not trust a profile its predecessor had disowned.
    ``predictions_total`` is the number of predictions the search made (``profile.predictions`` may hold fewer: see
    the module docstring).
    """

    profile: Profile
    updated_at: float
    stale: bool = False
    stale_reason: str = ""
    predictions_total: int | None = None
    version: str | None = None
    """The model version the profile was measured on (the workload's ``shadowscale.io/model-version`` annotation,
    else its container image); None: unknown (a record written before versions were stored). A profile of another
    version than the one running does not set the model's capacity and is not rolled out."""

    @property
    def model(self) -> str:
        return self.profile.model


class ProfileDecodeError(ValueError):
    """A stored record could not be read. ``kind`` is ``"schema"`` (a version this code does not know) or
    ``"malformed"`` (not the shape schema 1 says); the message names the field."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# -- encoding -------------------------------------------------------------------------------------------------------


def _num(x: float) -> float | str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return float(x)


def _point(p: Point, where: str) -> list[Value]:
    out: list[Value] = []
    for k, v in enumerate(p):
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise ValueError(f"{where}[{k}]: a configuration value must be a string or a number, got {v!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{where}[{k}]: a configuration value must be finite, got {v!r}")
        out.append(v)
    return out


def _result(r: TrialResult) -> dict[str, object]:
    return {
        "status": r.status.value,
        "throughput": _num(r.throughput),
        "p99_ms": _num(r.p99_ms),
        "cost": None if r.cost is None else _num(r.cost),
        "error": r.error,
        "wall_s": _num(r.wall_s),
        "details": {str(k): _num(float(v)) for k, v in r.details.items()},
    }


def _prediction(p: Prediction, where: str) -> str:
    return json.dumps(
        {
            "point": _point(p.point, f"{where}.point"),
            "value": _num(p.value),
            "value_low": _num(p.value_low),
            "value_high": _num(p.value_high),
            "p_feasible": _num(p.p_feasible),
        },
        allow_nan=False,
        separators=(",", ":"),
    )


def encode_profile(stored: StoredProfile, *, max_bytes: int = MAX_BYTES) -> bytes:
    """The record's value. Raises ``ValueError`` for a profile that cannot be stored (a non-finite or non-scalar
    configuration value, or trials alone larger than ``max_bytes``)."""
    p = stored.profile
    envelope: dict[str, object] = {
        "schema": SCHEMA,
        "kind": KIND,
        "model": p.model,
        "updated_at": _num(stored.updated_at),
        "stale": stored.stale,
        "stale_reason": stored.stale_reason,
        "predictions_total": stored.predictions_total if stored.predictions_total is not None else len(p.predictions),
        **({"version": stored.version} if stored.version is not None else {}),
        "profile": {
            "names": list(p.names),
            "slo_ms": _num(p.slo_ms),
            "chosen": None if p.chosen is None else _point(p.chosen, "profile.chosen"),
            "capacity": _num(p.capacity),
            "cost": _num(p.cost),
            "stopped": p.stopped,
            "observations": [
                {"point": _point(o.point, f"profile.observations[{k}].point"), "result": _result(o.result)}
                for k, o in enumerate(p.observations)
            ],
            "predictions": "__PREDICTIONS__",
        },
    }
    head = json.dumps(envelope, allow_nan=False, separators=(",", ":"))
    before, after = head.split('"__PREDICTIONS__"')
    room = max_bytes - len(before.encode()) - len(after.encode()) - 2
    if room < 0:
        raise ValueError(
            f"profile of {p.model!r}: its {len(p.observations)} trials alone take more than {max_bytes} bytes"
        )
    # Most promising first, so that whatever is cut is what the autoscaler and a re-trial care least about.
    ranked = sorted(
        range(len(p.predictions)),
        key=lambda i: -(p.predictions[i].value * p.predictions[i].p_feasible),
    )
    kept: dict[int, str] = {}
    used = 0
    for i in ranked:
        text = _prediction(p.predictions[i], f"profile.predictions[{i}]")
        size = len(text.encode()) + (1 if kept else 0)
        if used + size > room:
            break
        kept[i] = text
        used += size
    texts = [kept[i] for i in sorted(kept)]  # in the planner's (candidate) order
    return (before + "[" + ",".join(texts) + "]" + after).encode()


# -- decoding -------------------------------------------------------------------------------------------------------


def _bad(where: str, what: str) -> ProfileDecodeError:
    return ProfileDecodeError("malformed", f"{where}: {what}")


def _field(obj: Mapping[str, object], key: str, where: str) -> object:
    if key not in obj:
        raise _bad(f"{where}.{key}", "missing")
    return obj[key]


def _obj(x: object, where: str) -> Mapping[str, object]:
    if not isinstance(x, dict):
        raise _bad(where, f"expected an object, got {type(x).__name__}")
    return x


def _list(x: object, where: str) -> Sequence[object]:
    if not isinstance(x, list):
        raise _bad(where, f"expected a list, got {type(x).__name__}")
    return x


def _str(x: object, where: str) -> str:
    if not isinstance(x, str):
        raise _bad(where, f"expected a string, got {type(x).__name__}")
    return x


def _float(x: object, where: str) -> float:
    if isinstance(x, bool):
        raise _bad(where, "expected a number, got bool")
    if isinstance(x, int | float):
        return float(x)
    if isinstance(x, str) and x in _SPECIAL:
        return _SPECIAL[x]
    raise _bad(where, f"expected a number, got {type(x).__name__} {x!r}"[:200])


def _to_point(x: object, n: int, where: str) -> Point:
    values = _list(x, where)
    if len(values) != n:
        raise _bad(where, f"expected {n} values (one per dimension), got {len(values)}")
    out: list[Value] = []
    for k, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise _bad(f"{where}[{k}]", f"expected a string or a number, got {type(v).__name__}")
        out.append(v)
    return tuple(out)


def _to_result(x: object, where: str) -> TrialResult:
    r = _obj(x, where)
    status_text = _str(_field(r, "status", where), f"{where}.status")
    try:
        status = TrialStatus(status_text)
    except ValueError:
        raise _bad(f"{where}.status", f"unknown status {status_text!r}"[:200]) from None
    cost = _field(r, "cost", where)
    details = _obj(_field(r, "details", where), f"{where}.details")
    return TrialResult(
        status=status,
        throughput=_float(_field(r, "throughput", where), f"{where}.throughput"),
        p99_ms=_float(_field(r, "p99_ms", where), f"{where}.p99_ms"),
        cost=None if cost is None else _float(cost, f"{where}.cost"),
        error=_str(_field(r, "error", where), f"{where}.error"),
        wall_s=_float(_field(r, "wall_s", where), f"{where}.wall_s"),
        details={k: _float(v, f"{where}.details.{k}") for k, v in details.items()},
    )


def decode_profile(value: bytes, *, key: str | None = None) -> StoredProfile:
    """Read a record's value (``key``, when given, must be the model it names). Raises :class:`ProfileDecodeError`
    saying what is wrong and where; never anything else."""
    try:
        doc = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProfileDecodeError("malformed", f"not JSON: {e}") from None
    except RecursionError:
        raise ProfileDecodeError("malformed", "not JSON: nested too deeply") from None
    env = _obj(doc, "$")
    schema = env.get("schema")
    if isinstance(schema, bool) or not isinstance(schema, int):
        raise _bad("$.schema", f"expected an integer schema version, got {schema!r}"[:200])
    if schema != SCHEMA:
        newer = " (newer than this agent)" if schema > SCHEMA else ""
        raise ProfileDecodeError("schema", f"$.schema: version {schema}{newer}; this agent reads version {SCHEMA}")
    kind = env.get("kind")
    if kind != KIND:
        raise _bad("$.kind", f"expected {KIND!r}, got {kind!r}"[:200])
    model = _str(_field(env, "model", "$"), "$.model")
    if not model:
        raise _bad("$.model", "empty model name")
    if key is not None and key != model:
        raise _bad("$.model", f"the record's key names model {key!r} but its body names {model!r}"[:300])
    body = _obj(_field(env, "profile", "$"), "$.profile")
    raw_names = _list(_field(body, "names", "$.profile"), "$.profile.names")
    names = tuple(_str(x, f"$.profile.names[{k}]") for k, x in enumerate(raw_names))
    n = len(names)
    chosen_raw = _field(body, "chosen", "$.profile")
    observations = []
    for k, raw in enumerate(_list(_field(body, "observations", "$.profile"), "$.profile.observations")):
        w = f"$.profile.observations[{k}]"
        ob = _obj(raw, w)
        observations.append(
            Observation(
                _to_point(_field(ob, "point", w), n, f"{w}.point"), _to_result(_field(ob, "result", w), f"{w}.result")
            )
        )
    predictions = []
    for k, raw in enumerate(_list(_field(body, "predictions", "$.profile"), "$.profile.predictions")):
        w = f"$.profile.predictions[{k}]"
        pr = _obj(raw, w)
        predictions.append(
            Prediction(
                _to_point(_field(pr, "point", w), n, f"{w}.point"),
                _float(_field(pr, "value", w), f"{w}.value"),
                _float(_field(pr, "value_low", w), f"{w}.value_low"),
                _float(_field(pr, "value_high", w), f"{w}.value_high"),
                _float(_field(pr, "p_feasible", w), f"{w}.p_feasible"),
            )
        )
    profile = Profile(
        model=model,
        names=names,
        slo_ms=_float(_field(body, "slo_ms", "$.profile"), "$.profile.slo_ms"),
        observations=tuple(observations),
        predictions=tuple(predictions),
        chosen=None if chosen_raw is None else _to_point(chosen_raw, n, "$.profile.chosen"),
        capacity=_float(_field(body, "capacity", "$.profile"), "$.profile.capacity"),
        cost=_float(_field(body, "cost", "$.profile"), "$.profile.cost"),
        stopped=_str(_field(body, "stopped", "$.profile"), "$.profile.stopped"),
    )
    if not (math.isfinite(profile.capacity) and profile.capacity >= 0):
        raise _bad("$.profile.capacity", f"expected a finite number >= 0, got {profile.capacity!r}")
    if not (math.isfinite(profile.slo_ms) and profile.slo_ms > 0):
        raise _bad("$.profile.slo_ms", f"expected a finite number > 0, got {profile.slo_ms!r}")
    stale = _field(env, "stale", "$")
    if not isinstance(stale, bool):
        raise _bad("$.stale", f"expected true or false, got {type(stale).__name__}")
    total = env.get("predictions_total")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
        raise _bad("$.predictions_total", f"expected an integer >= 0, got {total!r}"[:200])
    version = env.get("version")
    if version is not None:
        version = _str(version, "$.version")
    return StoredProfile(
        profile=profile,
        updated_at=_float(_field(env, "updated_at", "$"), "$.updated_at"),
        stale=stale,
        stale_reason=_str(_field(env, "stale_reason", "$"), "$.stale_reason"),
        predictions_total=total,
        version=version,
    )
