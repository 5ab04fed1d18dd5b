"""``shadowscale bench profiler``: how many trials each search needs to find a near-best configuration.

Replays measured datasets (``--dataset llm-inference-bench | gpulet | infadapter | PATH.csv``); the dataset is the
oracle, so only measured configurations can be tried. The rules, the same for every method (issue 4):

- a *task* is one model in one setting (a model at one sequence length, one SLO); its configurations are the
  ones measured for it;
- the latency SLO of a task is the dataset's own where it has one, otherwise the median latency over the task's
  configurations; the objective is throughput per unit of cost (per device, GPU share or CPU core) among the
  configurations that meet the SLO;
- tasks with at least ``--min-configs`` (30) configurations are scored; all tasks may serve as warm-start data;
- warm starts use only tasks of *other models* (leave-one-model-out);
- a run counts the trials until a configuration within 5 % of the task's best feasible objective is tried; each
  task is run with every seed; the per-task mean is taken over seeds, and the report gives, per method, the median
  over tasks of the mean trials, the median and the 90th percentile over tasks of the mean trials as a fraction
  of the task's configurations.

Methods: ``shadowscale`` (the planner with transfer), ``shadowscale_cold`` (the same planner, no transfer),
``consensus`` (planner-free: the configurations in the order of the other models' mean relative objective),
``gp`` (``skopt.Optimizer`` with its defaults, its asks snapped to the nearest untried measured configuration,
told ``-objective`` or 0 when the SLO is missed) and ``random`` (uniform sampling without replacement).

Two counts per planner. The oracle count (``median_trials`` …) switches the stopping rule off and counts until a
near-best configuration is tried: it needs the optimum known, so no user gets it. The headline is ``stop_rule``:
the planner as it runs live, until its own stopping rule ends the search, with the trials it used and how close
its chosen configuration is to the task's best (``median_value``, ``within_5pct`` of the runs). ``consensus`` gets
a stopping rule of its own so it is compared the same way: stop after k trials in a row without a better feasible
configuration (``stop_rule`` for k = ``PATIENCE``, ``stop_rule_by_patience`` for each k in ``CONSENSUS_PATIENCE``).

Prints ``{"dataset", "tasks", "methods": {name: {"median_trials", "p90_trials", "median_fraction",
"p90_fraction"[, "stop_rule": {"median_trials", "p90_trials", "median_fraction", "p90_fraction", "median_value",
"within_5pct"}][, "stop_rule_by_patience": {"1": {…}, …}]}}}``;
the wall time goes to stderr and, with everything per task, to ``--details PATH``.
``llm-inference-bench-abs`` is the LLM dataset with one absolute SLO per workload (``TPOT_SLO_MS`` per output
token) and cost by device price (``DEVICE_PRICES``, or ``--prices FILE``). Generic CSV form, one row per measured
configuration: ``task``, configuration columns declared as ``cfg_NAME`` (any other unknown column is an error),
``throughput``, ``latency_ms`` (empty = SLO never reached or the run failed), optional ``model`` (default: the
task; used for leave-one-model-out), ``cost`` and ``slo_ms``. See ``docs/profiler.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shadowscale.errors import MissingExtra, UsageError

try:
    from threadpoolctl import threadpool_info, threadpool_limits  # type: ignore[import-untyped]  # sklearn's dep
except ImportError as e:
    raise MissingExtra("shadowscale bench profiler", "profiling", "threadpoolctl") from e
from shadowscale.policies.profiling.objective import CostTerm, Objective, Pricing
from shadowscale.policies.profiling.planner import PlannerSettings, Search
from shadowscale.policies.profiling.replay import Measured, ReplayRunner
from shadowscale.policies.profiling.skopt_adapter import DefaultGP, Encoder, FloatArray
from shadowscale.policies.profiling.space import Categorical, Dimension, Levels, Point, SearchSpace, Value
from shadowscale.policies.profiling.transfer import SourceProfile, TransferPrior, fit_source
from shadowscale.policies.profiling.types import Observation, Trial
from shadowscale.simulators.datasets import locate
from shadowscale.simulators.executor import Executor, LocalExecutor, make_executor
from shadowscale.simulators.executor import add_arguments as add_executor_arguments

CONSENSUS_PATIENCE: tuple[int, ...] = (1, 2, 3)
"""``consensus`` with its own stopping rule: stop after k trials in a row without improvement, for each k."""
PATIENCE = 2
"""The k reported as ``consensus``' ``stop_rule`` (the others under ``stop_rule_by_patience``)."""
METHODS: tuple[str, ...] = ("shadowscale", "shadowscale_cold", "consensus", "gp", "random")
PLANNERS: tuple[str, ...] = ("shadowscale", "shadowscale_cold")
"""The methods that have a stopping rule of their own (reported under ``stop_rule``)."""
DATASETS: tuple[str, ...] = ("llm-inference-bench", "llm-inference-bench-abs", "gpulet", "infadapter")
TPOT_SLO_MS = 50.0
"""``llm-inference-bench-abs``: the SLO of a task is this many ms per output token (prefill included), i.e. every
sequence of the batch finished at >= 20 tokens/s: one absolute SLO per workload, not a statistic of the data."""
DEVICE_PRICES: dict[str, float] = {
    "Nvidia H100 GPU": 3.00,
    "Nvidia GH200 GPU": 3.50,
    "Nvidia A100 GPU": 1.80,
    "AMD MI300X GPU": 2.50,
    "AMD MI250 GPU": 1.50,
    "Habana Gaudi2": 1.30,
    "Intel PVC GPU": 1.50,
    "Intel Max 1550": 1.50,
    "SambaNova SN40L": 6.00,
}
"""USD per device-hour for ``llm-inference-bench-abs`` (documented in docs/profiler.md): rounded from public
on-demand offers of 2024-25 for the NVIDIA parts, assumed for the others (SambaNova rents no single devices);
only the ratios matter. ``--prices FILE`` (JSON ``{hardware: price}``) replaces it."""
WITHIN = 0.05
"""A trial "finds" the optimum when its objective is within this fraction of the task's best feasible one."""
MIN_CONFIGS = 30
REQUIRED = ("task", "throughput", "latency_ms")
OPTIONAL = ("model", "cost", "slo_ms")
CONFIG_PREFIX = "cfg_"
"""Configuration columns of the generic CSV are declared by this prefix (``cfg_batch`` → dimension ``batch``);
any other column that is not required or optional is an error, so a measurement (``p50_ms``) can never leak into
the search space as a dimension."""


