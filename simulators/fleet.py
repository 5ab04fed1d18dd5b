"""The ``llm-fleet`` trace: a multi-model LLM fleet built from two public traces (AlpaServe's method).

AlpaServe (OSDI'23) and SageServe drive many model endpoints with the Azure Functions 2019 invocation series,
one function per model, rescaled; request lengths come from an LLM trace. Choices (also in
``data/traces/llm-fleet/README.md`` and ``docs/traces.md``):

1. **Window**: the clock hour of ``1000_inv.csv`` with the most invocations over all 1,000 functions (hour 7).
2. **Functions**: of those invoked in every minute of that hour (an LLM endpoint has steady traffic; a
   function seen in a few minutes only would make one burst), the :data:`ENDPOINTS` with the most invocations
   (ties by hash). Endpoint ``e`` gets the ``e``-th busiest.
3. **Models**: endpoint ``e`` runs ``MIX[e % 10]``: per ten endpoints three Llama-2-7B (1 × A100), one
   Llama-3.1-8B (1 × A100), four Llama-2-70B (4 × H100) and two BLOOM-176B (8 × H100): 18 + 6 + 24 + 12.
4. **Lengths**: even endpoints draw (prompt, output) rows from the Azure LLM 2023 ``conv`` trace, odd ones
   from ``code``, with replacement, among the rows whose prompt + output fit the model's context (users of a
   4k-context endpoint do not send 8k prompts).
5. **Scale**: each endpoint's per-minute counts are multiplied by ``k_e`` so that its busiest minute asks for
   ``U_e`` replicas' worth of work at the deployment's capacity (``unit_profile(...).capacity_rps`` divided by
   the mean request size of its draws), ``U_e`` log-uniform in [:data:`PEAK_REPLICAS_LO`,
   :data:`PEAK_REPLICAS_HI`]. The fleet then needs tens to hundreds of GPUs at peak.
6. **Arrivals**: minute ``m`` of endpoint ``e`` has ``Poisson(k_e × count)`` requests, uniform in the minute.

Everything random comes from ``np.random.default_rng(seed)`` in a fixed order, so a seed gives one trace.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from shadowscale.policies.llm import LlmServing
from shadowscale.policies.types import FloatArray, IntArray

ENDPOINTS = 60
MIX: tuple[str, ...] = (
    "llama-2-7b@1xA100",
    "llama-2-70b@4xH100",
    "bloom-176b@8xH100",
    "llama-2-7b@1xA100",
    "llama-2-70b@4xH100",
    "llama-3.1-8b@1xA100",
    "llama-2-70b@4xH100",
    "bloom-176b@8xH100",
    "llama-2-7b@1xA100",
    "llama-2-70b@4xH100",
)
PEAK_REPLICAS_LO = 0.1
PEAK_REPLICAS_HI = 2.0
MINUTE_S = 60.0


@dataclass(frozen=True, slots=True)
class Fleet:
    names: list[str]
    deployments: list[str]
    functions: list[str]
    scale: FloatArray
    peak_replicas: FloatArray
    hour: int
    arrival_s: FloatArray
    model: IntArray
    prompt: FloatArray
    output: FloatArray
    size: FloatArray


def build_fleet(
    hashes: list[str],
    counts: IntArray,
    conv: tuple[FloatArray, FloatArray],
    code: tuple[FloatArray, FloatArray],
    servings: dict[str, LlmServing],
    capacity_rps: dict[str, float],
    request_size: Callable[[LlmServing, FloatArray, FloatArray], FloatArray],
    seed: int,
) -> Fleet:
    """The fleet from the invocation counts ``[function, minute]`` and the (prompt, output) columns of the two
    LLM traces. ``capacity_rps[d]`` is deployment ``d``'s unit-request capacity per replica and
    ``request_size(serving, prompt, output)`` the size of requests in those units."""
    size_of = request_size
    n_min = counts.shape[1]
    hours = n_min // 60
    hourly = counts[:, : hours * 60].reshape(counts.shape[0], hours, 60).sum(axis=(0, 2))
    hour = int(np.argmax(hourly))
    window = counts[:, hour * 60 : (hour + 1) * 60]
    always = np.flatnonzero((window > 0).all(axis=1))
    if always.size < ENDPOINTS:
        raise ValueError(f"only {always.size} functions are invoked in every minute of hour {hour}; need {ENDPOINTS}")
    total = window.sum(axis=1)
    ranked = sorted(always.tolist(), key=lambda f: (-int(total[f]), hashes[f]))[:ENDPOINTS]
    rng = np.random.default_rng(seed)
    names: list[str] = []
    deps: list[str] = []
    scale = np.zeros(ENDPOINTS)
    peak = np.zeros(ENDPOINTS)
    arrivals: list[FloatArray] = []
    models: list[IntArray] = []
    prompts: list[FloatArray] = []
    outputs: list[FloatArray] = []
    sizes: list[FloatArray] = []
    for e, f in enumerate(ranked):
        dep = MIX[e % len(MIX)]
        serving = servings[dep]
        src_p, src_o = conv if e % 2 == 0 else code
        fits = np.flatnonzero(src_p + src_o <= serving.arch.context)
        u = float(np.exp(rng.uniform(np.log(PEAK_REPLICAS_LO), np.log(PEAK_REPLICAS_HI))))
        series = window[f].astype(np.float64)
        # scale from the mean size of a large sample of this endpoint's draws (the same stream supplies them)
        sample = rng.choice(fits, size=4096)
        mean_size = float(np.mean(size_of(serving, src_p[sample], src_o[sample])))
        k = u * capacity_rps[dep] / mean_size / (series.max() / MINUTE_S)
        n_per_min = rng.poisson(series * k)
        cnt = int(n_per_min.sum())
        minute = np.repeat(np.arange(60, dtype=np.float64), n_per_min)
        t = (minute + rng.random(cnt)) * MINUTE_S
        rows = rng.choice(fits, size=cnt)
        names.append(f"llm-{e:02d}-{serving.arch.name.lower()}")
        deps.append(dep)
        scale[e] = k
        peak[e] = u
        arrivals.append(np.minimum(t, np.nextafter((minute + 1.0) * MINUTE_S, 0.0)))
        models.append(np.full(cnt, e, np.int64))
        prompts.append(src_p[rows])
        outputs.append(src_o[rows])
        sizes.append(size_of(serving, src_p[rows], src_o[rows]))
    return Fleet(
        names=names,
        deployments=deps,
        functions=[hashes[f] for f in ranked],
        scale=scale,
        peak_replicas=peak,
        hour=hour,
        arrival_s=np.concatenate(arrivals),
        model=np.concatenate(models),
        prompt=np.concatenate(prompts),
        output=np.concatenate(outputs),
        size=np.concatenate(sizes),
    )
