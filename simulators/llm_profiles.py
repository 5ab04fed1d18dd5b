"""LLM deployments with iteration times fitted to measured data (see ``docs/simulator.md``, LLM serving).

Sources (copied under ``data/profiles/``):

* ``splitwise-perf-model/perf_model.csv`` (Splitwise, ISCA'24; MIT): per batch of ``B`` prompts of ``p`` tokens
  generating ``o`` tokens each, the prefill time of the batch and the mean decode-step time, for Llama-2-70B
  (TP 2/4/8) and BLOOM-176B (TP 8) on A100-80GB, H100-80GB and power-capped H100. Each (model, hardware, TP)
  gets its own :class:`~policies.llm.IterationModel`: prefill ``a + b·T + c·Q + e·n`` fitted to
  ``prompt_time`` with ``T = B·p``, ``Q = B·p²``, ``n = B``; decode ``d0 + d1·B + d2·K`` fitted to
  ``token_time`` with ``K = B·(p + o/2)`` (the mean context over the generation). Least squares on relative
  error, coefficients >= 0.
* ``llm-inference-bench/All_results.csv`` (Argonne; BSD-3): end-to-end latency of a batch of ``B`` requests of
  ``n`` prompt and ``n`` generated tokens (vLLM, one A100), for 7B-class models. There are no separate prefill
  and decode times, so the seven coefficients are fitted jointly to
  ``prefill(B, B·n, B·n²) + Σ_{j<n-1} decode(B, B·(n+1) + j·B)`` (linear in them).

Exclusion rules (documented, counted by :func:`evaluate_splitwise`):

* **prefill monotonicity**: a Splitwise setting (model, hardware, TP, p, o, B) whose median ``prompt_time`` is
  below that of the same (model, hardware, TP, p, o) at a smaller batch is excluded, every row of it (more
  prompt tokens cannot prefill faster; it is the Llama-2-70B TP 2 batch-64 runs, whose KV cache of about 18k
  tokens cannot hold 64 × 640 tokens);
* **stopped early** (e2e error only): a row whose ``e2e_time`` is below ``prompt_time + (o - 1) ×
  token_time`` by more than 10 % generated fewer than ``o`` tokens (the end-of-sequence token came first), so its
  e2e cannot be compared with ``o`` tokens' worth of steps;
* **KV overflow** (llm-inference-bench): a row whose batch needs more KV cache (``B × 2n`` tokens) than the
  deployment has; vLLM then runs it in waves, which is the simulator's admission rule, not the iteration time.

Held-out split of the Splitwise data (``shadowscale bench llm-model``): the data is three sweeps around
``p = 512, B = 1, o = 128`` (prompt, batch, generated tokens). The points at odd positions of each sweep
(``p`` in 256, 1,024, 4,096; ``B`` in 2, 8, 32; ``o`` in 256, 1,024, 4,096) are held out; the fit sees the rest.
"""

from __future__ import annotations

import functools
import itertools
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shadowscale.policies.llm import (
    BLOOM_176B,
    LLAMA2_7B,
    LLAMA2_70B,
    LLAMA31_8B,
    IterationModel,
    LlmArch,
    LlmServing,
)
from shadowscale.policies.types import FloatArray, ModelProfile
from shadowscale.simulators.catalog import (
    LLM_BENCH_DIR,
    DataError,
    default_data_dir,
    make_profile,
    named_fields,
    parse_number,
    read_llm_bench,
)

SPLITWISE_DIR = Path("profiles") / "splitwise-perf-model"
HELD_OUT_PROMPT = (256, 1024, 4096)
HELD_OUT_BATCH = (2, 8, 32)
HELD_OUT_TOKENS = (256, 1024, 4096)
STOPPED_EARLY_TOLERANCE = 0.10

_SPLITWISE_COLUMNS = (
    "model",
    "hardware",
    "tensor_parallel",
    "prompt_size",
    "token_size",
    "batch_size",
    "prompt_time",
    "token_time",
    "e2e_time",
)


@dataclass(frozen=True, slots=True)
class SplitwiseRow:
    line: int
    model: str
    hardware: str
    tp: int
    prompt: int
    tokens: int
    batch: int
    prompt_s: float
    token_s: float
    e2e_s: float

    @property
    def config(self) -> tuple[str, str, int]:
        return (self.model, self.hardware, self.tp)

    @property
    def setting(self) -> tuple[str, str, int, int, int, int]:
        return (self.model, self.hardware, self.tp, self.prompt, self.tokens, self.batch)

    @property
    def held_out(self) -> bool:
        return self.prompt in HELD_OUT_PROMPT or self.batch in HELD_OUT_BATCH or self.tokens in HELD_OUT_TOKENS