# -- datasets -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Task:
    """One model in one setting: its measured configurations (``points``) and their results."""

    name: str
    model: str
    points: tuple[Point, ...]
    throughput: FloatArray
    latency_ms: FloatArray
    cost: FloatArray | None
    slo_ms: float

    def __len__(self) -> int:
        return len(self.points)


@dataclass(frozen=True, slots=True, eq=False)
class Dataset:
    """Tasks over one set of dimensions (every task's configurations use the same dimension names)."""

    name: str
    dimensions: tuple[Dimension, ...]
    pricing: Pricing
    tasks: tuple[Task, ...]

    def space(self, task: Task) -> SearchSpace:
        return SearchSpace(self.dimensions, candidates=task.points)

    def objective(self, task: Task) -> Objective:
        return Objective(task.slo_ms, self.pricing)

    def values(self, task: Task) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
        """``(objective, feasible)`` per configuration of ``task`` (objective = throughput per cost)."""
        space = self.space(task)
        cost = (
            task.cost
            if task.cost is not None
            else np.array([self.pricing.cost(space, p) for p in task.points], dtype=np.float64)
        )
        feasible = np.isfinite(task.latency_ms) & (task.latency_ms <= task.slo_ms) & (task.throughput > 0)
        return np.asarray(task.throughput / cost, dtype=np.float64), np.asarray(feasible, dtype=np.bool_)

    def good(self, task: Task) -> frozenset[int]:
        """Indices of the configurations within ``WITHIN`` of the task's best feasible objective."""
        value, feasible = self.values(task)
        if not feasible.any():
            return frozenset()
        best = float(value[feasible].max())
        return frozenset(int(i) for i in np.flatnonzero(feasible & (value >= (1 - WITHIN) * best)))

    def runner(self, task: Task) -> ReplayRunner:
        rows = {
            p: Measured(
                float(task.throughput[i]),
                float(task.latency_ms[i]),
                None if task.cost is None else float(task.cost[i]),
            )
            for i, p in enumerate(task.points)
        }
        return ReplayRunner(self.space(task), rows)


def _float(path: Path, line: int, name: str, text: str, *, blank_ok: bool = False) -> float:
    if text.strip() == "":
        if blank_ok:
            return math.nan
        raise ValueError(f"{path}: line {line}: column {name!r} is empty")
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"{path}: line {line}: column {name!r} is not a number: {text!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{path}: line {line}: column {name!r} is not finite: {text!r}")
    return v


@dataclass
class _Rows:
    """Records in the generic form, before they become tasks (strings for configuration values)."""

    path: Path
    config_names: list[str]
    records: list[tuple[int, str, str, tuple[str, ...], float, float, float | None, float | None]] = field(
        default_factory=list
    )
    """``(line, task, model, config values, throughput, latency_ms, cost, slo_ms)``."""


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _dimension(name: str, values: Iterable[str]) -> Dimension:
    distinct = sorted(set(values))
    if all(_is_number(v) for v in distinct):
        nums = sorted({float(v) for v in distinct})
        integer = all(n == int(n) for n in nums)
        log = nums[0] > 0 and nums[-1] / nums[0] >= 8
        return Levels(name, tuple(nums), log=log, integer=integer)
    return Categorical(name, tuple(distinct))


def _typed(d: Dimension, text: str) -> Value:
    if isinstance(d, Categorical):
        return text
    return int(float(text)) if d.integer else float(text)


