"""The load generator of a Kubernetes shadow trial: ``shadowscale loadgen`` or ``python -m agent.profiling.loadgen``.

The shadow runner (:mod:`agent.profiling.shadow`) starts it as a Job aimed at the shadow's pod. It

1. waits until the target answers (``--connect-timeout-s``): a target that never does is a failed trial;
2. drives open-loop load shaped like the model's traffic (``--shape FILE`` or ``$SHADOWSCALE_LOADGEN_SHAPE``, a
   :class:`RequestShape`: request bodies or sizes, and evenly spaced, Poisson or observed inter-arrival gaps),
   doubling the rate until the p99 (unanswered and failed requests count as infinitely late) breaks the SLO, then
   bisecting between the last good and the first bad rate (:func:`agent.profiling.loadtest.find_capacity`, the
   same search as the local runner's and Morphling's load client's);
3. publishes one ``shadowscale.trial-result/v1`` event (:class:`agent.events.TrialResultEvent`) keyed by the trial
   id on the trials topic, and prints it on stdout (the Job's log). A target that stops answering mid-test
   (connection refused for a whole step) is a failed result, as a crashed server is for the local runner.

The target is pluggable (:class:`Target`): ``http://`` / ``https://`` URLs get :class:`HttpTarget` (one request per
arrival, any 2xx answer counts); ``tcp://HOST:PORT`` gets :class:`TcpLineTarget`, the line protocol of the local
model server (:mod:`agent.profiling.server`), which tests use as a real target.

Exit status: 0 once the result (measured or failed) is published; 1 when it could not be published (the runner's
timeout then fails the trial); 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol
from urllib.parse import urlsplit

import msgspec
import numpy as np
import numpy.typing as npt

from shadowscale.agent.config import KafkaConfig
from shadowscale.agent.events import NAME_RE, NAMESPACE_RE, TRIAL_RESULT_V1, TrialResultEvent, TrialStep, encode
from shadowscale.agent.profiling.loadgen_cli import DEFAULT_TOPIC as DEFAULT_TOPIC
from shadowscale.agent.profiling.loadgen_cli import SHAPE_ENV as SHAPE_ENV
from shadowscale.agent.profiling.loadgen_cli import TRIAL_ENV as TRIAL_ENV
from shadowscale.agent.profiling.loadgen_cli import add_arguments as add_arguments
from shadowscale.agent.profiling.loadtest import Capacity, Step, arrivals, find_capacity, probe
from shadowscale.errors import UsageError

EXIT_UNPUBLISHED = 1
EXIT_USAGE = 2
_MAX_BODY = 64 * 2**20
_Bytes = Annotated[int, msgspec.Meta(ge=0, le=_MAX_BODY)]
_Gap = Annotated[float, msgspec.Meta(ge=0.0, le=3600.0)]


class RequestShape(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the load looks like, as the agent saw the model's traffic (JSON, passed in the Job's environment).

    ``payloads`` are request bodies drawn at random per request (one = a fixed body); ``sizes`` are observed
    request sizes in bytes, for servers that take opaque bodies (each request gets a filler body of a drawn size);
    give at most one of the two (neither: an empty body). ``gaps`` are observed inter-arrival times (any unit;
    replayed at each step's mean rate); without them ``arrival`` picks evenly spaced or Poisson arrivals.
    The TCP line target ignores bodies (its protocol has none).
    """

    method: Literal["GET", "POST", "PUT"] = "POST"
    path: str | None = None
    """Overrides the target URL's path (e.g. ``/v1/models/resnet:predict``)."""
    content_type: str = "application/json"
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    payloads: Annotated[tuple[str, ...], msgspec.Meta(max_length=10_000)] = ()
    sizes: Annotated[
        tuple[Annotated[int, msgspec.Meta(ge=0, le=_MAX_BODY)], ...], msgspec.Meta(max_length=100_000)
    ] = ()
    arrival: Literal["uniform", "poisson"] = "uniform"
    prompt_tokens: Annotated[
        tuple[Annotated[int, msgspec.Meta(ge=1, le=1_000_000)], ...], msgspec.Meta(max_length=100_000)
    ] = ()
    """LLM targets (``openai+http://``): observed prompt lengths in tokens, drawn per request (paired with
    ``output_tokens`` by index when both have the same length: the observed mix)."""
    output_tokens: Annotated[
        tuple[Annotated[int, msgspec.Meta(ge=1, le=1_000_000)], ...], msgspec.Meta(max_length=100_000)
    ] = ()
    llm_model: str | None = None
    """The ``model`` field of an OpenAI completions request."""
    ttft_slo_ms: Annotated[float, msgspec.Meta(gt=0.0)] | None = None
    """LLM SLOs: time to first token and time per output token. With either set, a request's latency is judged as
    ``max(ttft / ttft_slo, tpot / tpot_slo) × slo_ms``, so the trial's p99 is within ``slo_ms`` exactly when both
    are met."""
    tpot_slo_ms: Annotated[float, msgspec.Meta(gt=0.0)] | None = None
    gaps: Annotated[
        tuple[Annotated[float, msgspec.Meta(ge=0.0, le=3600.0)], ...], msgspec.Meta(max_length=100_000)
    ] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.payloads and self.sizes:
            raise ValueError("give payloads or sizes, not both")
        if self.gaps and not sum(self.gaps) > 0:
            raise ValueError("gaps must not all be 0")
        if self.path is not None and not self.path.startswith("/"):
            raise ValueError(f"path must start with '/', got {self.path!r}")

    def bodies(self) -> list[bytes]:
        """The distinct bodies requests draw from (one empty body when none is configured)."""
        if self.payloads:
            return [p.encode() for p in self.payloads]
        if self.sizes:
            return [b"x" * n for n in sorted(set(self.sizes))]
        return [b""]

    def weights(self) -> list[float] | None:
        """Draw weights for :meth:`bodies` (sizes keep their observed frequencies), None for uniform."""
        if not self.sizes:
            return None
        distinct = sorted(set(self.sizes))
        return [float(self.sizes.count(n)) for n in distinct]


