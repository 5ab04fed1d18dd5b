"""The Helm chart: lints, renders for default and non-default values, every manifest passes kubernetes-validate
(strict), the agent's configuration renders into something the agent accepts, and bad values fail with the schema's
message. Uses helm-python-sdk (Helm's library, no helm binary) and kubernetes-validate (bundled schemas)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from shadowscale.agent.config import model_profiling, parse_config, profiling_plans

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


SPACE: dict[str, Any] = {
    "slo_ms": 200,
    "dimensions": [
        {"name": "cpu", "levels": [1, 2, 4]},
        {"name": "batch", "levels": [1, 2, 4, 8], "log": True},
        {"name": "gpu_cores_pct", "levels": [25, 50, 100]},
    ],
}
LLAMA_SPACE: dict[str, Any] = {
    "slo_ms": 8000,
    "dimensions": [
        {"name": "gpu_cores_pct", "levels": [50, 100]},
        {"name": "threads", "range": [1, 8], "integer": True},
    ],
}
PROFILING: dict[str, Any] = {
    "kafka": {"bootstrap": "kafka.kafka:9092", "topics": {"trials": "ml.trials"}},
    "image": {"tag": "1.2.3"},
    "agent": {
        "models": [
            {"name": "resnet50", "namespace": "serving", "capacityRps": 120},
            {"name": "llama", "namespace": "llm", "capacityRps": 4.5, "sloMs": 8000},
            {"name": "bert", "namespace": "serving", "capacityRps": 30},
        ],
        "profiles": {"enabled": True, "drift": {"windowsToStale": 4}, "retrials": {"maxParallel": 2, "cooldownS": 600}},
        "profiling": {
            "enabled": True,
            "profileMissing": True,
            "space": SPACE,
            "models": {
                "resnet50": {
                    "deployment": "resnet50-v2",
                    "port": 8080,
                    "path": "/predict",
                    "protocol": "http",
                    "shape": {"sizes": [1200, 4800], "arrival": "poisson"},
                },
                "llama": {"space": LLAMA_SPACE, "port": 9000, "protocol": "tcp"},
                "bert": {"enabled": False},
            },
            "maxTrials": 3,
            "maxParallel": 2,
            "gpuShareCap": 1.5,
            "gpuShareDimension": "gpu_cores_pct",
            "gpuShareUnit": 0.01,
            "planner": {"budget": 25},
            "shadow": {"loadgenArgs": ["--verbose"], "load": {"maxRps": 500}},
        },
    },
}
PROFILING_ROLE = {("apps", "deployments"), ("batch", "jobs"), ("", "pods"), ("", "configmaps")}


def profiling(**changes: Any) -> dict[str, Any]:
    """PROFILING with ``changes`` merged into ``agent.profiling``."""
    return {**PROFILING, "agent": {**PROFILING["agent"], "profiling": {**PROFILING["agent"]["profiling"], **changes}}}


def rule_map(role: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
    return {
        (g, r): sorted(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
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
    (cm,) = [c for c in by_kind(docs, "ConfigMap") if "agent.yaml" in c["data"]]
    cfg: dict[str, Any] = yaml.safe_load(cm["data"]["agent.yaml"])
    return cfg


@pytest.mark.parametrize("values", [REQUIRED, FULL, PROFILING], ids=["default", "full", "profiling"])
def test_chart_lints_strictly(values: dict[str, Any]) -> None:
    report = helm.lint(str(CHART), values, strict=True, namespace="autoscaling")
    assert not report["errors"], report


@pytest.mark.parametrize("values", [REQUIRED, FULL, PROFILING], ids=["default", "full", "profiling"])
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
            "ConfigMap",  # the Grafana dashboard
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
    raw = agent_config(docs)  # profiling is off: its sections (and the trials topic) stay out of agent.yaml
    assert "profiles" not in raw and "profiling" not in raw and "trials" not in raw["kafka"]["topics"]
    (ds,) = by_kind(docs, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"} and spec["hostPID"] is True
    args = spec["containers"][0]["args"]
    assert args[:6] == ["produce", "gpu", "--bootstrap", "kafka.kafka:9092", "--interval", "1"]
    assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_default_rbac_grants_only_the_default_features() -> None:
    """Catches: the over-grant the chart used to ship (cluster-wide create on pods/binding, bindings and
    pods/eviction for a scheduler that is off by default, an unused update on deployments/scale). What each rule is
    for is checked against recorded API calls in tests/agent/test_agent_rbac.py."""
    docs = render(REQUIRED)
    agent_role = next(r for r in by_kind(docs, "ClusterRole") if not r["metadata"]["name"].endswith("exporter"))
    assert rule_map(agent_role) == {
        ("apps", "deployments"): ["list", "watch"],
        ("apps", "statefulsets"): ["list", "watch"],
        ("apps", "deployments/scale"): ["patch"],
        ("apps", "statefulsets/scale"): ["patch"],
        ("", "events"): ["create"],
        ("autoscaling", "horizontalpodautoscalers"): ["list"],
        ("keda.sh", "scaledobjects"): ["list"],
    }
    lease = next(r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("leader-election"))
    assert {v for rule in lease["rules"] for v in rule["verbs"]} == {"create", "get", "update"}
    assert [rule.get("resourceNames") for rule in lease["rules"]] == [None, ["ss-shadowscale"]]
    every_rule = [rule for r in by_kind(docs, "Role") + by_kind(docs, "ClusterRole") for rule in r["rules"]]
    assert all("batch" not in rule["apiGroups"] for rule in every_rule)  # no Jobs without profiling
    assert not [m for m in manifests(docs) if m["metadata"]["name"].endswith("-profiling")]
    # switching the optional calls off removes their rules
    off = render({**REQUIRED, "agent": {"events": False, "respectOtherAutoscalers": False}})
    role = next(r for r in by_kind(off, "ClusterRole") if r["metadata"]["name"] == "ss-shadowscale")
    assert set(rule_map(role)) == {("apps", r) for r in ("deployments", "statefulsets")} | {
        ("apps", "deployments/scale"),
        ("apps", "statefulsets/scale"),
    }
    cfg = parse_config(agent_config(off))
    assert not cfg.actuator.kubernetes.events and not cfg.actuator.kubernetes.respect_other_autoscalers


def test_probes_ask_liveness_and_readiness_separately() -> None:
    """Catches: the readiness probe calling /healthz (alive), so a replica that has not observed its workloads or
    polled Kafka yet was ready."""
    (dep,) = by_kind(render(REQUIRED), "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_full_values_tls_sasl_namespaced_rbac_and_service_monitor() -> None:
    docs = render(FULL)
    cfg_raw = agent_config(docs)
    env = {"SHADOWSCALE_AGENT__KAFKA__SASL_USERNAME": "u", "SHADOWSCALE_AGENT__KAFKA__SASL_PASSWORD": "p"}
    from shadowscale.agent.config import apply_env

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


def test_profiling_values_render_into_the_agents_profiling_config() -> None:
    docs = render(PROFILING)
    cfg = parse_config(agent_config(docs), source="rendered agent.yaml")
    p = cfg.profiling
    assert p.enabled and p.runner == "shadow" and p.profile_missing
    assert (p.max_trials, p.max_parallel, p.gpu_share_cap, p.gpu_share_dimension, p.gpu_share_unit) == (
        3,
        2,
        1.5,
        "gpu_cores_pct",
        0.01,
    )
    assert p.space == SPACE and p.planner.budget == 25 and p.planner.min_trials == 6
    assert cfg.kafka.topics.trials == "ml.trials"
    assert p.shadow.loadgen_image == "ghcr.io/shadowscale/shadowscale:1.2.3"  # the chart's own image
    assert p.shadow.kafka_bootstrap == "kafka.kafka:9092"  # pods reach the broker as the agent does
    assert p.shadow.loadgen_args == ("--verbose",) and p.shadow.load.max_rps == 500 and p.shadow.load.start_rps == 10
    plans = profiling_plans(cfg)
    assert sorted(plans) == ["llama", "resnet50"]  # bert is not profiled
    assert plans["llama"][0].names == ("gpu_cores_pct", "threads") and plans["llama"][1].slo_ms == 8000
    assert plans["resnet50"][0].names == ("cpu", "batch", "gpu_cores_pct")
    r = model_profiling(p, "resnet50")
    assert (r.deployment, r.port, r.path, r.protocol) == ("resnet50-v2", 8080, "/predict", "http")
    assert r.shape == {"sizes": [1200, 4800], "arrival": "poisson"}
    llama = model_profiling(p, "llama")
    assert (llama.deployment, llama.port, llama.protocol) == (None, 9000, "tcp")
    assert cfg.profiles.enabled and cfg.profiles.topic == "shadowscale.profiles"
    assert cfg.profiles.drift.windows_to_stale == 4 and cfg.profiles.drift.latency_tolerance == 0.25
    assert (cfg.profiles.retrials.max_parallel, cfg.profiles.retrials.cooldown_s) == (2, 600)


def test_profiling_shadow_overrides_reach_the_agent() -> None:
    shadow = {
        "loadgenImage": "registry.local/loadgen:7",
        "kafkaBootstrap": "kafka-plain.kafka:9092",
        "pollS": 5,
        "kafkaCaSecret": "kafka-ca",
        "kafkaSaslSecret": "kafka-loadgen",
    }
    cfg = parse_config(agent_config(render(profiling(shadow=shadow))))
    sh = cfg.profiling.shadow
    assert (sh.kafka_ca_secret, sh.kafka_sasl_secret) == ("kafka-ca", "kafka-loadgen")
    assert (sh.loadgen_image, sh.kafka_bootstrap, sh.poll_s) == (
        "registry.local/loadgen:7",
        "kafka-plain.kafka:9092",
        5,
    )


def test_profiles_alone_render_without_profiling() -> None:
    raw = agent_config(
        render({**REQUIRED, "agent": {"profiles": {"enabled": True, "topic": "ml.profiles", "refreshS": 15}}})
    )
    cfg = parse_config(raw)
    assert cfg.profiles.enabled and cfg.profiles.topic == "ml.profiles" and not cfg.profiling.enabled
    assert cfg.profiles.refresh_s == 15
    assert "profiling" not in raw and "trials" not in raw["kafka"]["topics"]


def shadow_api_calls() -> set[tuple[str, str, str]]:
    """(API group, resource, verb) of every Kubernetes call in agent/profiling/shadow.py."""
    source = (Path(__file__).resolve().parents[2] / "agent" / "profiling" / "shadow.py").read_text()
    groups = {"apps": "apps", "batch": "batch", "core": ""}
    verbs = {"read": "get", "list": "list", "create": "create", "delete": "delete", "patch": "patch", "watch": "watch"}
    calls = re.findall(r"self\.(apps|batch|core)\.(\w+?)_namespaced_(\w+)\(", source)
    assert calls, "no Kubernetes calls found in shadow.py: the pattern is out of date"
    return {(groups[g], f"{kind.replace('_', '')}s", verbs[verb]) for g, verb, kind in calls}


def test_profiling_rbac_is_exactly_what_the_shadow_runner_calls() -> None:
    docs = render(PROFILING)
    roles = [r for r in by_kind(docs, "Role") if r["metadata"]["name"] == "ss-shadowscale-profiling"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["llm", "serving"]  # the models' namespaces
    granted = {(g, res, v) for (g, res), verbs in rule_map(roles[0]).items() for v in verbs}
    assert granted == shadow_api_calls()  # every call allowed, nothing more
    assert {(g, r) for g, r, _ in granted} == PROFILING_ROLE
    assert all("*" not in v for v in rule_map(roles[0]).values())
    bindings = [b for b in by_kind(docs, "RoleBinding") if b["metadata"]["name"] == "ss-shadowscale-profiling"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["llm", "serving"]
    assert all(
        b["roleRef"]["name"] == "ss-shadowscale-profiling"
        and b["subjects"] == [{"kind": "ServiceAccount", "name": "ss-shadowscale", "namespace": "autoscaling"}]
        for b in bindings
    )
    # the agent's own cluster-wide role is unchanged: still no delete, no Jobs
    agent_role = next(r for r in by_kind(docs, "ClusterRole") if r["metadata"]["name"] == "ss-shadowscale")
    assert agent_role == next(
        r for r in by_kind(render(REQUIRED), "ClusterRole") if r["metadata"]["name"] == "ss-shadowscale"
    )
    assert not [b for b in by_kind(docs, "ClusterRoleBinding") if "profiling" in b["metadata"]["name"]]


def test_profiling_rbac_follows_the_agents_namespace() -> None:
    values = {**PROFILING, "agent": {**PROFILING["agent"], "kubernetes": {"namespace": "serving"}}}
    roles = [r for r in by_kind(render(values), "Role") if r["metadata"]["name"].endswith("-profiling")]
    assert [r["metadata"]["namespace"] for r in roles] == ["serving"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"models": {"gpt": {"port": 80}}}, 'agent.profiling.models.gpt: no model "gpt" in agent.models'),
        ({"space": None}, 'model "resnet50" has no search space'),
    ],
    ids=["unknown-model", "no-space"],
)
def test_profiling_values_the_schema_cannot_see_fail_at_render(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError) as e, helm.Chart.load(str(CHART)) as ch:
        ch.render(profiling(**changes), name="ss", namespace="autoscaling")
    assert message in str(e.value), str(e.value)


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
        (profiling(runner="local"), "at '/agent/profiling/runner': value must be 'shadow'"),
        (profiling(maxTrials=-1), "at '/agent/profiling/maxTrials': minimum: got -1"),
        (profiling(planner={"budget": 0}), "/agent/profiling/planner/budget"),
        (profiling(max_trials=2), "additional properties 'max_trials' not allowed"),
        (profiling(gpuShareDimension=None), "gpuShareDimension"),
        (profiling(models={"resnet50": {"port": 70000}}), "/agent/profiling/models/resnet50/port"),
        (profiling(models={"resnet50": {"path": "predict"}}), "/agent/profiling/models/resnet50/path"),
        (profiling(space={"sloMs": 200, "dimensions": [{"name": "cpu", "levels": [1]}]}), "'sloMs' not allowed"),
        (profiling(shadow={"kafkaBootstrap": "no-port"}), "/agent/profiling/shadow/kafkaBootstrap"),
        (
            {**PROFILING, "agent": {**PROFILING["agent"], "profiles": {"enabled": False}}},
            "at '/agent/profiles/enabled': value must be true",
        ),
        ({**PROFILING, "kafka": {**PROFILING["kafka"], "topics": {"trials": ""}}}, "/kafka/topics/trials"),
    ],
    ids=[
        "missing-kafka",
        "bad-kafka",
        "negative-interval",
        "unknown-policy",
        "negative-cooldown",
        "no-models",
        "sasl-no-secret",
        "profiling-runner-local",
        "profiling-negative-max-trials",
        "profiling-zero-budget",
        "profiling-snake-case-key",
        "profiling-gpu-cap-without-dimension",
        "profiling-bad-port",
        "profiling-relative-path",
        "profiling-camel-case-space",
        "profiling-bad-loadgen-bootstrap",
        "profiling-without-profiles",
        "empty-trials-topic",
    ],
)
def test_bad_values_fail_with_the_schema_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError) as e, helm.Chart.load(str(CHART)) as ch:
        ch.render(values, name="ss", namespace="autoscaling")
    assert "schema" in str(e.value) and message in str(e.value), str(e.value)


def test_ci_values_file_lints() -> None:
    values = yaml.safe_load((CHART / "ci" / "default-values.yaml").read_text())
    assert not helm.lint(str(CHART), values, strict=True)["errors"]


def exported_series() -> set[str]:
    """Every series name the agent's /metrics can carry (counters as *_total, histograms as _bucket/_sum/_count)."""
    from shadowscale.agent.metrics import Metrics

    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}{s}" for s in ("_bucket", "_sum", "_count", "_created")}
        else:
            names.add(family.name)
    return names