def _build(name: str, rows: _Rows, pricing: Pricing) -> Dataset:
    """Tasks from generic records: repeated configurations of a task are averaged; the SLO is the task's own
    (``slo_ms``) or the median latency of its configurations."""
    if not rows.records:
        raise ValueError(f"{rows.path}: no data rows")
    dims = tuple(_dimension(n, (r[3][k] for r in rows.records)) for k, n in enumerate(rows.config_names))
    grouped: dict[str, dict[Point, list[tuple[float, float, float | None]]]] = defaultdict(dict)
    models: dict[str, str] = {}
    slos: dict[str, set[float]] = defaultdict(set)
    for line, task, model, cfg, thr, lat, cost, slo in rows.records:
        if models.setdefault(task, model) != model:
            raise ValueError(f"{rows.path}: line {line}: task {task!r} has two models ({models[task]!r}, {model!r})")
        if slo is not None:
            slos[task].add(slo)
        p = tuple(_typed(d, v) for d, v in zip(dims, cfg, strict=True))
        grouped[task].setdefault(p, []).append((thr, lat, cost))
    tasks = []
    for task in sorted(grouped):
        if len(slos[task]) > 1:
            raise ValueError(f"{rows.path}: task {task!r} has more than one slo_ms")
        cfgs = grouped[task]
        points = tuple(cfgs)
        thr_a = np.array([np.mean([r[0] for r in cfgs[p]]) for p in points], dtype=np.float64)
        lat_a = np.array([_nanmean([r[1] for r in cfgs[p]]) for p in points], dtype=np.float64)
        costs = [[r[2] for r in cfgs[p]] for p in points]
        cost_a = (
            None
            if all(c is None for cs in costs for c in cs)
            else np.array([np.mean([c for c in cs if c is not None] or [math.nan]) for cs in costs], dtype=np.float64)
        )
        if cost_a is not None and not (np.all(np.isfinite(cost_a)) and np.all(cost_a > 0)):
            raise ValueError(f"{rows.path}: task {task!r}: column 'cost' must be positive for every configuration")
        finite = lat_a[np.isfinite(lat_a)]
        slo_ms = next(iter(slos[task])) if slos[task] else (float(np.median(finite)) if len(finite) else math.nan)
        if not (slo_ms > 0 and math.isfinite(slo_ms)):
            raise ValueError(f"{rows.path}: task {task!r} has no latency to derive an SLO from")
        tasks.append(Task(task, models[task], points, thr_a, lat_a, cost_a, slo_ms))
    return Dataset(name, dims, pricing, tuple(tasks))


def _nanmean(xs: Sequence[float]) -> float:
    finite = [x for x in xs if math.isfinite(x)]
    return float(np.mean(finite)) if finite else math.nan


def _read_csv(path: Path, required: Sequence[str]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(header) or 'none'})")
        rows = []
        for k, r in enumerate(reader):
            if None in r:
                raise ValueError(f"{path}: line {k + 2}: more values than the header has columns")
            rows.append((k + 2, {(a or "").strip(): (b or "").strip() for a, b in r.items()}))
    return header, rows


def load_generic(path: Path) -> Dataset:
    """A CSV in the generic form (see the module doc); raises :class:`ValueError` naming the file and column."""
    header, raw = _read_csv(path, REQUIRED)
    unknown = [h for h in header if h not in REQUIRED and h not in OPTIONAL and not h.startswith(CONFIG_PREFIX)]
    if unknown:
        raise ValueError(
            f"{path}: unknown column(s) {', '.join(unknown)}: configuration columns must be declared with the "
            f"{CONFIG_PREFIX!r} prefix (e.g. {CONFIG_PREFIX}{unknown[0]}); the others are "
            f"{', '.join(REQUIRED + OPTIONAL)}"
        )
    config = [h for h in header if h.startswith(CONFIG_PREFIX)]
    if not config:
        raise ValueError(f"{path}: no configuration column (declare them as {CONFIG_PREFIX}NAME)")
    if empty := [h for h in config if h == CONFIG_PREFIX]:
        raise ValueError(f"{path}: column {empty[0]!r} has no name after the prefix")
    rows = _Rows(path, [h.removeprefix(CONFIG_PREFIX) for h in config])
    for line, r in raw:
        for c in ("task", *config):
            if r.get(c, "") == "":
                raise ValueError(f"{path}: line {line}: column {c!r} is empty")
        thr = _float(path, line, "throughput", r["throughput"])
        lat = _float(path, line, "latency_ms", r["latency_ms"], blank_ok=True)
        cost = _float(path, line, "cost", r["cost"]) if r.get("cost", "") != "" else None
        slo = _float(path, line, "slo_ms", r["slo_ms"]) if r.get("slo_ms", "") != "" else None
        model = r.get("model", "") or r["task"]
        rows.records.append((line, r["task"], model, tuple(r[c] for c in config), thr, lat, cost, slo))
    return _build(path.stem, rows, Pricing())