def parse_shape(text: str, where: str) -> RequestShape:
    """A :class:`RequestShape` from JSON text; a ``ValueError`` naming ``where`` and the field when it is bad."""
    try:
        return msgspec.json.decode(text, type=RequestShape)
    except msgspec.ValidationError as e:
        raise UsageError(f"request shape in {where}: {e}") from None
    except msgspec.DecodeError as e:
        raise UsageError(f"request shape in {where}: not JSON: {e}") from None


def shape_json(shape: RequestShape) -> str:
    return encode(shape).decode()


SHAPE_MAX_BYTES = 512 * 1024
"""Most bytes of request-shape JSON a trial ships (in a ConfigMap mounted into the load generator's pod; the API
server refuses a ConfigMap over 1 MiB, and Linux an environment variable over 128 KiB)."""
MAX_GAPS = 100_000
"""Most inter-arrival gaps a shape may hold (the decoder's limit)."""


def fit_shape(shape: RequestShape, max_bytes: int = SHAPE_MAX_BYTES) -> RequestShape:
    """``shape`` made to fit in ``max_bytes`` of JSON: gaps rounded to microseconds and, if still too long, only the
    most recent ones kept (at most ``MAX_GAPS``; the traffic's latest pattern). ``ValueError`` when the shape is too
    big without any gaps (its payloads or sizes alone), naming the sizes."""
    gaps = tuple(round(g, 6) for g in shape.gaps[-MAX_GAPS:])
    if gaps and not sum(gaps) > 0:
        gaps = ()
    fitted = msgspec.structs.replace(shape, gaps=gaps)
    size = len(shape_json(fitted).encode())
    if size <= max_bytes:
        return fitted
    bare = len(shape_json(msgspec.structs.replace(shape, gaps=())).encode())
    if bare > max_bytes:
        raise ValueError(
            f"request shape: {bare} bytes without its gaps (payloads/sizes), over the {max_bytes}-byte cap; "
            "give fewer or smaller payloads"
        )
    lo, hi = 0, len(gaps)  # the most recent ``lo`` gaps fit, ``hi`` do not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if len(shape_json(msgspec.structs.replace(shape, gaps=gaps[-mid:])).encode()) <= max_bytes:
            lo = mid
        else:
            hi = mid
    kept = gaps[-lo:] if lo else ()
    return msgspec.structs.replace(shape, gaps=kept if sum(kept) > 0 else ())


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """How the rate search runs: seconds of warm-up load (at the first rate, not measured: caches, JIT compilation,
    CUDA graphs and the KV cache settle first), seconds per step, the first and highest rate, bisection steps, how
    long a step waits for late answers (default 3 × the SLO, at least 0.2 s) and how long the target may take to
    answer."""

    step_s: float = 2.0
    start_rps: float = 10.0
    max_rps: float = 20_000.0
    bisect_steps: int = 4
    drain_s: float | None = None
    connect_timeout_s: float = 60.0
    warmup_s: float = 5.0

    def __post_init__(self) -> None:
        if not (isinstance(self.warmup_s, int | float) and math.isfinite(self.warmup_s) and self.warmup_s >= 0):
            raise ValueError(f"load plan: warmup_s must be a number >= 0, got {self.warmup_s!r}")
        for name in ("step_s", "start_rps", "max_rps", "connect_timeout_s"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"load plan: {name} must be a positive number, got {v!r}")
        if self.start_rps > self.max_rps:
            raise ValueError(f"load plan: start_rps {self.start_rps:g} is above max_rps {self.max_rps:g}")
        if self.bisect_steps < 0:
            raise ValueError(f"load plan: bisect_steps must be >= 0, got {self.bisect_steps}")
        if self.drain_s is not None and not self.drain_s > 0:
            raise ValueError(f"load plan: drain_s must be positive, got {self.drain_s}")

    def args(self) -> list[str]:
        """The command-line arguments that give this plan to the load generator."""
        out = ["--step-s", f"{self.step_s:g}", "--start-rps", f"{self.start_rps:g}", "--max-rps", f"{self.max_rps:g}"]
        out += ["--bisect-steps", str(self.bisect_steps), "--connect-timeout-s", f"{self.connect_timeout_s:g}"]
        out += ["--warmup-s", f"{self.warmup_s:g}"]
        return out + ([] if self.drain_s is None else ["--drain-s", f"{self.drain_s:g}"])


