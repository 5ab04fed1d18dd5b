"""Trace readers: public traces (bundled under ``data/traces/``) or a generic CSV -> :class:`Workload`.

Bundled traces (see ``data/README.md`` and ``docs/traces.md``):

* ``azure-functions-2019``: 1,000 Azure functions x 1,440 per-minute invocation counts. Each function is a
  model ``fn-<first 12 hex of HashFunction>``; each minute's count is spread uniformly at random over the
  minute (a Poisson process conditioned on the count), with ``np.random.default_rng(seed)``; size 1.
* ``azure-llm-2023-conv`` / ``azure-llm-2023-code``: one request per row; model ``llm-conv`` / ``llm-code``.
* ``mooncake``: Kimi conversation trace, one request per JSON line; model ``mooncake``.
* ``llm-fleet``: 60 LLM endpoints of four sizes over one hour, arrivals from azure-functions-2019 series and
  lengths from azure-llm-2023 (generator and choices: :mod:`simulators.fleet`); seeded.

LLM sizes and every profile come from :mod:`simulators.catalog`.

Generic CSV: a header with ``timestamp`` (seconds as a number, or an ISO 8601 time; naive times are UTC) and
``model``, optionally ``input_tokens``, ``output_tokens``, ``service_ms``. Rows need not be sorted.

Times are seconds from the trace's start, the earliest timestamp (the first minute for Azure functions).
Without ``hours`` the workload lasts the trace's span rounded up to its natural bin: 1,440 minutes for Azure
functions, otherwise whole minutes strictly past the last arrival. With ``hours`` it lasts ``hours * 3600``
and keeps the requests that arrive before that; then ``models`` keeps the models with the most requests in it.

Every malformed input raises :class:`TraceError` whose message names the file, the 1-based line and the field.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from shadowscale.policies.llm import LlmServing
from shadowscale.policies.types import FloatArray, IntArray, ModelProfile, ServiceConfig
from shadowscale.simulators.catalog import (
    Catalog,
    DataError,
    column_index,
    load_catalog,
    parse_number,
    read_csv,
    read_text,
)
from shadowscale.simulators.datasets import locate
from shadowscale.simulators.fleet import build_fleet
from shadowscale.simulators.llm_profiles import deployment, deployments, request_size, unit_profile
from shadowscale.simulators.workload import Workload, make_workload

TRACE_NAMES: tuple[str, ...] = (
    "azure-functions-2019",
    "azure-llm-2023-conv",
    "azure-llm-2023-code",
    "mooncake",
    "llm-fleet",
)

FUNCTIONS_DIR = Path("traces") / "azure-functions-2019"
LLM_DIR = Path("traces") / "azure-llm-2023"
MOONCAKE_DIR = Path("traces") / "mooncake"
MINUTE_S = 60.0


class TraceError(DataError):
    """A trace is unknown, missing or malformed; the message names the file, the 1-based line, the field."""


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A trace as read: arrivals relative to its start, not necessarily sorted."""

    names: list[str]
    profiles: list[ModelProfile]
    arrival_s: FloatArray
    model: IntArray
    size: FloatArray
    span_s: float  # natural duration without ``hours``
    llm: list[LlmServing | None] | None = None  # per model: continuous-batching deployment, if any
    prompt: FloatArray | None = None
    output: FloatArray | None = None