def load_llm_inference_bench(
    directory: Path, *, absolute: bool = False, prices: Mapping[str, float] | None = None
) -> Dataset:
    """``All_results.csv``: task = model × input/output length; configuration = hardware × devices × framework ×
    batch; latency = end-to-end batch latency.

    Default: objective = generated tokens/s per device; no SLO in the data, so each task's is the median latency.
    ``absolute`` (``llm-inference-bench-abs``): one absolute SLO per workload, ``TPOT_SLO_MS`` per output token
    (the length is the task's), and cost = devices × the device's price per hour (``prices``, default
    ``DEVICE_PRICES``), so the objective is tokens per dollar."""
    path = directory / "All_results.csv"
    cols = ("Hardware", "Num of Hardware", "Framework", "Model", "Input Output Length", "Batch Size")
    _, raw = _read_csv(path, (*cols, "Latency", "Throughput"))
    rows = _Rows(path, ["hardware", "devices", "framework", "batch"])
    for line, r in raw:
        for c in cols:
            if r[c] == "":
                raise ValueError(f"{path}: line {line}: column {c!r} is empty")
        task = f"{r['Model']} io={r['Input Output Length']}"
        cfg = (r["Hardware"], r["Num of Hardware"], r["Framework"], r["Batch Size"])
        lat = _float(path, line, "Latency", r["Latency"], blank_ok=True) * 1000.0
        slo = _float(path, line, "Input Output Length", r["Input Output Length"]) * TPOT_SLO_MS if absolute else None
        rows.records.append(
            (line, task, r["Model"], cfg, _float(path, line, "Throughput", r["Throughput"]), lat, None, slo)
        )
    if not absolute:
        return _build("llm-inference-bench", rows, Pricing((CostTerm("devices", 1.0),)))
    table = dict(DEVICE_PRICES if prices is None else prices)
    missing = sorted({rec[3][0] for rec in rows.records} - set(table))
    if missing:
        raise ValueError(f"{path}: no device price for hardware {', '.join(missing)} (see --prices)")
    bad = [k for k, v in table.items() if not (isinstance(v, int | float) and math.isfinite(v) and v > 0)]
    if bad:
        raise ValueError(f"device prices: the price of {bad[0]!r} must be a positive number")
    pricing = Pricing((CostTerm("devices", price_by="hardware", prices=table),))
    return _build("llm-inference-bench-abs", rows, pricing)


def load_prices(path: Path) -> dict[str, float]:
    """``--prices FILE``: a JSON object ``{hardware: price per device-hour}``."""
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"--prices {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--prices {path}: not JSON: {e}") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"--prices {path}: expected a JSON object of hardware name to price")
    out: dict[str, float] = {}
    for k, v in data.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and v > 0):
            raise ValueError(f"--prices {path}: the price of {k!r} must be a positive number, got {v!r}")
        out[str(k)] = float(v)
    return out


def load_gpulet(directory: Path) -> Dataset:
    """``inference.csv`` (no header): task = model; configuration = batch size × MPS GPU share %; objective =
    samples/s per GPU (throughput / share); latency = per-batch latency (no SLO: the median)."""
    path = directory / "inference.csv"
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    rows = _Rows(path, ["batch", "gpu_share_pct"])
    with path.open(newline="") as f:
        for k, r in enumerate(csv.reader(f)):
            line = k + 1
            if len(r) < 7:
                raise ValueError(f"{path}: line {line}: expected 8 columns (model, batch, share, …), got {len(r)}")
            thr = _float(path, line, "throughput", r[4])
            lat = _float(path, line, "latency", r[6], blank_ok=True) * 1000.0
            valid = len(r) < 8 or r[7].strip() != "0"
            rows.records.append(
                (
                    line,
                    r[0].strip(),
                    r[0].strip(),
                    (r[1].strip(), r[2].strip()),
                    thr,
                    lat if valid else math.nan,
                    None,
                    None,
                )
            )
    return _build("gpulet", rows, Pricing((CostTerm("gpu_share_pct", 0.01),)))


def load_infadapter(directory: Path) -> Dataset:
    """``capacity_result_Feb_21.csv``: task = ResNet depth × p99 SLO (the dataset's own); configuration = CPU
    cores (batching and inter-op threads equal the cores); objective = capacity (RPS at the SLO) per core; a row
    without a p99 latency never reached the SLO (infeasible)."""
    path = directory / "capacity_result_Feb_21.csv"
    _, raw = _read_csv(path, ("CPU", "ARCH", "SLA", "p99_latency", "capacity"))
    rows = _Rows(path, ["cpu"])
    for line, r in raw:
        sla = _float(path, line, "SLA", r["SLA"])
        arch = r["ARCH"]
        if arch == "":
            raise ValueError(f"{path}: line {line}: column 'ARCH' is empty")
        lat = _float(path, line, "p99_latency", r["p99_latency"], blank_ok=True)
        cap = _float(path, line, "capacity", r["capacity"])
        rows.records.append((line, f"resnet{arch} slo={sla:g}ms", f"resnet{arch}", (r["CPU"],), cap, lat, None, sla))
    return _build("infadapter", rows, Pricing((CostTerm("cpu", 1.0),)))


_LOADERS: dict[str, tuple[str, Callable[[Path], Dataset]]] = {
    "llm-inference-bench": ("llm-inference-bench/All_results.csv", load_llm_inference_bench),
    "gpulet": ("gpulet-reimpl/inference.csv", load_gpulet),
    "infadapter": ("infadapter/capacity_result_Feb_21.csv", load_infadapter),
    "llm-inference-bench-abs": (
        "llm-inference-bench/All_results.csv",
        lambda d: load_llm_inference_bench(d, absolute=True),
    ),
}


def load_dataset(name_or_path: str, *, prices: Mapping[str, float] | None = None) -> Dataset:
    """A bundled dataset by name (``data/profiles/…``) or a generic CSV by path; ``prices`` replaces the device
    price table of ``llm-inference-bench-abs``."""
    if name_or_path == "llm-inference-bench-abs" and prices is not None:
        return load_llm_inference_bench(
            locate("profiles/llm-inference-bench/All_results.csv").parent, absolute=True, prices=prices
        )
    if name_or_path in _LOADERS:
        file, loader = _LOADERS[name_or_path]
        return loader(locate(f"profiles/{file}").parent)
    path = Path(name_or_path)
    if not path.exists():
        raise UsageError(f"unknown dataset {name_or_path!r}: not one of {', '.join(DATASETS)} and no such file")
    return load_generic(path)