# -- targets --------------------------------------------------------------------------------------------------------


class TargetDied(ConnectionError):
    """The target stopped accepting connections during the load test."""


class Target(Protocol):
    """Where the load goes. ``step`` raises :class:`ConnectionError` when the target is gone (not merely slow)."""

    name: str

    async def reachable(self, timeout_s: float) -> str | None:
        """None once the target answers a request; otherwise why not, after ``timeout_s``."""
        ...

    async def step(self, rate: float, duration_s: float, drain_s: float, offsets: npt.NDArray[np.float64]) -> Step:
        """Send requests at ``offsets`` (seconds from the step's start); the p99 with late ones as infinite."""
        ...

    async def close(self) -> None: ...


class TcpLineTarget:
    """The local model server's protocol (:mod:`agent.profiling.server`): lines ``<id>\\n`` answered by ``<id>\\n``."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.name = f"tcp://{host}:{port}"

    async def reachable(self, timeout_s: float) -> str | None:
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while True:
            try:
                async with asyncio.timeout(max(0.05, deadline - time.monotonic())):
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                    try:
                        writer.write(b"0\n")
                        await writer.drain()
                        if (await reader.readline()).strip() == b"0":
                            return None
                        last = "the connection closed without an answer"
                    finally:
                        writer.close()
                        with contextlib.suppress(ConnectionError):
                            await writer.wait_closed()
            except (OSError, TimeoutError) as e:
                last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            if time.monotonic() >= deadline:
                return f"{last} within {timeout_s:g} s"
            await asyncio.sleep(0.2)

    async def step(self, rate: float, duration_s: float, drain_s: float, offsets: npt.NDArray[np.float64]) -> Step:
        try:
            return await probe(self.host, self.port, rate, duration_s, drain_s, offsets)
        except OSError as e:
            raise TargetDied(f"{self.name}: {e}") from e

    async def close(self) -> None:
        return None


async def _open_loop(
    offsets: npt.NDArray[np.float64],
    duration_s: float,
    drain_s: float,
    send: Callable[[], Coroutine[Any, Any, None]],
) -> int:
    """Start one ``send()`` at each of ``offsets`` (seconds from now, sorted) for ``duration_s``, open-loop (a
    slow answer never delays the next request), wait up to ``drain_s`` for the late ones, cancel the rest; returns
    how many were started."""
    tasks: set[asyncio.Task[None]] = set()
    n = 0
    start = time.perf_counter()
    try:
        while (now := time.perf_counter()) - start < duration_s and n < len(offsets):
            due = int(np.searchsorted(offsets, now - start, side="right"))
            while n < due:
                tasks.add(asyncio.create_task(send()))
                n += 1
            await asyncio.sleep(0.002)
        if tasks:
            await asyncio.wait(tasks, timeout=drain_s)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return n


async def _http_reachable(
    session: Any, method: str, url: str, body: Callable[[], bytes], timeout_s: float
) -> str | None:
    """None once ``url`` answers a test request with 2xx; else why not: at once for a 4xx (the request itself is
    wrong, retrying will not help), after ``timeout_s`` of retries for errors and 5xx."""
    import aiohttp

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        try:
            timeout = aiohttp.ClientTimeout(total=max(0.05, deadline - time.monotonic()))
            async with session.request(method, url, data=body(), timeout=timeout) as r:
                text = (await r.read())[:200].decode(errors="replace")
                if 200 <= r.status <= 299:
                    return None
                if r.status < 500:
                    return f"answered HTTP {r.status} to a test request: {text.strip() or r.reason}"
                last = f"HTTP {r.status}"
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        if time.monotonic() >= deadline:
            return f"{last} within {timeout_s:g} s"
        await asyncio.sleep(0.2)


class LlmTarget:
    """An OpenAI-compatible completions server (vLLM, TGI, TensorRT-LLM's, SGLang): ``openai+http(s)://HOST:PORT/PATH``
    (path default ``/v1/completions``). Each arrival streams one completion (``stream: true``, ``max_tokens`` and a
    prompt of about the drawn number of tokens from the shape's observed mix, ``ignore_eos`` so the output length
    holds); a request is answered when the stream ends with ``[DONE]``. Per request: TTFT (time to the first
    token), TPOT ((end - first token) / (tokens - 1)); per step their p99 and the output tokens per second."""

    def __init__(self, url: str, shape: RequestShape, *, max_connections: int = 1024) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.removeprefix("openai+")
        path = shape.path or (parts.path if parts.path not in ("", "/") else "/v1/completions")
        self.url = parts._replace(scheme=scheme, path=path).geturl()
        self.name = url
        self.shape = shape
        self.max_connections = max_connections
        self._rng = random.Random(shape.seed)
        self._session: Any = None
        self._slo_ms = 0.0
        """The trial's SLO, which TTFT/TPOT are scaled to (set by :func:`run_load`)."""

    def _client(self) -> Any:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                headers={"Content-Type": "application/json", **self.shape.headers},
            )
        return self._session

    def _lengths(self) -> tuple[int, int]:
        p, o = self.shape.prompt_tokens, self.shape.output_tokens
        if p and o and len(p) == len(o):
            k = self._rng.randrange(len(p))
            return p[k], o[k]
        return (self._rng.choice(p) if p else 128), (self._rng.choice(o) if o else 128)

    def _body(self, prompt: int, output: int) -> bytes:
        req: dict[str, Any] = {
            "prompt": " ".join(["hello"] * prompt),
            "max_tokens": output,
            "stream": True,
            "ignore_eos": True,
        }
        if self.shape.llm_model:
            req["model"] = self.shape.llm_model
        return msgspec.json.encode(req)

    async def reachable(self, timeout_s: float) -> str | None:
        return await _http_reachable(self._client(), "POST", self.url, lambda: self._body(1, 1), timeout_s)

    async def _one(self, session: Any, timeout: Any) -> tuple[float, float, int, float] | None:
        """``(ttft_s, tpot_s, tokens, latency_s)`` of one streamed completion, None when it failed."""
        prompt, output = self._lengths()
        t0 = time.perf_counter()
        first: float | None = None
        tokens = 0
        async with session.post(self.url, data=self._body(prompt, output), timeout=timeout) as r:
            if not 200 <= r.status <= 299:
                await r.read()
                return None
            done = False
            async for raw in r.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                try:
                    chunk = msgspec.json.decode(data)
                except msgspec.DecodeError:
                    return None
                choices = chunk.get("choices") if isinstance(chunk, dict) else None
                text = choices[0].get("text") if isinstance(choices, list) and choices else None
                if text:
                    tokens += 1
                    if first is None:
                        first = time.perf_counter()
            if not done or first is None:
                return None
        end = time.perf_counter()
        tpot = (end - first) / (tokens - 1) if tokens > 1 else 0.0
        return first - t0, tpot, tokens, end - t0

    async def step(self, rate: float, duration_s: float, drain_s: float, offsets: npt.NDArray[np.float64]) -> Step:
        import aiohttp

        session = self._client()
        timeout = aiohttp.ClientTimeout(total=duration_s + drain_s + 5.0)
        done: list[tuple[float, float, int, float]] = []
        refused = 0

        async def one() -> None:
            nonlocal refused
            try:
                got = await self._one(session, timeout)
                if got is not None:
                    done.append(got)
            except aiohttp.ClientConnectorError:
                refused += 1
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass

        start = time.perf_counter()
        n = await _open_loop(offsets, duration_s, drain_s, one)
        wall = time.perf_counter() - start
        if n and not done and refused:
            raise TargetDied(f"{self.name}: {refused} of {n} connections refused")
        return llm_step(rate, n, done, wall, self.shape, self._slo_ms)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def llm_step(
    rate: float,
    sent: int,
    done: Sequence[tuple[float, float, int, float]],
    wall_s: float,
    shape: RequestShape,
    slo_ms: float,
) -> Step:
    """A step of an LLM target from its finished requests ``(ttft_s, tpot_s, tokens, latency_s)`` (pure): the p99 is
    judged on TTFT and TPOT against the shape's SLOs (scaled to ``slo_ms``) when it has them, else end to end;
    unfinished requests count as infinitely late."""
    missing = [math.inf] * (sent - len(done))
    if shape.ttft_slo_ms or shape.tpot_slo_ms:
        lat = [
            max(
                (ttft * 1000.0 / shape.ttft_slo_ms) if shape.ttft_slo_ms else 0.0,
                (tpot * 1000.0 / shape.tpot_slo_ms) if shape.tpot_slo_ms else 0.0,
            )
            * slo_ms
            for ttft, tpot, _, _ in done
        ]
    else:
        lat = [total * 1000.0 for _, _, _, total in done]
    arr = np.array(lat + missing, dtype=np.float64)
    p99 = float(np.percentile(arr, 99, method="higher")) if len(arr) else math.inf
    ttft = np.array([d[0] for d in done] + missing, dtype=np.float64) * 1000.0
    tpot = np.array([d[1] for d in done] + missing, dtype=np.float64) * 1000.0
    return Step(
        rate,
        sent,
        len(done),
        p99,
        ttft_p99_ms=float(np.percentile(ttft, 99, method="higher")) if len(ttft) else None,
        tpot_p99_ms=float(np.percentile(tpot, 99, method="higher")) if len(tpot) else None,
        tokens_per_s=sum(d[2] for d in done) / wall_s if wall_s > 0 else 0.0,
    )