def read_splitwise(path: Path) -> list[SplitwiseRow]:
    """Rows of ``perf_model.csv`` (times converted from ms to s); :class:`DataError` names a bad field."""
    out: list[SplitwiseRow] = []
    for line, v in named_fields(path, _SPLITWISE_COLUMNS):
        model, hw = v[0].strip(), v[1].strip()
        if not model or not hw:
            raise DataError(path, line, "empty value", "model" if not model else "hardware")
        ints = [
            int(parse_number(x, path, line, c, integer=True, positive=True))
            for x, c in zip(v[2:6], _SPLITWISE_COLUMNS[2:6], strict=True)
        ]
        times = [
            parse_number(x, path, line, c, positive=True) / 1000.0
            for x, c in zip(v[6:], _SPLITWISE_COLUMNS[6:], strict=True)
        ]
        out.append(SplitwiseRow(line, model, hw, ints[0], ints[1], ints[2], ints[3], times[0], times[1], times[2]))
    if not out:
        raise DataError(path, None, "no data rows")
    return out


def non_monotone_settings(rows: list[SplitwiseRow]) -> set[tuple[str, str, int, int, int, int]]:
    """Settings whose median prefill is faster than the same prompt and output at a smaller batch."""
    by_setting: dict[tuple[str, str, int, int, int, int], list[float]] = defaultdict(list)
    for r in rows:
        by_setting[r.setting].append(r.prompt_s)
    med = {k: float(np.median(v)) for k, v in by_setting.items()}
    bad: set[tuple[str, str, int, int, int, int]] = set()
    for k, t in med.items():
        smaller = [u for j, u in med.items() if j[:5] == k[:5] and j[5] < k[5]]
        if smaller and t < max(smaller):
            bad.add(k)
    return bad


def stopped_early(r: SplitwiseRow) -> bool:
    return r.e2e_s < (1.0 - STOPPED_EARLY_TOLERANCE) * (r.prompt_s + (r.tokens - 1) * r.token_s)


def _prefill_features(n: FloatArray, p: FloatArray) -> FloatArray:
    return np.stack([np.ones_like(n), n * p, n * p * p, n], axis=1)


def _decode_features(b: FloatArray, ctx: FloatArray) -> FloatArray:
    return np.stack([np.ones_like(b), b, ctx], axis=1)


def _relative_nnls(x: FloatArray, y: FloatArray) -> FloatArray:
    """Non-negative coefficients minimising the squared relative error of ``x @ c`` against ``y``."""
    w = 1.0 / y
    scale = np.abs(x * w[:, None]).max(axis=0)
    scale[scale == 0] = 1.0
    c = _nnls(x * w[:, None] / scale, y * w)
    out: FloatArray = c / scale
    return out


def _nnls(a: FloatArray, b: FloatArray) -> FloatArray:
    """Exact non-negative least squares for a handful of columns: the best unconstrained fit over every subset
    of columns whose coefficients all come out >= 0 (2^7 = 128 small solves at most)."""
    n = a.shape[1]
    best = np.zeros(n)
    best_r = float(b @ b)
    for size in range(1, n + 1):
        for cols in itertools.combinations(range(n), size):
            sub = list(cols)
            c, *_ = np.linalg.lstsq(a[:, sub], b, rcond=None)
            if np.any(c < 0):
                continue
            r = float(np.sum((a[:, sub] @ c - b) ** 2))
            if r < best_r - 1e-15:
                best_r = r
                best = np.zeros(n)
                best[sub] = c
    return best


def fit_splitwise(rows: list[SplitwiseRow], source: str = "") -> IterationModel:
    """The iteration model of one (model, hardware, TP) from its Splitwise rows."""
    n = np.array([r.batch for r in rows], np.float64)
    p = np.array([r.prompt for r in rows], np.float64)
    o = np.array([r.tokens for r in rows], np.float64)
    pre = _relative_nnls(_prefill_features(n, p), np.array([r.prompt_s for r in rows]))
    dec = _relative_nnls(_decode_features(n, n * (p + o / 2.0)), np.array([r.token_s for r in rows]))
    return IterationModel(
        prefill=(float(pre[0]), float(pre[1]), float(pre[2]), float(pre[3])),
        decode=(float(dec[0]), float(dec[1]), float(dec[2])),
        source=source,
    )


def predicted_e2e(model: IterationModel, batch: int, prompt: int, tokens: int) -> float:
    """Prefill of the batch plus ``tokens - 1`` decode steps with the context growing by ``batch`` each step."""
    t = model.prefill_s(batch, batch * prompt, batch * prompt * prompt)
    k = tokens - 1
    d0, d1, d2 = model.decode
    ctx = batch * (prompt + 1)
    return t + k * (d0 + d1 * batch + d2 * ctx) + d2 * batch * k * (k - 1) / 2.0