# -- one run ------------------------------------------------------------------------------------------------------


BENCH_SETTINGS = PlannerSettings()
"""The planner's settings; for the oracle count the benchmark lifts the budget and both stopping rules (the count
runs to the hit)."""


@dataclass(frozen=True, slots=True)
class Run:
    trials: int
    """Trials up to and including the first within-5 % configuration."""
    early_stop: int | None = None
    """Trials after which the EI rule (default settings) would have stopped before that hit; None if it would not."""
    early_value: float | None = None
    """Best feasible objective found by then, as a fraction of the task's best."""
    stop_trials: int | None = None
    """With ``--stop-rule``: trials the planner ran with its own stopping rule (EI or the budget)…"""
    stop_value: float | None = None
    """…and the best feasible objective it had then, as a fraction of the task's best (0 if none was feasible)."""
    patience: Mapping[int, tuple[int, float]] | None = None
    """``consensus`` only: ``(trials, value)`` with its stop-after-k-trials-without-improvement rule, per k."""


def _trial(task: Task, space: SearchSpace, p: Point, k: int) -> Trial:
    return Trial(f"{task.name}#{k}", task.model, space.config(p), task.slo_ms)


def run_planner(
    ds: Dataset, task: Task, seed: int, prior: TransferPrior | None, settings: PlannerSettings = BENCH_SETTINGS
) -> Run:
    space = ds.space(task)
    good = ds.good(task)
    runner = ds.runner(task)
    n = len(task)
    search = Search.start(
        space, ds.objective(task), replace(settings, budget=n, ei_threshold=0.0, prior_trials=0), prior=prior, seed=seed
    )
    value, _ = ds.values(task)
    top = float(max(value[i] for i in good))
    early: int | None = None
    early_value: float | None = None
    for k in range(1, n + 1):
        search, sug = search.ask(1)
        done = k - 1
        best = search.best()
        if early is None and done >= settings.min_trials and sug.acquisition < settings.ei_threshold and best:
            early = done
            early_value = float(value[search.index[best.point]]) / top
        p = sug.points[0]
        search = search.record(p, runner.measure(_trial(task, space, p, k)))
        if search.index[p] in good:
            return Run(k, early, early_value)
    raise RuntimeError(f"{task.name}: no configuration within {WITHIN:.0%} of the best was found")


def run_stopping(
    ds: Dataset, task: Task, seed: int, prior: TransferPrior | None, settings: PlannerSettings = BENCH_SETTINGS
) -> tuple[int, float]:
    """The planner as it runs live: until its stopping rule says so. ``(trials, best found / task best)``."""
    space = ds.space(task)
    runner = ds.runner(task)
    value, feasible = ds.values(task)
    top = float(value[feasible].max())
    search = Search.start(
        space, ds.objective(task), replace(settings, budget=min(settings.budget, len(task))), prior=prior, seed=seed
    )
    while True:
        search, sug = search.ask(1)
        if sug.stop or not sug.points:
            break
        p = sug.points[0]
        search = search.record(p, runner.measure(_trial(task, space, p, len(search.observations) + 1)))
    best = search.best()
    return len(search.observations), 0.0 if best is None else float(value[search.index[best.point]]) / top


def run_gp(ds: Dataset, task: Task, seed: int) -> Run:
    """skopt's defaults; each ask snapped to the nearest untried measured configuration."""
    space = ds.space(task)
    good = ds.good(task)
    runner = ds.runner(task)
    objective = ds.objective(task)
    enc = Encoder(space)
    feats = enc.transform(task.points)
    untried = np.ones(len(task), dtype=bool)
    opt = DefaultGP(space, seed)
    for k in range(1, len(task) + 1):
        want = enc.transform([opt.ask()])[0]
        d = np.linalg.norm(feats - want, axis=1)
        d[~untried] = np.inf
        i = int(np.argmin(d))
        untried[i] = False
        p = task.points[i]
        result = runner.measure(_trial(task, space, p, k))
        v = objective.value(space, p, result)
        opt.tell(p, -(v if v is not None else 0.0))
        if i in good:
            return Run(k)
    raise RuntimeError(f"{task.name}: no configuration within {WITHIN:.0%} of the best was found")


def consensus_scores(ds: Dataset, task: Task) -> FloatArray:
    """For each configuration of ``task``, the mean over the tasks of *other models* that measured it of its
    objective relative to that task's best (infeasible = 0); NaN where no other model measured it."""
    index = {p: i for i, p in enumerate(task.points)}
    total = np.zeros(len(task))
    count = np.zeros(len(task))
    for other in ds.tasks:
        if other.model == task.model:
            continue
        value, feasible = ds.values(other)
        if not feasible.any():
            continue
        rel = np.where(feasible, value / float(value[feasible].max()), 0.0)
        for j, p in enumerate(other.points):
            i = index.get(p)
            if i is not None:
                total[i] += rel[j]
                count[i] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(np.where(count > 0, total / np.maximum(count, 1), np.nan), dtype=np.float64)