class HttpTarget:
    """One HTTP request per arrival; an answer is any 2xx whose body was read in time (else infinitely late)."""

    def __init__(self, url: str, shape: RequestShape, *, max_connections: int = 1024) -> None:
        parts = urlsplit(url)
        if shape.path is not None:
            url = parts._replace(path=shape.path).geturl()
        self.url = url
        self.name = url
        self.shape = shape
        self.max_connections = max_connections
        self._bodies = shape.bodies()
        self._weights = shape.weights()
        self._rng = random.Random(shape.seed)
        self._session: Any = None

    def _client(self) -> Any:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                headers={"Content-Type": self.shape.content_type, **self.shape.headers},
            )
        return self._session

    def _body(self) -> bytes:
        if len(self._bodies) == 1:
            return self._bodies[0]
        return self._rng.choices(self._bodies, self._weights)[0]

    async def reachable(self, timeout_s: float) -> str | None:
        return await _http_reachable(self._client(), self.shape.method, self.url, self._body, timeout_s)

    async def step(self, rate: float, duration_s: float, drain_s: float, offsets: npt.NDArray[np.float64]) -> Step:
        import aiohttp

        session = self._client()
        timeout = aiohttp.ClientTimeout(total=duration_s + drain_s + 5.0)
        latencies: list[float] = []
        refused = 0

        async def one(body: bytes) -> None:
            nonlocal refused
            t = time.perf_counter()
            try:
                async with session.request(self.shape.method, self.url, data=body, timeout=timeout) as r:
                    await r.read()
                    if 200 <= r.status <= 299:
                        latencies.append(time.perf_counter() - t)
            except aiohttp.ClientConnectorError:
                refused += 1
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass  # an error is an unanswered request: infinitely late

        n = await _open_loop(offsets, duration_s, drain_s, lambda: one(self._body()))
        if n and not latencies and refused:
            raise TargetDied(f"{self.name}: {refused} of {n} connections refused")
        lat = np.array(latencies + [math.inf] * (n - len(latencies)), dtype=np.float64)
        p99 = float(np.percentile(lat, 99, method="higher")) * 1000.0 if len(lat) else math.inf
        return Step(rate, n, len(latencies), p99)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def target_from_url(url: str, shape: RequestShape) -> Target:
    """``tcp://HOST:PORT`` → :class:`TcpLineTarget`; ``http(s)://…`` → :class:`HttpTarget`; else ``ValueError``."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme == "tcp":
        if not parts.hostname or port is None:
            raise UsageError(f"--target {url!r}: a TCP target needs tcp://HOST:PORT")
        return TcpLineTarget(parts.hostname, port)
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise UsageError(f"--target {url!r}: no host")
        return HttpTarget(url, shape)
    if parts.scheme in ("openai+http", "openai+https"):
        if not parts.hostname:
            raise UsageError(f"--target {url!r}: no host")
        return LlmTarget(url, shape)
    raise UsageError(f"--target {url!r}: the scheme must be http, https, openai+http, openai+https or tcp")


# -- one trial ------------------------------------------------------------------------------------------------------


async def run_load(target: Target, slo_ms: float, plan: LoadPlan, shape: RequestShape) -> Capacity:
    """The capacity of ``target`` at ``slo_ms``: open-loop steps shaped by ``shape``, doubling then bisecting."""
    drain = plan.drain_s if plan.drain_s is not None else max(0.2, 3 * slo_ms / 1000.0)
    if isinstance(target, LlmTarget):
        target._slo_ms = slo_ms
    count = 0

    async def measure(rate: float) -> Step:
        nonlocal count
        count += 1
        offsets = arrivals(rate, plan.step_s, arrival=shape.arrival, gaps=shape.gaps, seed=shape.seed + count)
        return await target.step(rate, plan.step_s, drain, offsets)

    if plan.warmup_s > 0:  # not measured: the server's first requests are slow for reasons a trial must not score
        offsets = arrivals(plan.start_rps, plan.warmup_s, arrival=shape.arrival, gaps=shape.gaps, seed=shape.seed)
        await target.step(plan.start_rps, plan.warmup_s, drain, offsets)
    return await find_capacity(
        measure, slo_ms, start_rps=plan.start_rps, max_rps=plan.max_rps, bisect_steps=plan.bisect_steps
    )


def _ms(x: float) -> float | None:
    return min(x, 86_400_000.0) if math.isfinite(x) else None


async def measure_trial(
    target: Target,
    *,
    trial_id: str,
    model: str,
    slo_ms: float,
    namespace: str = "default",
    plan: LoadPlan | None = None,
    shape: RequestShape | None = None,
) -> TrialResultEvent:
    """Run one trial's load test and return its result event (never raises for a target that misbehaves)."""
    plan = plan or LoadPlan()
    shape = shape or RequestShape()
    t0 = time.perf_counter()

    def event(**kw: Any) -> TrialResultEvent:
        return TrialResultEvent(
            schema=TRIAL_RESULT_V1,
            trial=trial_id,
            model=model,
            namespace=namespace,
            event_time=time.time(),
            slo_ms=slo_ms,
            wall_s=min(time.perf_counter() - t0, 86_400.0),
            target=target.name[:2048],
            **kw,
        )

    try:
        why = await target.reachable(plan.connect_timeout_s)
        if why is not None:
            return event(status="failed", error=f"cannot reach the target {target.name}: {why}"[:2000])
        try:
            cap = await run_load(target, slo_ms, plan, shape)
        except ConnectionError as e:
            return event(status="failed", error=f"the target died during the load test: {e}"[:2000])
    finally:
        await target.close()
    steps = tuple(
        TrialStep(
            rate=s.rate,
            sent=s.sent,
            answered=s.answered,
            p99_ms=_ms(s.p99_ms),
            ttft_p99_ms=None if s.ttft_p99_ms is None else _ms(s.ttft_p99_ms),
            tpot_p99_ms=None if s.tpot_p99_ms is None else _ms(s.tpot_p99_ms),
            tokens_per_s=s.tokens_per_s,
        )
        for s in cap.steps
    )
    return event(status="measured", throughput_rps=cap.rate, p99_ms=_ms(cap.p99_ms), steps=steps)


