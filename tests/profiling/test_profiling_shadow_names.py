"""Shadow object names and trial labels stay valid Kubernetes names and stay distinct for long trial ids."""

from __future__ import annotations

import re

import pytest

from shadowscale.agent.profiling.shadow import ShadowSettings, Workload, dns_label, loadgen_job, shadow_deployment
from shadowscale.policies.profiling.types import Trial

NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def test_long_trial_ids_that_share_a_prefix_get_distinct_valid_labels_and_names() -> None:
    model = "a-very-long-model-name-that-goes-on-" * 3
    original = {
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}]}}}
    }
    wl = Workload("serving", "deployment-" * 5)
    st = ShadowSettings(kafka_bootstrap="kafka:9092")
    seen = set()
    for k in (1, 2, 10):
        trial = Trial(trial_id=f"run-{model}-{k}", model=model, config={}, slo_ms=100.0)
        label = dns_label(trial.trial_id)
        shadow = shadow_deployment(original, trial, wl, st)
        job = loadgen_job(shadow, trial, wl, st, "http://10.0.0.1:80/")
        names = (label, shadow["metadata"]["name"], job["metadata"]["name"])
        assert all(NAME.match(n) for n in names), names
        seen.add(names)
    assert len({n for names in seen for n in names}) == 9
    assert dns_label("Short_ID") == "short-id"


def test_a_tls_and_sasl_broker_reaches_the_load_generator_through_secrets_not_values() -> None:
    from shadowscale.agent.profiling.shadow import KAFKA_CA_DIR

    original = {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    wl = Workload("serving", "resnet", port=80)
    st = ShadowSettings(
        kafka_bootstrap="kafka:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_ca_secret="kafka-ca",
        kafka_sasl_secret="kafka-loadgen",
    )
    trial = Trial(trial_id="t-1", model="resnet", config={}, slo_ms=100.0)
    job = loadgen_job(shadow_deployment(original, trial, wl, st), trial, wl, st, "http://10.0.0.1:80/")
    pod = job["spec"]["template"]["spec"]
    [c] = pod["containers"]
    flags = dict(zip(c["args"][::2], c["args"][1::2], strict=True))
    assert flags["--security-protocol"] == "SASL_SSL" and flags["--sasl-mechanism"] == "SCRAM-SHA-512"
    assert flags["--ssl-cafile"] == f"{KAFKA_CA_DIR}/ca.crt"
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
    assert refs == {
        "SHADOWSCALE_LOADGEN_SASL_USERNAME": {"name": "kafka-loadgen", "key": "username"},
        "SHADOWSCALE_LOADGEN_SASL_PASSWORD": {"name": "kafka-loadgen", "key": "password"},
    }
    assert c["volumeMounts"] == [{"name": "kafka-ca", "mountPath": KAFKA_CA_DIR, "readOnly": True}]
    assert pod["volumes"] == [{"name": "kafka-ca", "secret": {"secretName": "kafka-ca"}}]
    plain = ShadowSettings(kafka_bootstrap="kafka:9092")
    job = loadgen_job(shadow_deployment(original, trial, wl, plain), trial, wl, plain, "http://10.0.0.1:80/")
    [c] = job["spec"]["template"]["spec"]["containers"]
    assert "--security-protocol" not in c["args"] and "volumes" not in job["spec"]["template"]["spec"]
    with pytest.raises(ValueError, match="needs kafka_sasl_mechanism and kafka_sasl_secret"):
        ShadowSettings(kafka_bootstrap="kafka:9093", kafka_security_protocol="SASL_PLAINTEXT")