def run_consensus(ds: Dataset, task: Task, seed: int) -> Run:
    """Planner-free: try the configurations in the order of the other models' mean relative objective (never
    measured elsewhere: last, in random order); ties broken at random by ``seed``."""
    scores = consensus_scores(ds, task)
    rng = np.random.default_rng(seed)
    tiebreak = rng.permutation(len(task))
    key = np.where(np.isnan(scores), -1.0, scores)
    order = sorted(range(len(task)), key=lambda i: (-key[i], tiebreak[i]))
    good = ds.good(task)
    return Run(next(k for k, i in enumerate(order) if i in good) + 1)


def run_consensus_stopping(
    ds: Dataset, task: Task, seed: int, patience: int, budget: int = BENCH_SETTINGS.budget
) -> tuple[int, float]:
    """Consensus with a stopping rule of its own, so it is compared with the planner as a user gets both: try the
    configurations in :func:`run_consensus`'s order and stop after ``patience`` trials in a row that did not
    improve the best feasible one (once one is known), or at the budget. ``(trials, best found / task best)``."""
    scores = consensus_scores(ds, task)
    tiebreak = np.random.default_rng(seed).permutation(len(task))
    key = np.where(np.isnan(scores), -1.0, scores)
    order = sorted(range(len(task)), key=lambda i: (-key[i], tiebreak[i]))
    value, feasible = ds.values(task)
    top = float(value[feasible].max())
    best = -math.inf
    stale = trials = 0
    for i in order[: min(budget, len(task))]:
        trials += 1
        if feasible[i] and value[i] > best:
            best, stale = float(value[i]), 0
        else:
            stale += 1
        if best > -math.inf and stale >= patience:
            break
    return trials, (best / top if best > -math.inf else 0.0)


def run_random(ds: Dataset, task: Task, seed: int) -> Run:
    order = np.random.default_rng(seed).permutation(len(task))
    good = ds.good(task)
    hits = [k for k, i in enumerate(order) if int(i) in good]
    return Run(hits[0] + 1)


# -- transfer: source surrogates, fitted once per dataset ---------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Sources:
    """Every task's surrogate predictions at the union of the dataset's configurations."""

    union: dict[Point, int]
    tasks: tuple[str, ...]
    models: tuple[str, ...]
    prior: TransferPrior | None
    """Rows = tasks that could be fitted (names in ``tasks``)."""

    def for_task(self, task: Task) -> TransferPrior | None:
        """Leave-one-model-out: the sources of other models, at ``task``'s configurations."""
        if self.prior is None:
            return None
        rows = [k for k, m in enumerate(self.models) if m != task.model]
        if not rows:
            return None
        cols = [self.union[p] for p in task.points]
        r = np.asarray(rows, dtype=np.int64)
        sub = TransferPrior(
            tuple(self.tasks[k] for k in rows),
            self.prior.mean_y[r],
            self.prior.sd_y[r],
            self.prior.mean_m[r],
            self.prior.sd_m[r],
        )
        return sub.subset(cols)


def _union(ds: Dataset) -> dict[Point, int]:
    union: dict[Point, int] = {}
    for t in ds.tasks:
        for p in t.points:
            union.setdefault(p, len(union))
    return union


def _fit_one(ds: Dataset, k: int) -> tuple[int, tuple[FloatArray, ...] | None]:
    """Task ``k`` as a source: its surrogates fitted to all its measurements, predicted at every configuration."""
    task = ds.tasks[k]
    space = ds.space(task)
    union = _union(ds)
    enc = Encoder(SearchSpace(ds.dimensions, candidates=tuple(union)))
    runner = ds.runner(task)
    obs = tuple(Observation(p, runner.measure(_trial(task, space, p, 0))) for p in task.points)
    with threadpool_limits(limits=1):
        model = fit_source(enc, SourceProfile(task.model, space, ds.objective(task), obs), seed=0)
        return k, None if model is None else model.predict(enc.transform(list(union)))


def fit_sources(ds: Dataset, executor: Executor | None = None) -> Sources:
    union = _union(ds)
    results = (executor or LocalExecutor(1)).map(_fit_one, ds, list(range(len(ds.tasks))))
    fitted = [(k, pred) for k, pred in results if pred is not None]
    if not fitted:
        return Sources(union, (), (), None)
    prior = TransferPrior(
        tuple(ds.tasks[k].name for k, _ in fitted),
        np.stack([p[0] for _, p in fitted]),
        np.stack([p[1] for _, p in fitted]),
        np.stack([p[2] for _, p in fitted]),
        np.stack([p[3] for _, p in fitted]),
    )
    return Sources(union, prior.models, tuple(ds.tasks[k].model for k, _ in fitted), prior)


# -- the benchmark ------------------------------------------------------------------------------------------------


def _job_of(ds: Dataset, job: tuple[int, str, Sequence[int], TransferPrior | None, bool]) -> list[Run]:
    """:func:`_job` on the shared dataset (sent to each worker once)."""
    return _job(ds, *job)


def _job(
    ds: Dataset, k: int, method: str, seeds: Sequence[int], prior: TransferPrior | None, stop_rule: bool
) -> list[Run]:
    with threadpool_limits(limits=1):  # tiny matrices: BLAS threads only contend (5x slower on a busy 2-core box)
        runs = _run_seeds(ds, k, method, seeds, prior)
        if stop_rule and method in PLANNERS:
            stops = [run_stopping(ds, ds.tasks[k], s, prior) for s in seeds]
            runs = [replace(r, stop_trials=t, stop_value=v) for r, (t, v) in zip(runs, stops, strict=True)]
        if stop_rule and method == "consensus":
            runs = [
                replace(r, patience={p: run_consensus_stopping(ds, ds.tasks[k], s, p) for p in CONSENSUS_PATIENCE})
                for r, s in zip(runs, seeds, strict=True)
            ]
            runs = [
                replace(r, stop_trials=_patience(r)[PATIENCE][0], stop_value=_patience(r)[PATIENCE][1]) for r in runs
            ]
        return runs


