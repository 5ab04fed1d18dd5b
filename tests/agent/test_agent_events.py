"""The edge decoder: valid events pass, every kind of bad input becomes a Rejected with a reason, nothing raises."""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowscale.agent.events import (
    GPU_V1,
    NAME_RE,
    NAMESPACE_RE,
    TRAFFIC_V1,
    DeadLetter,
    Decoder,
    GpuEvent,
    Rejected,
    TrafficEvent,
    dead_letter,
    encode,
)

NOW = 1_700_000_000.0


def good(**over: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "schema": TRAFFIC_V1,
        "model": "resnet50",
        "namespace": "serving",
        "pod": "resnet50-7f9c-abcde",
        "event_time": NOW - 0.5,
        "window_s": 1.0,
        "arrivals": 120,
        "completions": 118,
        "errors": 1,
        "latency_p50_ms": 12.0,
        "latency_p95_ms": 30.0,
        "latency_p99_ms": 45.5,
        "queue_depth": 3,
        "batch_size_mean": 4.2,
        "busy_s": 0.8,
        "concurrency_s": 2.5,
    }
    ev.update(over)
    return ev


def dumps(obj: object) -> bytes:
    return json.dumps(obj).encode()


DEC = Decoder(["resnet50", "bert"])


def test_valid_event_decodes_with_defaults() -> None:
    ev = DEC.traffic(dumps(good()), NOW)
    assert isinstance(ev, TrafficEvent)
    assert ev.model == "resnet50" and ev.arrivals == 120 and ev.ready_s is None and ev.shadow_trial is None
    # unknown fields are ignored (a producer may add optional fields within a version)
    assert isinstance(DEC.traffic(dumps(good(new_field=[1, 2])), NOW), TrafficEvent)


def test_round_trip_through_encode() -> None:
    ev = DEC.traffic(dumps(good(shadow_trial="trial-1", ready_s=0.5)), NOW)
    assert isinstance(ev, TrafficEvent)
    assert DEC.traffic(encode(ev), NOW) == ev


SCOPED = Decoder({"resnet50": "serving", "bert": "default"}, max_rps=1000.0, max_concurrency=100.0)


@pytest.mark.parametrize(
    ("over", "kind", "words"),
    [
        ({"concurrency_s": 1e12}, "invalid", "ingest.max_concurrency"),
        ({"concurrency_s": 201.0, "window_s": 2.0}, "invalid", "more than 100 requests in flight"),
        ({"arrivals": 10**9, "completions": 10**9}, "invalid", "ingest.max_rps"),
        ({"arrivals": 1500, "window_s": 1.0, "completions": 100}, "invalid", "arrivals 1500 over 1 s"),
        ({"completions": 1500, "window_s": 1.0, "arrivals": 100}, "invalid", "completions 1500"),
        ({"queue_depth": 101}, "invalid", "queue_depth 101"),
        ({"namespace": "default"}, "namespace", "managed in namespace 'serving', not 'default'"),
        ({"namespace": "other"}, "namespace", "not 'other'"),
    ],
)
def test_fields_are_bounded_against_each_other_and_the_namespace_is_checked(
    over: dict[str, Any], kind: str, words: str
) -> None:
    """Catches: concurrency_s (up to 1e12) or arrivals (up to 1e9) taken at face value whatever the window (one such
    event sent KPA from 1 to 50 replicas), and an event for ``resnet50`` from another namespace counted as ours."""
    ev = good(namespace="serving", window_s=2.0)
    ev.update(over)
    out = SCOPED.traffic(dumps(ev), NOW)
    assert isinstance(out, Rejected), out
    assert out.kind == kind and words in out.reason
    # the same event within the bounds, in the model's own namespace, is accepted
    assert isinstance(SCOPED.traffic(dumps(good(namespace="serving", window_s=2.0)), NOW), TrafficEvent)


@pytest.mark.parametrize(
    ("raw", "kind", "words"),
    [
        (b"\xff\xfe\x00garbage", "malformed", "not JSON"),
        (b"", "malformed", "not JSON"),
        (None, "empty", "empty"),
        (b"[1, 2, 3]", "invalid", "Expected `object`"),
        (b'{"schema": "shadowscale.traffic/v1"', "malformed", "not JSON"),
        (dumps({k: v for k, v in good().items() if k != "schema"}), "invalid", "`schema`"),
        (dumps(good(schema="shadowscale.traffic/v2")), "invalid", "schema"),
        (dumps({k: v for k, v in good().items() if k != "model"}), "invalid", "missing required field `model`"),
        (dumps(good(arrivals="12")), "invalid", "Expected `int`, got `str`"),
        (dumps(good(arrivals=1.5)), "invalid", "Expected `int`, got `float`"),
        (dumps(good(arrivals=-1)), "invalid", ">= 0"),
        (dumps(good(arrivals=10**30)), "invalid", "<= 1000000000"),
        (dumps(good(window_s=0)), "invalid", "> 0.0"),
        (b'{"schema": "shadowscale.traffic/v1", "model": "bert", "pod": "p", "event_time": 1e999}', "invalid", "range"),
        (dumps(good(latency_p99_ms=1e300)), "invalid", "<="),
        (dumps(good(model="no such model")), "invalid", "not a valid Kubernetes name"),
        (dumps(good(pod="Pod/1")), "invalid", "not a valid Kubernetes name"),
        (dumps(good(namespace="Serving")), "invalid", "not a valid Kubernetes namespace"),
        (dumps(good(model="gpt-9")), "unknown_model", "unknown model 'gpt-9'"),
        (dumps(good(event_time=NOW + 3600)), "invalid", "in the future"),
        (dumps(good(event_time=NOW - 86_000)), "invalid", "old"),
        (dumps(good(latency_p50_ms=50.0)), "invalid", "p50 <= p95 <= p99"),
        (dumps(good(errors=500)), "invalid", "errors exceed completions"),
        (dumps(good(busy_s=5.0)), "invalid", "busy_s"),
        (dumps(good(ready_s=2.0)), "invalid", "ready_s"),
    ],
)
def test_bad_input_is_rejected_with_a_reason(raw: bytes | None, kind: str, words: str) -> None:
    out = DEC.traffic(raw, NOW)
    assert isinstance(out, Rejected), out
    assert out.kind == kind
    assert words in out.reason


