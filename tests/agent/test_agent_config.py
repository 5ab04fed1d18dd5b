"""Configuration: YAML plus environment overrides, validated with messages that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from shadowscale.agent.config import ConfigError, load_config

GOOD = """
policy: hpa
models:
  - name: resnet50
    capacity_rps: 180
    max_replicas: 8
kafka:
  bootstrap: kafka:9092
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agent.yaml"
    p.write_text(text)
    return p


def test_defaults_and_env_overrides(tmp_path: Path) -> None:
    env = {
        "SHADOWSCALE_AGENT__KAFKA__BOOTSTRAP": "10.0.0.1:9093",
        "SHADOWSCALE_AGENT__DRY_RUN": "true",
        "SHADOWSCALE_AGENT__GUARDS__MAX_STEP": "3",
        "SHADOWSCALE_DATA": "/elsewhere",  # not ours: ignored
    }
    cfg = load_config(write(tmp_path, GOOD), env)
    assert cfg.policy == "hpa" and cfg.dry_run is True and cfg.guards.max_step == 3
    assert cfg.kafka.bootstrap == "10.0.0.1:9093" and cfg.kafka.topics.traffic == "shadowscale.traffic"
    m = cfg.models[0]
    assert (m.name, m.min_replicas, m.max_replicas, m.capacity_rps) == ("resnet50", 1, 8, 180.0)


@pytest.mark.parametrize(
    ("text", "env", "words"),
    [
        ("policy: kpa\n", {}, "missing required field `models`"),
        (GOOD + "dry_run: maybe\n", {}, "Expected `bool`, got `str` - at `$.dry_run`"),
        (GOOD + "polcy: hpa\n", {}, "unknown field `polcy`"),
        (GOOD.replace("180", "-1"), {}, "at `$.models[0].capacity_rps`"),
        (GOOD.replace("policy: hpa", "policy: oracle"), {}, "simulator only"),
        (GOOD.replace("policy: hpa", "policy: magic"), {}, "valid policies: hpa, keda, kpa"),
        (
            GOOD.replace("max_replicas: 8", "min_replicas: 9\n    max_replicas: 8"),
            {},
            "min_replicas 9 > max_replicas 8",
        ),
        (GOOD, {"SHADOWSCALE_AGENT__KAFKA__MAX_BATCH": "lots"}, "SHADOWSCALE_AGENT__KAFKA__MAX_BATCH"),
        (GOOD, {"SHADOWSCALE_AGENT__KAFKA__MAX_BATCH": "lots"}, "at `$.kafka.max_batch`"),
        ("- a\n- b\n", {}, "expected a mapping"),
        ("models: [\n", {}, "not valid YAML"),
    ],
)
def test_errors_name_the_field(tmp_path: Path, text: str, env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), env)
    assert words in str(e.value)
    assert "agent.yaml" in str(e.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml", {})