def evaluate_splitwise(rows: list[SplitwiseRow]) -> dict[str, float | int]:
    """Fit each configuration on its training rows; errors on its held-out rows (the bench's numbers)."""
    bad = non_monotone_settings(rows)
    excluded = sum(1 for r in rows if r.setting in bad)
    keep = [r for r in rows if r.setting not in bad]
    by_config: dict[tuple[str, str, int], list[SplitwiseRow]] = defaultdict(list)
    for r in keep:
        by_config[r.config].append(r)
    dec_err: list[float] = []
    pre_err: list[float] = []
    e2e_err: list[float] = []
    points = 0
    early = 0
    for config, rs in sorted(by_config.items()):
        model = fit_splitwise([r for r in rs if not r.held_out], source="/".join(map(str, config)))
        for r in rs:
            if not r.held_out:
                continue
            points += 1
            pre_err.append(
                abs(model.prefill_s(r.batch, r.batch * r.prompt, r.batch * r.prompt**2) - r.prompt_s) / r.prompt_s
            )
            ctx = r.batch * (r.prompt + r.tokens / 2.0)
            dec_err.append(abs(model.decode_s(r.batch, ctx) - r.token_s) / r.token_s)
            if stopped_early(r):
                early += 1
                continue
            e2e_err.append(abs(predicted_e2e(model, r.batch, r.prompt, r.tokens) - r.e2e_s) / r.e2e_s)
    return {
        "mape_decode_step": float(np.mean(dec_err)),
        "mape_prefill": float(np.mean(pre_err)),
        "median_err_e2e": float(np.median(e2e_err)),
        "points": points,
        "excluded": excluded,
        "e2e_points": len(e2e_err),
        "e2e_stopped_early": early,
        "configs": len(by_config),
    }


