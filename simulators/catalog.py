"""Measured model profiles and the rules that map traced services onto them.

Sources (copied under ``data/profiles/``, see ``data/README.md``; located by :mod:`simulators.datasets`):

* ``gpulet-reimpl/inference.csv``: batch latency of 10 CNNs at batch sizes 1..64 and MPS GPU shares
  20..100 %. Each CNN at a share gives one :class:`~policies.types.ModelProfile`
  (``gpu_fraction = share/100``). Its source states no license, so it is not in the wheel: it is read (and, for
  an installed wheel, downloaded) only when a CNN profile is first needed (the Azure Functions trace).
* ``llm-inference-bench/All_results.csv``: end-to-end latency of a whole batch of LLM requests. One profile:
  Llama-2-7B on one A100 with vLLM at 256 input and 256 output tokens (the unit LLM request).

SLO rule (also in ``docs/traces.md``). With ``L(b)`` the batch latency of the profile at its own spec (linear
interpolation between measured batch sizes, as :meth:`ModelProfile.latency_table` does)::

    slo_s     = 5 * L(1)
    max_batch = the largest integer b <= the largest measured batch size with L(b) <= slo_s / 2

so a request that waits for one full batch ahead of it, then runs in the next one, still meets the SLO.
:meth:`Catalog.at_share` keeps a service's SLO when it moves the service to another GPU share and recomputes
``max_batch`` against it (at least 1, even where ``L(1) > slo_s / 2``).

Mapping rules (deterministic; also in ``docs/traces.md``):

* Azure function ``h`` (its ``HashFunction``) -> CNN number ``int(h[:8], 16) % 10`` of the CNN names sorted
  alphabetically; the whole curve is multiplied by ``k = T1 / L(1)``, ``T1`` = the function's mean duration
  (``Average`` ms of ``1000_run.csv``, in seconds) clamped to ``[L(1), 1.0 s]``; ``k = 1`` without a duration.
* A generic-CSV model ``m`` (without token columns) -> the LLM profile's curve (licensed, bundled: a user's own
  trace never needs unlicensed data); with ``service_ms`` the curve is scaled so that ``L(1)`` = the model's
  median ``service_ms`` (s), at least 1 ms; without it each request is one unit LLM request.
* LLM request of ``i`` prompt and ``o`` generated tokens -> size ``(o + w*i) / (256 + w*256)``, at least
  0.01, where ``w`` (cost of a prompt token relative to a generated token) comes from
  :func:`derive_prompt_weight`.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shadowscale.errors import UsageError
from shadowscale.policies.types import FloatArray, ModelProfile
from shadowscale.simulators.datasets import default_root, locate

# ----------------------------------------------------------------------------------------------------
# constants

GPULET_DIR = Path("profiles") / "gpulet-reimpl"
LLM_BENCH_DIR = Path("profiles") / "llm-inference-bench"

CNN_SHARES: tuple[int, ...] = (20, 40, 50, 60, 80, 100)
SLO_FACTOR = 5.0  # slo_s = SLO_FACTOR * L(1)
MAX_T1_S = 1.0  # upper clamp of a traced service time
MIN_SERVICE_S = 0.001  # lower clamp of a generic CSV's service time (LLM curve)

LLM_HARDWARE = "Nvidia A100 GPU"
LLM_NUM_HARDWARE = 1
LLM_FRAMEWORK = "vLLM"
LLM_MODEL = "meta-llama/Llama-2-7b-hf"
LLM_REF_TOKENS = 256  # the unit LLM request: 256 prompt + 256 generated tokens
DEFAULT_PROMPT_WEIGHT = 0.05
MIN_REQUEST_SIZE = 0.01

_GPULET_FIELDS = (
    "model",
    "batch_size",
    "gpu_share_pct",
    "throughput_label",
    "throughput",
    "latency_label",
    "latency_s",
    "valid",
)


def default_data_dir() -> Path:
    """``$SHADOWSCALE_DATA`` if set, else the data bundled with the package (see :mod:`simulators.datasets`)."""
    return default_root()


# ----------------------------------------------------------------------------------------------------
# errors and parsing helpers (shared with simulators.traces)


class DataError(UsageError):
    """A data file is missing or malformed. The message names the file, the 1-based line and the field."""

    def __init__(self, path: Path | str, line: int | None, reason: str, field: str | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        self.field = field
        where = self.path if line is None else f"{self.path}:{line}"
        what = reason if field is None else f"field {field!r}: {reason}"
        super().__init__(f"{where}: {what}")

    def __reduce__(self) -> tuple[type[DataError], tuple[str, int | None, str, str | None]]:
        return (type(self), (self.path, self.line, self.reason, self.field))


def read_text(path: Path) -> str:
    """The file as text (UTF-8, optional BOM); :class:`DataError` when missing or not UTF-8."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, None, "is a directory, not a file") from None
    except OSError as e:
        raise DataError(path, None, f"cannot read: {e.strerror}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(path, line, f"not UTF-8 text (byte {raw[e.start]:#04x})") from None


def read_csv(path: Path, *, has_header: bool = True) -> tuple[list[str], int, list[tuple[int, list[str]]]]:
    """Parse a CSV file: (header with names stripped, header line, [(line, row), ...] without blank lines).

    Line numbers are 1-based as an editor shows them (for a record spanning lines: the last one).
    Without a header the header list is empty and its line is 0.
    """
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] = []
    header_line = 0
    rows: list[tuple[int, list[str]]] = []
    try:
        for row in reader:
            if not row:
                continue
            if has_header and header_line == 0:
                header = [h.strip() for h in row]
                header_line = reader.line_num
                continue
            rows.append((reader.line_num, row))
    except csv.Error as e:
        raise DataError(path, reader.line_num, f"malformed CSV: {e}") from None
    if has_header and header_line == 0:
        raise DataError(path, 1, "empty file: expected a header row")
    return header, header_line, rows


def column_index(
    header: Sequence[str], name: str, path: Path, header_line: int, *, required: bool = True
) -> int | None:
    """Index of column ``name`` (case-insensitive) in ``header``; ``DataError`` if required and missing."""
    lowered = [h.lower() for h in header]
    if name.lower() in lowered:
        return lowered.index(name.lower())
    if required:
        found = ", ".join(repr(h) for h in header)
        raise DataError(path, header_line, f"missing required column; header has: {found}", field=name)
    return None


def parse_number(
    text: str,
    path: Path | str,
    line: int,
    field: str,
    *,
    integer: bool = False,
    positive: bool = False,
) -> float:
    """A finite, non-negative number (``> 0`` if ``positive``; whole if ``integer``) or :class:`DataError`."""
    stripped = text.strip()
    if not stripped:
        raise DataError(path, line, "empty value, expected a number", field)
    try:
        value = float(stripped)
    except ValueError:
        raise DataError(path, line, f"{text!r} is not a number", field) from None
    if not math.isfinite(value):
        raise DataError(path, line, f"{text!r} is not finite", field)
    if value < 0:
        raise DataError(path, line, f"{text!r} is negative", field)
    if positive and value == 0:
        raise DataError(path, line, f"{text!r} must be positive", field)
    if integer and not value.is_integer():
        raise DataError(path, line, f"{text!r} is not a whole number", field)
    return value


def field_of(row: Sequence[str], index: int, path: Path, line: int, name: str, n_columns: int) -> str:
    """``row[index]``; ``DataError`` (naming the field) if the row is too short."""
    if index >= len(row):
        raise DataError(path, line, f"row has {len(row)} fields, header has {n_columns}", name)
    return row[index]


# ----------------------------------------------------------------------------------------------------
# the SLO rule


def slo_for(latency_1_s: float) -> float:
    """The SLO of a profile whose unit request alone takes ``latency_1_s``: ``5 * L(1)``."""
    return SLO_FACTOR * latency_1_s


def max_batch_for(batch_sizes: Sequence[int], batch_latency_s: Sequence[float], slo_s: float) -> int:
    """Largest integer ``b <= max(batch_sizes)`` with interpolated ``L(b) <= slo_s / 2``; at least 1."""
    sizes = np.arange(1, int(batch_sizes[-1]) + 1, dtype=np.float64)
    table = np.interp(sizes, np.asarray(batch_sizes, np.float64), np.asarray(batch_latency_s, np.float64))
    ok = np.nonzero(table <= slo_s / 2.0)[0]
    return int(ok[-1]) + 1 if ok.size else 1


def make_profile(
    name: str,
    source: str,
    batch_sizes: Sequence[int],
    batch_latency_s: Sequence[float],
    *,
    gpu_fraction: float = 1.0,
    slo_s: float | None = None,
) -> ModelProfile:
    """A profile with the SLO rule applied: ``slo_s`` defaults to ``5 * L(1)``; ``max_batch`` follows it."""
    slo = slo_for(float(batch_latency_s[0])) if slo_s is None else slo_s
    return ModelProfile(
        name=name,
        source=source,
        batch_sizes=tuple(int(b) for b in batch_sizes),
        batch_latency_s=tuple(float(x) for x in batch_latency_s),
        slo_s=slo,
        max_batch=max_batch_for(batch_sizes, batch_latency_s, slo),
        gpu_fraction=gpu_fraction,
    )


def scale_profile(
    profile: ModelProfile, k: float, *, name: str | None = None, source: str | None = None
) -> ModelProfile:
    """The same curve with every latency (and the SLO) multiplied by ``k > 0``."""
    if not (k > 0 and math.isfinite(k)):
        raise ValueError(f"scale must be positive and finite, got {k}")
    return make_profile(
        profile.name if name is None else name,
        profile.source if source is None else source,
        profile.batch_sizes,
        [x * k for x in profile.batch_latency_s],
        gpu_fraction=profile.gpu_fraction,
        slo_s=profile.slo_s * k,
    )


def hash_bucket(hex_digest: str, buckets: int) -> int:
    """``int(hex_digest[:8], 16) % buckets``."""
    return int(hex_digest[:8], 16) % buckets


def stable_hash(name: str) -> str:
    """A stable hex digest of a model name (SHA-256), for the hash mapping of generic-CSV models."""
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


def _clamp(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


def _format_scale(k: float) -> str:
    return f"{k:.3g}"


# ----------------------------------------------------------------------------------------------------
# the catalogue


@dataclass(frozen=True, slots=True)
class CnnCurve:
    """The measured batch-latency curve of one CNN at one GPU share (gpulet ``inference.csv``)."""

    model: str
    share_pct: int
    batch_sizes: tuple[int, ...]
    latency_s: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class PromptWeight:
    """``w``: the cost of one prompt token relative to one generated token, and how it was obtained."""

    value: float
    derived: bool
    how: str


@dataclass(frozen=True, slots=True, eq=False)
class Catalog:
    """Every measured profile, and the mapping of traced services onto them (compared by identity)."""

    data_dir: Path | None
    llm: ModelProfile
    prompt_weight: PromptWeight
    _cnn: dict[tuple[str, int], CnnCurve] = field(default_factory=dict, repr=False)

    @property
    def cnn_curves(self) -> dict[tuple[str, int], CnnCurve]:
        """gpulet's CNN curves, read on first use (they are not needed for LLM or user traces)."""
        if not self._cnn:
            self._cnn.update(read_gpulet(locate(GPULET_DIR / "inference.csv", self.data_dir)))
        return self._cnn

    _interference: dict[tuple[str, int], tuple[float, ...]] = field(default_factory=dict, repr=False)
    _dram: list[float] = field(default_factory=list, repr=False)  # [] until read, then [value]

    @property
    def interference(self) -> dict[tuple[str, int], tuple[float, ...]]:
        """Per (CNN, share < 100 %): the mean slowdown at each of its curve's batch sizes when co-located, over the
        co-runners measured (``interference.csv``, read on first use); models and shares without measurements are
        absent, and so is everything when the file is not there."""
        if not self._interference:
            path = locate(GPULET_DIR / "interference.csv", self.data_dir)
            if path.is_file():
                self._interference.update(read_interference(path, self.cnn_curves))
        return self._interference

    @property
    def dram_per_share(self) -> float:
        """The most DRAM bandwidth (% of peak) any CNN uses per whole GPU share (``mem_util.csv``, read on first
        use): shares summing to at most one GPU use at most this much of its bandwidth (0 when not measured)."""
        if not self._dram:
            path = locate(GPULET_DIR / "mem_util.csv", self.data_dir)
            self._dram.append(read_dram_per_share(path, self.cnn_curves) if path.is_file() else 0.0)
        return self._dram[0]

    @property
    def cnn_models(self) -> tuple[str, ...]:
        """The CNN names, sorted alphabetically (the order the hash mapping indexes)."""
        return tuple(sorted({m for m, _ in self.cnn_curves}))

    def curve(self, model: str, share_pct: int = 100) -> CnnCurve:
        try:
            return self.cnn_curves[(model, share_pct)]
        except KeyError:
            shares = sorted({s for m, s in self.cnn_curves if m == model})
            if not shares:
                raise KeyError(f"unknown CNN {model!r}; known: {', '.join(self.cnn_models)}") from None
            raise KeyError(f"CNN {model!r} has no profile at {share_pct}% (measured: {shares})") from None

    def cnn(self, model: str, share_pct: int = 100, *, scale: float = 1.0, slo_s: float | None = None) -> ModelProfile:
        """CNN ``model`` at ``share_pct`` % of a GPU (``gpu_fraction = share_pct / 100``).

        Latencies are multiplied by ``scale``. ``slo_s`` defaults to the SLO rule at this spec
        (``5 * scale * L(1)``); pass a service's SLO to keep it while changing the share (right-sizing).
        """
        c = self.curve(model, share_pct)
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"scale must be positive and finite, got {scale}")
        name = f"gpulet/{model}" + ("" if share_pct == 100 else f"@{share_pct}%")
        source = f"gpulet-reimpl inference.csv: {model} at {share_pct}% GPU share"
        if scale != 1.0:
            name += f"×{_format_scale(scale)}"
            source += f", latencies ×{scale:.6g}"
        return make_profile(
            name,
            source,
            c.batch_sizes,
            [x * scale for x in c.latency_s],
            gpu_fraction=share_pct / 100.0,
            slo_s=slo_s,
        )

    def cnn_of(self, profile: ModelProfile) -> tuple[str, float]:
        """(CNN name, latency scale) of a profile made by :meth:`cnn` and the mappings below."""
        if not profile.name.startswith("gpulet/"):
            raise ValueError(f"profile {profile.name!r} is not a gpulet CNN profile")
        model = profile.name.removeprefix("gpulet/").split("@")[0].split("×")[0]
        base = self.curve(model, round(profile.gpu_fraction * 100))
        return model, profile.batch_latency_s[0] / base.latency_s[0]

    def at_share(self, profile: ModelProfile, share_pct: int) -> ModelProfile:
        """A CNN profile (possibly rescaled) moved to another GPU share, keeping its SLO."""
        model, scale = self.cnn_of(profile)
        moved = self.cnn(model, share_pct, scale=scale, slo_s=profile.slo_s)
        return moved

    def specs_of(self, profile: ModelProfile) -> tuple[ModelProfile, ...]:
        """The measured alternatives of a profile for right-sizing: a CNN profile at every GPU share (keeping its
        SLO, smallest share first), a share below 100 % charged the co-location slowdown measured for it
        (:meth:`co_located`); nothing for profiles measured at one spec only (the LLM)."""
        if not profile.name.startswith("gpulet/"):
            return ()
        return tuple(self.co_located(self.at_share(profile, share)) for share in CNN_SHARES)

    def co_located(self, profile: ModelProfile) -> ModelProfile:
        """A CNN profile on a GPU share below 100 % with every batch latency multiplied by the mean slowdown
        ``interference.csv`` measured for that CNN, share and batch size against its co-runners (a share sits
        next to other models' shares); unchanged where the data has no measurement."""
        model, _ = self.cnn_of(profile)
        factors = self.interference.get((model, round(profile.gpu_fraction * 100)))
        if factors is None:
            return profile
        slowed = [x * f for x, f in zip(profile.batch_latency_s, factors, strict=True)]
        mean = sum(factors) / len(factors)
        return make_profile(
            profile.name,
            f"{profile.source}, co-location slowdown ×{mean:.3g} (interference.csv, mean per batch size)",
            profile.batch_sizes,
            slowed,
            gpu_fraction=profile.gpu_fraction,
            slo_s=profile.slo_s,
        )

    def cnn_by_hash(self, hex_digest: str) -> str:
        """The CNN a hex hash maps to: ``int(hex[:8], 16) % 10`` over the sorted CNN names."""
        models = self.cnn_models
        return models[hash_bucket(hex_digest, len(models))]

    def scaled_to(self, model: str, service_time_s: float | None) -> ModelProfile:
        """CNN ``model`` at 100 % rescaled so ``L(1) = clamp(service_time_s, L(1), 1 s)``; as is if None."""
        if service_time_s is None:
            return self.cnn(model)
        l1 = self.curve(model).latency_s[0]
        t1 = _clamp(service_time_s, l1, max(MAX_T1_S, l1))
        return self.cnn(model, scale=t1 / l1)

    def function_profile(self, hash_function: str, average_ms: float | None) -> ModelProfile:
        """Profile of an Azure function (``HashFunction`` hex, mean duration in ms or None)."""
        model = self.cnn_by_hash(hash_function)
        return self.scaled_to(model, None if average_ms is None else average_ms / 1000.0)

    def named_profile(self, name: str, median_service_ms: float | None) -> ModelProfile:
        """Profile of a generic-CSV model: the LLM curve, scaled so ``L(1)`` is its median service time.

        Only bundled, licensed data (``llm-inference-bench``) is read. Without a service time every request is
        one unit LLM request (256 prompt + 256 generated tokens on the LLM profile).
        """
        if median_service_ms is None:
            return self.llm
        t1 = max(median_service_ms / 1000.0, MIN_SERVICE_S)
        k = t1 / self.llm.batch_latency_s[0]
        return scale_profile(
            self.llm,
            k,
            name=f"{self.llm.name}×{_format_scale(k)}",
            source=f"{self.llm.source}, latencies ×{k:.6g} (L(1) = median service_ms of {name!r})",
        )

    def llm_request_size(self, input_tokens: FloatArray, output_tokens: FloatArray) -> FloatArray:
        """``(o + w*i) / (256 + w*256)``, at least 0.01, per request."""
        w = self.prompt_weight.value
        unit = LLM_REF_TOKENS + w * LLM_REF_TOKENS
        size = (np.asarray(output_tokens, np.float64) + w * np.asarray(input_tokens, np.float64)) / unit
        return np.maximum(size, MIN_REQUEST_SIZE)


def load_catalog(data_dir: Path | None = None) -> Catalog:
    """The catalogue of ``data_dir`` (default: wherever :func:`simulators.datasets.locate` finds each file);
    cached per folder (and per ``$SHADOWSCALE_DATA`` when ``data_dir`` is None)."""
    if data_dir is None:
        return _load_catalog(None, str(default_root()))
    return _load_catalog(data_dir.resolve(), "")


@functools.lru_cache(maxsize=8)
def _load_catalog(data_dir: Path | None, _default_root: str) -> Catalog:
    results = locate(LLM_BENCH_DIR / "All_results.csv", data_dir)
    llm_rows = read_llm_bench(results)
    return Catalog(
        data_dir=data_dir,
        llm=llm_profile(llm_rows, results),
        prompt_weight=derive_prompt_weight(locate(LLM_BENCH_DIR / "all_results_TTFT_ITL.csv", data_dir), llm_rows),
    )


def read_interference(path: Path, curves: dict[tuple[str, int], CnnCurve]) -> dict[tuple[str, int], tuple[float, ...]]:
    """Per (CNN, share): at each batch size of its solo curve, the mean of co-located latency / solo latency over
    the co-runners (model and batch) ``interference.csv`` measured; a batch size without a measurement gets the
    mean of those that have one. Rows: ``model, batch, share, co-runner, co-runner batch, "throughput", x,
    "latency", latency_s, valid``."""
    _, _, rows = read_csv(path, has_header=False)
    ratios: dict[tuple[str, int], dict[int, list[float]]] = {}
    for line, row in rows:
        if len(row) != 10:
            raise DataError(path, line, f"expected 10 fields, found {len(row)}")
        model = row[0].strip()
        batch = int(parse_number(row[1], path, line, "batch_size", integer=True, positive=True))
        share = int(parse_number(row[2], path, line, "gpu_share_pct", integer=True, positive=True))
        latency = parse_number(row[8], path, line, "latency_s", positive=True)
        if parse_number(row[9], path, line, "valid", integer=True) != 1.0:
            continue
        curve = curves.get((model, share))
        if curve is None or batch not in curve.batch_sizes:
            continue
        solo = curve.latency_s[curve.batch_sizes.index(batch)]
        ratios.setdefault((model, share), {}).setdefault(batch, []).append(latency / solo)
    out: dict[tuple[str, int], tuple[float, ...]] = {}
    for key, by_batch in ratios.items():
        means = {b: float(np.mean(v)) for b, v in by_batch.items()}
        fill = float(np.mean(list(means.values())))
        out[key] = tuple(max(1.0, means.get(b, fill)) for b in curves[key].batch_sizes)
    return out


def read_dram_per_share(path: Path, curves: dict[tuple[str, int], CnnCurve]) -> float:
    """The most DRAM throughput (% of peak) per whole GPU share over the CNN rows of ``mem_util.csv`` (``model,
    batch, share, "mem_util", dram_pct, "l2_util", l2_pct, flag``); rows of other models (BERT) are skipped."""
    _, _, rows = read_csv(path, has_header=False)
    cnns = {m for m, _ in curves}
    worst = 0.0
    for line, row in rows:
        if len(row) != 8:
            raise DataError(path, line, f"expected 8 fields, found {len(row)}")
        if row[0].strip() not in cnns:
            continue
        share = parse_number(row[2], path, line, "gpu_share_pct", positive=True)
        dram = parse_number(row[4], path, line, "dram_util_pct")
        worst = max(worst, dram / (share / 100.0))
    return worst


# ----------------------------------------------------------------------------------------------------
# readers


def read_gpulet(path: Path) -> dict[tuple[str, int], CnnCurve]:
    """Curves of ``inference.csv`` (no header; valid == 1 rows only; duplicate points averaged)."""
    _, _, rows = read_csv(path, has_header=False)
    points: dict[tuple[str, int], dict[int, list[float]]] = {}
    for line, row in rows:
        if len(row) != len(_GPULET_FIELDS):
            raise DataError(
                path,
                line,
                f"expected {len(_GPULET_FIELDS)} fields ({', '.join(_GPULET_FIELDS)}), found {len(row)}",
            )
        model = row[0].strip()
        if not model:
            raise DataError(path, line, "empty model name", "model")
        batch = int(parse_number(row[1], path, line, "batch_size", integer=True, positive=True))
        share = int(parse_number(row[2], path, line, "gpu_share_pct", integer=True, positive=True))
        if share > 100:
            raise DataError(path, line, f"{row[2]!r} is above 100", "gpu_share_pct")
        parse_number(row[4], path, line, "throughput")
        latency = parse_number(row[6], path, line, "latency_s", positive=True)
        valid = parse_number(row[7], path, line, "valid", integer=True)
        if valid not in (0.0, 1.0):
            raise DataError(path, line, f"{row[7]!r} is not 0 or 1", "valid")
        if valid == 1.0:
            points.setdefault((model, share), {}).setdefault(batch, []).append(latency)
    if not points:
        raise DataError(path, 1, "no valid profile rows")
    curves: dict[tuple[str, int], CnnCurve] = {}
    for (model, share), by_batch in sorted(points.items()):
        sizes = tuple(sorted(by_batch))
        if sizes[0] != 1:
            raise DataError(path, 1, f"{model} at {share}%: no measurement at batch size 1", "batch_size")
        curves[(model, share)] = CnnCurve(model, share, sizes, tuple(float(np.mean(by_batch[b])) for b in sizes))
    return curves


@dataclass(frozen=True, slots=True)
class BenchRow:
    """One row of ``All_results.csv``."""

    line: int
    hardware: str
    num_hardware: int
    framework: str
    model: str
    length: int
    batch: int
    latency_s: float


_BENCH_COLUMNS = (
    "Hardware",
    "Num of Hardware",
    "Framework",
    "Model",
    "Input Output Length",
    "Batch Size",
    "Latency",
)


def named_fields(path: Path, columns: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
    """``(line, values of columns in order)`` for every row of the CSV at ``path``; every column is required and a
    short row raises :class:`DataError` naming the field."""
    header, header_line, rows = read_csv(path)
    idx = [column_index(header, c, path, header_line) for c in columns]
    for line, row in rows:
        yield (
            line,
            [field_of(row, i, path, line, c, len(header)) for i, c in zip(idx, columns, strict=True) if i is not None],
        )


def read_llm_bench(path: Path) -> list[BenchRow]:
    """The rows of ``All_results.csv`` (every row validated)."""
    out: list[BenchRow] = []
    for line, vals in named_fields(path, _BENCH_COLUMNS):
        hw, num, fw, model, length, batch, latency = vals
        for text, col in ((hw, "Hardware"), (fw, "Framework"), (model, "Model")):
            if not text.strip():
                raise DataError(path, line, "empty value", col)
        out.append(
            BenchRow(
                line=line,
                hardware=hw.strip(),
                num_hardware=int(parse_number(num, path, line, "Num of Hardware", integer=True, positive=True)),
                framework=fw.strip(),
                model=model.strip(),
                length=int(parse_number(length, path, line, "Input Output Length", integer=True, positive=True)),
                batch=int(parse_number(batch, path, line, "Batch Size", integer=True, positive=True)),
                latency_s=parse_number(latency, path, line, "Latency", positive=True),
            )
        )
    return out


def _is_llm_key(r: BenchRow) -> bool:
    return (
        r.hardware == LLM_HARDWARE
        and r.num_hardware == LLM_NUM_HARDWARE
        and r.framework == LLM_FRAMEWORK
        and r.model == LLM_MODEL
    )


def llm_profile(rows: Iterable[BenchRow], path: Path) -> ModelProfile:
    """Llama-2-7B, 1 × A100, vLLM, at 256 in / 256 out: latency per batch size (duplicates averaged)."""
    by_batch: dict[int, list[float]] = {}
    for r in rows:
        if _is_llm_key(r) and r.length == LLM_REF_TOKENS:
            by_batch.setdefault(r.batch, []).append(r.latency_s)
    sizes = tuple(sorted(by_batch))
    if not sizes or sizes[0] != 1:
        raise DataError(
            path,
            1,
            f"no rows at batch size 1 for {LLM_MODEL} on {LLM_NUM_HARDWARE} × {LLM_HARDWARE}, "
            f"{LLM_FRAMEWORK}, length {LLM_REF_TOKENS}",
        )
    short_model = LLM_MODEL.split("/")[-1]
    return make_profile(
        f"llm-bench/{short_model}@A100-vLLM",
        f"llm-inference-bench All_results.csv: {LLM_MODEL}, {LLM_NUM_HARDWARE} × {LLM_HARDWARE}, "
        f"{LLM_FRAMEWORK}, {LLM_REF_TOKENS} in / {LLM_REF_TOKENS} out, whole-batch latency",
        sizes,
        [float(np.mean(by_batch[b])) for b in sizes],
    )


def derive_prompt_weight(path: Path, bench: Sequence[BenchRow]) -> PromptWeight:
    """``w`` = prefill time per prompt token / decode time per generated token (``all_results_TTFT_ITL.csv``).

    That file has, per configuration, the TTFT of ``n`` prompt tokens (a run with 1 output token) and an
    ``end_latency``. It has no ITL column and its ``Output Length`` is 1, so a row is usable only when its
    ``end_latency`` equals (within 1 %) the ``All_results.csv`` latency of the same configuration at
    ``n`` in / ``n`` out and the same batch: then ``end_latency`` covers ``n`` prompt + ``n`` output tokens,
    ``ITL = (end_latency - TTFT) / (n - 1)`` and ``w = (TTFT / n) / ITL``. Of the usable rows, the one closest
    to the LLM profile's configuration wins (model, then hardware, framework, device count). Without a usable
    row, ``w = 0.05``.
    """
    fallback = PromptWeight(
        DEFAULT_PROMPT_WEIGHT, False, f"default w = {DEFAULT_PROMPT_WEIGHT}: no usable row in {path.name}"
    )
    try:
        header, header_line, rows = read_csv(path)
    except DataError:
        return fallback
    names = (
        "Hardware",
        "Num of Hardware",
        "Framework",
        "Model",
        "Input Length",
        "Batch Size",
        "TTFT Latency",
        "end_latency",
    )
    idx = [column_index(header, c, path, header_line, required=False) for c in names]
    if any(i is None for i in idx):
        return fallback
    reference = {(r.hardware, r.num_hardware, r.framework, r.model, r.length, r.batch): r.latency_s for r in bench}
    best: tuple[tuple[int, int, int, int], float, str] | None = None
    for line, row in rows:
        try:
            hw, num, fw, model, n_in, batch, ttft, end = (row[i].strip() for i in idx if i is not None)
            key = (hw, int(num), fw, model, int(n_in), int(batch))
            t_first, t_end = float(ttft), float(end)
        except (IndexError, ValueError):
            continue  # incomplete row (the file has some without end_latency)
        n = key[4]
        ref = reference.get(key)
        if ref is None or not (n > 1 and 0 < t_first < t_end and abs(t_end - ref) <= 0.01 * ref):
            continue
        itl = (t_end - t_first) / (n - 1)
        w = (t_first / n) / itl
        score = (
            int(model == LLM_MODEL),
            int(hw == LLM_HARDWARE),
            int(fw == LLM_FRAMEWORK),
            int(key[1] == LLM_NUM_HARDWARE),
        )
        if best is None or score > best[0]:
            how = (
                f"derived from {path.name} line {line} ({model}, {key[1]} × {hw}, {fw}, batch {key[5]}): "
                f"TTFT {t_first:.4g} s for {n} prompt tokens, end-to-end {t_end:.4g} s for {n} in / {n} out "
                f"(matches All_results.csv), ITL {itl:.4g} s, w = ({t_first:.4g}/{n}) / {itl:.4g} = {w:.4f}"
            )
            best = (score, w, how)
    if best is None:
        return fallback
    return PromptWeight(best[1], True, best[2])