def load_trace(
    spec: str,
    *,
    seed: int = 0,
    hours: float | None = None,
    models: int | None = None,
    cold_start_s: float | None = None,
    data_dir: Path | None = None,
) -> Workload:
    """Read trace ``spec`` (a name in :data:`TRACE_NAMES` or a generic-CSV path) into a :class:`Workload`.

    ``hours`` keeps requests arriving before ``hours * 3600`` s; ``models`` keeps the ``models`` models with
    the most requests (ties by name), re-indexed in that order. ``data_dir`` defaults to ``$SHADOWSCALE_DATA``
    or the data bundled with (or downloaded by) the package, see :mod:`simulators.datasets`. The same ``seed``
    gives identical arrays. ``cold_start_s`` sets every
    service's cold start; by default an LLM's follows its weights (:func:`policies.llm.cold_start_s`) and
    every other model takes :data:`DEFAULT_COLD_START_S`.
    """
    if hours is not None and not (hours > 0 and math.isfinite(hours)):
        raise ValueError(f"hours must be positive and finite, got {hours}")
    if models is not None and models < 1:
        raise ValueError(f"models must be >= 1, got {models}")
    if cold_start_s is not None and not (cold_start_s >= 0 and math.isfinite(cold_start_s)):
        raise ValueError(f"cold_start_s must be non-negative and finite, got {cold_start_s}")
    root = data_dir
    try:
        reader = _READERS.get(spec)
        if reader is not None:
            parsed = reader(root, seed)
        else:
            path = Path(spec)
            if not path.is_file():
                raise TraceError(
                    spec,
                    None,
                    f"unknown trace: not one of {', '.join(TRACE_NAMES)}, and not an existing file",
                )
            parsed = _read_generic(path, root)
    except TraceError:
        raise
    except DataError as e:  # a profile file of the catalogue
        raise TraceError(e.path, e.line, e.reason, e.field) from e

    order = np.argsort(parsed.arrival_s, kind="stable")
    arrival = parsed.arrival_s[order]
    model = parsed.model[order]
    size = parsed.size[order]
    prompt = None if parsed.prompt is None else parsed.prompt[order]
    output = None if parsed.output is None else parsed.output[order]
    duration = parsed.span_s
    if hours is not None:
        duration = hours * 3600.0
        end = int(np.searchsorted(arrival, duration, side="left"))
        arrival, model, size = arrival[:end], model[:end], size[:end]
        prompt = None if prompt is None else prompt[:end]
        output = None if output is None else output[:end]
    catalog = load_catalog(root)
    llms = parsed.llm or [None] * len(parsed.names)
    services = tuple(
        ServiceConfig(
            model=n,
            profile=p,
            min_replicas=0,
            max_replicas=1000,
            cold_start_s=_cold_start(cold_start_s, llm),
            specs=catalog.specs_of(p),
            llm=llm,
        )
        for n, p, llm in zip(parsed.names, parsed.profiles, llms, strict=True)
    )
    workload = make_workload(
        name=spec,
        duration_s=duration,
        services=services,
        arrival_s=arrival,
        model=model,
        size=size,
        prompt_tokens=prompt,
        output_tokens=output,
    )
    return workload if models is None else workload.subset(models)


DEFAULT_COLD_START_S = 60.0
"""Cold start of a model that is not an LLM (a GPU container with a CNN): pull, start, load."""
SINGLE_LLM_DEPLOYMENT = "llama-3.1-8b@1xA100"
"""The deployment serving the single-model LLM traces and generic CSVs with tokens: a 7B-class model on one
A100, with a context long enough for the traces (Llama-2-7B's 4,096 tokens would turn away 68 % of mooncake,
14 % of azure-llm-2023-code and 8 % of -conv requests; a deployment facing such traffic runs a long-context
model). Its iteration times are fitted to Llama-3-8B, the same architecture."""


def _cold_start(override: float | None, llm: LlmServing | None) -> float:
    if override is not None:
        return override
    return DEFAULT_COLD_START_S if llm is None else llm.cold_start_s


def _span(arrival: FloatArray) -> float:
    """Whole minutes strictly past the last arrival."""
    last = float(arrival.max()) if arrival.size else 0.0
    return (math.floor(last / MINUTE_S) + 1) * MINUTE_S


# ----------------------------------------------------------------------------------------------------
# timestamps