def test_the_dashboard_queries_only_metrics_the_agent_exports() -> None:
    """Catches: a dashboard panel querying a metric the agent does not export (renamed, misspelt, or a counter
    without its _total suffix): such a panel stays empty for every user."""
    docs = render(REQUIRED)
    (cm,) = [c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    import json

    dashboard = json.loads(cm["data"]["shadowscale-agent.json"])
    exported = exported_series()
    assert len(dashboard["panels"]) >= 10
    for panel in dashboard["panels"]:
        queried = {m for t in panel["targets"] for m in re.findall(r"\b(shadowscale_[a-z_]+)", t["expr"])}
        assert queried, f"panel {panel['title']!r} queries no agent metric"
        assert queried <= exported, f"panel {panel['title']!r} queries {sorted(queried - exported)}"
    # the staleness and lag metrics this issue added are on it
    every = {
        m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"shadowscale_[a-z_]+", t["expr"])
    }
    assert {"shadowscale_consumer_lag_events", "shadowscale_event_age_seconds", "shadowscale_fallback_active"} <= every
    assert "shadowscale_spec_recommended" in every  # right-sizing's advice, which the agent does not apply
    off = render({**REQUIRED, "metrics": {"dashboard": {"enabled": False}}})
    assert not [c for c in by_kind(off, "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]


# -- rollout --------------------------------------------------------------------------------------------------------

ROLLOUT: dict[str, Any] = {
    **REQUIRED,
    "agent": {
        "models": [
            {"name": "resnet50", "namespace": "serving", "capacityRps": 120},
            {"name": "llama", "namespace": "llm", "capacityRps": 4.5},
        ],
        "profiles": {"enabled": True},
        "rollout": {"enabled": True, "dryRun": True, "minGain": 0.2, "clusterMaxActive": 2, "maxUnavailable": 1},
    },
}


def test_rollout_values_render_into_the_agents_rollout_config_and_its_rbac() -> None:
    """The rollout section reaches agent.yaml (camelCase to the agent's names, validated by the agent's own parser)
    and grants get/create/patch/delete on Deployments in each model's namespace only. Mutation: a misspelt key in
    the configmap's mapping leaves that field at its default."""
    docs = render(ROLLOUT)
    cfg = parse_config(agent_config(docs))
    r = cfg.rollout
    assert r.enabled and r.dry_run and r.min_gain == 0.2 and r.cluster_max_active == 2 and r.max_unavailable == 1
    assert r.check_interval_s == 60 and r.opt_out_annotation == "shadowscale.io/rollout"  # the values' defaults
    roles = [x for x in by_kind(docs, "Role") if x["metadata"]["name"] == "ss-shadowscale-rollout"]
    assert sorted(x["metadata"]["namespace"] for x in roles) == ["llm", "serving"]
    assert all(rule_map(x) == {("apps", "deployments"): ["create", "delete", "get", "patch"]} for x in roles)
    assert not [x for x in by_kind(render(REQUIRED), "Role") if x["metadata"]["name"].endswith("-rollout")]
    assert "rollout" not in agent_config(render(REQUIRED))


def test_rollout_needs_profiles_and_bad_values_name_the_field() -> None:
    off = {**ROLLOUT, "agent": {**ROLLOUT["agent"], "profiles": {"enabled": False}}}
    with pytest.raises(helm.HelmError) as e, helm.Chart.load(str(CHART)) as ch:
        ch.render(off, name="ss", namespace="autoscaling")
    assert "agent.rollout.enabled needs agent.profiles.enabled" in str(e.value)
    bad = {**ROLLOUT, "agent": {**ROLLOUT["agent"], "rollout": {"enabled": True, "minAttainment": 2}}}
    with pytest.raises(helm.HelmError) as e, helm.Chart.load(str(CHART)) as ch:
        ch.render(bad, name="ss", namespace="autoscaling")
    assert "/agent/rollout/minAttainment" in str(e.value)


def test_alternative_specs_render_into_the_agents_models() -> None:
    """Catches: the chart dropping a model's specs or passing camelCase keys the agent refuses; a spec the schema
    cannot accept fails at render with the path."""
    specs = [
        {"name": "quarter", "gpuFraction": 0.25, "capacityRps": 40},
        {"name": "half", "gpuFraction": 0.5, "capacityRps": 80},
    ]
    model = {"name": "bert", "capacityRps": 150, "sloMs": 100, "specs": specs}
    cfg = parse_config(agent_config(render({**REQUIRED, "agent": {"policy": "shadowscale", "models": [model]}})))
    assert [(o.name, o.gpu_fraction, o.capacity_rps) for o in cfg.models[0].specs] == [
        ("quarter", 0.25, 40.0),
        ("half", 0.5, 80.0),
    ]
    bad = {**model, "specs": [{"name": "half life", "gpuFraction": 0.5, "capacityRps": 80}]}
    with pytest.raises(helm.HelmError) as e, helm.Chart.load(str(CHART)) as ch:
        ch.render({**REQUIRED, "agent": {"policy": "shadowscale", "models": [bad]}}, name="ss", namespace="autoscaling")
    assert "schema" in str(e.value) and "/agent/models/0/specs/0/name" in str(e.value), str(e.value)
