"""The commands: ``shadowscale agent`` (bad config -> exit 2; a real run with /metrics, /healthz, /readyz and a
clean SIGTERM) and ``shadowscale produce replay`` against the bundled broker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from shadowscale.agent.broker import LocalBroker, free_port
from shadowscale.agent.config import parse_config
from shadowscale.agent.events import TrafficEvent
from shadowscale.agent.kafka import KafkaSource
from shadowscale.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_bad_config_exits_2_with_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("policy: kpa\nmodels:\n  - name: m\n    capacity_rps: fast\n")
    assert main(["agent", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "shadowscale agent: error:" in err and "$.models[0].capacity_rps" in err and "Traceback" not in err
    assert main(["agent", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_check_validates_and_summarises(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("policy: hpa\nmodels:\n  - name: m\n    capacity_rps: 5\n")
    assert main(["agent", "--config", str(cfg), "--check"]) == 0
    assert "ok — policy hpa, 1 models, actuator simulated" in capsys.readouterr().out


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_agent_runs_serves_http_and_stops_on_sigterm(tmp_path: Path, broker: LocalBroker) -> None:
    port = free_port()
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        f"""
policy: kpa
models:
  - {{name: m1, capacity_rps: 10}}
kafka:
  bootstrap: {broker.bootstrap}
  group_id: cli-{time.monotonic_ns()}
  create_topics: true
  session_timeout_ms: 2000
  heartbeat_interval_ms: 500
  topics: {{traffic: cli-traffic, gpu: cli-gpu, decisions: cli-decisions, dead_letter: cli-dead}}
http: {{port: {port}}}
audit_file: {tmp_path / "audit.jsonl"}
"""
    )
    env = {**os.environ, "SHADOWSCALE_AGENT__AGENT_ID": "cli-agent"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shadowscale", "agent", "--config", str(cfg)],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the JSON log says when it listens
            lines.append(line)
            if '"agent started"' in line:
                break
        started = json.loads(lines[-1])
        assert started["identity"] == "cli-agent" and started["http_port"] == port and started["level"] == "info"
        status, text = http_get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200
        deadline = time.monotonic() + 20
        while http_get(f"http://127.0.0.1:{port}/readyz")[0] != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.1)
        status, text = http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert (
            "shadowscale_decision_latency_seconds_bucket" in text and 'shadowscale_actual_replicas{model="m1"}' in text
        )
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    stopped = [json.loads(x) for x in rest.splitlines() if '"agent stopped"' in x]
    assert stopped and stopped[0]["crashed"] == []
    audit = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert audit and audit[0]["model"] == "m1" and audit[0]["agent"] == "cli-agent"


def test_produce_replay_publishes_trace_events(broker: LocalBroker, capsys: pytest.CaptureFixture[str]) -> None:
    topic = f"replay-{time.monotonic_ns()}"
    code = main(
        [
            "produce",
            "replay",
            "--trace",
            "azure-llm-2023-conv",
            "--hours",
            "0.01",
            "--speed",
            "360",
            "--models",
            "1",
            "--pods",
            "2",
            "--bootstrap",
            broker.bootstrap,
            "--topic",
            topic,
            "--create-topic",
        ]
    )
    assert code == 0
    assert "published 72 events" in capsys.readouterr().err  # 36 one-second windows x 2 pods

    async def read() -> list[TrafficEvent]:
        import msgspec

        kafka = parse_config(
            {"models": [{"name": "x", "capacity_rps": 1}], "kafka": {"bootstrap": broker.bootstrap, "group_id": topic}}
        ).kafka
        src = KafkaSource(kafka, [topic])
        await src.start()
        out: list[TrafficEvent] = []
        try:
            deadline = time.monotonic() + 20
            while len(out) < 72 and time.monotonic() < deadline:
                for b in await src.poll(1000, 0.5):
                    out.extend(msgspec.json.decode(v or b"", type=TrafficEvent) for v in b.values)
        finally:
            await src.stop()
        return out

    events = asyncio.run(read())
    assert len(events) == 72 and {e.pod for e in events} == {"llm-conv-1", "llm-conv-2"}
    assert all(e.window_s == pytest.approx(1 / 360) for e in events)
    assert sum(e.arrivals for e in events) > 0


def test_produce_replay_bad_bootstrap(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["produce", "replay", "--trace", "mooncake", "--bootstrap", "nohost", "--hours", "0.01"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err
