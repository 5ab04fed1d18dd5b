"""The load generator and the trial-results consumer: arrival schedules, the HTTP target against a real HTTP server
(bodies as the request shape says, a rejected request, a server that is gone), the consumer on the bundled broker
(delivers to the waiter, ignores unknown trials and bad messages, times out), and bad command lines."""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web

from shadowscale.agent.broker import LocalBroker, free_port
from shadowscale.agent.config import KafkaConfig
from shadowscale.agent.events import TRIAL_RESULT_V1, TrialResultEvent, decode_trial_result, encode
from shadowscale.agent.kafka import KafkaSink, KafkaTail, KafkaUnavailable
from shadowscale.agent.profiling import loadgen as lg
from shadowscale.agent.profiling.loadgen import HttpTarget, LoadPlan, RequestShape, measure_trial, parse_shape, publish
from shadowscale.agent.profiling.loadtest import Step, arrivals
from shadowscale.agent.profiling.results import KafkaTrialResults, TrialResultsHub, to_trial_result
from shadowscale.policies.profiling.types import TrialStatus


def test_arrival_schedules_keep_the_mean_rate_and_the_observed_burstiness() -> None:
    uniform = arrivals(200, 2.0)
    assert len(uniform) == 400 and np.allclose(np.diff(uniform), 1 / 200)
    poisson = arrivals(200, 2.0, arrival="poisson", seed=3)
    assert 340 < len(poisson) < 460 and np.all(np.diff(poisson) >= 0) and poisson[-1] < 2.0
    gaps = np.diff(arrivals(100, 3.0, gaps=[1, 1, 1, 9], seed=1))  # bursts of three, then a pause
    assert 290 <= len(gaps) + 1 <= 310
    assert sorted(set(np.round(gaps * 1000, 6))) == [3.333333, 30.0]  # the gaps' ratios, at a mean of 10 ms
    with pytest.raises(ValueError, match="gaps must be finite"):
        arrivals(10, 1.0, gaps=[0, 0])


def test_request_shapes_are_checked_by_name() -> None:
    shape = parse_shape('{"sizes": [10, 10, 30], "arrival": "poisson"}', "$SHADOWSCALE_LOADGEN_SHAPE")
    assert shape.bodies() == [b"x" * 10, b"x" * 30] and shape.weights() == [2.0, 1.0]
    for text, why in [
        ('{"payloads": ["a"], "sizes": [1]}', "give payloads or sizes, not both"),
        ('{"gapz": [1]}', "unknown field `gapz`"),
        ('{"sizes": [-1]}', "at `$.sizes[0]`"),
        ('{"arrival": "bursty"}', "at `$.arrival`"),
        ('{"path": "predict"}', "path must start with '/'"),
        ("{", "not JSON: Input data was truncated"),
    ]:
        with pytest.raises(ValueError, match=r"^request shape in --shape f\.json: ") as e:
            parse_shape(text, "--shape f.json")
        assert why in str(e.value)