async def publish(event: TrialResultEvent, kafka: KafkaConfig, topic: str, timeout_s: float = 60.0) -> None:
    """Publish ``event`` keyed by its trial id, retrying an unreachable broker with back-off for ``timeout_s``."""
    from shadowscale.agent.kafka import KafkaSink, KafkaUnavailable

    deadline = time.monotonic() + timeout_s
    delay = 0.5
    while True:
        sink = KafkaSink(kafka)
        try:
            left = max(1.0, deadline - time.monotonic())
            await sink.start(timeout_s=left)
            await asyncio.wait_for(sink.write(topic, [(event.trial.encode(), encode(event))]), left)
            return
        except Exception as e:  # unreachable, timed out, refused: all retried until the deadline
            if time.monotonic() + delay >= deadline:
                raise KafkaUnavailable(f"cannot publish the result of {event.trial} to {topic}: {e}") from e
            print(f"loadgen: publishing failed ({e}); retrying in {delay:g} s", file=sys.stderr, flush=True)
        finally:
            with contextlib.suppress(Exception):
                await sink.stop(timeout_s=2.0)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)


# -- command line ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Invocation:
    target: Target
    trial_id: str
    model: str
    namespace: str
    slo_ms: float
    plan: LoadPlan
    shape: RequestShape
    kafka: KafkaConfig
    topic: str
    publish_timeout_s: float