def _patience(r: Run) -> Mapping[int, tuple[int, float]]:
    assert r.patience is not None
    return r.patience


def _run_seeds(ds: Dataset, k: int, method: str, seeds: Sequence[int], prior: TransferPrior | None) -> list[Run]:
    task = ds.tasks[k]
    if method == "shadowscale":
        return [run_planner(ds, task, s, prior) for s in seeds]
    if method == "shadowscale_cold":
        return [run_planner(ds, task, s, None) for s in seeds]
    if method == "gp":
        return [run_gp(ds, task, s) for s in seeds]
    if method == "random":
        return [run_random(ds, task, s) for s in seeds]
    if method == "consensus":
        return [run_consensus(ds, task, s) for s in seeds]
    raise ValueError(f"unknown method {method!r}")


def scored_tasks(ds: Dataset, min_configs: int = MIN_CONFIGS) -> list[int]:
    """Indices of the tasks that are scored: enough configurations and at least one feasible."""
    return [k for k, t in enumerate(ds.tasks) if len(t) >= min_configs and ds.good(t)]


def summarise(fractions: Sequence[float], trials: Sequence[float]) -> dict[str, float | None]:
    """Over tasks (each a mean over seeds): median trials, their 90th percentile, and the same as a fraction of
    the task's configurations."""
    if not trials:
        return {"median_trials": None, "p90_trials": None, "median_fraction": None, "p90_fraction": None}
    return {
        "median_trials": round(float(np.median(trials)), 4),
        "p90_trials": round(float(np.percentile(trials, 90)), 4),
        "median_fraction": round(float(np.median(fractions)), 4),
        "p90_fraction": round(float(np.percentile(fractions, 90)), 4),
    }


