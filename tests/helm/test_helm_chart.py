"""The Helm chart: lints, renders for default and non-default values, every manifest passes kubernetes-validate
(strict), the agent's configuration renders into something the agent accepts, and bad values fail with the schema's
message. Uses helm-python-sdk (Helm's library, no helm binary) and kubernetes-validate (bundled schemas)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import parse_config

helm = pytest.importorskip("helm_python")
kv = pytest.importorskip("kubernetes_validate")

CHART = Path(__file__).resolve().parents[2] / "helm" / "shadowscale"
K8S_VERSION = "1.30.0"
REQUIRED: dict[str, Any] = {"kafka": {"bootstrap": "kafka.kafka:9092"}}

FULL: dict[str, Any] = {
    "kafka": {
        "bootstrap": "b-1.kafka:9096,b-2.kafka:9096",
        "tls": {"enabled": True, "caSecret": "kafka-ca"},
        "sasl": {"enabled": True, "mechanism": "SCRAM-SHA-512", "secret": "kafka-user"},
        "createTopics": True,
    },
    "agent": {
        "replicas": 3,
        "policy": "hpa",
        "policyKnob": 0.6,
        "dryRun": False,
        "models": [
            {"name": "resnet50", "namespace": "serving", "capacityRps": 120, "minReplicas": 0, "maxReplicas": 20},
            {
                "name": "llama",
                "namespace": "serving",
                "capacityRps": 4.5,
                "gpuFraction": 0.5,
                "sloMs": 8000,
                "coldStartS": 120,
            },
        ],
        "kubernetes": {"namespace": "serving"},
        "guards": {"maxStep": 2, "gpuBudget": 16},
        "extraConfig": {"trigger": {"headroom": 0.9}},
    },
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "gpuExporter": {"interval": 0.5, "runtimeClassName": "nvidia"},
    "imagePullSecrets": [{"name": "regcred"}],
}


def render(values: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    with helm.Chart.load(str(CHART)) as ch:
        out: dict[str, str] = ch.render(values, name="ss", namespace="autoscaling")
    docs: dict[str, list[dict[str, Any]]] = {}
    for path, text in out.items():
        if path.endswith(".txt"):
            continue
        docs[path.split("/")[-1]] = [d for d in yaml.safe_load_all(text) if d]
    return docs


def manifests(docs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [d for ds in docs.values() for d in ds]


def by_kind(docs: dict[str, list[dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [d for d in manifests(docs) if d["kind"] == kind]


def agent_config(docs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    cfg: dict[str, Any] = yaml.safe_load(by_kind(docs, "ConfigMap")[0]["data"]["agent.yaml"])
    return cfg


@pytest.mark.parametrize("values", [REQUIRED, FULL], ids=["default", "full"])
def test_chart_lints_strictly(values: dict[str, Any]) -> None:
    report = helm.lint(str(CHART), values, strict=True, namespace="autoscaling")
    assert not report["errors"], report


@pytest.mark.parametrize("values", [REQUIRED, FULL], ids=["default", "full"])
def test_every_manifest_passes_kubernetes_validate(values: dict[str, Any]) -> None:
    docs = render(values)
    checked = 0
    for m in manifests(docs):
        if m["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: no bundled schema
        kv.validate(m, K8S_VERSION, strict=True)
        checked += 1
    assert checked >= 10


def test_default_values_render_the_agent_and_the_exporter() -> None:
    docs = render(REQUIRED)
    kinds = sorted(d["kind"] for d in manifests(docs))
    assert kinds == sorted(
        [
            *("ConfigMap", "ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding", "DaemonSet"),
            *(
                "Deployment",
                "PodDisruptionBudget",
                "Role",
                "RoleBinding",
                "Service",
                "ServiceAccount",
                "ServiceAccount",
            ),
        ]
    )
    (dep,) = by_kind(docs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["args"] == ["agent", "--config", "/etc/shadowscale/agent.yaml"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    cfg = parse_config(agent_config(docs), source="rendered agent.yaml")  # the agent accepts it
    assert cfg.leader_election.enabled and cfg.leader_election.namespace == "autoscaling"
    assert cfg.dry_run and cfg.actuator.kind == "kubernetes" and cfg.kafka.bootstrap == "kafka.kafka:9092"
    (ds,) = by_kind(docs, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"} and spec["hostPID"] is True
    args = spec["containers"][0]["args"]
    assert args[:6] == ["produce", "gpu", "--bootstrap", "kafka.kafka:9092", "--interval", "1"]
    assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_rbac_has_only_the_needed_verbs() -> None:
    docs = render(REQUIRED)
    agent_role = next(r for r in by_kind(docs, "ClusterRole") if not r["metadata"]["name"].endswith("exporter"))
    rules = {
        (g, r): sorted(rule["verbs"])
        for rule in agent_role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert rules[("apps", "deployments/scale")] == ["get", "patch", "update"]
    assert rules[("apps", "deployments")] == ["get", "list", "watch"]
    assert rules[("", "pods/binding")] == ["create"] and rules[("policy", "pods/eviction")] == ["create"]
    assert all("delete" not in v and "*" not in v for v in rules.values())
    assert all("*" not in rule["resources"] for rule in agent_role["rules"])
    lease = next(r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("leader-election"))
    assert {v for rule in lease["rules"] for v in rule["verbs"]} == {"create", "get", "update", "patch"}


def test_full_values_tls_sasl_namespaced_rbac_and_service_monitor() -> None:
    docs = render(FULL)
    cfg_raw = agent_config(docs)
    env = {"SHADOWSCALE_AGENT__KAFKA__SASL_USERNAME": "u", "SHADOWSCALE_AGENT__KAFKA__SASL_PASSWORD": "p"}
    from agent.config import apply_env

    apply_env(cfg_raw, env)
    cfg = parse_config(cfg_raw)
    assert cfg.kafka.security_protocol == "SASL_SSL" and cfg.kafka.ssl_cafile == "/etc/shadowscale-kafka-ca/ca.crt"
    assert cfg.policy == "hpa" and cfg.policy_knob == 0.6 and not cfg.dry_run and cfg.trigger.headroom == 0.9
    assert [m.min_replicas for m in cfg.models] == [0, 1] and cfg.guards.gpu_budget == 16
    assert [(m.slo_ms, m.cold_start_s) for m in cfg.models] == [(None, 60.0), (8000, 120)]
    (dep,) = by_kind(docs, "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    secret_env = {
        e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert secret_env["SHADOWSCALE_AGENT__KAFKA__SASL_PASSWORD"] == {"name": "kafka-user", "key": "password"}
    assert any(v.get("secret", {}).get("secretName") == "kafka-ca" for v in dep["spec"]["template"]["spec"]["volumes"])
    assert dep["spec"]["replicas"] == 3
    roles = {r["kind"] for r in manifests(docs) if r["kind"] in ("Role", "ClusterRole")}
    assert roles == {"Role", "ClusterRole"}  # agent: namespaced Role; exporter: ClusterRole (pods on its node)
    agent_role = next(r for r in by_kind(docs, "Role") if r["metadata"]["name"] == "ss-shadowscale")
    assert agent_role["metadata"]["namespace"] == "serving"
    assert len(by_kind(docs, "ServiceMonitor")) == 1
    (ds,) = by_kind(docs, "DaemonSet")
    assert ds["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia"


def test_exporter_can_be_disabled() -> None:
    docs = render({**REQUIRED, "gpuExporter": {"enabled": False}})
    assert not by_kind(docs, "DaemonSet")
    assert all(not m["metadata"]["name"].endswith("gpu-exporter") for m in manifests(docs))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "/kafka/bootstrap"),
        ({"kafka": {"bootstrap": "no-port"}}, "does not match pattern"),
        ({**REQUIRED, "gpuExporter": {"interval": -1}}, "/gpuExporter/interval"),
        ({**REQUIRED, "agent": {"policy": "oracle"}}, "/agent/policy"),
        ({**REQUIRED, "agent": {"guards": {"scaleDownCooldownS": -5}}}, "/agent/guards/scaleDownCooldownS"),
        ({**REQUIRED, "agent": {"models": []}}, "/agent/models"),
        ({"kafka": {"bootstrap": "k:9092", "sasl": {"enabled": True}}}, "/kafka/sasl/secret"),
    ],
    ids=[
        "missing-kafka",
        "bad-kafka",
        "negative-interval",
        "unknown-policy",
        "negative-cooldown",
        "no-models",
        "sasl-no-secret",
    ],
)
def test_bad_values_fail_with_the_schema_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError) as e, helm.Chart.load(str(CHART)) as ch:
        ch.render(values, name="ss", namespace="autoscaling")
    assert "schema" in str(e.value) and message in str(e.value), str(e.value)


def test_ci_values_file_lints() -> None:
    values = yaml.safe_load((CHART / "ci" / "default-values.yaml").read_text())
    assert not helm.lint(str(CHART), values, strict=True)["errors"]
