"""Transfer across models: a prior for a new model's search, learnt from other models' profiles.

Each other model (a *source*) gets its own Gaussian process, fitted once to its measurements in the target's
feature encoding: one on its objective, normalised so that its best feasible configuration is 0
(``log(value / best)``: throughput scales differ by orders of magnitude between models, relative effects much
less), one on its latency margin ``log(p99 / SLO)``. A :class:`TransferPrior` holds every source's predictions at
the target's candidates; the planner mixes them with weights learnt from the target's own trials
(:func:`source_weights`: how well each source orders the configurations tried so far, RGPE-style) and searches
the target's deviation from the mixture. Before any trial, the mixture's best feasible configuration is where
the other models did best: the warm start's seed point.

A *flat* component (a source that predicts the same everywhere) takes part in the weighting, so a target that
none of the sources orders well falls back to a search that is close to a cold one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shadowscale.policies.profiling.objective import Objective
from shadowscale.policies.profiling.skopt_adapter import GP, Encoder, FloatArray, default_hyper, fit_gp
from shadowscale.policies.profiling.space import SearchSpace, in_dimension
from shadowscale.policies.profiling.types import Observation

FAILED_MARGIN = 1.0
"""Added to the worst margin seen for a measured trial that never met the SLO (no finite p99)."""
MISRANK_WEIGHT = 0.5
"""Each pair of target trials a source orders wrongly multiplies its weight by this."""
MAX_FIT_POINTS = 60
"""A source with more trials has its GP hyperparameters fitted on a subsample of this size."""
SOURCE_LENGTH_SCALE = 1.0
FLAT_SD = 1.0
"""Prior standard deviation of the flat component (log units: a factor e either way)."""


@dataclass(frozen=True, slots=True)
class SourceProfile:
    """Another model's trials: what transfer learns from (its own space, objective and observations)."""

    model: str
    space: SearchSpace
    objective: Objective
    observations: tuple[Observation, ...]


def targets(
    space: SearchSpace, objective: Objective, observations: Sequence[Observation], failed_margin: float = FAILED_MARGIN
) -> tuple[list[int], FloatArray, list[int], FloatArray, list[bool], list[int]]:
    """Learning targets of a list of trials: ``(rows with a value, log values, rows with a margin, margins,
    feasible per trial, failed rows)``. A measured trial that never met the SLO (no finite p99: the load test
    found no rate low enough) gets the largest margin seen (at least 0) plus ``failed_margin``; a trial that
    failed outright (crash, out of memory, failed start, timeout) has no margin and is a *failed row*, which the
    planner's failure model learns from. Nothing is discarded."""
    yi: list[int] = []
    ys: list[float] = []
    mi: list[int] = []
    ms: list[float | None] = []
    feasible: list[bool] = []
    failed: list[int] = []
    for k, o in enumerate(observations):
        feasible.append(objective.feasible(o.result))
        if not o.result.measured:
            failed.append(k)
            continue
        lv = objective.log_value(space, o.point, o.result)
        if lv is not None:
            yi.append(k)
            ys.append(lv)
        mi.append(k)
        ms.append(objective.margin(o.result))
    known = [m for m in ms if m is not None]
    worst = max([0.0, *known]) + failed_margin
    margins = np.array([worst if m is None else m for m in ms], dtype=np.float64)
    return yi, np.array(ys, dtype=np.float64), mi, margins, feasible, failed


