"""The Bayesian planner: which configuration to try next, and when to stop.

A :class:`Search` is a value: it holds the space, the objective, the settings, the candidates, the optional
transfer prior and every trial so far, and deciding twice from the same search gives the same answer (the
randomness is a seed). ``ask`` returns the configurations to try and a search that marks them as running;
``record`` returns a search that has learnt from a result; ``profile`` is what the model gets.

How a suggestion is made (the candidates are the space's configurations, or a seeded sample of a continuous
space; skopt's own ``ask`` samples its box and cannot be restricted to them, so the planner scores them itself
with skopt's Gaussian process and feature encoding, see :mod:`policies.profiling.skopt_adapter`):

1. Two surrogates over the candidates: the objective ``log(throughput / cost)`` and the latency margin
   ``log(p99 / SLO)``. Without transfer each is a GP on the standardised trials. With transfer each is the
   sources' weighted mixture (:mod:`policies.profiling.transfer`) plus a GP on the target's standardised
   deviation from it, scaled by the mixture's own uncertainty, so the prior dominates until the trials disagree.
2. Infeasible trials are data: a configuration that missed the SLO teaches the margin surrogate its latency (one
   whose load test never met the SLO at any rate is recorded as far over it); one that failed outright (crash,
   out of memory, failed start, timeout) feeds a third, local model, P(runs). The acquisition is expected
   improvement over the best feasible trial × P(SLO met) × P(runs) (constrained EI). P(SLO met) is never more
   certain than a latency noise of ``margin_noise`` allows.
3. A cold search (no prior) first spreads ``initial_points`` trials over the space (a seeded start, then the
   candidates farthest from everything tried); a warm one starts with the prior's order (``prior_order`` trials:
   the configurations the other models did best on, by their measured objective relative to each one's best).
4. Stop when the trial budget is spent, every candidate was tried, or, once a feasible configuration is known:

   - the *EI rule*: after ``min_trials``, the best acquisition, judged with the wider ``stop_margin_noise``, is
     below ``ei_threshold`` (an expected gain of under 1 % by default). A warm search whose prior explains every
     trial (none more than ``warm_misfit`` prior standard deviations off) may stop by it after
     ``warm_min_trials``, judged with ``margin_noise``;
   - the *agreement rule* (warm searches, after ``prior_trials``): the sources, each weighted by the likelihood of
     the trials under it (relative objectives within ``agree_tolerance``, feasibility by its margin) against a
     flat "none of them" component, give at most ``1 - agree_confidence`` to "an untried configuration that may
     meet the SLO is ``agree_improvement`` better than the incumbent" (:meth:`Search.evidence`).

The GP hyperparameters (amplitude, a length scale per feature, noise) stay at ``length_scale`` for the first
``fit_after`` trials, are then fitted by maximum likelihood every ``refit_every`` trials and reused in between.

Several configurations at once (``ask(n)``): the next ones are chosen as if the earlier ones had returned their
predicted values ("kriging believer"), which pushes them apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from shadowscale.policies.profiling.objective import Objective
from shadowscale.policies.profiling.skopt_adapter import Encoder, FloatArray, Hyper, default_hyper, fit_gp
from shadowscale.policies.profiling.space import Point, SearchSpace
from shadowscale.policies.profiling.transfer import FLAT_SD, SourceModel, TransferPrior, source_weights, targets
from shadowscale.policies.profiling.types import (
    Observation,
    Prediction,
    Profile,
    Suggestion,
    TrialResult,
    TrialStatus,
)

Z90 = 1.6448536269514722
FAILURE_LENGTH_SCALE = 0.3
"""Length scale (encoded units) of the failure model: a failure lowers P(runs) of its near neighbours."""


@dataclass(frozen=True, slots=True)
class PlannerSettings:
    """Knobs of the planner; the defaults are the ones the benchmark reports."""

    budget: int = 40
    """Most trials in one search."""
    ei_threshold: float = 0.01
    """Stop once the best expected improvement × P(feasible) is below this (log units: 0.01 ≈ 1 %)."""
    min_trials: int = 6
    """Never stop on the EI rule before this many trials."""
    warm_min_trials: int = 3
    """With a transfer prior that explains every trial so far (``warm_misfit``), the EI rule may stop from this many
    trials on instead of ``min_trials``, and judges the expected improvement with ``margin_noise`` instead of the
    wider ``stop_margin_noise``."""
    warm_misfit: float = 1.0
    """A prior *explains* the trials when no trial's objective or margin is more than this many of the prior's
    standard deviations from its mean (shifted by the offsets fitted to the trials)."""
    prior_order: int = 1
    """Warm start: the first this many trials follow the transfer prior's order (the configurations the other
    models did best on, by their expected objective relative to each one's best, measured ones first)."""
    prior_trials: int = 2
    """The agreement rule may stop a warm search from this many trials on (0: never): once the sources, weighted
    by how well they explain the trials, see no untried configuration ``agree_improvement`` better than the
    incumbent with probability ``agree_confidence`` (see :meth:`Search.evidence`)."""
    agree_tolerance: float = 0.1
    """Agreement rule: the error (log units: 0.1 ≈ 10 %) a source is expected to make in predicting a trial's
    objective relative to the incumbent; its weight is the likelihood of the trials under that error."""
    agree_improvement: float = 0.05
    """Agreement rule: the gain (a fraction: 0.05 = 5 %) over the incumbent that a source must rule out."""
    agree_confidence: float = 0.8
    """Agreement rule: stop once P(an untried configuration is ``agree_improvement`` better) is at most
    ``1 - agree_confidence``."""
    margin_offset: bool = True
    """Agreement rule: shift each source's margins by its mean error on the target's measured margins before it
    may claim an untried configuration meets the SLO (a smaller source model claims configurations too small for a
    larger target)."""
    initial_points: int = 3
    """Cold start: trials spread over the space before the surrogate chooses."""
    fit_after: int = 6
    """Fit the GP's hyperparameters from this many trials on; before, use ``length_scale``."""
    length_scale: float = 0.7
    """Prior length scale in encoded units (numeric dimensions span [0, 1], categories are one-hot)."""
    prior_floor: float = 0.1
    """Smallest prior standard deviation (log units) a transfer prior may claim anywhere; the prior's sd is
    also widened by how far apart its sources are from each other (see ``TransferPrior.nearest_spread``)."""
    margin_noise: float = 0.1
    """Latency noise (log units, 0.1 ≈ 10 %) below which a predicted margin is not trusted: P(feasible) is never
    more certain than the measurements are."""
    stop_margin_noise: float = 0.25
    """The stopping rule judges the expected improvement with this wider latency noise, so that a search stops
    only when even configurations its margin model believes just over the SLO promise no gain."""
    failed_margin: float = 1.0
    """Added to the worst margin ``log(p99 / SLO)`` seen, for a measured trial that never met the SLO."""
    pool_size: int = 2000
    """Candidates sampled from a space with a continuous range."""
    refit_every: int = 3
    """Refit the hyperparameters after this many new trials (from the last fit); in between, reuse them."""
    restarts: int = 0
    """Extra random restarts of the hyperparameter optimiser (it always starts from ``length_scale``)."""

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise ValueError("planner: budget must be >= 1")
        if self.ei_threshold < 0 or self.min_trials < 0 or self.initial_points < 1:
            raise ValueError("planner: ei_threshold and min_trials must be >= 0, initial_points >= 1")
        if min(self.prior_trials, self.prior_order, self.warm_min_trials) < 0 or self.warm_misfit < 0:
            raise ValueError("planner: prior_trials, prior_order, warm_min_trials and warm_misfit must be >= 0")
        if self.agree_tolerance <= 0 or self.agree_improvement < 0:
            raise ValueError("planner: agree_tolerance must be > 0 and agree_improvement >= 0")
        if not 0 < self.agree_confidence <= 1:
            raise ValueError("planner: agree_confidence must be in (0, 1]")
        if self.length_scale <= 0 or self.prior_floor <= 0 or self.pool_size < 1:
            raise ValueError("planner: length_scale, prior_floor and pool_size must be positive")