@pytest_asyncio.fixture
async def http_server() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A real HTTP model server: answers POST /predict after 2 ms; a body without "x" is a 400."""
    bodies: list[bytes] = []

    async def predict(request: web.Request) -> web.Response:
        body = await request.read()
        bodies.append(body)
        if b'"x"' not in body:
            return web.Response(status=400, text="missing input x")
        await asyncio.sleep(0.002)
        return web.json_response({"y": 1})

    app = web.Application()
    app.router.add_post("/predict", predict)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/predict", bodies
    finally:
        await runner.cleanup()


PLAN = LoadPlan(step_s=0.3, start_rps=40, max_rps=160, bisect_steps=1, connect_timeout_s=2, warmup_s=0.3)


@pytest.mark.asyncio
async def test_http_target_measures_a_real_server_with_the_shapes_bodies(http_server: tuple[str, list[bytes]]) -> None:
    url, bodies = http_server
    shape = RequestShape(payloads=('{"x": [1]}', '{"x": [2, 3]}'), arrival="poisson")
    ev = await measure_trial(HttpTarget(url, shape), trial_id="t-1", model="m", slo_ms=200, plan=PLAN, shape=shape)
    assert ev.status == "measured" and ev.throughput_rps == 160 and ev.p99_ms is not None and ev.p99_ms < 200
    assert [s.rate for s in ev.steps] == [40, 80, 160] and all(s.answered == s.sent for s in ev.steps)
    assert set(bodies) == {b'{"x": [1]}', b'{"x": [2, 3]}'}  # both bodies were drawn
    assert decode_trial_result(encode(ev)) == ev  # what it publishes is valid on the wire


@pytest.mark.asyncio
async def test_http_target_failures_are_failed_results(http_server: tuple[str, list[bytes]]) -> None:
    url, _ = http_server
    bad = RequestShape(payloads=('{"z": 1}',))
    ev = await measure_trial(HttpTarget(url, bad), trial_id="t-2", model="m", slo_ms=200, plan=PLAN, shape=bad)
    assert ev.status == "failed" and "answered HTTP 400 to a test request: missing input x" in ev.error

    gone = f"http://127.0.0.1:{free_port()}/predict"
    ev = await measure_trial(HttpTarget(gone, RequestShape()), trial_id="t-3", model="m", slo_ms=200, plan=PLAN)
    assert (
        ev.status == "failed" and ev.error.startswith(f"cannot reach the target {gone}:") and "within 2 s" in ev.error
    )


# -- the consumer on the bundled broker ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as b:
        yield b


def result_event(trial: str, **kw: Any) -> TrialResultEvent:
    fields: dict[str, Any] = {"status": "measured", "throughput_rps": 120.0, "p99_ms": 80.0, "slo_ms": 100.0}
    fields.update(kw)
    return TrialResultEvent(schema=TRIAL_RESULT_V1, trial=trial, model="resnet", event_time=time.time(), **fields)


@pytest.mark.asyncio
async def test_consumer_hands_results_to_their_waiters_and_ignores_the_rest(broker: LocalBroker) -> None:
    cfg = KafkaConfig(bootstrap=broker.bootstrap)
    topic = f"trials-{time.monotonic_ns()}"
    async with KafkaTrialResults(cfg, topic, create_topic=True, partitions=2) as results:
        waiting = asyncio.ensure_future(results.wait("run-resnet-1", 20))
        never = asyncio.ensure_future(results.wait("run-resnet-3", 1.0))
        await asyncio.sleep(0)
        await publish(result_event("someone-elses-trial"), cfg, topic)
        await publish(result_event("run-resnet-1", steps=()), cfg, topic)
        sink = KafkaSink(cfg)
        await sink.start()
        try:
            await sink.write(topic, [(b"run-resnet-1", b'{"schema": "shadowscale.trial-result/v1"}'), (None, b"{")])
        finally:
            await sink.stop()
        got = await asyncio.wait_for(waiting, 20)
        assert got is not None and got.status is TrialStatus.MEASURED and (got.throughput, got.p99_ms) == (120, 80)
        assert await never is None  # nothing came: the runner fails the trial
        deadline = time.monotonic() + 10
        while results.counts.rejected < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert (results.counts.delivered, results.counts.unknown, results.counts.rejected) == (1, 1, 2)
        assert results.waiting == [] and results.running
    assert not results.running


@pytest.mark.asyncio
async def test_hub_converts_results_and_refuses_two_waiters() -> None:
    hub = TrialResultsHub()
    first = asyncio.ensure_future(hub.wait("a", 5))
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="already waiting for trial 'a'"):
        await hub.wait("a", 1)
    hub.deliver(encode(result_event("a", status="failed", error="the target died during the load test")))
    failed = await first
    assert failed is not None and failed.error == "load generator: the target died during the load test"
    never_met = asyncio.ensure_future(hub.wait("b", 5))
    await asyncio.sleep(0)
    hub.deliver(encode(result_event("b", throughput_rps=0.0, p99_ms=None)))
    got = await never_met
    assert got is not None and got.measured and got.throughput == 0 and got.p99_ms == math.inf
    rejected = hub.deliver(encode(result_event("c", status="failed")))  # a failure must say why
    assert getattr(rejected, "reason", "") == "invalid trial result: a failed result needs an error"


@pytest.mark.asyncio
async def test_tail_of_a_missing_topic_is_a_clear_error(broker: LocalBroker) -> None:
    tail = KafkaTail(KafkaConfig(bootstrap=broker.bootstrap), "no-such-topic-here")
    with pytest.raises(KafkaUnavailable, match="topic 'no-such-topic-here' does not exist"):
        await tail.start(timeout_s=10)


# -- the command line ------------------------------------------------------------------------------------------------


async def loadgen(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shadowscale.agent.profiling.loadgen", *args, env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    return proc.returncode or 0, err.decode()


BASE = ["--model", "resnet", "--trial-id", "t-1", "--slo-ms", "100", "--bootstrap", "127.0.0.1:9"]


@pytest.mark.asyncio
async def test_bad_command_lines_exit_2_and_say_what_is_wrong() -> None:
    import os

    cases = [
        (["--target", "ftp://x:1"], None, "--target 'ftp://x:1': the scheme must be http, https, openai+http"),
        (["--target", "tcp://x"], None, "a TCP target needs tcp://HOST:PORT"),
        (["--target", "tcp://x:1", "--step-s", "0"], None, "--step-s must be a positive number, got 0"),
        (["--target", "tcp://x:1", "--start-rps", "9", "--max-rps", "5"], None, "--start-rps 9 is above --max-rps 5"),
        (["--target", "tcp://x:1", "--shape", "/nonexistent.json"], None, "--shape /nonexistent.json: No such file"),
        (["--target", "tcp://x:1"], {"SHADOWSCALE_LOADGEN_SHAPE": '{"seed": "x"}'}, "$SHADOWSCALE_LOADGEN_SHAPE"),
        (["--target", "tcp://x:1", "--ssl-cafile", "/nonexistent/ca.crt"], None, "--ssl-cafile /nonexistent"),
        (
            ["--target", "tcp://x:1", "--security-protocol", "SASL_SSL", "--sasl-mechanism", "PLAIN"],
            None,
            "needs --sasl-mechanism and $SHADOWSCALE_LOADGEN_SASL_USERNAME",
        ),
    ]
    for args, extra, why in cases:
        code, err = await loadgen(*BASE, *args, env={**os.environ, **(extra or {})})
        assert code == 2 and why in err, (args, err)
    code, err = await loadgen("--target", "tcp://x:1", "--model", "Bad Name", "--slo-ms", "1", "--bootstrap", "h:1")
    assert code == 2 and "--trial-id is missing" in err
    code, err = await loadgen(*BASE[:2], "--trial-id", "Bad_", *BASE[4:], "--target", "tcp://x:1")
    assert code == 2 and "--trial-id 'Bad_' is not a valid Kubernetes name" in err


@pytest.mark.asyncio
async def test_an_unreachable_broker_exits_1_after_printing_the_result() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shadowscale.agent.profiling.loadgen", *BASE, "--target", f"tcp://127.0.0.1:{free_port()}",
        "--connect-timeout-s", "0.3", "--publish-timeout-s", "1.5",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 1
    printed = json.loads(out)
    assert printed["status"] == "failed" and printed["trial"] == "t-1" and "cannot reach the target" in printed["error"]
    assert "cannot publish the result of t-1 to shadowscale.trials" in err.decode()


def test_tls_and_sasl_come_from_flags_and_the_credentials_from_the_environment(tmp_path: Any) -> None:
    import argparse

    from shadowscale.agent.profiling.loadgen import add_arguments, invocation

    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    p = argparse.ArgumentParser()
    add_arguments(p)
    tls = ["--security-protocol", "SASL_SSL", "--sasl-mechanism", "SCRAM-SHA-512", "--ssl-cafile", str(ca)]
    args = p.parse_args([*BASE, "--target", "tcp://x:1", *tls])
    env = {"SHADOWSCALE_LOADGEN_SASL_USERNAME": "loadgen", "SHADOWSCALE_LOADGEN_SASL_PASSWORD": "s3cret"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        k = invocation(args).kafka
    assert (k.security_protocol, k.sasl_mechanism, k.ssl_cafile) == ("SASL_SSL", "SCRAM-SHA-512", str(ca))
    assert (k.sasl_username, k.sasl_password) == ("loadgen", "s3cret")


def test_fit_shape_keeps_the_most_recent_gaps_within_the_cap_and_refuses_oversized_payloads() -> None:
    """Mutation: keeping the *first* gaps (``gaps[:lo]``) fails the "most recent" check; dropping the cap check
    lets a 3 KB shape through a 2 KB cap."""
    gaps = tuple(0.001 * (1 + (k % 7)) + 1e-9 for k in range(1000))
    fitted = lg.fit_shape(lg.RequestShape(gaps=gaps), max_bytes=2048)
    size = len(lg.shape_json(fitted).encode())
    assert size <= 2048 and 100 < len(fitted.gaps) < 1000
    assert fitted.gaps == pytest.approx(gaps[-len(fitted.gaps) :], abs=1e-6)
    small = lg.RequestShape(gaps=(0.5, 0.25))
    assert lg.fit_shape(small) == small  # fits: unchanged
    with pytest.raises(ValueError, match=r"without its gaps .* over the 2048-byte cap"):
        lg.fit_shape(lg.RequestShape(payloads=("x" * 3000,), gaps=gaps), max_bytes=2048)


@pytest.mark.asyncio
async def test_warm_up_load_is_sent_first_and_never_measured() -> None:
    """The first step is the warm-up (at the first rate, for ``warmup_s``) and its dreadful p99 (a cold server) is
    not part of the search. Mutation: skipping the warm-up makes the cold first step break the SLO at the first
    rate and the capacity 0."""
    calls: list[tuple[float, float]] = []

    class Cold:
        name = "cold"

        async def reachable(self, timeout_s: float) -> str | None:
            return None

        async def step(self, rate: float, duration_s: float, drain_s: float, offsets: Any) -> Step:
            calls.append((rate, duration_s))
            p99 = 5000.0 if len(calls) == 1 else (20.0 if rate <= 100 else 500.0)
            return Step(rate, len(offsets), len(offsets), p99)

        async def close(self) -> None:
            return None

    plan = LoadPlan(step_s=0.5, start_rps=25, max_rps=400, bisect_steps=0, warmup_s=3.0)
    cap = await lg.run_load(Cold(), 100.0, plan, RequestShape())
    assert calls[0] == (25, 3.0) and cap.rate == 100 and all(s.rate != 25 or s.p99_ms < 100 for s in cap.steps)
    assert len(cap.steps) == len(calls) - 1


@pytest_asyncio.fixture
async def llm_server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A real streaming OpenAI-compatible completions server: time to first token 5 ms plus 0.05 ms per prompt
    token, then one SSE chunk per output token, each taking 4 ms × (1 + streams in flight / 2): decoding slows as
    the batch grows, as continuous batching does, so time per output token has a capacity."""
    requests: list[dict[str, Any]] = []
    active = 0

    async def completions(request: web.Request) -> web.StreamResponse:
        nonlocal active
        body = json.loads(await request.read())
        requests.append(body)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        active += 1
        try:
            await asyncio.sleep(0.005 + 0.00005 * len(body["prompt"].split()))
            for k in range(int(body["max_tokens"])):
                if k:
                    await asyncio.sleep(0.004 * (1 + active / 2))
                chunk = {"choices": [{"index": 0, "text": f" t{k}"}]}
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
        finally:
            active -= 1
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"openai+http://127.0.0.1:{port}", requests
    finally:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_llm_target_measures_ttft_tpot_and_tokens_per_second_with_the_observed_mix(
    llm_server: tuple[str, list[dict[str, Any]]],
) -> None:
    """Streamed completions with the observed prompt/output mix (pairs drawn together), judged on TTFT and TPOT:
    the capacity is where time per output token passes its SLO, and the result carries TTFT, TPOT and tokens/s at
    that rate. Mutation: counting one token per request instead of per chunk makes tokens/s 10× too low."""
    url, requests = llm_server
    shape = RequestShape(
        prompt_tokens=(100, 400),
        output_tokens=(8, 12),
        llm_model="llama",
        ttft_slo_ms=500.0,
        tpot_slo_ms=100.0,
    )
    target = lg.target_from_url(url, shape)
    assert isinstance(target, lg.LlmTarget)
    plan = LoadPlan(step_s=0.5, start_rps=20, max_rps=2560, bisect_steps=1, connect_timeout_s=5, warmup_s=0.2)
    ev = await measure_trial(target, trial_id="t-llm", model="llama", slo_ms=1000, plan=plan, shape=shape)
    assert ev.status == "measured", ev.error
    assert 20 <= ev.throughput_rps < 2560  # TPOT grows with the streams in flight: a finite capacity
    at = next(s for s in ev.steps if s.rate == ev.throughput_rps)
    assert at.ttft_p99_ms is not None and 5 <= at.ttft_p99_ms <= 500
    assert at.tpot_p99_ms is not None and 4 <= at.tpot_p99_ms <= 100
    # >= 2 tokens per request of the rate (each streams 8-12): loose enough for late answers on a loaded machine,
    # tight enough that one token per request (the mutation) fails
    assert at.tokens_per_s is not None and at.tokens_per_s >= 0.25 * 8 * ev.throughput_rps
    pairs = {(len(r["prompt"].split()), r["max_tokens"]) for r in requests if r["max_tokens"] > 1}
    assert pairs == {(100, 8), (400, 12)}  # the observed pairs, never (100, 12)
    assert all(r["stream"] is True and r["model"] == "llama" for r in requests)
    result = to_trial_result(decode_trial_result(encode(ev)))  # type: ignore[arg-type]
    assert {"ttft_p99_ms", "tpot_p99_ms", "tokens_per_s"} <= set(result.details)


def test_llm_steps_are_judged_on_ttft_and_tpot() -> None:
    shape = RequestShape(ttft_slo_ms=100.0, tpot_slo_ms=10.0)
    ok = lg.llm_step(10, 2, [(0.05, 0.005, 10, 0.1), (0.09, 0.009, 10, 0.2)], 1.0, shape, 500.0)
    assert ok.p99_ms == pytest.approx(0.9 * 500) and ok.tokens_per_s == 20
    slow_tokens = lg.llm_step(10, 2, [(0.01, 0.02, 10, 0.3), (0.01, 0.001, 10, 0.1)], 1.0, shape, 500.0)
    assert slow_tokens.p99_ms == pytest.approx(2 * 500)  # TPOT twice its SLO breaks the trial's SLO
    lost = lg.llm_step(10, 3, [(0.01, 0.001, 10, 0.1)], 1.0, shape, 500.0)
    assert lost.p99_ms == math.inf and lost.answered == 1
