"""A measured configuration sweep of real models, a model server for the local trial runner, and the
exporter-vs-``nvidia-smi`` comparison: the ground truth that issue 15 asks a real GPU for.

``python -m shadowscale.benchmarks.gpu_sweep sweep --models resnet50,bert-base --device cuda --out raw.csv``
measures every configuration of batch size × precision × CPU threads (pre/post-processing) × instances sharing the
device, for each model, and writes one row per configuration (throughput, p50/p99 latency, GPU memory and
utilization). How one configuration is measured (closed loop, pipelined, as a batching server at saturation):

- each instance is a process of its own holding the model (random weights built from its configuration: the
  time of a forward pass does not depend on the weights' values); ``instances`` of them run the configuration at
  the same time, so each holds a 1/``instances`` time share of the device (no MPS: concurrent processes);
- in an instance, ``threads`` worker threads pre-process the samples of the next batch (images: uint8 → float,
  bilinear resize 256 → 224, normalise; text: bytes → token ids, pad) while the device runs the current one;
  then the output is copied back and post-processed (softmax, top-5) on the CPU;
- a batch's latency runs from the start of its pre-processing to the end of its post-processing (queueing for
  the device included); warm-up batches run until a common start time, then each instance measures for the
  same window (at least ``--min-batches`` batches; at most ``--max-s`` seconds);
- throughput is samples per second of one instance (the sum over instances is in ``total_throughput``); p50/p99
  pool the batch latencies of all instances; ``gpu_mem_mb`` is the peak memory PyTorch allocated in one instance
  (weights of that precision and activations, the CUDA context not included); ``gpu_util_pct`` the mean NVML
  utilization sampled every 100 ms while the instances ran.

``to-generic`` turns the raw rows into the profiler bench's generic CSV form (:mod:`benchmarks.profiler`): task =
model × SLO, SLOs fixed by rule at the 25th/50th/75th percentile of the model's p99 latencies; cost = GPU share +
``--core-price`` × threads. ``serve`` is a model server with the local trial runner's protocol
(:mod:`agent.profiling.server`: ``READY <port>``, one request per line); ``local`` runs
:class:`~agent.profiling.local.LocalTrialRunner` against it; ``exporter-compare`` reads the GPU exporter's events
back from Kafka and compares them with an ``nvidia-smi`` CSV sampled over the same seconds.

Backends: ``torch`` (PyTorch; torchvision and transformers for the real models; optional, ``pip install
shadowscale[gpu-bench]``) and ``numpy`` (a tiny MLP on the CPU: the same pipeline, measurement and output without
PyTorch, so the sweep's logic is tested everywhere).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import csv
import importlib
import itertools
import json
import math
import multiprocessing as mp
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from shadowscale.agent.profiling.batching import next_batch

# -- models -----------------------------------------------------------------------------------------------------

IMAGE_MODELS = ("resnet50", "tiny-cnn", "mlp")
TEXT_MODELS = ("bert-base", "gpt2", "tiny-bert")
MODELS = IMAGE_MODELS + TEXT_MODELS
NUMPY_MODELS = ("mlp",)
PRECISIONS = ("fp32", "fp16", "bf16")
SEQ_LEN = 128
IMAGE_IN = 256
"""Side of the raw uint8 images; pre-processing resizes them to the model's input size."""

RAW_COLUMNS = (
    "model",
    "batch",
    "precision",
    "threads",
    "instances",
    "gpu_share",
    "throughput",
    "total_throughput",
    "p50_ms",
    "p99_ms",
    "batches",
    "window_s",
    "gpu_mem_mb",
    "gpu_util_pct",
    "error",
)


def _torch() -> Any:
    return importlib.import_module("torch")


class Runner:
    """One model at one precision on one device: CPU pre-processing per sample, batched inference, CPU
    post-processing. Subclasses fill in the three steps."""

    def prep_one(self, i: int) -> Any:
        raise NotImplementedError

    def collate(self, items: list[Any]) -> Any:
        raise NotImplementedError

    def infer(self, x: Any) -> Any:
        raise NotImplementedError

    def post(self, y: Any) -> None:
        raise NotImplementedError

    def memory_mb(self) -> float:
        """Peak device memory allocated since :meth:`reset_memory` (0 where unknown)."""
        return 0.0

    def reset_memory(self) -> None:
        pass