def fit_inference_bench(
    root: Path, model: str, hardware: str, arch: LlmArch, gpu_memory_gb: float
) -> tuple[IterationModel, int, int]:
    """(iteration model, rows used, rows excluded for KV overflow) of ``model`` on one ``hardware`` with vLLM.

    ``All_results.csv`` gives only whole-batch latencies, in which the quadratic prefill term and the decode
    context term move together (both grow as ``B·n²``). So the prefill's quadratic coefficient is tied to its
    linear one by the architecture (``c = b × attention_ratio``, compute-bound attention) and the measured
    TTFT of the same model and hardware in ``all_results_TTFT_ITL.csv`` (batch 16 × 1,024 tokens) joins the
    fit as one more equation.
    """
    path = root / LLM_BENCH_DIR / "All_results.csv"
    rows = [
        r
        for r in read_llm_bench(path)
        if r.model == model and r.hardware == hardware and r.num_hardware == 1 and r.framework == "vLLM"
    ]
    if not rows:
        raise DataError(path, None, f"no vLLM rows for {model} on one {hardware}")
    kv = int((0.9 * gpu_memory_gb * 1e9 - arch.weight_bytes) // arch.kv_bytes_per_token)
    used = [r for r in rows if r.batch * 2 * r.length <= kv]
    ratio = arch.attention_ratio
    feats: list[list[float]] = []
    ys: list[float] = []
    for r in used:
        b, n = float(r.batch), float(r.length)
        k = n - 1
        ctx0 = b * (n + 1)
        feats.append([1.0, b * n + ratio * b * n * n, b, k, k * b, k * ctx0 + b * k * (k - 1) / 2.0])
        ys.append(r.latency_s)
    for n_seq, tokens, ttft in _ttft_rows(root / LLM_BENCH_DIR / "all_results_TTFT_ITL.csv", model, hardware):
        feats.append([1.0, n_seq * tokens + ratio * n_seq * tokens * tokens, n_seq, 0.0, 0.0, 0.0])
        ys.append(ttft)
    c = _relative_nnls(np.array(feats), np.array(ys))
    im = IterationModel(
        prefill=(float(c[0]), float(c[1]), float(c[1]) * ratio, float(c[2])),
        decode=(float(c[3]), float(c[4]), float(c[5])),
        source=f"llm-inference-bench: {model}, 1 × {hardware}, vLLM ({len(used)} batch rows + TTFT)",
    )
    return im, len(used), len(rows) - len(used)


def _ttft_rows(path: Path, model: str, hardware: str) -> list[tuple[float, float, float]]:
    """(batch, prompt tokens, TTFT s) of vLLM on one ``hardware`` for ``model``; rows without a TTFT skipped."""
    names = ("Hardware", "Num of Hardware", "Framework", "Model", "Input Length", "Batch Size", "TTFT Latency")
    out: list[tuple[float, float, float]] = []
    for line, fields in named_fields(path, names):
        v = [f.strip() for f in fields]
        if v[:4] != [hardware, "1", "vLLM", model] or not v[6]:
            continue
        n_in = parse_number(v[4], path, line, "Input Length", positive=True)
        batch = parse_number(v[5], path, line, "Batch Size", positive=True)
        out.append((batch, n_in, parse_number(v[6], path, line, "TTFT Latency", positive=True)))
    return out


A100_80GB = 80.0
H100_80GB = 80.0


@functools.lru_cache(maxsize=4)
def deployments(data_dir: Path | None = None) -> dict[str, LlmServing]:
    """Every LLM deployment the simulator knows, by name (``<model>@<gpus>x<GPU>``)."""
    root = default_data_dir() if data_dir is None else data_dir
    out: dict[str, LlmServing] = {}
    for arch, hf_name in ((LLAMA2_7B, "meta-llama/Llama-2-7b-hf"), (LLAMA31_8B, "meta-llama/Meta-Llama-3-8B")):
        im, _, _ = fit_inference_bench(root, hf_name, "Nvidia A100 GPU", arch, A100_80GB)
        d = LlmServing(f"{arch.name.lower()}@1xA100", arch, "A100-80GB", 1, A100_80GB, im)
        out[d.name] = d
    rows = read_splitwise(root / SPLITWISE_DIR / "perf_model.csv")
    bad = non_monotone_settings(rows)
    by_config: dict[tuple[str, str, int], list[SplitwiseRow]] = defaultdict(list)
    for r in rows:
        if r.setting not in bad:
            by_config[r.config].append(r)
    arch_of = {"llama2-70b": LLAMA2_70B, "bloom-176b": BLOOM_176B}
    gpu_of = {"a100-80gb": "A100", "h100-80gb": "H100"}
    for (model, hw, tp), rs in sorted(by_config.items()):
        if hw not in gpu_of or model not in arch_of:
            continue  # the power-capped H100 runs are used by the bench only
        im = fit_splitwise(rs, source=f"splitwise perf_model.csv: {model}, {tp} × {hw} ({len(rs)} rows)")
        arch = arch_of[model]
        d = LlmServing(f"{arch.name.lower()}@{tp}x{gpu_of[hw]}", arch, hw.upper(), tp, 80.0, im)
        out[d.name] = d
    return out


def deployment(name: str, data_dir: Path | None = None) -> LlmServing:
    known = deployments(data_dir)
    if name not in known:
        raise KeyError(f"unknown LLM deployment {name!r}; known: {', '.join(sorted(known))}")
    return known[name]


def splitwise_bench(data_dir: Path | None = None) -> dict[str, float | int]:
    root = default_data_dir() if data_dir is None else data_dir
    return evaluate_splitwise(read_splitwise(root / SPLITWISE_DIR / "perf_model.csv"))


UNIT_PROMPT = 256
UNIT_OUTPUT = 256


def unit_profile(serving: LlmServing) -> ModelProfile:
    """The capacity curve policies read for an LLM deployment: batch latency of ``b`` unit requests (256 prompt
    + 256 output tokens, the unit of ``Workload.size``) started together, for ``b`` up to what the KV cache and
    ``max_num_seqs`` allow; the SLO rule of :mod:`simulators.catalog` on top (``gpu_fraction`` = its GPUs)."""
    top = serving.max_unit_batch(UNIT_PROMPT, UNIT_OUTPUT)
    sizes = sorted({1, *[b for b in (2, 4, 8, 16, 32, 64, 128, 256) if b < top], top})
    return make_profile(
        f"llm/{serving.name}",
        f"continuous batching, {serving.iteration.source}",
        sizes,
        [serving.unit_batch_latency(b, UNIT_PROMPT, UNIT_OUTPUT) for b in sizes],
        gpu_fraction=float(serving.gpus),
    )


MIN_REQUEST_SIZE = 0.01


def request_size(serving: LlmServing, prompt: FloatArray, output: FloatArray) -> FloatArray:
    """Work of LLM requests in unit requests of ``unit_profile(serving)`` (256 + 256 tokens): the ratio of
    their replica-seconds at the profile's ``max_batch`` (:meth:`LlmServing.request_cost_s`), at least 0.01.

    Unlike a fixed prompt-token weight this charges every request its own prefill step, which holds up the
    whole replica: a 2,000-token prompt with 13 output tokens costs more than a unit request, not a third of one.
    """
    batch = unit_profile(serving).max_batch
    p = np.asarray(prompt, np.float64)
    o = np.maximum(np.asarray(output, np.float64), 1.0)
    unit = serving.request_cost_s(np.array([float(UNIT_PROMPT)]), np.array([float(UNIT_OUTPUT)]), batch)[0]
    size: FloatArray = np.maximum(serving.request_cost_s(p, o, batch) / unit, MIN_REQUEST_SIZE)
    return size