def _parse_time(text: str, path: Path, line: int, field: str) -> tuple[float, bool]:
    """(seconds, is_iso): a non-negative finite number of seconds, or an ISO 8601 time as POSIX seconds."""
    stripped = text.strip()
    if not stripped:
        raise TraceError(path, line, "empty value, expected a number or ISO time", field)
    try:
        value = float(stripped)
    except ValueError:
        try:
            dt = datetime.fromisoformat(stripped)
        except ValueError:
            raise TraceError(path, line, f"{text!r} is not a number or ISO time", field) from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp(), True
    if not math.isfinite(value):
        raise TraceError(path, line, f"{text!r} is not finite", field)
    if value < 0:
        raise TraceError(path, line, f"{text!r} is negative", field)
    return value, False


class _TimeColumn:
    """Parses one timestamp column and refuses to mix numeric and ISO values."""

    def __init__(self, path: Path, field: str) -> None:
        self.path = path
        self.field = field
        self.first: tuple[int, bool] | None = None

    def __call__(self, text: str, line: int) -> float:
        value, iso = _parse_time(text, self.path, line, self.field)
        if self.first is None:
            self.first = (line, iso)
        elif iso != self.first[1]:
            kinds = ("numeric seconds", "an ISO time")
            raise TraceError(
                self.path,
                line,
                f"{text!r} is {kinds[iso]} but line {self.first[0]} has {kinds[self.first[1]]}; "
                "do not mix numeric and ISO timestamps",
                self.field,
            )
        return value


def _number(text: str, path: Path, line: int, field: str, *, integer: bool = False) -> float:
    try:
        return parse_number(text, path, line, field, integer=integer)
    except DataError as e:
        raise TraceError(e.path, e.line, e.reason, e.field) from None


def _csv(path: Path) -> tuple[list[str], int, list[tuple[int, list[str]]]]:
    try:
        header, header_line, rows = read_csv(path)
    except DataError as e:
        raise TraceError(e.path, e.line, e.reason, e.field) from None
    if not rows:
        raise TraceError(path, header_line + 1, "no data rows after the header")
    return header, header_line, rows


def _column(header: list[str], name: str, path: Path, header_line: int, *, required: bool = True) -> int | None:
    try:
        return column_index(header, name, path, header_line, required=required)
    except DataError as e:
        raise TraceError(e.path, e.line, e.reason, e.field) from None


def _cell(row: list[str], index: int, header: list[str], path: Path, line: int) -> str:
    """``row[index]`` of a row that must have as many fields as the header."""
    if len(row) < len(header):
        missing = header[len(row)]
        raise TraceError(path, line, f"missing: row has {len(row)} fields, header has {len(header)}", missing)
    if len(row) > len(header):
        raise TraceError(path, line, f"row has {len(row)} fields, header has {len(header)}")
    return row[index]


# ----------------------------------------------------------------------------------------------------
# azure functions 2019

_HEX = re.compile(r"[0-9a-fA-F]{12,}")