def invocation(args: argparse.Namespace, env: dict[str, str] | None = None) -> Invocation:
    """Check the parsed arguments; every problem is a ``ValueError`` that names the argument."""
    env = dict(os.environ) if env is None else env
    trial = args.trial_id or env.get(TRIAL_ENV)
    if not trial:
        raise UsageError(f"--trial-id is missing (and ${TRIAL_ENV} is not set)")
    for flag, name in (("--trial-id", trial), ("--model", args.model)):
        if len(name) > 253 or NAME_RE.fullmatch(name) is None:
            raise UsageError(f"{flag} {name[:80]!r} is not a valid Kubernetes name")
    if NAMESPACE_RE.fullmatch(args.namespace) is None:
        raise UsageError(f"--namespace {args.namespace[:80]!r} is not a valid Kubernetes namespace")
    if not (math.isfinite(args.slo_ms) and 0 < args.slo_ms <= 86_400_000):
        raise UsageError(f"--slo-ms must be a positive number of milliseconds, got {args.slo_ms}")
    bootstrap = str(args.bootstrap).strip()
    if not bootstrap or ":" not in bootstrap:
        raise UsageError(f"--bootstrap must be HOST:PORT, got {args.bootstrap!r}")
    if args.shape:
        try:
            text = Path(args.shape).read_text()
        except OSError as e:
            raise UsageError(f"--shape {args.shape}: {e.strerror}") from None
        shape = parse_shape(text, f"--shape {args.shape}")
    elif env.get(SHAPE_ENV):
        shape = parse_shape(env[SHAPE_ENV], f"${SHAPE_ENV}")
    else:
        shape = RequestShape()
    try:
        plan = LoadPlan(
            step_s=args.step_s,
            start_rps=args.start_rps,
            max_rps=args.max_rps,
            bisect_steps=args.bisect_steps,
            drain_s=args.drain_s,
            connect_timeout_s=args.connect_timeout_s,
            warmup_s=args.warmup_s,
        )
    except ValueError as e:
        msg = str(e)
        for name in ("step_s", "start_rps", "max_rps", "bisect_steps", "drain_s", "connect_timeout_s", "warmup_s"):
            msg = msg.replace(name, "--" + name.replace("_", "-"))
        raise UsageError(msg) from None
    if not args.publish_timeout_s > 0:
        raise UsageError(f"--publish-timeout-s must be positive, got {args.publish_timeout_s}")
    if args.config:
        from shadowscale.agent.config import load_config

        kafka = load_config(Path(args.config)).kafka
    else:
        kafka = KafkaConfig()
    kafka = msgspec.structs.replace(kafka, bootstrap=bootstrap, client_id=f"shadowscale-loadgen-{trial}"[:200])
    kafka = _security(kafka, args, os.environ)
    return Invocation(
        target=target_from_url(args.target, shape),
        trial_id=trial,
        model=args.model,
        namespace=args.namespace,
        slo_ms=float(args.slo_ms),
        plan=plan,
        shape=shape,
        kafka=kafka,
        topic=args.topic,
        publish_timeout_s=float(args.publish_timeout_s),
    )