class NumpyRunner(Runner):
    """A tiny MLP in numpy on the CPU: images 3×16×16 (uint8) cropped to 12×12, ``layers`` dense layers."""

    def __init__(self, precision: str, hidden: int = 64, layers: int = 2, seed: int = 0) -> None:
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"the numpy backend has fp32 and fp16, not {precision!r}")
        self.dtype = np.float32 if precision == "fp32" else np.float16
        rng = np.random.default_rng(seed)
        dims = [3 * 12 * 12, *([hidden] * layers), 10]
        self.weights = [
            (rng.standard_normal((a, b)) / math.sqrt(a)).astype(self.dtype) for a, b in itertools.pairwise(dims)
        ]
        self.images = rng.integers(0, 256, size=(8, 3, 16, 16), dtype=np.uint8)

    def prep_one(self, i: int) -> Any:
        img = self.images[i % len(self.images)][:, 2:14, 2:14].astype(np.float32) / 255.0
        return ((img - 0.45) / 0.225).reshape(-1)

    def collate(self, items: list[Any]) -> Any:
        return np.stack(items).astype(self.dtype)

    def infer(self, x: Any) -> Any:
        for w in self.weights[:-1]:
            x = np.maximum(x @ w, 0)
        return (x @ self.weights[-1]).astype(np.float32)

    def post(self, y: Any) -> None:
        e = np.exp(y - y.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        np.argsort(-p, axis=1)[:, :5]


_TEXT = (
    b"Inference services hold expensive accelerators yet use little of each; several services can share one. "
    b"The right specification is a search over hundreds of combinations where each trial takes minutes. "
) * 8


def build_torch_model(name: str) -> tuple[Any, str, int]:
    """``(module on the CPU in fp32 with random weights, kind, input size)``; kind is ``image`` or ``text``."""
    torch = _torch()
    torch.manual_seed(0)
    if name == "resnet50":
        tv = importlib.import_module("torchvision.models")
        return tv.resnet50(weights=None), "image", 224
    if name == "tiny-cnn":
        tv = importlib.import_module("torchvision.models")
        return tv.resnet18(weights=None, num_classes=10), "image", 32
    tf = importlib.import_module("transformers")
    if name in ("bert-base", "tiny-bert"):
        cfg = (
            tf.BertConfig(num_labels=2)
            if name == "bert-base"
            else tf.BertConfig(
                vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
            )
        )
        return tf.BertForSequenceClassification(cfg), "text", SEQ_LEN if name == "bert-base" else 16
    if name == "gpt2":
        lm = tf.GPT2LMHeadModel(tf.GPT2Config())
        module: Any = torch.nn.Module

        class LastToken(module):  # type: ignore[misc]
            """The next-token logits of the last position only (a full logits tensor is batch × seq × 50257)."""

            def __init__(self) -> None:
                super().__init__()
                self.lm = lm

            def forward(self, ids: Any) -> Any:
                h = self.lm.transformer(input_ids=ids).last_hidden_state[:, -1]
                return self.lm.lm_head(h)

        return LastToken(), "text", SEQ_LEN
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


class TorchRunner(Runner):
    """A PyTorch module on ``device`` at ``precision``; ``master`` (fp32, on the CPU) is copied, not moved."""

    def __init__(self, master: Any, kind: str, size: int, precision: str, device: str) -> None:
        torch = _torch()
        self.torch = torch
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.device = torch.device(device)
        self.model = copy.deepcopy(master).to(self.device, self.dtype).eval()
        self.kind = kind
        self.size = size
        self.cuda = self.device.type == "cuda"
        g = torch.Generator().manual_seed(1)
        if kind == "image":
            raw = max(size + size // 7, 8)
            self.images = torch.randint(0, 256, (8, 3, raw, raw), dtype=torch.uint8, generator=g)
            self.mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
            self.std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
        else:
            cfg = getattr(master, "config", None) or master.lm.config
            self.vocab = int(cfg.vocab_size)

    def prep_one(self, i: int) -> Any:
        torch = self.torch
        if self.kind == "image":
            x = self.images[i % len(self.images)].float().div_(255.0)
            x = torch.nn.functional.interpolate(x[None], size=(self.size, self.size), mode="bilinear")[0]
            return (x - self.mean) / self.std
        start = (i * 97) % (len(_TEXT) - 2 * self.size - 2)
        a = np.frombuffer(_TEXT, dtype=np.uint8, count=self.size + 1, offset=start).astype(np.int64)
        return torch.from_numpy((a[:-1] * 256 + a[1:]) % self.vocab)

    def collate(self, items: list[Any]) -> Any:
        return self.torch.stack(items)

    def infer(self, x: Any) -> Any:
        torch = self.torch
        with torch.inference_mode():
            x = x.to(self.device, non_blocking=False)
            if self.kind == "image":
                x = x.to(self.dtype)
            y = self.model(x)
            y = getattr(y, "logits", y)
            return y.float().cpu()  # waits for the device

    def post(self, y: Any) -> None:
        self.torch.softmax(y, dim=1).topk(min(5, y.shape[1]), dim=1)

    def memory_mb(self) -> float:
        return float(self.torch.cuda.max_memory_allocated(self.device)) / 2**20 if self.cuda else 0.0

    def reset_memory(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats(self.device)


class Models:
    """The runners of one process: fp32 masters built once per model, one device copy at a time (so the memory
    PyTorch reports is that of the configuration being measured)."""

    def __init__(self, backend: str, device: str) -> None:
        self.backend = backend
        self.device = device
        self.masters: dict[str, tuple[Any, str, int]] = {}
        self.current: tuple[str, str, Runner] | None = None
        if backend == "torch":
            torch = _torch()
            torch.set_num_threads(1)  # the pre-processing threads are the CPU parallelism a configuration sets

    def runner(self, model: str, precision: str) -> Runner:
        if self.current and self.current[:2] == (model, precision):
            return self.current[2]
        self.current = None
        if self.backend == "numpy":
            if model not in NUMPY_MODELS:
                raise ValueError(f"the numpy backend has {', '.join(NUMPY_MODELS)}, not {model!r}")
            r: Runner = NumpyRunner(precision)
        else:
            torch = _torch()
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            if model not in self.masters:
                self.masters[model] = build_torch_model(model)
            master, kind, size = self.masters[model]
            r = TorchRunner(master, kind, size, precision, self.device)
        self.current = (model, precision, r)
        return r


# -- measuring one configuration in one instance -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measured:
    samples: int
    elapsed_s: float
    latencies_s: tuple[float, ...]
    memory_mb: float
    started_at: float
    """``time.time()`` when the measured window began (after warm-up)."""


def measure(
    runner: Runner,
    batch: int,
    threads: int,
    *,
    window_s: float,
    min_batches: int,
    max_s: float,
    warmup: int = 2,
    start_at: float = 0.0,
) -> Measured:
    """Run the pipeline (``threads`` pre-processing batch ``k+1`` while the device runs batch ``k``): warm-up
    batches (at least ``warmup``, and until ``time.time() >= start_at``), then measure for ``window_s`` and at
    least ``min_batches`` batches, stopping at ``max_s`` regardless."""
    if batch < 1 or threads < 1:
        raise ValueError(f"batch and threads must be >= 1, got {batch} and {threads}")
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="prep")
    ready: queue.Queue[tuple[float, Any] | BaseException] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def produce() -> None:
        try:
            k = 0
            while not stop.is_set():
                t0 = time.perf_counter()
                items = list(pool.map(runner.prep_one, range(k, k + batch)))
                k += batch
                item: tuple[float, Any] = (t0, runner.collate(items))
                while not stop.is_set():
                    try:
                        ready.put(item, timeout=0.05)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # surfaced in the measuring thread
            ready.put(e)

    producer = threading.Thread(target=produce, name="prep-batches", daemon=True)
    producer.start()

    def one() -> float:
        got = ready.get(timeout=120.0)
        if isinstance(got, BaseException):
            raise got
        t0, x = got
        runner.post(runner.infer(x))
        return time.perf_counter() - t0

    try:
        runner.reset_memory()
        done = 0
        while done < warmup or time.time() < start_at:
            one()
            done += 1
        started_at = time.time()
        start = time.perf_counter()
        lat: list[float] = []
        while True:
            lat.append(one())
            el = time.perf_counter() - start
            if (el >= window_s and len(lat) >= min_batches) or el >= max_s:
                break
        return Measured(batch * len(lat), el, tuple(lat), runner.memory_mb(), started_at)
    finally:
        stop.set()
        producer.join(timeout=5.0)
        pool.shutdown(wait=True, cancel_futures=True)


# -- instances: one process each ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Config:
    model: str
    batch: int
    precision: str
    threads: int
    instances: int


def _worker(conn: Connection, backend: str, device: str) -> None:
    """An instance: receives ``(Config, window_s, min_batches, max_s, start_at)``, answers a :class:`Measured` or
    an error string; ``None`` ends it."""
    models = Models(backend, device)
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        cfg, window_s, min_batches, max_s, start_at = msg
        try:
            r = models.runner(cfg.model, cfg.precision)
            conn.send(
                measure(
                    r, cfg.batch, cfg.threads, window_s=window_s, min_batches=min_batches, max_s=max_s,
                    start_at=start_at,
                )
            )  # fmt: skip
        except Exception as e:
            if backend == "torch" and device.startswith("cuda"):
                with contextlib.suppress(Exception):
                    _torch().cuda.empty_cache()
            conn.send(f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")


class Instances:
    """``n`` worker processes (spawned once, reused for every configuration)."""

    def __init__(self, n: int, backend: str, device: str) -> None:
        ctx = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(n):
            a, b = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(b, backend, device), daemon=True)
            p.start()
            self.conns.append(a)
            self.procs.append(p)
        for c in self.conns:
            if not c.poll(300.0) or c.recv() != "ready":
                raise RuntimeError("a sweep worker did not start")

    def run(self, cfg: Config, window_s: float, min_batches: int, max_s: float, lead_s: float) -> list[Any]:
        start_at = time.time() + lead_s
        for c in self.conns[: cfg.instances]:
            c.send((cfg, window_s, min_batches, max_s, start_at))
        out = []
        for c in self.conns[: cfg.instances]:
            if not c.poll(max_s + lead_s + 300.0):
                raise RuntimeError(f"a sweep worker did not answer for {cfg}")
            out.append(c.recv())
        return out

    def close(self) -> None:
        for c in self.conns:
            with contextlib.suppress(Exception):
                c.send(None)
        for p in self.procs:
            p.join(timeout=10.0)
            if p.is_alive():
                p.kill()


class UtilSampler:
    """Mean NVML utilization (%) of GPU 0 between :meth:`start` and :meth:`stop`, sampled every 100 ms; NaN
    without NVML."""

    def __init__(self) -> None:
        self.nv: Any = None
        with contextlib.suppress(Exception):
            nv = importlib.import_module("pynvml")
            nv.nvmlInit()
            self.handle = nv.nvmlDeviceGetHandleByIndex(0)
            self.nv = nv
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._t: threading.Thread | None = None

    def start(self) -> None:
        self.samples = []
        if self.nv is None:
            return
        self._stop.clear()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            with contextlib.suppress(Exception):
                self.samples.append(float(self.nv.nvmlDeviceGetUtilizationRates(self.handle).gpu))

    def stop(self) -> float:
        if self._t is not None:
            self._stop.set()
            self._t.join()
            self._t = None
        return float(np.mean(self.samples)) if self.samples else math.nan


# -- the sweep ---------------------------------------------------------------------------------------------------


@dataclass
class SweepSettings:
    models: Sequence[str]
    backend: str = "torch"
    device: str = "cuda"
    batches: Sequence[int] = (1, 2, 4, 8, 16, 32, 64)
    precisions: Sequence[str] = ("fp32", "fp16", "bf16")
    threads: Sequence[int] = (1, 2, 4, 8)
    instances: Sequence[int] = (1, 2, 4)
    budget_s: float = 90.0
    """Seconds per model; each configuration's window is set from what is left (between the two bounds)."""
    min_window_s: float = 0.1
    max_window_s: float = 0.5
    min_batches: int = 10
    max_s: float = 1.5
    overrun: float = 1.25
    """A model's remaining configurations are skipped (and counted) past ``overrun × budget_s``."""
    progress: Callable[[str], None] = field(default=lambda s: None)


def grid(s: SweepSettings, model: str) -> list[Config]:
    """Instances outermost (a cut loses a whole sharing level, not scattered cells), then precision (one model
    copy per precision), threads, batch."""
    return [Config(model, b, p, t, n) for n in s.instances for p in s.precisions for t in s.threads for b in s.batches]


def row(cfg: Config, results: Sequence[Any], window_s: float, util: float) -> dict[str, Any]:
    """One raw CSV row from the instances' results (an error string from any instance fails the row)."""
    base = {
        "model": cfg.model,
        "batch": cfg.batch,
        "precision": cfg.precision,
        "threads": cfg.threads,
        "instances": cfg.instances,
        "gpu_share": round(1.0 / cfg.instances, 4),
        "window_s": round(window_s, 3),
    }
    errors = [r for r in results if isinstance(r, str)]
    if errors:
        return {**base, "error": errors[0]}
    ms: list[Measured] = list(results)
    thr = [m.samples / m.elapsed_s for m in ms]
    lat = np.concatenate([np.asarray(m.latencies_s) for m in ms]) * 1000.0
    return {
        **base,
        "throughput": round(float(np.mean(thr)), 3),
        "total_throughput": round(float(np.sum(thr)), 3),
        "p50_ms": round(float(np.percentile(lat, 50)), 4),
        "p99_ms": round(float(np.percentile(lat, 99)), 4),
        "batches": len(lat),
        "gpu_mem_mb": round(max(m.memory_mb for m in ms), 1),
        "gpu_util_pct": "" if math.isnan(util) else round(util, 1),
        "error": "",
    }


def sweep(s: SweepSettings, out: Path) -> list[dict[str, Any]]:
    """Measure every configuration of every model; rows are appended to ``out`` (CSV) as they are measured."""
    bad = [p for p in s.precisions if p not in PRECISIONS]
    if bad:
        raise ValueError(f"unknown precision(s) {', '.join(bad)}; known: {', '.join(PRECISIONS)}")
    if min(s.instances) < 1 or min(s.threads) < 1 or min(s.batches) < 1:
        raise ValueError("batches, threads and instances must be >= 1")
    rows: list[dict[str, Any]] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    pool = Instances(max(s.instances), s.backend, s.device)
    util = UtilSampler()
    try:
        with out.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=RAW_COLUMNS)
            w.writeheader()
            for model in s.models:
                cfgs = grid(s, model)
                t0 = time.perf_counter()
                overhead = 0.15
                skipped = 0
                for k, cfg in enumerate(cfgs):
                    spent = time.perf_counter() - t0
                    if spent > s.overrun * s.budget_s:
                        skipped = len(cfgs) - k
                        break
                    per = (s.budget_s - spent) / (len(cfgs) - k) - overhead
                    window = min(max(per, s.min_window_s), s.max_window_s)
                    c0 = time.perf_counter()
                    util.start()
                    res = pool.run(cfg, window, s.min_batches, s.max_s, lead_s=0.05 + 0.02 * cfg.instances)
                    r = row(cfg, res, window, util.stop())
                    took = time.perf_counter() - c0
                    overhead = 0.7 * overhead + 0.3 * max(took - window, 0.0)
                    rows.append(r)
                    w.writerow(r)
                    f.flush()
                    if k % 12 == 0 or r.get("error"):
                        s.progress(f"{model} {k + 1}/{len(cfgs)} {json.dumps(r)}")
                s.progress(
                    f"{model}: {len(cfgs) - skipped} of {len(cfgs)} configurations in "
                    f"{time.perf_counter() - t0:.1f} s; {skipped} skipped for time"
                )
    finally:
        pool.close()
    return rows


# -- the generic form for the profiler bench ---------------------------------------------------------------------

GENERIC_COLUMNS = (
    "task",
    "model",
    "cfg_batch",
    "cfg_precision",
    "cfg_threads",
    "cfg_gpu_share",
    "throughput",
    "latency_ms",
    "cost",
    "slo_ms",
)


def to_generic(
    raw: Sequence[dict[str, str]], quantiles: Sequence[float] = (25, 50, 75), core_price: float = 0.02
) -> list[dict[str, Any]]:
    """Rows of the generic profile CSV: per model and SLO (the ``quantiles`` of the model's p99 latencies), one
    row per configuration; a failed configuration keeps its row with an empty ``latency_ms`` and throughput 0."""
    out: list[dict[str, Any]] = []
    models = sorted({r["model"] for r in raw}, key=[r["model"] for r in raw].index)
    for model in models:
        mine = [r for r in raw if r["model"] == model]
        p99 = np.array([float(r["p99_ms"]) for r in mine if r.get("p99_ms")], dtype=np.float64)
        if not len(p99):
            continue
        for q in quantiles:
            slo = round(float(np.percentile(p99, q)), 3)
            for r in mine:
                failed = not r.get("p99_ms")
                share = float(r["gpu_share"])
                out.append(
                    {
                        "task": f"{model} p99<={slo:g}ms",
                        "model": model,
                        "cfg_batch": r["batch"],
                        "cfg_precision": r["precision"],
                        "cfg_threads": r["threads"],
                        "cfg_gpu_share": r["gpu_share"],
                        "throughput": 0 if failed else r["throughput"],
                        "latency_ms": "" if failed else r["p99_ms"],
                        "cost": round(share + core_price * int(r["threads"]), 4),
                        "slo_ms": slo,
                    }
                )
    return out


# -- a model server for the local trial runner -------------------------------------------------------------------


class TorchServer:
    """The local runner's protocol (``<id>\\n`` in, ``<id>\\n`` out when its batch is done) around the sweep's
    pipeline: batches of up to ``batch`` requests (waiting at most ``max_wait_s`` for one to fill), pre-processed
    on ``threads`` threads, at most two batches in flight (one pre-processing while the device runs the other)."""

    def __init__(self, runner: Runner, batch: int, threads: int, max_wait_s: float) -> None:
        self.runner = runner
        self.batch = batch
        self.max_wait_s = max_wait_s
        self.prep = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="prep")
        self.device = ThreadPoolExecutor(max_workers=1, thread_name_prefix="device")
        self.slots = asyncio.Semaphore(2)
        self.queue: asyncio.Queue[tuple[bytes, asyncio.StreamWriter]] = asyncio.Queue()
        self.running: set[asyncio.Task[None]] = set()
        self.k = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while line := await reader.readline():
                await self.queue.put((line, writer))

    async def batcher(self) -> None:
        while True:
            items = await next_batch(self.queue, self.batch, self.max_wait_s)
            await self.slots.acquire()
            task = asyncio.create_task(self.run(items))
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def run(self, items: list[tuple[bytes, asyncio.StreamWriter]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            k0 = self.k
            self.k += len(items)
            xs = await asyncio.gather(
                *(loop.run_in_executor(self.prep, self.runner.prep_one, k0 + i) for i in range(len(items)))
            )
            # a static batch shape, as serving runtimes use: a partial batch is padded to ``batch`` (a new shape
            # per batch size would pay the kernel selection and memory planning of each size under load)
            x = self.runner.collate(list(xs) + [xs[-1]] * (self.batch - len(xs)))
            y = await loop.run_in_executor(self.device, self.runner.infer, x)
            await loop.run_in_executor(self.prep, self.runner.post, y)
        finally:
            self.slots.release()
        for line, writer in items:
            if not writer.is_closing():
                writer.write(line)


async def _serve(args: argparse.Namespace) -> None:
    runner = Models(args.backend, args.device).runner(args.model, args.precision)
    for _ in range(3):  # warm-up: the first batches pay for kernel selection and lazy initialisation
        runner.post(runner.infer(runner.collate([runner.prep_one(i) for i in range(args.batch)])))
    server = TorchServer(runner, args.batch, args.threads, args.max_wait_ms / 1000.0)
    tcp = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    print(f"READY {tcp.sockets[0].getsockname()[1]}", flush=True)
    batcher = asyncio.create_task(server.batcher())
    try:
        async with tcp:
            await tcp.serve_forever()
    finally:
        batcher.cancel()


# -- the local trial runner against the server -------------------------------------------------------------------


async def local_trials(
    configs: Sequence[dict[str, int]],
    *,
    model: str,
    precision: str,
    backend: str,
    device: str,
    slo_ms: float,
    step_s: float,
    start_rps: float,
    bisect_steps: int,
    timeout_s: float,
) -> list[dict[str, Any]]:
    """Each configuration (``threads``, ``batch``) through :class:`LocalTrialRunner` against :class:`TorchServer`."""
    from shadowscale.agent.profiling.local import LocalSettings, LocalTrialRunner
    from shadowscale.policies.profiling.types import Trial

    settings = LocalSettings(
        command=(sys.executable, "-m", "shadowscale.benchmarks.gpu_sweep", "serve"),
        server_args=("--model", model, "--precision", precision, "--backend", backend, "--device", device),
        step_s=step_s,
        start_rps=start_rps,
        bisect_steps=bisect_steps,
        ready_timeout_s=120.0,
    )
    runner = LocalTrialRunner(settings)
    out = []
    for k, cfg in enumerate(configs):
        t0 = time.perf_counter()
        r = await runner.run_trial(Trial(f"gpu-sweep-{k}", model, cfg, slo_ms, timeout_s))
        out.append(
            {
                "model": model,
                "precision": precision,
                **cfg,
                "slo_ms": slo_ms,
                "status": r.status.value,
                "capacity_rps": r.throughput,
                "p99_ms": r.p99_ms if math.isfinite(r.p99_ms) else None,
                "error": r.error,
                "wall_s": round(time.perf_counter() - t0, 2),
            }
        )
    return out


# -- the exporter against nvidia-smi -----------------------------------------------------------------------------


def parse_smi(text: str) -> list[tuple[float, float, float, float]]:
    """``nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw --format=csv,noheader,nounits``
    lines -> ``(epoch s, utilization %, memory MiB, power W)``; the timestamp is local time as nvidia-smi prints
    it (``2026/12/04 16:05:01.123``). Lines that do not parse (a header, ``[N/A]``) are skipped."""
    out = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4:
            continue
        try:
            ts = time.mktime(time.strptime(parts[0].split(".")[0], "%Y/%m/%d %H:%M:%S"))
            frac = float("0." + parts[0].split(".")[1]) if "." in parts[0] else 0.0
            out.append((ts + frac, float(parts[1]), float(parts[2]), float(parts[3])))
        except (ValueError, IndexError):
            continue
    return out


def compare(
    events: Sequence[dict[str, Any]], smi: Sequence[tuple[float, float, float, float]], max_gap_s: float = 0.3
) -> dict[str, Any]:
    """Pairs each exporter event with the nvidia-smi sample nearest in time (within ``max_gap_s``) and gives the
    mean absolute difference per metric (utilization in percentage points, memory in MiB, power in W)."""
    if not smi:
        return {"pairs": 0, "events": len(events), "smi_samples": 0}
    ts = np.array([s[0] for s in smi])
    diffs: dict[str, list[float]] = {"utilization_pct": [], "memory_used_mib": [], "power_w": []}
    gaps = []
    for e in events:
        i = int(np.argmin(np.abs(ts - float(e["event_time"]))))
        gap = abs(ts[i] - float(e["event_time"]))
        if gap > max_gap_s:
            continue
        gaps.append(gap)
        _, u, m, p = smi[i]
        diffs["utilization_pct"].append(abs(float(e["utilization"]) * 100.0 - u))
        diffs["memory_used_mib"].append(abs(float(e["memory_used_bytes"]) / 2**20 - m))
        if e.get("power_watts") is not None:
            diffs["power_w"].append(abs(float(e["power_watts"]) - p))
    res: dict[str, Any] = {"pairs": len(gaps), "events": len(events), "smi_samples": len(smi)}
    res["mean_gap_s"] = round(float(np.mean(gaps)), 4) if gaps else None
    for k, v in diffs.items():
        res[f"mad_{k}"] = round(float(np.mean(v)), 3) if v else None
        res[f"max_abs_{k}"] = round(float(np.max(v)), 3) if v else None
    res["smi_range"] = {
        "utilization_pct": [min(s[1] for s in smi), max(s[1] for s in smi)],
        "memory_used_mib": [min(s[2] for s in smi), max(s[2] for s in smi)],
        "power_w": [min(s[3] for s in smi), max(s[3] for s in smi)],
    }
    return res


async def read_events(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Every message on ``topic`` from the beginning, as JSON objects (stops when nothing more arrives for 2 s
    after the first messages, or at ``timeout_s``)."""
    aiokafka = importlib.import_module("aiokafka")
    c = aiokafka.AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await c.start()
    out: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=2000)
            if not batch:
                if out:
                    break
                continue
            for msgs in batch.values():
                out.extend(json.loads(m.value) for m in msgs)
    finally:
        await c.stop()
    return out


# -- command line ------------------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    try:
        v = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not v or min(v) < 1:
        raise argparse.ArgumentTypeError(f"need integers >= 1: {text!r}")
    return v


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m shadowscale.benchmarks.gpu_sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sweep", help="measure every configuration of each model; raw CSV")
    s.add_argument("--models", type=_names, default=["resnet50", "bert-base", "gpt2"])
    s.add_argument("--backend", choices=("torch", "numpy"), default="torch")
    s.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    s.add_argument("--batches", type=_ints, default=[1, 2, 4, 8, 16, 32, 64])
    s.add_argument("--precisions", type=_names, default=["fp32", "fp16", "bf16"])
    s.add_argument("--threads", type=_ints, default=[1, 2, 4, 8])
    s.add_argument("--instances", type=_ints, default=[1, 2, 4])
    s.add_argument("--budget-s", type=float, default=90.0, help="seconds per model (default 90)")
    s.add_argument("--min-window-s", type=float, default=0.1)
    s.add_argument("--max-window-s", type=float, default=0.5)
    s.add_argument("--min-batches", type=int, default=10)
    s.add_argument("--max-s", type=float, default=1.5, help="longest measurement of one configuration")
    s.add_argument("--out", type=Path, required=True, help="raw CSV")
    g = sub.add_parser("to-generic", help="raw CSV -> the profiler bench's generic CSV")
    g.add_argument("raw", type=Path)
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--core-price", type=float, default=0.02, help="cost of one CPU thread in GPUs (default 0.02)")
    v = sub.add_parser("serve", help="a model server for the local trial runner (prints READY <port>)")
    v.add_argument("--model", default="resnet50")
    v.add_argument("--precision", default="bf16")
    v.add_argument("--backend", choices=("torch", "numpy"), default="torch")
    v.add_argument("--device", default="cuda")
    v.add_argument("--threads", type=int, required=True)
    v.add_argument("--batch", type=int, required=True)
    v.add_argument("--max-wait-ms", type=float, default=2.0)
    lo = sub.add_parser("local", help="the local trial runner against `serve`; JSON lines")
    lo.add_argument("--model", default="resnet50")
    lo.add_argument("--precision", default="bf16")
    lo.add_argument("--backend", choices=("torch", "numpy"), default="torch")
    lo.add_argument("--device", default="cuda")
    lo.add_argument("--configs", default="4x8,8x32", help="THREADSxBATCH,... (default 4x8,8x32)")
    lo.add_argument("--slo-ms", type=float, default=100.0)
    lo.add_argument("--step-s", type=float, default=1.0)
    lo.add_argument("--start-rps", type=float, default=100.0)
    lo.add_argument("--bisect-steps", type=int, default=3)
    lo.add_argument("--timeout-s", type=float, default=120.0)
    lo.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("exporter-compare", help="the exporter's events (from Kafka) against an nvidia-smi CSV")
    c.add_argument("--bootstrap", required=True)
    c.add_argument("--topic", default="shadowscale.gpu")
    c.add_argument("--smi", type=Path, required=True)
    c.add_argument("--events-out", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.cmd == "sweep":
        s = SweepSettings(
            models=args.models,
            backend=args.backend,
            device=args.device,
            batches=args.batches,
            precisions=args.precisions,
            threads=args.threads,
            instances=args.instances,
            budget_s=args.budget_s,
            min_window_s=args.min_window_s,
            max_window_s=args.max_window_s,
            min_batches=args.min_batches,
            max_s=args.max_s,
            progress=lambda m: print(m, file=sys.stderr, flush=True),
        )
        rows = sweep(s, args.out)
        print(json.dumps({"rows": len(rows), "failed": sum(bool(r.get("error")) for r in rows)}))
        return 0
    if args.cmd == "to-generic":
        with args.raw.open(newline="") as f:
            gen = to_generic(list(csv.DictReader(f)), core_price=args.core_price)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=GENERIC_COLUMNS)
            w.writeheader()
            w.writerows(gen)
        print(json.dumps({"rows": len(gen), "tasks": len({r["task"] for r in gen})}))
        return 0
    if args.cmd == "serve":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(args))
        return 0
    if args.cmd == "local":
        cfgs = []
        for part in _names(args.configs):
            t, _, b = part.partition("x")
            cfgs.append({"threads": int(t), "batch": int(b)})
        res = asyncio.run(
            local_trials(
                cfgs,
                model=args.model,
                precision=args.precision,
                backend=args.backend,
                device=args.device,
                slo_ms=args.slo_ms,
                step_s=args.step_s,
                start_rps=args.start_rps,
                bisect_steps=args.bisect_steps,
                timeout_s=args.timeout_s,
            )
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("".join(json.dumps(r) + "\n" for r in res))
        for r in res:
            print(json.dumps(r))
        return 0
    # exporter-compare
    events = asyncio.run(read_events(args.bootstrap, args.topic))
    args.events_out.write_text("".join(json.dumps(e) + "\n" for e in events))
    cmp = compare(events, parse_smi(args.smi.read_text()))
    args.out.write_text(json.dumps(cmp, indent=1))
    print(json.dumps(cmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