def bench(
    ds: Dataset,
    *,
    methods: Sequence[str] = METHODS,
    seeds: Sequence[int] = tuple(range(10)),
    max_tasks: int | None = None,
    min_configs: int = MIN_CONFIGS,
    jobs: int = 1,
    stop_rule: bool = True,
    executor: Executor | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run every method on every scored task with every seed: ``(report, details)``."""
    t0 = time.perf_counter()
    scored = scored_tasks(ds, min_configs)
    if max_tasks is not None:
        scored = scored[:max_tasks]
    ex = executor or LocalExecutor(jobs)
    sources = fit_sources(ds, ex) if "shadowscale" in methods and scored else None
    fit_s = time.perf_counter() - t0
    work = [(k, m) for k in scored for m in methods]
    priors = [sources.for_task(ds.tasks[k]) if sources and m == "shadowscale" else None for k, m in work]
    items = [(k, m, list(seeds), prior, stop_rule) for (k, m), prior in zip(work, priors, strict=True)]
    results = ex.map(_job_of, ds, items)
    per: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for (k, m), runs in zip(work, results, strict=True):
        t = ds.tasks[k]
        mean = float(np.mean([r.trials for r in runs]))
        per[m][t.name] = {
            "configs": len(t),
            "mean_trials": mean,
            "fraction": mean / len(t),
            "trials": [r.trials for r in runs],
            "early_stops": sum(r.early_stop is not None for r in runs),
            "early_stop_values": [r.early_value for r in runs if r.early_value is not None],
        }
        if stop_rule and runs and runs[0].stop_trials is not None:
            per[m][t.name]["stop_trials"] = [r.stop_trials for r in runs]
            per[m][t.name]["stop_values"] = [r.stop_value for r in runs]
        if stop_rule and runs and runs[0].patience is not None:
            per[m][t.name]["patience"] = {
                str(p): {
                    "stop_trials": [_patience(r)[p][0] for r in runs],
                    "stop_values": [_patience(r)[p][1] for r in runs],
                }
                for p in CONSENSUS_PATIENCE
            }
    report: dict[str, Any] = {
        "dataset": ds.name,
        "tasks": len(scored),
        "methods": {
            m: summarise([v["fraction"] for v in per[m].values()], [v["mean_trials"] for v in per[m].values()])
            for m in methods
        },
    }
    if stop_rule:
        for m in methods:
            if any("stop_trials" in v for v in per[m].values()):
                report["methods"][m]["stop_rule"] = _stop_summary(per[m])
            if any("patience" in v for v in per[m].values()):
                report["methods"][m]["stop_rule_by_patience"] = {
                    str(p): _stop_summary(
                        {t: {**v["patience"][str(p)], "configs": v["configs"]} for t, v in per[m].items()}
                    )
                    for p in CONSENSUS_PATIENCE
                }
    details = {
        "dataset": ds.name,
        "seeds": list(seeds),
        "min_configs": min_configs,
        "wall_s": round(time.perf_counter() - t0, 2),
        "source_fit_s": round(fit_s, 2),
        "executor": repr(ex),
        "environment": environment(),
        "tasks": {ds.tasks[k].name: {"model": ds.tasks[k].model, "configs": len(ds.tasks[k])} for k in scored},
        "per_task": per,
        "report": report,
    }
    return report, details


def environment() -> dict[str, Any]:
    """What the numbers depend on beyond the code and the data (of this process; Dask workers may differ): the
    numeric libraries' versions and the BLAS kernels they run. The planner's searches follow argmax decisions on
    GP fits, so a different BLAS kernel (one CPU's AVX-512 code path against another's) may change rounding and,
    where a decision is close, a search; record it with every result."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "python": sys.version.split()[0],
        "packages": {n: ver(n) for n in ("numpy", "scipy", "scikit-learn", "scikit-optimize")},
        "blas": [
            {k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for i in threadpool_info()
            if i.get("user_api") == "blas"
        ],
    }


def _stop_summary(per: dict[str, Any]) -> dict[str, float]:
    """The planner as a user gets it (its own stopping rule), over tasks: the median and 90th percentile of the
    mean trials to the stop (also as a fraction of the task's configurations), the median of the mean value at
    the stop (best found / task best), and the share of all runs that stopped within 5 % of the best."""
    trials = [float(np.mean(v["stop_trials"])) for v in per.values()]
    fractions = [float(np.mean(v["stop_trials"])) / v["configs"] for v in per.values()]
    values = [float(np.mean(v["stop_values"])) for v in per.values()]
    hits = [x >= 1 - WITHIN for v in per.values() for x in v["stop_values"]]
    return {
        "median_trials": round(float(np.median(trials)), 2),
        "p90_trials": round(float(np.percentile(trials, 90)), 2),
        "median_fraction": round(float(np.median(fractions)), 4),
        "p90_fraction": round(float(np.percentile(fractions, 90)), 4),
        "median_value": round(float(np.median(values)), 4),
        "within_5pct": round(float(np.mean(hits)), 4),
    }


def parse_seeds(text: str) -> list[int]:
    """``"10"`` (seeds 0–9), ``"0-9"``, ``"3,5"`` or a mix."""
    text = text.strip()
    if text.isdigit():
        n = int(text)
        if n < 1:
            raise ValueError("--seeds: need at least one seed")
        return list(range(n))
    seeds: set[int] = set()
    for part in text.split(","):
        lo_s, dash, hi_s = part.strip().partition("-")
        try:
            lo, hi = int(lo_s), int(hi_s) if dash else int(lo_s)
        except ValueError:
            raise ValueError(f"--seeds: {part!r} is not N, N-M or a comma-separated list") from None
        if lo < 0 or hi < lo:
            raise ValueError(f"--seeds: bad range {part!r}")
        seeds.update(range(lo, hi + 1))
    return sorted(seeds)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "profiler",
        help="trials each profiler search needs to reach within 5 %% of the best configuration",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", required=True, help=f"{', '.join(DATASETS)} or a path to a CSV in the generic form")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}")
    p.add_argument("--seeds", default="10", help="number of seeds (0..N-1) or a list/range such as 0-9 (default 10)")
    p.add_argument("--tasks", type=int, default=None, help="score only the first K scored tasks (quick runs)")
    p.add_argument("--min-configs", type=int, default=MIN_CONFIGS, help="smallest task that is scored (default 30)")
    add_executor_arguments(p, default_help="1")
    p.add_argument("--details", type=Path, default=None, help="write per-task results and the wall time here (JSON)")
    p.add_argument(
        "--no-stop-rule",
        dest="stop_rule",
        action="store_false",
        help="skip the planners' runs with their own stopping rule (the headline 'stop_rule' figures)",
    )
    p.add_argument("--stop-rule", dest="stop_rule", action="store_true", help=argparse.SUPPRESS)  # the default now
    p.add_argument(
        "--prices",
        type=Path,
        default=None,
        metavar="FILE",
        help="JSON {hardware: price per device-hour} for llm-inference-bench-abs (default: the documented table)",
    )
    p.add_argument("--json", action="store_true", help="print only the JSON object (no summary on stderr)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UsageError(f"--methods: unknown {', '.join(unknown) or '(none)'}; valid: {', '.join(METHODS)}")
    if args.tasks is not None and args.tasks < 1:
        raise UsageError("--tasks must be >= 1")
    if args.min_configs < 1:
        raise UsageError("--min-configs must be >= 1")
    ds = load_dataset(args.dataset, prices=None if args.prices is None else load_prices(args.prices))
    with make_executor(args.jobs, args.dask, default=1) as executor:
        report, details = bench(
            ds,
            methods=methods,
            seeds=parse_seeds(args.seeds),
            max_tasks=args.tasks,
            min_configs=args.min_configs,
            stop_rule=args.stop_rule,
            executor=executor,
        )
    print(json.dumps(report), flush=True)
    if args.details is not None:
        args.details.parent.mkdir(parents=True, exist_ok=True)
        args.details.write_text(json.dumps(details, indent=1))
    if args.json:
        return 0
    for m, summary in report["methods"].items():
        if "stop_rule" in summary:
            print(f"profiler bench: {m} with its stopping rule: {json.dumps(summary['stop_rule'])}", file=sys.stderr)
    print(
        f"profiler bench: {ds.name}, {report['tasks']} tasks × {len(methods)} methods × {len(details['seeds'])} seeds "
        f"in {details['wall_s']:.1f} s ({details['executor']})",
        file=sys.stderr,
    )
    return 0