@dataclass(frozen=True, slots=True)
class Posterior:
    """The surrogates' beliefs at every candidate (log objective and margin, mean and sd)."""

    mean_y: FloatArray
    sd_y: FloatArray
    mean_m: FloatArray
    sd_m: FloatArray
    best_y: float | None
    """Best feasible log objective observed (None before any feasible trial)."""
    hyper: tuple[Hyper | None, Hyper | None] = (None, None)
    """Hyperparameters of the objective and margin GPs, and the trial counts they were fitted at."""
    fitted_at: tuple[int, int] = (0, 0)

    margin_noise: float = 0.0
    p_ok: FloatArray | None = None
    """P(the configuration does not fail outright), when some trial did."""
    misfit: float = math.inf
    """Largest ``|trial - prior| / prior sd`` over the trials' objectives and margins, the prior's mean shifted by
    the offsets fitted to the trials (how far the transfer prior is from explaining them); inf without a prior."""

    def p_feasible(self) -> FloatArray:
        """P(p99 within the SLO) × P(no crash, out-of-memory or failed start)."""
        p = _norm_cdf(-self.mean_m / np.hypot(self.sd_m, self.margin_noise))
        return p if self.p_ok is None else np.asarray(p * self.p_ok, dtype=np.float64)

    def acquisition(self) -> FloatArray:
        """Expected improvement over the best feasible trial × P(feasible); before a feasible trial, the
        improvement is measured from the worst predicted configuration."""
        incumbent = self.best_y if self.best_y is not None else float(np.min(self.mean_y))
        u = (self.mean_y - incumbent) / self.sd_y
        ei = self.sd_y * (u * _norm_cdf(u) + _norm_pdf(u))
        return np.asarray(np.maximum(ei, 0.0) * self.p_feasible(), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the transfer prior's sources, weighted by how well they explain the trials, say about stopping."""

    doubt: float
    """P(an untried configuration is ``agree_improvement`` better than the incumbent)."""
    flat: float
    """Posterior weight of the flat component (none of the sources explains the trials)."""
    claim: FloatArray
    """Per candidate: the weight of the sources that claim it may be better (0 for tried ones)."""


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _norm_cdf(x: FloatArray) -> FloatArray:
    return np.asarray(0.5 * (1.0 + _erf(np.asarray(x, dtype=np.float64) / math.sqrt(2.0))), dtype=np.float64)


def _norm_pdf(x: FloatArray) -> FloatArray:
    return np.asarray(np.exp(-0.5 * np.asarray(x) ** 2) / math.sqrt(2 * math.pi), dtype=np.float64)


@dataclass(frozen=True, slots=True, eq=False)
class Search:
    """One model's search (see the module doc). Build it with :meth:`start`."""

    space: SearchSpace
    objective: Objective
    settings: PlannerSettings
    seed: int
    candidates: tuple[Point, ...]
    features: FloatArray
    index: Mapping[Point, int]
    prior: TransferPrior | None = None
    observations: tuple[Observation, ...] = ()
    observed: tuple[int, ...] = ()
    """Candidate index of each observation."""
    pending: frozenset[int] = field(default_factory=frozenset)
    hyper: tuple[Hyper | None, Hyper | None] = (None, None)
    """Last fitted GP hyperparameters (objective, margin), reused until the next fit (see ``refit_every``)."""
    fitted_at: tuple[int, int] = (0, 0)

    @classmethod
    def start(
        cls,
        space: SearchSpace,
        objective: Objective,
        settings: PlannerSettings | None = None,
        *,
        prior: TransferPrior | None = None,
        sources: Sequence[SourceModel] = (),
        seed: int = 0,
    ) -> Search:
        """A search with no trials yet. ``prior`` must have one column per candidate (``space.enumerate()``
        order); alternatively pass fitted ``sources`` (:class:`~policies.profiling.transfer.SourceModel`) and the
        prior is built here."""
        settings = settings or PlannerSettings()
        objective.pricing.validate(space)
        enc = Encoder(space)
        if space.is_finite:
            candidates = space.enumerate()
        else:
            seen: dict[Point, None] = {}
            for p in enc.sample(settings.pool_size, seed):
                if space.contains(p):
                    seen.setdefault(p, None)
            candidates = tuple(seen)
            if not candidates:
                raise ValueError("search space: no allowed configuration found in the sampled pool")
        features = enc.transform(candidates)
        if prior is None and sources:
            prior = TransferPrior.build(sources, features)
        if prior is not None and prior.mean_y.shape[1] != len(candidates):
            raise ValueError(f"transfer prior has {prior.mean_y.shape[1]} columns for {len(candidates)} candidates")
        index = {p: i for i, p in enumerate(candidates)}
        return cls(space, objective, settings, seed, candidates, features, index, prior)

    # -- state transitions -------------------------------------------------------------------------------------

    def ask(self, n: int = 1) -> tuple[Search, Suggestion]:
        """:meth:`suggest` and mark the suggested configurations as running."""
        s, post = self._decide(n)
        running = self.pending | {self.index[p] for p in s.points}
        nxt = replace(self, pending=frozenset(running))
        if post is not None:
            nxt = replace(nxt, hyper=post.hyper, fitted_at=post.fitted_at)
        return nxt, s

    def record(self, point: Point, result: TrialResult) -> Search:
        """A search that has learnt from ``result`` at ``point`` (one of the candidates). An unschedulable trial
        says nothing about the configuration and is refused: :meth:`release` it and try again later."""
        if result.status is TrialStatus.UNSCHEDULABLE:
            raise ValueError("an unschedulable trial is not a result: release the configuration and retry it")
        p = self.space.point(point)
        if p not in self.index:
            raise ValueError(f"configuration {self.space.config(p)} is not one of this search's candidates")
        i = self.index[p]
        return replace(
            self,
            observations=(*self.observations, Observation(p, result)),
            observed=(*self.observed, i),
            pending=self.pending - {i},
        )

    def release(self, point: Point) -> Search:
        """Forget that ``point`` is running without a result (the trial was cancelled)."""
        return replace(self, pending=self.pending - {self.index[self.space.point(point)]})

    # -- decisions ----------------------------------------------------------------------------------------------

    def untried(self) -> list[int]:
        done = set(self.observed) | self.pending
        return [i for i in range(len(self.candidates)) if i not in done]

    def best(self) -> Observation | None:
        """The best feasible trial so far."""
        best: Observation | None = None
        best_v = -math.inf
        for o in self.observations:
            v = self.objective.value(self.space, o.point, o.result)
            if v is not None and v > best_v:
                best, best_v = o, v
        return best

    def suggest(self, n: int = 1) -> Suggestion:
        """The next ``n`` configurations to try, or why to stop (see the module doc)."""
        return self._decide(n)[0]

    def _decide(self, n: int) -> tuple[Suggestion, Posterior | None]:
        if n < 1:
            raise ValueError("suggest: n must be >= 1")
        n_obs = len(self.observations)
        if n_obs >= self.settings.budget:
            return Suggestion((), "budget", f"trial budget of {self.settings.budget} spent", 0.0), None
        free = self.untried()
        if not free:
            if self.pending:
                return Suggestion((), None, "every remaining configuration is running", 0.0), None
            return Suggestion((), "exhausted", "every configuration was tried", 0.0), None
        n = min(n, len(free), self.settings.budget - n_obs - len(self.pending))
        if n <= 0:
            return Suggestion((), None, "the running trials use up the budget", 0.0), None
        tried = [*self.observed, *sorted(self.pending)]
        if self.prior is None and len(tried) < self.settings.initial_points:
            return self._spread(free, tried, n), None
        if self.prior is not None:
            if self.settings.prior_trials and n_obs >= self.settings.prior_trials:
                ev = self.evidence()
                if ev.doubt <= 1.0 - self.settings.agree_confidence:
                    reason = (
                        f"the transfer prior fits the trials and expects no untried configuration to be "
                        f"{self.settings.agree_improvement:.0%} better (P = {ev.doubt:.2f})"
                    )
                    return Suggestion((), "converged", reason, 0.0), None
            if len(tried) < self.settings.prior_order:
                order = self._prior_order(self.weights(), free)
                return Suggestion(tuple(self.candidates[i] for i in order[:n]), None, "transfer prior", math.inf), None
        post = first = self.posterior()
        acq = post.acquisition()
        st = self.settings
        explained = post.misfit <= st.warm_misfit  # a transfer prior that explains every trial so far
        stop_noise = st.margin_noise if explained else st.stop_margin_noise
        wide = replace(post, margin_noise=max(post.margin_noise, stop_noise))
        stop_acq = float(np.max(wide.acquisition()[free]))
        floor = min(st.warm_min_trials, st.min_trials) if explained else st.min_trials
        if n_obs >= floor and post.best_y is not None and stop_acq < st.ei_threshold:
            reason = f"best expected improvement {stop_acq:.4f} < {self.settings.ei_threshold}"
            return Suggestion((), "converged", reason, stop_acq), first
        picks = [free[int(np.argmax(acq[free]))]]
        while len(picks) < n:
            post = self.posterior(believed=picks)
            acq = post.acquisition()
            rest = [i for i in free if i not in picks]
            picks.append(rest[int(np.argmax(acq[rest]))])
        points = tuple(self.candidates[i] for i in picks)
        return Suggestion(points, None, "expected improvement", stop_acq), first

    def _spread(self, free: list[int], tried: list[int], n: int) -> Suggestion:
        """Space-filling picks: a seeded first point, then the candidates farthest from everything tried."""
        rng = np.random.default_rng(self.seed)
        picks: list[int] = []
        chosen = list(tried)
        for _ in range(n):
            rest = [i for i in free if i not in picks]
            if not chosen:
                pick = rest[int(rng.integers(len(rest)))]
            else:
                d = np.min(
                    np.linalg.norm(self.features[rest][:, None, :] - self.features[chosen][None, :, :], axis=2), axis=1
                )
                far = np.flatnonzero(d >= d.max() - 1e-12)
                pick = rest[int(far[int(rng.integers(len(far)))])]
            picks.append(pick)
            chosen.append(pick)
        return Suggestion(tuple(self.candidates[i] for i in picks), None, "initial design", math.inf)

    # -- the transfer prior on its own ----------------------------------------------------------------------------

    def weights(self) -> FloatArray:
        """The transfer prior's source weights (the flat component last) from the trials so far."""
        assert self.prior is not None
        yi, ys, mi, ms, _, _ = targets(self.space, self.objective, self.observations, self.settings.failed_margin)
        y_full = np.full(len(self.observations), np.nan)
        y_full[yi] = ys
        m_cols = [self.observed[k] for k in mi]
        return source_weights(self.prior, m_cols, [float(y_full[k]) for k in mi], list(ms))

    def _prior_order(self, w: FloatArray, free: list[int]) -> list[int]:
        """``free`` by the prior's expected objective relative to each source's best: the weighted mean over the
        sources of ``exp(predicted log(value / best)) × P(SLO met)`` (the planner-free consensus order, with the
        sources' surrogates and weights)."""
        assert self.prior is not None
        p = self.prior
        feasible = _norm_cdf(-p.mean_m / np.hypot(p.sd_m, self.settings.margin_noise))
        precision = w[:-1, None] / np.maximum(p.sd_y, self.settings.prior_floor) ** 2
        score = np.sum(precision * np.exp(p.mean_y) * feasible, axis=0) / (np.sum(precision, axis=0) + 1.0 / FLAT_SD**2)
        return sorted(free, key=lambda i: (-float(score[i]), i))

    def doubt(self) -> float:
        """``P(an untried configuration is better)`` as the transfer prior sees it (see :meth:`evidence`)."""
        return self.evidence().doubt

    def evidence(self) -> Evidence:
        """The agreement rule's evidence: ``P(an untried configuration is better)`` as the transfer prior sees it
        (1 without a prior or a feasible trial).

        Each source (and the flat component, for "none of them is right") starts with the same prior weight and is
        weighted by the likelihood of the trials under it: each feasible trial's objective relative to the
        incumbent, with an error of ``agree_tolerance`` (the flat component: ``FLAT_SD``), and each measured trial's
        feasibility, with its margin's uncertainty widened by ``margin_noise`` (the flat component: even odds).
        The result is the posterior weight of the sources that *claim* a configuration not yet measured that may
        meet the SLO (predicted margin under ``margin_noise``) and may be ``agree_improvement`` better than the
        incumbent (within one standard deviation of their own prediction and ``agree_tolerance``), plus the flat
        component's, which claims everything."""
        best = self.best()
        if self.prior is None or best is None:
            return Evidence(1.0, 1.0, np.zeros(len(self.candidates)))
        p, st = self.prior, self.settings
        inc = self.index[best.point]
        y_inc = self.objective.log_value(self.space, best.point, best.result)
        assert y_inc is not None
        cols: list[int] = []
        ok: list[bool] = []
        rel_cols: list[int] = []
        rel_obs: list[float] = []
        m_cols: list[int] = []
        m_obs: list[float] = []
        for o, col in zip(self.observations, self.observed, strict=True):
            if not o.result.measured:
                continue
            mv = self.objective.margin(o.result)
            if mv is not None and math.isfinite(mv):
                m_cols.append(col)
                m_obs.append(mv)
            feasible = self.objective.feasible(o.result)
            cols.append(col)
            ok.append(feasible)
            lv = self.objective.log_value(self.space, o.point, o.result)
            if feasible and lv is not None and col != inc:
                rel_cols.append(col)
                rel_obs.append(lv - y_inc)
        tol = st.agree_tolerance
        rel = p.mean_y - p.mean_y[:, inc : inc + 1]  # (sources, candidates): relative to the incumbent
        log_like = np.zeros(len(p.models) + 1)
        if rel_cols:
            r = np.asarray(rel_obs)[None, :] - rel[:, rel_cols]
            log_like[:-1] += np.sum(-0.5 * (r / tol) ** 2 - math.log(tol), axis=1)
            log_like[-1] += float(np.sum(-0.5 * (np.asarray(rel_obs) / FLAT_SD) ** 2 - math.log(FLAT_SD)))
        if cols:
            c = np.asarray(cols)
            p_ok = _norm_cdf(-p.mean_m[:, c] / np.hypot(p.sd_m[:, c], st.margin_noise))
            p_ok = np.clip(np.where(np.asarray(ok)[None, :], p_ok, 1.0 - p_ok), 1e-12, 1.0)
            log_like[:-1] += np.sum(np.log(p_ok), axis=1)
            log_like[-1] += len(cols) * math.log(0.5)
        post = np.exp(log_like - log_like.max())
        post /= post.sum()
        untried = np.ones(len(self.candidates), dtype=bool)
        untried[list(self.observed)] = False
        gain = math.log1p(st.agree_improvement)
        mean_m = p.mean_m
        if st.margin_offset and m_cols:
            shift = np.mean(np.asarray(m_obs)[None, :] - p.mean_m[:, m_cols], axis=1)
            mean_m = p.mean_m + shift[:, None]
        may_meet = mean_m <= st.margin_noise
        better = rel + np.hypot(p.sd_y, st.agree_tolerance) >= gain
        claimed = untried[None, :] & may_meet & better
        claims = np.any(claimed, axis=1)
        return Evidence(float(np.sum(post[:-1] * claims) + post[-1]), float(post[-1]), post[:-1] @ claimed)

    # -- surrogates ---------------------------------------------------------------------------------------------

    def posterior(self, believed: Sequence[int] = ()) -> Posterior:
        """The surrogates at every candidate, from the trials so far (plus ``believed`` candidates assumed to
        return their predicted mean)."""
        yi, ys, mi, ms, feasible, failed = targets(
            self.space, self.objective, self.observations, self.settings.failed_margin
        )
        obs_cols = list(self.observed)
        y_cols = [obs_cols[k] for k in yi]
        m_cols = [obs_cols[k] for k in mi]
        feas_y = [y for k, y in zip(yi, ys, strict=True) if feasible[k]]
        best_y = max(feas_y) if feas_y else None
        n_cand = len(self.candidates)
        if self.prior is None:
            mu_y, sd_y = np.zeros(n_cand), np.ones(n_cand)
            mu_m, sd_m = np.zeros(n_cand), np.ones(n_cand)
            y_scale = float(np.std(ys)) if len(ys) >= 2 and np.std(ys) > 1e-9 else 1.0
            m_scale = float(np.std(ms)) if len(ms) >= 2 and np.std(ms) > 1e-9 else 1.0
            sd_y, sd_m = sd_y * y_scale, sd_m * m_scale
            y_off = float(np.mean(ys)) if len(ys) else 0.0
            m_off = float(np.mean(ms)) if len(ms) else 0.0
        else:
            y_full = np.full(len(obs_cols), np.nan)
            y_full[yi] = ys
            w = source_weights(self.prior, m_cols, [float(y_full[k]) for k in mi], list(ms))
            spread_y, spread_m = self._spread_cache()
            floor = self.settings.prior_floor
            mu_y, sd_y = _mixture(self.prior.mean_y, self.prior.sd_y, w, flat_mean=self._flat_mean(), floor=floor)
            mu_m, sd_m = _mixture(self.prior.mean_m, self.prior.sd_m, w, flat_mean=0.0, floor=floor)
            sd_y, sd_m = np.hypot(sd_y, spread_y), np.hypot(sd_m, spread_m)
            y_off = float(np.mean(ys - mu_y[y_cols])) if len(ys) else 0.0
            m_off = float(np.sum(ms - mu_m[m_cols]) / (len(ms) + 1.0)) if len(ms) else 0.0
        misfit = math.inf
        if self.prior is not None:
            z_y = (ys - (mu_y + y_off)[y_cols]) / sd_y[y_cols]
            z_m = (ms - (mu_m + m_off)[m_cols]) / sd_m[m_cols]
            misfit = float(np.max(np.abs(np.concatenate([z_y, z_m])), initial=0.0))
        mean_y, dev_y, hy, ay = self._residual_gp(0, y_cols, ys, mu_y + y_off, sd_y, believed)
        mean_m, dev_m, hm, am = self._residual_gp(1, m_cols, ms, mu_m + m_off, sd_m, believed)
        p_ok = self._p_ok(obs_cols, failed)
        return Posterior(
            mean_y, dev_y, mean_m, dev_m, best_y, (hy, hm), (ay, am), self.settings.margin_noise, p_ok, misfit
        )

    def _p_ok(self, obs_cols: list[int], failed: list[int]) -> FloatArray | None:
        """P(the configuration starts and runs) from the trials that failed outright, or None if none did: a GP
        on +1 (failed) / -1 (ran) with fixed, short length scales, so a failure speaks for its neighbours and
        not for the whole space."""
        if not failed:
            return None
        z = np.where(np.isin(np.arange(len(obs_cols)), failed), 1.0, -1.0)
        offset = float(np.mean(z))
        gp = fit_gp(
            self.features[obs_cols],
            z - offset,
            start=default_hyper(self.features.shape[1], FAILURE_LENGTH_SCALE, noise=0.05),
            optimize=False,
        )
        mean, sd = gp.predict(self.features)
        return _norm_cdf(-(mean + offset) / np.hypot(sd, 0.3))

    def _spread_cache(self) -> tuple[float, float]:
        assert self.prior is not None
        return self.prior.nearest_spread()

    def _flat_mean(self) -> float:
        assert self.prior is not None
        return float(np.mean(self.prior.mean_y))

    def _residual_gp(
        self,
        which: int,
        cols: list[int],
        values: FloatArray,
        mean: FloatArray,
        scale: FloatArray,
        believed: Sequence[int],
    ) -> tuple[FloatArray, FloatArray, Hyper | None, int]:
        """Mean and sd at every candidate of ``mean + scale × g`` where ``g`` is a GP fitted to the standardised
        residuals ``(values - mean) / scale`` at ``cols``; also the hyperparameters used and when they were fitted
        (``which``: 0 = objective, 1 = margin)."""
        prev, at = self.hyper[which], self.fitted_at[which]
        if not cols:
            return mean, scale, prev, at
        z = (values - mean[cols]) / scale[cols]
        x = self.features[cols]
        n = len(cols)
        st = self.settings
        if n < st.fit_after:
            gp = fit_gp(x, z, start=default_hyper(x.shape[1], st.length_scale), optimize=False)
        elif prev is None or n - at >= st.refit_every:
            start = default_hyper(x.shape[1], st.length_scale)
            gp = fit_gp(x, z, start=start, optimize=True, seed=self.seed, restarts=st.restarts)
            prev, at = gp.hyper, n
        else:
            gp = fit_gp(x, z, start=prev, optimize=False)
        if believed:
            bz, _ = gp.predict(self.features[list(believed)])
            gp = gp.condition(np.vstack([x, self.features[list(believed)]]), np.concatenate([z, bz]))
        gz, gsd = gp.predict(self.features)
        return mean + scale * gz, scale * gsd, prev, at

    # -- the result ---------------------------------------------------------------------------------------------

    def profile(self, model: str, stopped: str = "") -> Profile:
        """Every trial, the surrogate's predictions at every candidate, and the best feasible configuration."""
        post = self.posterior()
        pf = post.p_feasible()
        preds = tuple(
            Prediction(
                p,
                math.exp(float(post.mean_y[i])),
                math.exp(float(post.mean_y[i] - Z90 * post.sd_y[i])),
                math.exp(float(post.mean_y[i] + Z90 * post.sd_y[i])),
                float(pf[i]),
            )
            for i, p in enumerate(self.candidates)
        )
        best = self.best()
        return Profile(
            model=model,
            names=self.space.names,
            slo_ms=self.objective.slo_ms,
            observations=self.observations,
            predictions=preds,
            chosen=None if best is None else best.point,
            capacity=0.0 if best is None else best.result.throughput,
            cost=0.0 if best is None else self.objective.cost(self.space, best.point, best.result),
            stopped=stopped,
        )


def _mixture(
    means: FloatArray, sds: FloatArray, w: FloatArray, *, flat_mean: float, floor: float
) -> tuple[FloatArray, FloatArray]:
    """Mean and sd of the weighted mixture of the sources' predictions and the flat component (last weight)."""
    ws, wf = w[:-1], float(w[-1])
    mu = ws @ means + wf * flat_mean
    second = ws @ (sds**2 + means**2) + wf * (FLAT_SD**2 + flat_mean**2)
    sd = np.sqrt(np.maximum(second - mu**2, floor**2))
    return np.asarray(mu, dtype=np.float64), np.asarray(sd, dtype=np.float64)
