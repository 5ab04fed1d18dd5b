"""The one module that imports scikit-optimize (which ships no type hints): its types stay in here.

- :class:`Encoder` turns points of a :class:`~policies.profiling.space.SearchSpace` into skopt's transformed
  features (numeric dimensions scaled to ``[0, 1]``, on a log scale where asked; categorical ones one-hot), the
  input of every surrogate. Dimensions with a single value carry no information and are left out.
- :func:`fit_gp` fits skopt's Gaussian process (a Matérn 5/2 kernel with one length scale per feature, a
  constant amplitude and a Gaussian noise term, as ``skopt.utils.cook_estimator("GP")`` builds it) and returns a
  :class:`GP` whose ``predict`` gives the latent mean and standard deviation.
- :class:`DefaultGP` is ``skopt.Optimizer`` with every default (``gp_hedge`` acquisition, 10 random initial points):
  the plain ask/tell search the benchmark compares against.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from shadowscale.errors import MissingExtra

try:
    from skopt import Optimizer
    from skopt.learning import GaussianProcessRegressor
    from skopt.learning.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
    from skopt.space import Categorical as SkCategorical
    from skopt.space import Integer as SkInteger
    from skopt.space import Real as SkReal
    from skopt.space import Space as SkSpace
except ImportError as e:  # the core install has no scikit-optimize (it pulls scipy and scikit-learn)
    raise MissingExtra("Bayesian profiling (shadow trials, bench profiler)", "profiling", "scikit-optimize") from e
from shadowscale.policies.profiling.space import Categorical, Levels, Point, Range, SearchSpace, Value

FloatArray: TypeAlias = npt.NDArray[np.float64]


def _sk_dimension(d: Categorical | Levels | Range) -> Any | None:
    """skopt's dimension for ``d``, or None when it has a single value (a constant)."""
    if isinstance(d, Categorical):
        if len(d.values) < 2:
            return None
        return SkCategorical(list(d.values), transform="onehot", name=d.name)
    low, high = (d.values[0], d.values[-1]) if isinstance(d, Levels) else (d.low, d.high)
    if low == high:
        return None
    prior = "log-uniform" if d.log else "uniform"
    if d.integer:
        return SkInteger(int(low), int(high), prior=prior, transform="normalize", name=d.name)
    return SkReal(float(low), float(high), prior=prior, transform="normalize", name=d.name)


class Encoder:
    """Points of ``space`` ↔ skopt's transformed feature rows."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        dims = [(i, _sk_dimension(d)) for i, d in enumerate(space.dimensions)]
        self._used = [i for i, sk in dims if sk is not None]
        self._constants = {i: self._constant(space, i) for i, sk in dims if sk is None}
        self._sk = SkSpace([sk for _, sk in dims if sk is not None]) if self._used else None

    @staticmethod
    def _constant(space: SearchSpace, i: int) -> Value:
        d = space.dimensions[i]
        if isinstance(d, Range):
            return int(d.low) if d.integer else d.low
        v = d.values[0]
        return int(v) if isinstance(d, Levels) and d.integer else v

    @property
    def n_features(self) -> int:
        return int(self._sk.transformed_n_dims) if self._sk is not None else 1

    def transform(self, points: Sequence[Sequence[Value]]) -> FloatArray:
        """One feature row per point (a single zero column when no dimension varies)."""
        if self._sk is None:
            return np.zeros((len(points), 1))
        rows = [[p[i] for i in self._used] for p in points]
        return np.asarray(self._sk.transform(rows), dtype=np.float64).reshape(len(points), -1)

    def sample(self, n: int, seed: int) -> list[Point]:
        """``n`` random points: ranges drawn from skopt's priors (log-uniform where asked), levels and choices
        uniformly (used for spaces with a :class:`Range`, whose configurations cannot be listed)."""
        rng = np.random.default_rng(seed)
        sk_dims = dict(zip(self._used, self._sk.dimensions if self._sk is not None else [], strict=True))
        columns: list[list[Any]] = []
        for i, d in enumerate(self.space.dimensions):
            if isinstance(d, Range) and i in sk_dims:
                columns.append(list(sk_dims[i].rvs(n_samples=n, random_state=seed + i)))
            elif isinstance(d, Range):
                columns.append([self._constants[i]] * n)
            else:
                columns.append([d.values[int(k)] for k in rng.integers(len(d.values), size=n)])
        return [
            self.space.point([v.item() if hasattr(v, "item") else v for v in row]) for row in zip(*columns, strict=True)
        ]

    def _complete(self, used_values: Sequence[Any]) -> Point:
        values: list[Value] = []
        it = iter(used_values)
        for i in range(len(self.space.dimensions)):
            if i in self._constants:
                values.append(self._constants[i])
            else:
                v = next(it)
                values.append(v.item() if hasattr(v, "item") else v)
        return self.space.point(values)

    def sk_dimensions(self) -> list[Any]:
        return list(self._sk.dimensions) if self._sk is not None else []

    def reduce(self, p: Point) -> list[Value]:
        return [p[i] for i in self._used]


@dataclass(frozen=True, slots=True)
class Hyper:
    """A GP's kernel hyperparameters: amplitude (variance), one length scale per feature, noise variance."""

    amplitude: float
    length_scales: tuple[float, ...]
    noise: float