@dataclass(frozen=True, slots=True, eq=False)
class SourceModel:
    """A source's fitted surrogates (objective relative to its best, and margin) in the target's encoding."""

    model: str
    objective_gp: GP | None
    objective_mean: float
    objective_scale: float
    margin_gp: GP
    margin_mean: float
    margin_scale: float

    def predict(self, x: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """``(mean, sd)`` of the normalised objective and of the margin at feature rows ``x``."""
        if self.objective_gp is None:
            my, sy = np.full(len(x), -1.0), np.full(len(x), FLAT_SD)
        else:
            z, sz = self.objective_gp.predict(x)
            my, sy = self.objective_mean + self.objective_scale * z, self.objective_scale * sz
        z, sz = self.margin_gp.predict(x)
        return my, sy, self.margin_mean + self.margin_scale * z, self.margin_scale * sz


def fit_source(encoder: Encoder, source: SourceProfile, seed: int = 0) -> SourceModel | None:
    """Fit a source's surrogates in ``encoder``'s features; None when it has no usable trial.

    Trials whose configuration does not exist in the target's space (another GPU type, a value out of range) are
    left out; the rest are encoded with the target's encoder so predictions land on the target's candidates.
    """
    target_space = encoder.space
    names = target_space.names
    obs: list[Observation] = []
    for o in source.observations:
        cfg = source.space.config(o.point)
        if any(n not in cfg for n in names):
            return None
        p = tuple(cfg[n] for n in names)
        if all(in_dimension(d, v) for d, v in zip(target_space.dimensions, p, strict=True)):
            obs.append(Observation(target_space.point(p), o.result))
    if not obs:
        return None
    yi, ys, mi, ms, feasible, _ = targets(source.space, source.objective, obs)
    x = encoder.transform([o.point for o in obs])
    objective_gp: GP | None = None
    y_mean = y_scale = 1.0
    if len(ys) >= 2:
        feas_y = [y for k, y in zip(yi, ys, strict=True) if feasible[k]]
        best = max(feas_y) if feas_y else float(ys.max())
        rel = ys - best
        y_mean, y_scale = float(rel.mean()), float(rel.std()) or 1.0
        objective_gp = _fit_large(x[yi], (rel - y_mean) / y_scale, seed)
    if not len(ms):
        return None
    m_mean, m_scale = float(ms.mean()), float(ms.std()) or 1.0
    margin_gp = _fit_large(x[mi], (ms - m_mean) / m_scale, seed)
    return SourceModel(source.model, objective_gp, y_mean, y_scale, margin_gp, m_mean, m_scale)


def _fit_large(x: FloatArray, y: FloatArray, seed: int) -> GP:
    """Hyperparameters from at most ``MAX_FIT_POINTS`` trials (a seeded subsample), then conditioned on all of
    them: the gradient of a per-feature length scale costs ``n² × features`` per step."""
    start = default_hyper(x.shape[1], SOURCE_LENGTH_SCALE)
    if len(y) <= MAX_FIT_POINTS:
        return fit_gp(x, y, start=start, seed=seed, restarts=1)
    rows = np.random.default_rng(seed).choice(len(y), MAX_FIT_POINTS, replace=False)
    return fit_gp(x[rows], y[rows], start=start, seed=seed, restarts=1).condition(x, y)


@dataclass(frozen=True, slots=True, eq=False)
class TransferPrior:
    """Every source's predictions at the target's candidates: arrays of shape ``(sources, candidates)``."""

    models: tuple[str, ...]
    mean_y: FloatArray
    sd_y: FloatArray
    mean_m: FloatArray
    sd_m: FloatArray

    def __post_init__(self) -> None:
        shape = self.mean_y.shape
        if len(shape) != 2 or shape[0] != len(self.models):
            raise ValueError("transfer prior: arrays must be (sources, candidates)")
        if any(a.shape != shape for a in (self.sd_y, self.mean_m, self.sd_m)):
            raise ValueError("transfer prior: arrays differ in shape")

    @classmethod
    def build(cls, sources: Sequence[SourceModel], features: FloatArray) -> TransferPrior | None:
        """Predictions of ``sources`` at candidate feature rows; None without sources."""
        if not sources:
            return None
        preds = [s.predict(features) for s in sources]
        return cls(
            tuple(s.model for s in sources),
            np.stack([p[0] for p in preds]),
            np.stack([p[1] for p in preds]),
            np.stack([p[2] for p in preds]),
            np.stack([p[3] for p in preds]),
        )

    def nearest_spread(self) -> tuple[float, float]:
        """How far each source is from its most similar other source (RMS over the candidates, then the mean over
        sources) for the objective and the margin: the error a prior that picked the right source would still
        make on a new model. 0 with fewer than two sources."""
        return _nearest_spread(self.mean_y), _nearest_spread(self.mean_m)

    def subset(self, columns: Sequence[int]) -> TransferPrior:
        """The prior restricted to some candidates (columns), in that order."""
        c = np.asarray(columns, dtype=np.int64)
        return TransferPrior(self.models, self.mean_y[:, c], self.sd_y[:, c], self.mean_m[:, c], self.sd_m[:, c])


def _nearest_spread(means: FloatArray) -> float:
    n = means.shape[0]
    if n < 2:
        return 0.0
    d = np.sqrt(np.mean((means[:, None, :] - means[None, :, :]) ** 2, axis=2))
    d[np.arange(n), np.arange(n)] = np.inf
    return float(np.mean(np.min(d, axis=1)))


def _order_key(y: float, m: float) -> tuple[int, float]:
    """Feasible configurations above infeasible ones; feasible by objective, infeasible by how close to the SLO."""
    return (1, float(y)) if m <= 0 else (0, -float(m))


def _misranked(keys_true: Sequence[tuple[int, float]], keys_pred: Sequence[tuple[int, float]]) -> float:
    bad = 0.0
    n = len(keys_true)
    for i in range(n):
        for j in range(i + 1, n):
            t = (keys_true[i] > keys_true[j]) - (keys_true[i] < keys_true[j])
            if t == 0:
                continue
            p = (keys_pred[i] > keys_pred[j]) - (keys_pred[i] < keys_pred[j])
            bad += 1.0 if p == -t else (0.5 if p == 0 else 0.0)
    return bad


def source_weights(prior: TransferPrior, cols: Sequence[int], y: Sequence[float], m: Sequence[float]) -> FloatArray:
    """Weights of the sources and, last, of the flat component, from the target trials at candidate ``cols``
    (``y`` = log objective, NaN when unknown; ``m`` = margin). Uniform before two trials exist."""
    n_src = len(prior.models)
    if len(cols) < 2:
        w = np.ones(n_src + 1)
        w[-1] = 0.0 if n_src else 1.0
        return np.asarray(w / w.sum(), dtype=np.float64)
    truth = [_order_key(yy if math.isfinite(yy) else -math.inf, mm) for yy, mm in zip(y, m, strict=True)]
    c = np.asarray(cols, dtype=np.int64)
    log_w = np.empty(n_src + 1)
    for s in range(n_src):
        pred = [_order_key(float(a), float(b)) for a, b in zip(prior.mean_y[s, c], prior.mean_m[s, c], strict=True)]
        log_w[s] = _misranked(truth, pred) * math.log(MISRANK_WEIGHT)
    flat = [(0, 0.0)] * len(truth)  # orders nothing: every comparable pair counts half
    log_w[-1] = (_misranked(truth, flat) + 1.0) * math.log(MISRANK_WEIGHT)
    w = np.exp(log_w - log_w.max())
    return np.asarray(w / w.sum(), dtype=np.float64)