def test_nan_is_not_json_and_inf_is_out_of_range() -> None:
    assert isinstance(DEC.traffic(dumps(good()).replace(b"12.0", b"NaN"), NOW), Rejected)
    assert isinstance(DEC.traffic(dumps(good()).replace(b"12.0", b"Infinity"), NOW), Rejected)
    # Python's json writes NaN when asked: still rejected
    assert isinstance(DEC.traffic(json.dumps(good(busy_s=math.nan)).encode(), NOW), Rejected)


def test_gpu_event() -> None:
    raw = {
        "schema": GPU_V1,
        "node": "gpu-node-1",
        "gpu_uuid": "GPU-8f1c2d3e",
        "gpu_index": 0,
        "event_time": NOW,
        "utilization": 0.93,
        "memory_used_bytes": 30 * 2**30,
        "memory_total_bytes": 80 * 2**30,
        "pods": [{"namespace": "serving", "pod": "resnet50-7f9c-abcde", "model": "resnet50"}],
    }
    ev = DEC.gpu(dumps(raw), NOW)
    assert isinstance(ev, GpuEvent) and ev.pods[0].model == "resnet50"
    bad = DEC.gpu(dumps({**raw, "memory_used_bytes": 90 * 2**30}), NOW)
    assert isinstance(bad, Rejected) and "memory" in bad.reason
    bad = DEC.gpu(dumps({**raw, "utilization": 93}), NOW)
    assert isinstance(bad, Rejected) and "<= 1.0" in bad.reason


def test_dead_letter_record_keeps_the_payload() -> None:
    rec = dead_letter("a1", NOW, "t", 2, 41, b"key", b"x" * 70_000, "why")
    back = msgspec.json.decode(encode(rec), type=DeadLetter)
    assert back.truncated and back.offset == 41 and back.key == "key" and back.reason == "why"


# -- fuzzing -----------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_garbage_bytes_never_raise(raw: bytes) -> None:
    out = DEC.traffic(raw, NOW)
    assert isinstance(out, (TrafficEvent, Rejected))
    assert isinstance(DEC.gpu(raw, NOW), (GpuEvent, Rejected))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    field=st.sampled_from(sorted(good())),
    value=json_values,
    drop=st.booleans(),
)
def test_fuzz_one_field_changed(field: str, value: object, drop: bool) -> None:
    ev = good()
    if drop:
        del ev[field]
    else:
        ev[field] = value
    raw = json.dumps(ev, allow_nan=True).encode()
    out = DEC.traffic(raw, NOW)
    assert isinstance(out, (TrafficEvent, Rejected))
    if isinstance(out, Rejected):
        assert out.reason and out.kind
    else:
        # whatever got through satisfies the documented invariants
        assert out.arrivals >= 0 and out.window_s > 0 and math.isfinite(out.event_time)
        assert out.latency_p50_ms <= out.latency_p95_ms <= out.latency_p99_ms
        assert out.errors <= out.completions
        assert out.event_time <= NOW + DEC.max_future_s
        assert (
            NAME_RE.fullmatch(out.pod)
            and NAMESPACE_RE.fullmatch(out.namespace)
            and out.model in (DEC.known_models or frozenset())
        )


@settings(max_examples=200, deadline=None)
@given(
    arrivals=st.integers(min_value=-5, max_value=2**70),
    busy=st.floats(allow_nan=True, allow_infinity=True),
    t=st.floats(min_value=-1e12, max_value=1e12, allow_nan=False),
)
def test_fuzz_numbers(arrivals: int, busy: float, t: float) -> None:
    raw = json.dumps(good(arrivals=arrivals, completions=max(arrivals, 0), busy_s=busy, event_time=t)).encode()
    out = DEC.traffic(raw, NOW)
    ok = 0 <= arrivals <= 1_000_000_000 and 0 <= busy <= 1.01 and NOW - 3600 <= t <= NOW + 60
    assert isinstance(out, TrafficEvent) == ok, out


def test_a_bad_shadow_trial_name_is_rejected_even_after_the_names_were_seen() -> None:
    """The fast path skips checks for names already seen valid; a shadow's trial id is checked every time."""
    dec = Decoder()
    assert isinstance(dec.traffic(dumps(good()), NOW), TrafficEvent)  # pod, model, namespace now known good
    bad = dec.traffic(dumps(good(shadow_trial="trial 1!")), NOW)
    assert isinstance(bad, Rejected) and "'trial 1!' is not a valid Kubernetes name" in bad.reason
