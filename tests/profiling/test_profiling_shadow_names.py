"""Shadow object names and trial labels stay valid Kubernetes names and stay distinct for long trial ids."""

from __future__ import annotations

import re

from agent.profiling.shadow import ShadowSettings, Workload, dns_label, loadgen_job, shadow_deployment
from policies.profiling.types import Trial

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