AMPLITUDE_BOUNDS = (0.05, 20.0)
LENGTH_SCALE_BOUNDS = (0.05, 20.0)
NOISE_BOUNDS = (1e-6, 1.0)


class GP:
    """A fitted Gaussian process: :meth:`predict` gives the latent mean and standard deviation at feature rows."""

    def __init__(self, model: Any, hyper: Hyper) -> None:
        self._model = model
        self.hyper = hyper

    def predict(self, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        mean, std = self._model.predict(x, return_std=True)
        return np.asarray(mean, dtype=np.float64), np.maximum(np.asarray(std, dtype=np.float64), 1e-9)

    def condition(self, x: FloatArray, y: FloatArray) -> GP:
        """The same hyperparameters conditioned on other data (no refit)."""
        return fit_gp(x, y, start=self.hyper, optimize=False)


_QUIET = threading.Lock()


@contextmanager
def _quiet() -> Iterator[None]:
    """Warnings off around a scikit-learn / scikit-optimize call (ConvergenceWarning when a hyperparameter sits on
    its bound), one thread at a time: ``warnings.catch_warnings`` saves and restores the process-wide filter list,
    so two threads inside it at once (the agent's concurrent searches ask in threads) leaked warnings and could
    leave the filters of one thread's block installed for good."""
    with _QUIET, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def default_hyper(n_features: int, length_scale: float, noise: float = 1e-3) -> Hyper:
    return Hyper(1.0, (length_scale,) * n_features, noise)


def fit_gp(
    x: FloatArray, y: FloatArray, *, start: Hyper, optimize: bool = True, seed: int = 0, restarts: int = 0
) -> GP:
    """skopt's GP on ``y`` (already centred and scaled by the caller; no further normalisation), starting from
    ``start``; with ``optimize=False`` the hyperparameters stay at ``start`` (a few points cannot pin them down,
    and refitting after every trial costs more than it brings). The noise is fitted as a white-noise term and left
    out of the predicted standard deviation (skopt's ``noise="gaussian"``)."""
    n_features = x.shape[1]
    ls = np.clip(np.resize(np.asarray(start.length_scales, dtype=np.float64), n_features), *LENGTH_SCALE_BOUNDS)
    amp = float(np.clip(start.amplitude, *AMPLITUDE_BOUNDS))
    matern = ConstantKernel(amp, AMPLITUDE_BOUNDS) * Matern(
        length_scale=ls, length_scale_bounds=[LENGTH_SCALE_BOUNDS] * n_features, nu=2.5
    )
    noise = float(np.clip(start.noise, *NOISE_BOUNDS))
    if optimize:
        model = GaussianProcessRegressor(
            kernel=matern + WhiteKernel(noise, NOISE_BOUNDS),
            normalize_y=False,
            noise="gaussian",
            n_restarts_optimizer=restarts,
            random_state=seed,
        )
    else:
        model = GaussianProcessRegressor(kernel=matern, normalize_y=False, optimizer=None, alpha=noise)
    with _quiet():
        model.fit(x, y)
    if not optimize:
        return GP(model, Hyper(amp, tuple(float(v) for v in ls), noise))
    params = model.kernel_.get_params()
    amp_fit = next(float(v) for k, v in params.items() if k.endswith("constant_value"))
    ls_fit = next(
        np.atleast_1d(np.asarray(v, dtype=np.float64)) for k, v in params.items() if k.endswith("length_scale")
    )
    fitted = Hyper(amp_fit, tuple(float(v) for v in ls_fit), float(model.noise_ or noise))
    constant = np.ptp(x, axis=0) == 0
    if constant.any():
        # The likelihood does not depend on the length scale of a feature that no training row varies, so it is
        # the start's value or a random restart's draw, whichever start won by the last bits of the arithmetic (two
        # CPUs gave 1.0 and 0.06 for the same source) -- yet it decides how the GP extrapolates along that
        # feature. Keep the starting value.
        kept = tuple(float(s) if c else f for s, f, c in zip(ls, fitted.length_scales, constant, strict=True))
        return fit_gp(x, y, start=Hyper(fitted.amplitude, kept, fitted.noise), optimize=False)
    return GP(model, fitted)


class DefaultGP:
    """scikit-optimize's plain Bayesian optimisation: ``skopt.Optimizer`` with its defaults, minimising ``y``."""

    def __init__(self, space: SearchSpace, seed: int) -> None:
        self._enc = Encoder(space)
        dims = self._enc.sk_dimensions()
        self._opt = Optimizer(dims, random_state=seed) if dims else None

    def ask(self) -> Point:
        """The next point skopt wants (anywhere in the box; a caller restricted to candidates snaps it)."""
        if self._opt is None:
            return self._enc._complete([])
        with _quiet():
            return self._enc._complete(list(self._opt.ask()))

    def tell(self, p: Point, y: float) -> None:
        if self._opt is None:
            return
        with _quiet():
            self._opt.tell(self._enc.reduce(p), float(y))
