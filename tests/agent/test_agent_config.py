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


@pytest.mark.parametrize("secret", ["123456", "on", "0x1F", "null", "pass #word", "[x", "~", "", " padded "])
def test_secrets_from_the_environment_arrive_verbatim(tmp_path: Path, secret: str) -> None:
    """Catches: parsing environment overrides as YAML — SASL passwords 123456, on, 0x1F stopped the agent, null
    became None, `pass #word` became `pass`, and `[x` printed the secret in the error."""
    env = {"SHADOWSCALE_AGENT__KAFKA__SASL_PASSWORD": secret, "SHADOWSCALE_AGENT__KAFKA__SASL_USERNAME": "007"}
    cfg = load_config(write(tmp_path, GOOD), env)
    assert cfg.kafka.sasl_password == secret and cfg.kafka.sasl_username == "007"


def test_typed_and_structured_overrides_still_convert_without_echoing_the_value(tmp_path: Path) -> None:
    env = {
        "SHADOWSCALE_AGENT__KAFKA__MAX_BATCH": "500",
        "SHADOWSCALE_AGENT__POLICY_KNOB": "0.6",
        "SHADOWSCALE_AGENT__HTTP__ENABLED": "false",
        "SHADOWSCALE_AGENT__ACTUATOR__KUBERNETES__RETRY_DELAYS_S": "[0.1, 0.2]",
    }
    cfg = load_config(write(tmp_path, GOOD), env)
    assert cfg.kafka.max_batch == 500 and cfg.policy_knob == 0.6 and cfg.http.enabled is False
    assert cfg.actuator.kubernetes.retry_delays_s == (0.1, 0.2)
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, GOOD), {"SHADOWSCALE_AGENT__ACTUATOR__KUBERNETES__RETRY_DELAYS_S": "[hunter2"})
    assert "JSON list" in str(e.value) and "hunter2" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, GOOD), {"SHADOWSCALE_AGENT__KAFKA__MAX_BATCH": "hunter2"})
    assert "hunter2" not in str(e.value) and "$.kafka.max_batch" in str(e.value)


def test_mutual_tls_needs_cert_and_key_over_ssl(tmp_path: Path) -> None:
    """Mutual TLS to Kafka: a client certificate and key, only over SSL/SASL_SSL; a missing file fails clearly."""
    base = GOOD + "  security_protocol: SSL\n"
    with pytest.raises(ConfigError, match="go together"):
        load_config(write(tmp_path, base + "  ssl_certfile: /c.pem\n"), {})
    with pytest.raises(ConfigError, match=r"needs kafka\.security_protocol SSL"):
        load_config(write(tmp_path, GOOD + "  ssl_certfile: /c.pem\n  ssl_keyfile: /k.pem\n"), {})
    cfg = load_config(write(tmp_path, base + "  ssl_certfile: /nope/c.pem\n  ssl_keyfile: /nope/k.pem\n"), {})
    from shadowscale.agent.kafka import KafkaSink, KafkaUnavailable

    with pytest.raises(KafkaUnavailable, match=r"cannot load the client certificate /nope/c\.pem"):
        KafkaSink(cfg.kafka)


def test_the_agents_planner_defaults_are_the_benchmarked_planners() -> None:
    """``profiling.planner`` left out gives the planner ``bench profiler`` measures (every field it exposes has
    the planner's default, e.g. the stopping rules' minimum trials). Mutation caught: a default changed on one
    side only (``PlannerConfig.min_trials`` 6 while the planner's is 3, or ``prior_trials`` 0)."""
    from dataclasses import fields

    from shadowscale.agent.config import PlannerConfig, ProfilingConfig, planner_settings
    from shadowscale.policies.profiling.planner import PlannerSettings

    assert planner_settings(ProfilingConfig()) == PlannerSettings()
    exposed = set(PlannerConfig.__struct_fields__)
    assert {"min_trials", "warm_min_trials", "prior_trials"} <= exposed <= {f.name for f in fields(PlannerSettings)}


def test_rollout_defaults_are_the_policy_defaults() -> None:
    """``rollout:`` mirrors :class:`RolloutSettings` field for field. Catches: a default changed on one side only
    (the agent would roll out under other limits than the policy documents)."""
    from shadowscale.agent.config import parse_config, rollout_settings
    from shadowscale.policies.profiling.rollout import RolloutSettings

    cfg = parse_config({"models": [{"name": "m", "capacity_rps": 1.0}]}, source="test")
    assert rollout_settings(cfg) == RolloutSettings()


SPECS = GOOD.replace("policy: hpa", "policy: shadowscale").replace(
    "    max_replicas: 8\n",
    "    max_replicas: 8\n    slo_ms: 100\n    specs:\n"
    "      - {name: quarter, gpu_fraction: 0.25, capacity_rps: 50}\n"
    "      - {name: half, gpu_fraction: 0.5, capacity_rps: 95}\n",
)


def test_alternative_specs_are_read(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, SPECS), {})
    assert [(o.name, o.gpu_fraction, o.capacity_rps) for o in cfg.models[0].specs] == [
        ("quarter", 0.25, 50.0),
        ("half", 0.5, 95.0),
    ]


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (("policy: shadowscale", "policy: kpa"), "specs are recommended by policy shadowscale"),
        (("    slo_ms: 100\n", ""), "specs need slo_ms"),
        (("name: half", "name: quarter"), "specs named twice: quarter"),
        (("name: half", "name: 'half life'"), "at `$.models[0].specs[1].name`"),
        (("gpu_fraction: 0.25", "gpu_fraction: 0"), "at `$.models[0].specs[0].gpu_fraction`"),
        (("capacity_rps: 50", "capacity_rps: .inf"), "specs.quarter.capacity_rps must be finite"),
        (("capacity_rps: 95", "capacity_rps: -1"), "at `$.models[0].specs[1].capacity_rps`"),
        (("capacity_rps: 95", "capacity_rps: 95, latency_ms: 9"), "unknown field `latency_ms`"),
        (("gpu_fraction: 0.5, capacity_rps: 95", "gpu_fraction: 1, capacity_rps: 180"), "is the configured spec"),
    ],
)
def test_bad_specs_are_named(tmp_path: Path, edit: tuple[str, str], words: str) -> None:
    """Catches: each check of a model's alternative specs removed (policy, SLO, names, values)."""
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, SPECS.replace(*edit)), {})
    assert words in str(e.value)