SASL_USERNAME_ENV = "SHADOWSCALE_LOADGEN_SASL_USERNAME"
SASL_PASSWORD_ENV = "SHADOWSCALE_LOADGEN_SASL_PASSWORD"
"""The SASL credentials come from the environment (a Secret in the Job's pod), never from the command line."""


def _security(kafka: KafkaConfig, args: argparse.Namespace, environ: Mapping[str, str]) -> KafkaConfig:
    """``kafka`` with the command line's TLS/SASL flags and the environment's SASL credentials applied, checked."""
    over: dict[str, str] = {}
    if args.security_protocol:
        over["security_protocol"] = args.security_protocol
    if args.sasl_mechanism:
        over["sasl_mechanism"] = args.sasl_mechanism
    if args.ssl_cafile:
        if not Path(args.ssl_cafile).is_file():
            raise UsageError(f"--ssl-cafile {args.ssl_cafile}: no such file")
        over["ssl_cafile"] = args.ssl_cafile
    for env, field_name in ((SASL_USERNAME_ENV, "sasl_username"), (SASL_PASSWORD_ENV, "sasl_password")):
        if environ.get(env):
            over[field_name] = environ[env]
    kafka = msgspec.structs.replace(kafka, **over) if over else kafka
    if kafka.security_protocol.startswith("SASL") and not (
        kafka.sasl_mechanism and kafka.sasl_username and kafka.sasl_password
    ):
        raise UsageError(
            f"--security-protocol {kafka.security_protocol} needs --sasl-mechanism and ${SASL_USERNAME_ENV} / "
            f"${SASL_PASSWORD_ENV}"
        )
    return kafka


async def run(inv: Invocation) -> int:
    """Measure, print the result on stdout, publish it; the exit status (see the module doc)."""
    from shadowscale.agent.kafka import KafkaUnavailable

    event = await measure_trial(
        inv.target,
        trial_id=inv.trial_id,
        model=inv.model,
        slo_ms=inv.slo_ms,
        namespace=inv.namespace,
        plan=inv.plan,
        shape=inv.shape,
    )
    print(encode(event).decode(), flush=True)
    try:
        await publish(event, inv.kafka, inv.topic, inv.publish_timeout_s)
    except KafkaUnavailable as e:
        print(f"loadgen: {e}", file=sys.stderr, flush=True)
        return EXIT_UNPUBLISHED
    return 0


def run_args(args: argparse.Namespace) -> int:
    return asyncio.run(run(invocation(args)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.profiling.loadgen", description=__doc__)
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else 0
    try:
        inv = invocation(args)
    except ValueError as e:
        print(f"loadgen: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(run(inv))


if __name__ == "__main__":
    sys.exit(main())