def _read_azure_functions(root: Path | None, seed: int) -> _Parsed:
    inv = locate(FUNCTIONS_DIR / "1000_inv.csv", root)
    hashes, counts = _read_invocations(inv)
    durations = _read_durations(locate(FUNCTIONS_DIR / "1000_run.csv", root))
    catalog = load_catalog(root)
    names = [f"fn-{h[:12]}" for h in hashes]
    profiles = [catalog.function_profile(h, durations.get(h)) for h in hashes]

    n_min = counts.shape[1]
    flat = counts.ravel()
    cell = np.repeat(np.arange(flat.size, dtype=np.int64), flat)
    minute = cell % n_min
    rng = np.random.default_rng(seed)
    start = minute.astype(np.float64) * MINUTE_S
    arrival = start + rng.random(cell.size) * MINUTE_S
    # (m + u) * 60 may round up to the next minute for u close to 1: keep every arrival inside its minute
    arrival = np.minimum(arrival, np.nextafter(start + MINUTE_S, 0.0))
    return _Parsed(
        names=names,
        profiles=profiles,
        arrival_s=arrival,
        model=(cell // n_min).astype(np.int64),
        size=np.ones(cell.size, dtype=np.float64),
        span_s=n_min * MINUTE_S,
    )


def _read_invocations(path: Path) -> tuple[list[str], IntArray]:
    """(HashFunction per row, counts[function, minute]) of ``1000_inv.csv``."""
    try:
        text = read_text(path)
    except DataError as e:
        raise TraceError(e.path, e.line, e.reason, e.field) from None
    lines = text.split("\n")
    numbered = [(i + 1, ln.rstrip("\r")) for i, ln in enumerate(lines) if ln.strip()]
    if not numbered:
        raise TraceError(path, 1, "empty file: expected a header row")
    header_line, header_text = numbered[0]
    header = [h.strip() for h in header_text.split(",")]
    hash_col = _column(header, "HashFunction", path, header_line)
    assert hash_col is not None
    first = next((i for i, h in enumerate(header) if h.startswith("minute_")), None)
    if first is None:
        raise TraceError(path, header_line, "no minute_1.. columns in the header", "minute_1")
    for k, h in enumerate(header[first:], start=1):
        if h != f"minute_{k}":
            raise TraceError(path, header_line, f"expected column 'minute_{k}' here, found {h!r}", h)
    if hash_col > first:
        raise TraceError(path, header_line, "must come before the minute columns", "HashFunction")
    n_min = len(header) - first
    rows = numbered[1:]
    if not rows:
        raise TraceError(path, header_line + 1, "no data rows after the header")

    hashes: list[str] = []
    seen: dict[str, int] = {}
    tails: list[str] = []
    for line, text_row in rows:
        parts = text_row.split(",", first)
        if len(parts) <= first:
            raise TraceError(path, line, f"row has {len(parts)} fields, header has {len(header)}")
        h = parts[hash_col].strip()
        if not _HEX.fullmatch(h):
            raise TraceError(path, line, f"{h!r} is not a hex hash of at least 12 digits", "HashFunction")
        if h[:12] in seen:
            raise TraceError(path, line, f"function fn-{h[:12]} already on line {seen[h[:12]]}", "HashFunction")
        seen[h[:12]] = line
        hashes.append(h)
        tails.append(parts[first])
    counts = _fast_counts(tails, n_min)
    if counts is None:
        counts = _slow_counts(path, rows, first, len(header))
    return hashes, counts


def _fast_counts(tails: list[str], n_min: int) -> IntArray | None:
    """Vectorised parse of the count columns; None if anything is off (the slow path then says what)."""
    if any('"' in t for t in tails):
        return None
    try:
        counts = np.loadtxt(io.StringIO("\n".join(tails)), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError:
        return None
    if counts.shape != (len(tails), n_min) or (counts.size and counts.min() < 0):
        return None
    return counts


def _slow_counts(path: Path, rows: list[tuple[int, str]], first: int, n_columns: int) -> IntArray:
    out = np.zeros((len(rows), n_columns - first), dtype=np.int64)
    for r, (line, text_row) in enumerate(rows):
        fields = text_row.split(",")
        if len(fields) != n_columns:
            raise TraceError(path, line, f"row has {len(fields)} fields, header has {n_columns}")
        for k, value in enumerate(fields[first:]):
            out[r, k] = int(_number(value, path, line, f"minute_{k + 1}", integer=True))
    return out


def _read_durations(path: Path) -> dict[str, float]:
    """HashFunction -> mean duration (ms) of ``1000_run.csv``."""
    header, header_line, rows = _csv(path)
    hash_col = _column(header, "HashFunction", path, header_line)
    avg_col = _column(header, "Average", path, header_line)
    assert hash_col is not None and avg_col is not None
    out: dict[str, float] = {}
    lines: dict[str, int] = {}
    for line, row in rows:
        h = _cell(row, hash_col, header, path, line).strip()
        if not _HEX.fullmatch(h):
            raise TraceError(path, line, f"{h!r} is not a hex hash of at least 12 digits", "HashFunction")
        if h in out:
            raise TraceError(path, line, f"duplicate function (first on line {lines[h]})", "HashFunction")
        out[h] = _number(row[avg_col], path, line, "Average")
        lines[h] = line
    return out


# ----------------------------------------------------------------------------------------------------
# LLM traces


def _read_azure_llm(kind: str) -> Callable[[Path | None, int], _Parsed]:
    def read(root: Path | None, seed: int) -> _Parsed:
        del seed  # real arrivals: nothing random
        t, tokens_in, tokens_out = _azure_llm_columns(root, kind)
        catalog = load_catalog(root)
        return _single_llm(f"llm-{kind}", catalog, t - t.min(), tokens_in, tokens_out)

    return read


def _azure_llm_columns(root: Path | None, kind: str) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(timestamp s, prompt tokens, output tokens) of ``AzureLLMInferenceTrace_<kind>.csv``."""
    path = locate(LLM_DIR / f"AzureLLMInferenceTrace_{kind}.csv", root)
    header, header_line, rows = _csv(path)
    cols = [_column(header, c, path, header_line) for c in ("TIMESTAMP", "ContextTokens", "GeneratedTokens")]
    t_col, in_col, out_col = (c for c in cols if c is not None)
    time = _TimeColumn(path, "TIMESTAMP")
    n = len(rows)
    t = np.empty(n, np.float64)
    tokens_in = np.empty(n, np.float64)
    tokens_out = np.empty(n, np.float64)
    for j, (line, row) in enumerate(rows):
        t[j] = time(_cell(row, t_col, header, path, line), line)
        tokens_in[j] = _number(row[in_col], path, line, "ContextTokens", integer=True)
        tokens_out[j] = _number(row[out_col], path, line, "GeneratedTokens", integer=True)
    return t, tokens_in, tokens_out


def _read_llm_fleet(root: Path | None, seed: int) -> _Parsed:
    """``llm-fleet``: see :mod:`simulators.fleet` (the generator and its choices)."""
    hashes, counts = _read_invocations(locate(FUNCTIONS_DIR / "1000_inv.csv", root))
    conv = _azure_llm_columns(root, "conv")[1:]
    code = _azure_llm_columns(root, "code")[1:]
    catalog = load_catalog(root)
    servings = deployments(catalog.data_dir)
    profiles = {name: unit_profile(d) for name, d in servings.items()}
    fleet = build_fleet(
        hashes,
        counts,
        conv,
        code,
        servings,
        {name: p.capacity_rps for name, p in profiles.items()},
        request_size,
        seed,
    )
    return _Parsed(
        names=fleet.names,
        profiles=[profiles[d] for d in fleet.deployments],
        arrival_s=fleet.arrival_s,
        model=fleet.model,
        size=fleet.size,
        span_s=3600.0,
        llm=[servings[d] for d in fleet.deployments],
        prompt=fleet.prompt,
        output=fleet.output,
    )


def _read_mooncake(root: Path | None, seed: int) -> _Parsed:
    del seed
    path = locate(MOONCAKE_DIR / "conversation_trace.jsonl", root)
    try:
        text = read_text(path)
    except DataError as e:
        raise TraceError(e.path, e.line, e.reason, e.field) from None
    t: list[float] = []
    tokens_in: list[float] = []
    tokens_out: list[float] = []
    for i, raw in enumerate(text.split("\n")):
        if not raw.strip():
            continue
        line = i + 1
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as e:
            raise TraceError(path, line, f"invalid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(record, dict):
            raise TraceError(path, line, "expected a JSON object")
        t.append(_json_number(record, "timestamp", path, line))
        tokens_in.append(_json_number(record, "input_length", path, line))
        tokens_out.append(_json_number(record, "output_length", path, line))
    if not t:
        raise TraceError(path, 1, "empty file: no requests")
    ts = np.asarray(t, np.float64) / 1000.0
    catalog = load_catalog(root)
    return _single_llm(
        "mooncake",
        catalog,
        ts - ts.min(),
        np.asarray(tokens_in, np.float64),
        np.asarray(tokens_out, np.float64),
    )


def _json_number(record: dict[str, object], key: str, path: Path, line: int) -> float:
    if key not in record:
        raise TraceError(path, line, "missing", key)
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TraceError(path, line, f"{value!r} is not a number", key)
    if not math.isfinite(value):
        raise TraceError(path, line, f"{value!r} is not finite", key)
    if value < 0:
        raise TraceError(path, line, f"{value!r} is negative", key)
    return float(value)


def _single_llm(
    name: str, catalog: Catalog, arrival: FloatArray, tokens_in: FloatArray, tokens_out: FloatArray
) -> _Parsed:
    serving = deployment(SINGLE_LLM_DEPLOYMENT, catalog.data_dir)
    return _Parsed(
        names=[name],
        profiles=[unit_profile(serving)],
        arrival_s=arrival,
        model=np.zeros(arrival.size, dtype=np.int64),
        size=request_size(serving, tokens_in, tokens_out),
        span_s=_span(arrival),
        llm=[serving],
        prompt=np.asarray(tokens_in, np.float64),
        output=np.asarray(tokens_out, np.float64),
    )


# ----------------------------------------------------------------------------------------------------
# generic CSV


def _read_generic(path: Path, root: Path | None) -> _Parsed:
    header, header_line, rows = _csv(path)
    t_col = _column(header, "timestamp", path, header_line)
    m_col = _column(header, "model", path, header_line)
    assert t_col is not None and m_col is not None
    optional = {
        c: _column(header, c, path, header_line, required=False)
        for c in ("input_tokens", "output_tokens", "service_ms")
    }
    time = _TimeColumn(path, "timestamp")
    n = len(rows)
    t = np.empty(n, np.float64)
    model = np.empty(n, np.int64)
    values = {c: np.zeros(n, np.float64) for c, i in optional.items() if i is not None}
    index: dict[str, int] = {}
    for j, (line, row) in enumerate(rows):
        t[j] = time(_cell(row, t_col, header, path, line), line)
        name = row[m_col].strip()
        if not name:
            raise TraceError(path, line, "empty model name", "model")
        model[j] = index.setdefault(name, len(index))
        for c, arr in values.items():
            col = optional[c]
            assert col is not None
            arr[j] = _number(row[col], path, line, c, integer=c != "service_ms")
    names = list(index)
    catalog = load_catalog(root)
    arrival = t - t.min()
    llm: list[LlmServing | None] | None = None
    prompt = output = None
    if "input_tokens" in values or "output_tokens" in values:
        zeros = np.zeros(n, np.float64)
        prompt, output = values.get("input_tokens", zeros), values.get("output_tokens", zeros)
        serving = deployment(SINGLE_LLM_DEPLOYMENT, catalog.data_dir)
        size = request_size(serving, prompt, output)
        profiles = [unit_profile(serving)] * len(names)
        llm = [serving] * len(names)
    else:
        service = values.get("service_ms")
        if service is None:
            profiles = [catalog.named_profile(m, None) for m in names]
        else:
            order = np.argsort(model, kind="stable")
            bounds = np.searchsorted(model[order], np.arange(len(names) + 1))
            profiles = [
                catalog.named_profile(m, float(np.median(service[order[bounds[i] : bounds[i + 1]]])))
                for i, m in enumerate(names)
            ]
        size = np.ones(n, np.float64)
    return _Parsed(
        names=names,
        profiles=profiles,
        arrival_s=arrival,
        model=model,
        size=size,
        span_s=_span(arrival),
        llm=llm,
        prompt=prompt,
        output=output,
    )


_READERS: dict[str, Callable[[Path | None, int], _Parsed]] = {
    "azure-functions-2019": _read_azure_functions,
    "azure-llm-2023-conv": _read_azure_llm("conv"),
    "azure-llm-2023-code": _read_azure_llm("code"),
    "mooncake": _read_mooncake,
    "llm-fleet": _read_llm_fleet,
}
