"""LLM serving as vLLM does it, as pure values: iteration time, KV-cache capacity, context, SLOs, cold start.

Everything here is a frozen dataclass or a pure function of one; the simulator (``simulators.llm``) runs the
continuous-batching replica model on it and ``simulators.llm_profiles`` fits the iteration time to measured data.

Iteration time (one vLLM engine step, seconds):

* a prefill step of ``n`` prompts with ``T`` prompt tokens in all and ``Q = Σ p²``:
  ``a + b·T + c·Q + e·n`` (linear in tokens, quadratic in each prompt for attention, a per-sequence cost);
* a decode step of ``B`` running requests holding ``K`` context tokens in all (prompt plus tokens generated so
  far): ``d0 + d1·B + d2·K``. ``K`` grows by ``B`` every decode step.
* with chunked prefill, a step that carries prompt chunks and ``B`` decoding requests (a mixed step):
  ``a + b·T + c·Q + e·n + d1·B + d2·K`` (the prefill step's fixed cost stands for the decode step's ``d0``);
  a chunk of ``L`` tokens that starts ``s`` tokens into its prompt counts ``(s + L)² − s²`` in ``Q``, so a
  prompt's chunks add up to the same attention cost as the whole prompt in one step.

KV-cache capacity (tokens) = ``(gpu_memory_utilization × memory per GPU × GPUs − weight bytes) / KV bytes per
token``, KV bytes per token = ``2 (K and V) × layers × KV heads × head dim × bytes per value`` (vLLM's
``gpu_memory_utilization`` defaults to 0.9).

Cold start = :data:`ENGINE_START_S` + weight bytes / :data:`LOAD_BANDWIDTH_BPS` (see :func:`cold_start_s`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

ENGINE_START_S = 20.0
"""vLLM engine start after the weights are in GPU memory: memory profiling, KV-cache allocation, CUDA-graph
capture (vLLM captures graphs for 67 batch sizes by default). An assumption documented in docs/simulator.md."""
LOAD_BANDWIDTH_BPS = 1.6e9
"""Weights read from the node's local NVMe into GPU memory with the standard safetensors loader: ServerlessLLM
(Fu et al., OSDI'24, §2) measures 84 s for LLaMA-2-70B (about 130 GB), i.e. about 1.6 GB/s."""
GPU_MEMORY_UTILIZATION = 0.9
"""vLLM's default ``--gpu-memory-utilization``."""
MAX_NUM_SEQS = 256
"""vLLM's default ``--max-num-seqs``: requests running in one batch at most."""
MIN_BATCHED_TOKENS = 2048
"""vLLM (no chunked prefill) sets ``max_num_batched_tokens = max(max_model_len, 2048)``."""
CHUNKED_BATCHED_TOKENS = 2048
"""vLLM with ``--enable-chunked-prefill`` (the default for long contexts): the token budget of one engine step,
decode tokens first, prefill chunks in the rest (``max_num_batched_tokens`` 2048)."""

OUTPUT_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
"""Upper bounds of vLLM's ``request_generation_tokens`` histogram (``build_1_2_5_buckets``), the last one
standing for +Inf."""

TTFT_SLO_FACTOR = 5.0
TTFT_SLO_MIN_S = 1.0
TPOT_SLO_FACTOR = 5.0
TPOT_SLO_MIN_S = 0.1


@dataclass(frozen=True, slots=True)
class IterationModel:
    """Fitted step times (s) of one deployment; every coefficient is >= 0 (a fit with non-negative least
    squares), so a step never gets cheaper with more work."""

    prefill: tuple[float, float, float, float]
    """(a, b per prompt token, c per squared prompt token, e per sequence)."""
    decode: tuple[float, float, float]
    """(d0, d1 per running request, d2 per context token)."""
    source: str = ""

    def __post_init__(self) -> None:
        coefs = (*self.prefill, *self.decode)
        if any(not (math.isfinite(x) and x >= 0) for x in coefs):
            raise ValueError(f"iteration model {self.source!r}: coefficients must be finite and >= 0, got {coefs}")
        if self.prefill[0] + self.prefill[3] <= 0 or self.decode[0] + self.decode[1] <= 0:
            raise ValueError(f"iteration model {self.source!r}: a step must take time (a + e > 0, d0 + d1 > 0)")

    def prefill_s(self, n: int, tokens: float, tokens_sq: float) -> float:
        a, b, c, e = self.prefill
        return a + b * tokens + c * tokens_sq + e * n

    def decode_s(self, batch: int, context: float) -> float:
        d0, d1, d2 = self.decode
        return d0 + d1 * batch + d2 * context

    def mixed_s(self, n: int, tokens: float, tokens_sq: float, batch: int, context: float) -> float:
        """A chunked-prefill step: ``n`` prompt chunks of ``tokens`` in all (``tokens_sq`` their attention term)
        beside ``batch`` decoding requests holding ``context`` tokens."""
        _, d1, d2 = self.decode
        pre = self.prefill_s(n, tokens, tokens_sq)
        return pre + (d1 * batch + d2 * context) if batch else pre


@dataclass(frozen=True, slots=True)
class LlmArch:
    """A model's architecture as its Hugging Face ``config.json`` gives it (numbers cited in data/README.md)."""

    name: str
    params: float
    """Parameter count."""
    layers: int
    hidden: int
    kv_heads: int
    head_dim: int
    context: int
    """``max_position_embeddings``: the longest prompt + output the model serves."""
    dtype_bytes: int = 2

    @property
    def weight_bytes(self) -> float:
        return self.params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def attention_ratio(self) -> float:
        """Prefill FLOPs of one (causal) attention token pair relative to one token through the weights:
        ``2 × layers × hidden`` / ``2 × params`` (the ``c / b`` of a prefill dominated by compute)."""
        return self.layers * self.hidden / self.params


@dataclass(frozen=True, slots=True)
class LlmServing:
    """One LLM deployment: the model, on ``gpus`` GPUs of ``gpu_memory_gb`` each (tensor parallel), with its
    fitted iteration times and vLLM's defaults."""

    name: str
    arch: LlmArch
    gpu: str
    gpus: int
    gpu_memory_gb: float
    iteration: IterationModel
    max_num_seqs: int = MAX_NUM_SEQS
    gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION
    chunked_prefill: bool = True
    """vLLM's ``--enable-chunked-prefill``: every engine step runs the running requests' decode tokens and fills
    the rest of :data:`CHUNKED_BATCHED_TOKENS` with prompt chunks (a long prompt no longer stalls the others'
    decoding); False: a prefill step runs whole prompts while every running request waits."""

    def __post_init__(self) -> None:
        if self.gpus < 1 or self.max_num_seqs < 1:
            raise ValueError(f"{self.name}: gpus and max_num_seqs must be >= 1")
        if self.chunked_prefill and self.max_num_seqs >= CHUNKED_BATCHED_TOKENS:
            raise ValueError(
                f"{self.name}: with chunked prefill max_num_seqs ({self.max_num_seqs}) must stay below the step's "
                f"token budget ({CHUNKED_BATCHED_TOKENS}) so prompts can make progress"
            )
        if self.kv_tokens < self.arch.context:
            raise ValueError(
                f"{self.name}: KV cache of {self.kv_tokens} tokens cannot hold one request of the model's "
                f"context ({self.arch.context}); use more GPUs"
            )

    @property
    def kv_tokens(self) -> int:
        """Tokens the KV cache holds (prompt and generated tokens of every running request count)."""
        free = self.gpu_memory_utilization * self.gpu_memory_gb * 1e9 * self.gpus - self.arch.weight_bytes
        return max(0, int(free // self.arch.kv_bytes_per_token))

    @property
    def max_batched_tokens(self) -> int:
        """Tokens one engine step takes at most: with chunked prefill the step's budget (decode tokens and prompt
        chunks together); without, the prompt tokens of one prefill step (a longer prompt still runs alone)."""
        if self.chunked_prefill:
            return CHUNKED_BATCHED_TOKENS
        return max(self.arch.context, MIN_BATCHED_TOKENS)

    @property
    def cold_start_s(self) -> float:
        return cold_start_s(self.arch)

    def fits(self, prompt: float, output: float) -> bool:
        """Whether a request is served at all: vLLM rejects prompt + output beyond the model's context."""
        return prompt + output <= self.arch.context

    def ttft_slo_s(self, prompt: FloatArray) -> FloatArray:
        """TTFT objective per request: ``max(1 s, 5 × the prefill of its prompt alone)`` (relative to its own work
        for long prompts, as DistServe states SLOs as a multiple of the latency on an idle server)."""
        a, b, c, e = self.iteration.prefill
        alone = a + b * prompt + c * prompt * prompt + e
        slo: FloatArray = np.maximum(TTFT_SLO_MIN_S, TTFT_SLO_FACTOR * alone)
        return slo

    def tpot_slo_s(self, prompt: FloatArray) -> FloatArray:
        """TPOT objective per request: ``max(0.1 s, 5 × one decode step of it alone)``."""
        d0, d1, d2 = self.iteration.decode
        slo: FloatArray = np.maximum(TPOT_SLO_MIN_S, TPOT_SLO_FACTOR * (d0 + d1 + d2 * prompt))
        return slo

    def unit_batch_latency(self, batch: int, prompt: int = 256, output: int = 256) -> float:
        """Seconds ``batch`` identical requests take together on a replica in steady state: each arrives on its
        own and is prefilled in its own step (requests rarely arrive in the same step), then ``output - 1``
        decode steps at batch ``batch`` with the context growing (the curve policies read as capacity)."""
        it = self.iteration
        t = batch * it.prefill_s(1, prompt, prompt * prompt)
        k = output - 1
        d0, d1, d2 = it.decode
        ctx = batch * (prompt + 1)
        return t + k * (d0 + d1 * batch + d2 * ctx) + d2 * batch * k * (k - 1) / 2.0

    def request_cost_s(self, prompt: FloatArray, output: FloatArray, batch: int) -> FloatArray:
        """Replica-seconds a request uses when it runs in a batch of ``batch``: its own prefill step (which holds
        up the whole replica) plus, per generated token after the first, its share of a decode step
        (``d0 / batch + d1``) and the cost of its mean context (``d2 × (prompt + output / 2)``)."""
        a, b, c, e = self.iteration.prefill
        d0, d1, d2 = self.iteration.decode
        pre = a + b * prompt + c * prompt * prompt + e
        cost: FloatArray = pre + np.maximum(output - 1.0, 0.0) * (d0 / batch + d1 + d2 * (prompt + output / 2.0))
        return cost

    def max_unit_batch(self, prompt: int = 256, output: int = 256) -> int:
        """Unit requests that run together at most: vLLM's max-num-seqs and the KV cache bound it."""
        return max(1, min(self.max_num_seqs, self.kv_tokens // (prompt + output)))


def cold_start_s(arch: LlmArch) -> float:
    """Seconds from creating a replica to serving: weights at :data:`LOAD_BANDWIDTH_BPS` plus
    :data:`ENGINE_START_S` (7B: about 28 s; 70B: about 1.8 min; 176B: about 4 min)."""
    return ENGINE_START_S + arch.weight_bytes / LOAD_BANDWIDTH_BPS


# Architectures (Hugging Face config.json of each model; parameter counts from the model cards).
LLAMA2_7B = LlmArch("Llama-2-7B", 6.74e9, layers=32, hidden=4096, kv_heads=32, head_dim=128, context=4096)
LLAMA31_8B = LlmArch("Llama-3.1-8B", 8.03e9, layers=32, hidden=4096, kv_heads=8, head_dim=128, context=131072)
LLAMA2_70B = LlmArch("Llama-2-70B", 68.98e9, layers=80, hidden=8192, kv_heads=8, head_dim=128, context=4096)
BLOOM_176B = LlmArch("BLOOM-176B", 176.2e9, layers=70, hidden=14336, kv_heads=112, head_dim=128, context=2048)
