"""``shadowscale bench agent`` end to end at a tiny scale: the JSON keys of issue 3, nothing lost, every step
reaching the actuator."""

from __future__ import annotations

import json

import pytest

from shadowscale.cli import main


def test_bench_agent_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "bench",
            "agent",
            "--json",
            "--steps",
            "5",
            "--models",
            "16",
            "--ingest-events",
            "2000",
            "--background",
            "500",
            "--step-interval",
            "0.02",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key, kind in {
        "ingest_events_per_s": float,
        "reaction_p50_ms": float,
        "reaction_p99_ms": float,
        "events_in": int,
        "events_processed": int,
        "events_dead_lettered": int,
        "events_lost": int,
        "events_duplicated": int,
        "events_uncommitted": int,
    }.items():
        assert isinstance(out[key], kind), key
    assert out["events_lost"] == 0 and out["steps_without_scale_call"] == 0
    # counted from offsets: everything the broker holds was delivered and committed
    assert out["events_in_log"] == out["events_produced"] and out["events_uncommitted"] == 0
    assert out["events_dead_lettered"] == 10  # one in 200 of the ingest events is malformed
    assert out["events_processed"] + out["events_dead_lettered"] == out["events_produced"]
    assert 0 < out["reaction_p50_ms"] <= out["reaction_p99_ms"] < 5000
