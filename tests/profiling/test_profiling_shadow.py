"""The Kubernetes shadow runner against kmock's emulator: it creates the shadow and the load-generator Job (the right
command, arguments, environment and labels, aimed at the ready pod), returns the measurement, and always tears both
down: on success, a failed start, a failed load test, a results event that never arrives, the trial's timeout and
cancellation; cleanup removes what a dead agent left behind and nothing else.

End to end: the Job's own command line (its arguments and environment, run as a local process) load-tests the real
local model server and publishes to the bundled broker; the Kafka results consumer hands the result to the runner."""

from __future__ import annotations

import asyncio
import copy
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_asyncio
from agent_k8s import fixed_guess_k8s
from kubernetes_asyncio import client

from shadowscale.agent.broker import LocalBroker
from shadowscale.agent.config import KafkaConfig
from shadowscale.agent.events import TRAFFIC_V1, TrafficEvent
from shadowscale.agent.profiling.live import shadow_profiling
from shadowscale.agent.profiling.loadgen import SHAPE_MAX_BYTES, LoadPlan, RequestShape, shape_json
from shadowscale.agent.profiling.results import KafkaTrialResults
from shadowscale.agent.profiling.shadow import (
    ROLE_LABEL,
    SHADOW_LABEL,
    TRIAL_LABEL,
    Knob,
    ShadowSettings,
    ShadowTrialRunner,
    Workload,
)
from shadowscale.agent.windows import Windows
from shadowscale.policies.profiling.types import Trial, TrialResult, TrialStatus

pytestmark = pytest.mark.asyncio

NS = "serving"
MODEL_DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "resnet", "namespace": NS, "labels": {"app": "resnet"}},
    "spec": {
        "replicas": 3,
        "selector": {"matchLabels": {"app": "resnet"}},
        "template": {
            "metadata": {"labels": {"app": "resnet"}},
            "spec": {
                "containers": [
                    {
                        "name": "server",
                        "image": "resnet:1",
                        "env": [{"name": "BATCH_SIZE", "value": "1"}],
                        "ports": [{"name": "http", "containerPort": 8080}],
                    },
                ]
            },
        },
    },
}


@pytest_asyncio.fixture
async def api(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    import kmock
    from kmock._internal import parsing

    assert importlib.metadata.version("kmock") == "0.8"
    monkeypatch.setattr(parsing, "guess_k8s", fixed_guess_k8s(parsing.guess_k8s))
    async with kmock.KubernetesEmulator() as emu, kmock.Server(emu) as server:
        emulator: Any = emu
        for kind in ("apps/v1/deployments", "batch/v1/jobs", "v1/pods", "v1/configmaps"):
            emulator.resources[kind] = {}
        conf = client.Configuration(host=str(server.url).rstrip("/"))
        async with client.ApiClient(conf) as api_client:
            await client.AppsV1Api(api_client).create_namespaced_deployment(NS, MODEL_DEPLOYMENT)
            yield api_client


async def names(api: Any, kind: str, selector: str | None = None) -> list[str]:
    if kind == "configmaps":
        items = (await client.CoreV1Api(api).list_namespaced_config_map(NS, label_selector=selector)).items
    elif kind == "jobs":
        items = (await client.BatchV1Api(api).list_namespaced_job(NS, label_selector=selector)).items
    else:
        items = (await client.AppsV1Api(api).list_namespaced_deployment(NS, label_selector=selector)).items
    return sorted(i.metadata.name for i in items)


class Results:
    """Hands over a result once the load-generator Job exists (what the agent's event consumer would do)."""

    def __init__(self, api: Any, result: TrialResult | None) -> None:
        self.api = api
        self.result = result
        self.jobs_seen: list[dict[str, Any]] = []
        self.configmaps_seen: list[dict[str, Any]] = []
        self.waiting = asyncio.Event()

    async def wait(self, trial_id: str, timeout_s: float) -> TrialResult | None:
        jobs = (await client.BatchV1Api(self.api).list_namespaced_job(NS)).items
        self.jobs_seen = [self.api.sanitize_for_serialization(j) for j in jobs]
        cms = (await client.CoreV1Api(self.api).list_namespaced_config_map(NS)).items
        self.configmaps_seen = [self.api.sanitize_for_serialization(c) for c in cms]
        self.waiting.set()
        if self.result is None:
            await asyncio.sleep(timeout_s)
        return self.result


POD_IP = "10.1.2.3"


async def controller(api: Any, seen: list[dict[str, Any]], mode: str, pod_ip: str = POD_IP) -> None:
    """Plays the Deployment controller and kubelet: marks a shadow ready with a running pod that has an IP, or gives
    its pod an OOMKilled status."""
    apps, core, batch = client.AppsV1Api(api), client.CoreV1Api(api), client.BatchV1Api(api)
    while True:
        for j in (await batch.list_namespaced_job(NS)).items:  # the API server assigns every object a uid
            if not j.metadata.uid:
                await batch.patch_namespaced_job(j.metadata.name, NS, {"metadata": {"uid": f"uid-{j.metadata.name}"}})
        for d in (await apps.list_namespaced_deployment(NS, label_selector=f"{SHADOW_LABEL}=true")).items:
            raw = api.sanitize_for_serialization(d)
            shadow = raw["metadata"].get("labels", {}).get(SHADOW_LABEL) == "true"  # kmock ignores label selectors
            if not shadow or raw["metadata"]["name"] in {s["metadata"]["name"] for s in seen}:
                continue
            seen.append(raw)
            if mode == "ready":
                labels = raw["spec"]["template"]["metadata"]["labels"]
                status = {"phase": "Running", "podIP": pod_ip, "conditions": [{"type": "Ready", "status": "True"}]}
                meta = {"name": raw["metadata"]["name"] + "-pod", "namespace": NS, "labels": labels}
                await core.create_namespaced_pod(NS, cast(Any, {"metadata": meta, "status": status}))
                await apps.patch_namespaced_deployment(raw["metadata"]["name"], NS, {"status": {"readyReplicas": 1}})
            elif mode == "unschedulable":
                labels = raw["spec"]["template"]["metadata"]["labels"]
                cond = {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpumem.",
                }
                pod = {
                    "metadata": {"name": raw["metadata"]["name"] + "-pod", "namespace": NS, "labels": labels},
                    "status": {"phase": "Pending", "conditions": [cond]},
                }
                await core.create_namespaced_pod(NS, cast(Any, pod))
            else:
                labels = raw["spec"]["template"]["metadata"]["labels"]
                state = {"terminated": {"reason": "OOMKilled", "exitCode": 137}}
                pod: Any = {
                    "metadata": {"name": "shadow-pod", "namespace": NS, "labels": labels},
                    "status": {"containerStatuses": [{"name": "server", "lastState": state, "state": {}}]},
                }
                await core.create_namespaced_pod(NS, pod)
        await asyncio.sleep(0.02)


SETTINGS = ShadowSettings(
    ready_timeout_s=5,
    result_timeout_s=0.3,
    poll_s=0.02,
    kafka_bootstrap="kafka.infra:9092",
    loadgen_image="registry.local/shadowscale:0.1.0",
    load=LoadPlan(step_s=1.5, start_rps=20, max_rps=800, bisect_steps=3),
)
SHAPE = RequestShape(payloads=('{"x": [1, 2]}',), gaps=(0.01, 0.01, 0.2))


async def run(
    api: Any,
    results: Any,
    mode: str,
    config: dict[str, Any],
    trial_id: str = "run1-resnet-7",
    *,
    settings: ShadowSettings = SETTINGS,
    workload: Workload | None = None,
    timeout_s: float = 20,
    observed_gaps: Any = None,
) -> tuple[TrialResult, list[Any]]:
    seen: list[dict[str, Any]] = []
    ctl = asyncio.create_task(controller(api, seen, mode))
    wl = workload or Workload(NS, "resnet", path="/predict", shape=SHAPE)
    runner = ShadowTrialRunner(api, {"resnet": wl}, results, settings, observed_gaps=observed_gaps)
    try:
        result = await runner.run_trial(Trial(trial_id, "resnet", config, slo_ms=100.0, timeout_s=timeout_s))
    finally:
        ctl.cancel()
    return result, seen


async def nothing_left(api: Any) -> bool:
    return (
        await names(api, "deployments") == ["resnet"]
        and await names(api, "jobs") == []
        and await names(api, "configmaps") == []
    )


CONFIG = {"cpu": 2, "gpu_memory_mib": 4096, "gpu_cores_pct": 30, "gpu_type": "T4", "batch": 8, "threads": 4, "x": "y"}


async def test_creates_measures_and_tears_down(api: Any) -> None:
    measured = TrialResult(TrialStatus.MEASURED, throughput=120.0, p99_ms=80.0)
    results = Results(api, measured)
    result, seen = await run(api, results, "ready", CONFIG)
    assert result == measured
    [shadow] = seen
    assert shadow["metadata"]["name"] == "resnet-shadow-run1-resnet-7"
    tpl = shadow["spec"]["template"]
    assert tpl["metadata"]["labels"] == {SHADOW_LABEL: "true", TRIAL_LABEL: "run1-resnet-7", ROLE_LABEL: "shadow"}
    assert "app" not in tpl["metadata"]["labels"]  # the model's Service does not select the shadow
    c = tpl["spec"]["containers"][0]
    assert c["resources"]["limits"] == {"cpu": "2", "nvidia.com/gpumem": "4096", "nvidia.com/gpucores": "30"}
    assert tpl["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "T4"}
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env == {
        "BATCH_SIZE": "8",
        "NUM_THREADS": "4",
        "SHADOWSCALE_PARAM_X": "y",
        "SHADOWSCALE_TRIAL_ID": "run1-resnet-7",
    }
    [anchor] = [j for j in results.jobs_seen if j["metadata"]["labels"][ROLE_LABEL] == "anchor"]
    [job] = [j for j in results.jobs_seen if j["metadata"]["labels"][ROLE_LABEL] == "loadgen"]
    # everything the trial makes is owned by its anchor Job, which Kubernetes fails after the trial's timeout plus
    # the grace period and deletes with all it owns (no agent needed)
    assert anchor["metadata"]["name"] == "resnet-trial-run1-resnet-7"
    assert anchor["spec"]["parallelism"] == 0 and anchor["spec"]["activeDeadlineSeconds"] == 20 + 300
    assert anchor["spec"]["ttlSecondsAfterFinished"] == 300
    owner = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": "resnet-trial-run1-resnet-7",
        "uid": "uid-resnet-trial-run1-resnet-7",
        "controller": False,
        "blockOwnerDeletion": False,
    }
    assert shadow["metadata"]["ownerReferences"] == [owner] and job["metadata"]["ownerReferences"] == [owner]
    assert job["spec"]["ttlSecondsAfterFinished"] == 300
    labels = {SHADOW_LABEL: "true", TRIAL_LABEL: "run1-resnet-7", ROLE_LABEL: "loadgen"}
    assert job["metadata"]["name"] == "resnet-loadgen-run1-resnet-7"
    assert job["metadata"]["labels"] == labels and job["spec"]["template"]["metadata"]["labels"] == labels
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    [lg] = job["spec"]["template"]["spec"]["containers"]
    assert lg["image"] == "registry.local/shadowscale:0.1.0" and lg["command"] == ["shadowscale", "loadgen"]
    args = lg["args"]
    flags = dict(zip(args[::2], args[1::2], strict=True))
    assert flags == {
        "--target": f"http://{POD_IP}:8080/predict",  # the ready shadow pod, the container's port
        "--trial-id": "run1-resnet-7",
        "--model": "resnet",
        "--namespace": NS,
        "--slo-ms": "100",
        "--bootstrap": "kafka.infra:9092",
        "--topic": "shadowscale.trials",
        "--step-s": "1.5",
        "--start-rps": "20",
        "--max-rps": "800",
        "--bisect-steps": "3",
        "--connect-timeout-s": "60",
        "--warmup-s": "5",  # unmeasured load first
        "--shape": "/etc/shadowscale-shape/shape.json",  # the request shape comes in a mounted ConfigMap
    }
    env = {e["name"]: e["value"] for e in lg["env"]}
    assert env == {"SHADOWSCALE_TRIAL_ID": "run1-resnet-7", "POD_NAMESPACE": NS}
    [cm] = results.configmaps_seen
    assert cm["metadata"]["name"] == "resnet-loadgen-run1-resnet-7" and cm["metadata"]["labels"] == labels
    assert cm["metadata"]["ownerReferences"] == [owner]
    assert list(cm["data"]) == ["shape.json"] and cm["data"]["shape.json"] == shape_json(SHAPE)
    got = json.loads(cm["data"]["shape.json"])
    assert got["payloads"] == ['{"x": [1, 2]}'] and got["gaps"] == [0.01, 0.01, 0.2]
    assert lg["volumeMounts"] == [{"name": "shape", "mountPath": "/etc/shadowscale-shape", "readOnly": True}]
    assert job["spec"]["template"]["spec"]["volumes"] == [
        {"name": "shape", "configMap": {"name": "resnet-loadgen-run1-resnet-7"}}
    ]
    assert await nothing_left(api)


async def test_the_load_replays_the_models_recently_observed_arrivals(api: Any) -> None:
    """A workload whose shape gives no inter-arrival times gets the model's recent ones from the agent's windows;
    one with its own keeps them; too few observed ones are not a pattern."""
    measured = TrialResult(TrialStatus.MEASURED, throughput=120.0, p99_ms=80.0)
    observed = {"resnet": tuple([0.5, 0.01] * 15)}
    asked: list[str] = []

    def gaps(model: str) -> tuple[float, ...]:
        asked.append(model)
        return observed[model]

    def shape_of(results: Results) -> dict[str, Any]:
        [cm] = results.configmaps_seen
        return cast(dict[str, Any], json.loads(cm["data"]["shape.json"]))

    bare = Workload(NS, "resnet", path="/predict", shape=RequestShape(sizes=(100,)))
    results = Results(api, measured)
    result, _ = await run(api, results, "ready", CONFIG, workload=bare, observed_gaps=gaps)
    assert result == measured and asked == ["resnet"]
    got = shape_of(results)
    assert got["gaps"] == [0.5, 0.01] * 15 and got["sizes"] == [100]
    results = Results(api, measured)
    result, _ = await run(api, results, "ready", CONFIG, "run1-resnet-8", observed_gaps=gaps)  # SHAPE has gaps
    assert result == measured and shape_of(results)["gaps"] == [0.01, 0.01, 0.2]
    observed["resnet"] = (0.1,) * 5
    results = Results(api, measured)
    result, _ = await run(api, results, "ready", CONFIG, "run1-resnet-9", workload=bare, observed_gaps=gaps)
    assert result == measured and shape_of(results)["gaps"] == []
    assert await nothing_left(api)


async def test_failed_start_and_missing_results_are_failed_trials_and_torn_down(api: Any) -> None:
    result, _ = await run(api, Results(api, TrialResult.failed("unused")), "oom", CONFIG)
    assert result.status is TrialStatus.FAILED and "out of memory (OOMKilled)" in result.error
    assert await nothing_left(api)

    result, _ = await run(api, Results(api, None), "ready", {"cpu": 1}, trial_id="run1-resnet-8")
    assert result.status is TrialStatus.FAILED and "no results event for trial run1-resnet-8" in result.error
    assert await nothing_left(api)

    failed = TrialResult.failed("load generator: the target died during the load test: refused")
    result, _ = await run(api, Results(api, failed), "ready", {"cpu": 1}, trial_id="run1-resnet-9")
    assert result == failed
    assert await nothing_left(api)


async def test_an_unschedulable_shadow_is_reported_as_such_not_as_a_failed_configuration(api: Any) -> None:
    """A shadow pod the scheduler cannot place (``PodScheduled=False``, ``Unschedulable``) for the grace period
    ends the trial as UNSCHEDULABLE (the search retries it; it is never scored) long before the ready timeout, and
    is torn down. Mutation: dropping the check makes it wait out the 5 s ready timeout as a failed start."""
    t0 = time.monotonic()
    settings = ShadowSettings(
        ready_timeout_s=5, unschedulable_grace_s=0.2, result_timeout_s=1, poll_s=0.02, kafka_bootstrap="k:9092"
    )
    result, _ = await run(api, Results(api, None), "unschedulable", CONFIG, "run1-resnet-13", settings=settings)
    assert result.status is TrialStatus.UNSCHEDULABLE, result
    assert "no room for the shadow" in result.error and "Insufficient nvidia.com/gpumem" in result.error
    assert time.monotonic() - t0 < 4
    assert await nothing_left(api)


async def test_trial_timeout_and_cancellation_tear_everything_down(api: Any) -> None:
    slow = ShadowSettings(ready_timeout_s=5, result_timeout_s=30, poll_s=0.02, kafka_bootstrap="k:9092")
    result, _ = await run(api, Results(api, None), "ready", {"cpu": 1}, "run1-resnet-10", settings=slow, timeout_s=1)
    assert result.status is TrialStatus.FAILED and result.error == "timed out after 1 s"
    assert await nothing_left(api)

    results = Results(api, None)
    trial = asyncio.create_task(run(api, results, "ready", {"cpu": 1}, "run1-resnet-11", settings=slow))
    await asyncio.wait_for(results.waiting.wait(), 10)  # the Job exists and the runner waits for its result
    assert len(results.jobs_seen) == 2 and await names(api, "deployments") == ["resnet", "resnet-shadow-run1-resnet-11"]
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    assert await nothing_left(api)


async def test_unusable_workloads_and_settings_are_clear_errors(api: Any) -> None:
    no_port: Any = copy.deepcopy(MODEL_DEPLOYMENT)
    no_port["metadata"]["name"] = "noport"
    del no_port["spec"]["template"]["spec"]["containers"][0]["ports"]
    await client.AppsV1Api(api).create_namespaced_deployment(NS, no_port)
    result, seen = await run(api, Results(api, None), "ready", {"cpu": 1}, workload=Workload(NS, "noport"))
    assert result.status is TrialStatus.FAILED and seen == []
    assert "workload serving/noport: no port to load-test" in result.error
    assert await names(api, "deployments") == ["noport", "resnet"]

    with pytest.raises(ValueError, match="kafka_bootstrap is empty"):
        ShadowTrialRunner(api, {}, Results(api, None), ShadowSettings())
    with pytest.raises(ValueError, match="kafka_bootstrap must be HOST:PORT"):
        ShadowSettings(kafka_bootstrap="kafka")
    with pytest.raises(ValueError, match="workload serving/resnet: port 0 is not in"):
        Workload(NS, "resnet", port=0)


async def test_cleanup_removes_only_what_shadows_left(api: Any) -> None:
    labels = {SHADOW_LABEL: "true", "shadowscale.io/trial": "old"}
    orphan = {
        "metadata": {"name": "resnet-shadow-old", "namespace": NS, "labels": labels},
        "spec": {**MODEL_DEPLOYMENT["spec"], "selector": {"matchLabels": labels}},  # type: ignore[dict-item]
    }
    await client.AppsV1Api(api).create_namespaced_deployment(NS, orphan)
    job = {"metadata": {"name": "resnet-loadgen-old", "namespace": NS, "labels": labels}, "spec": {"template": {}}}
    await client.BatchV1Api(api).create_namespaced_job(NS, job)
    runner = ShadowTrialRunner(api, {"resnet": Workload(NS, "resnet")}, Results(api, None), SETTINGS)
    assert await runner.cleanup() == 2
    assert await names(api, "deployments") == ["resnet"] and await names(api, "jobs") == []


# -- end to end: the Job's command line, the real local model server, the bundled broker ---------------------------


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as b:
        yield b


Ran = list[tuple[list[str], asyncio.subprocess.Process]]


async def kubelet(api: Any, ran: Ran, volumes: Path | None = None) -> None:
    """Plays the Job controller and kubelet: runs each load-generator Job's container as a local process — its
    command (found in this environment's bin directory), arguments and environment exactly as the Job says, its
    ConfigMap volumes written under ``volumes`` and their mount paths in the arguments pointed there — and marks
    the Job failed when the process exits with an error (``backoffLimit: 0``). The environment is the real one:
    a variable over Linux's 128 KiB would make the exec fail."""
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    started: set[str] = set()
    watching: set[asyncio.Task[None]] = set()

    async def job_status(name: str, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if code != 0:
            failed = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": f"exit {code}"}
            await batch.patch_namespaced_job(name, NS, {"status": {"conditions": [failed]}})

    while True:
        for job in (await batch.list_namespaced_job(NS)).items:
            raw = api.sanitize_for_serialization(job)
            if raw["metadata"]["name"] in started or raw["metadata"]["labels"].get(ROLE_LABEL) != "loadgen":
                continue
            started.add(raw["metadata"]["name"])
            [c] = raw["spec"]["template"]["spec"]["containers"]
            args = list(c["args"])
            by_name = {v["name"]: v for v in raw["spec"]["template"]["spec"].get("volumes") or []}
            for m in c.get("volumeMounts") or []:
                source = by_name[m["name"]].get("configMap")
                if source is None or volumes is None:
                    continue
                cm = api.sanitize_for_serialization(await core.read_namespaced_config_map(source["name"], NS))
                where = volumes / m["name"]
                where.mkdir(parents=True, exist_ok=True)
                for key, text in cm["data"].items():
                    (where / key).write_text(text)
                args = [a.replace(m["mountPath"], str(where)) for a in args]
            cmd = [str(Path(sys.executable).parent / c["command"][0]), *c["command"][1:], *args]
            env = {**os.environ, **{e["name"]: e["value"] for e in c["env"]}}
            proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=asyncio.subprocess.DEVNULL)
            ran.append((cmd, proc))
            watching.add(asyncio.create_task(job_status(raw["metadata"]["name"], proc)))
        await asyncio.sleep(0.05)


async def end_to_end(
    api: Any,
    broker: LocalBroker,
    volumes: Path,
    trial_id: str,
    *,
    observed_gaps: Any = None,
    shape: RequestShape | None = None,
) -> tuple[TrialResult, Ran, int, list[dict[str, Any]]]:
    """One trial through the whole chain: the real local model server as the shadow, the Job's command line run
    as a local process (its ConfigMap mounted under ``volumes``), the bundled broker carrying its result. Returns
    the result, the processes run, the server's port and the ConfigMaps the trial created."""
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shadowscale.agent.profiling.server", "--threads", "2", "--batch", "8",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    configmaps: list[dict[str, Any]] = []

    async def watch_configmaps() -> None:
        core = client.CoreV1Api(api)
        while True:
            for c in (await core.list_namespaced_config_map(NS)).items:
                raw = api.sanitize_for_serialization(c)
                if raw["metadata"]["name"] not in {x["metadata"]["name"] for x in configmaps}:
                    configmaps.append(raw)
            await asyncio.sleep(0.02)

    try:
        assert server.stdout is not None
        port = int((await asyncio.wait_for(server.stdout.readline(), 20)).split()[1])
        topic = f"trials-{time.monotonic_ns()}"
        settings = ShadowSettings(
            ready_timeout_s=5,
            result_timeout_s=90,
            poll_s=0.02,
            kafka_bootstrap=broker.bootstrap,
            results_topic=topic,
            load=LoadPlan(step_s=0.4, start_rps=50, max_rps=3200, bisect_steps=1, connect_timeout_s=10, warmup_s=0.2),
        )
        orphan: Any = {
            "metadata": {"name": "resnet-loadgen-old", "namespace": NS, "labels": {SHADOW_LABEL: "true"}},
            "spec": {"template": {}},
        }
        await client.BatchV1Api(api).create_namespaced_job(NS, orphan)  # left by an agent that died
        shape = shape if shape is not None else RequestShape(arrival="poisson")
        workloads = {"resnet": Workload(NS, "resnet", port=port, protocol="tcp", shape=shape)}
        seen: list[dict[str, Any]] = []
        ran: Ran = []
        tasks = [
            asyncio.create_task(controller(api, seen, "ready", "127.0.0.1")),
            asyncio.create_task(kubelet(api, ran, volumes)),
            asyncio.create_task(watch_configmaps()),
        ]
        try:
            async with shadow_profiling(
                api,
                workloads,
                KafkaConfig(bootstrap=broker.bootstrap),
                settings,
                create_topic=True,
                observed_gaps=observed_gaps,
            ) as runner:
                assert await names(api, "jobs") == []  # the orphan went at start
                trial = Trial(trial_id, "resnet", {"threads": 2}, slo_ms=50.0, timeout_s=120)
                result = await runner.run_trial(trial)
                results = runner.results
                assert isinstance(results, KafkaTrialResults) and results.counts.delivered == 1
        finally:
            for t in tasks:
                t.cancel()
    finally:
        server.terminate()
        await server.wait()
    return result, ran, port, configmaps


async def test_end_to_end_the_load_generator_measures_the_real_server_through_kafka(
    api: Any, broker: LocalBroker, tmp_path: Path
) -> None:
    result, ran, port, _ = await end_to_end(api, broker, tmp_path, "e2e-resnet-1")
    [(cmd, proc)] = ran
    assert (
        await asyncio.wait_for(proc.wait(), 20) == 0
        and cmd[1:3] == ["loadgen", "--target"]
        and cmd[3] == f"tcp://127.0.0.1:{port}"
    )
    assert result.status is TrialStatus.MEASURED, result.error
    assert result.throughput >= 50 and result.p99_ms <= 50.0 and result.details["steps"] >= 2
    assert await nothing_left(api)


async def test_a_busy_models_observed_traffic_reaches_the_load_generator_and_the_trial_finishes(
    api: Any, broker: LocalBroker, tmp_path: Path
) -> None:
    """200 req/s observed for 10 minutes (the agent's windows rebuild 100 000 inter-arrival gaps from it): as JSON
    that is several times Linux's 128 KiB limit on one environment variable, so a shape in the environment could
    never start the Job. In a ConfigMap capped at SHAPE_MAX_BYTES (the most recent gaps kept) the trial starts,
    measures and finishes. Mutation: putting the shape back in ``$SHADOWSCALE_LOADGEN_SHAPE`` makes the Job's exec
    fail (E2BIG) and the trial fail."""
    windows = Windows(["resnet"], history_s=600.0, dedupe_s=1e9)
    for k in range(1, 601):
        windows.add(
            TrafficEvent(
                schema=TRAFFIC_V1, model="resnet", pod="resnet-0", event_time=float(k), window_s=1.0,
                arrivals=200, completions=200,
            )
        )  # fmt: skip
    gaps = windows.recent_gaps(0, now=600.0)
    assert len(gaps) == 100_000
    assert len(shape_json(RequestShape(gaps=gaps)).encode()) > 4 * 128 * 1024
    result, ran, _, configmaps = await end_to_end(
        api,
        broker,
        tmp_path,
        "e2e-busy-1",
        observed_gaps=lambda model: windows.recent_gaps(0, now=600.0),
        shape=RequestShape(sizes=(512,)),
    )
    [cm] = configmaps
    text = cm["data"]["shape.json"]
    assert len(text.encode()) <= SHAPE_MAX_BYTES
    shipped = json.loads(text)["gaps"]
    assert 20_000 <= len(shipped) < len(gaps) and shipped == pytest.approx(gaps[-len(shipped) :], abs=1e-6)
    [(_, proc)] = ran
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    assert result.status is TrialStatus.MEASURED, result.error
    assert result.details["steps"] >= 1  # measured (its capacity on a busy 2-core machine is not the point)
    assert await nothing_left(api)


async def test_a_failed_load_generator_job_fails_the_trial_at_once(api: Any) -> None:
    settings = ShadowSettings(
        ready_timeout_s=5,
        result_timeout_s=60,
        poll_s=0.05,
        kafka_bootstrap="127.0.0.1:9",
        loadgen_args=["--step-s", "-1"],
    )
    ran: Ran = []
    kube = asyncio.create_task(kubelet(api, ran))
    try:
        t0 = time.monotonic()
        wl = Workload(NS, "resnet", port=1, protocol="tcp")
        result, _ = await run(
            api, Results(api, None), "ready", {"cpu": 1}, "run1-resnet-12", settings=settings, workload=wl
        )
    finally:
        kube.cancel()
    assert [proc.returncode for _, proc in ran] == [2]  # the load generator refused its arguments
    assert result.status is TrialStatus.FAILED
    assert result.error == "load generator failed: BackoffLimitExceeded: exit 2"
    assert time.monotonic() - t0 < 30  # not the 60 s result timeout
    assert await nothing_left(api)


TRITON_PBTXT = """name: "resnet"
max_batch_size: ${max_batch}
dynamic_batching { max_queue_delay_microseconds: ${queue_delay_us} }
instance_group [ { count: ${instances}, kind: KIND_GPU } ]
"""


async def test_knobs_set_server_args_env_and_a_templated_config_file(api: Any) -> None:
    """A vLLM-style flag replaces the one the Deployment already passes (both ``--flag V`` and ``--flag=V`` forms),
    an env knob sets its variable, and three keys render one Triton ``config.pbtxt`` (braces untouched) that reaches
    the shadow in a ConfigMap mounted with subPath, torn down with the trial. Mutation: appending the flag without
    removing the old one leaves two ``--max-num-seqs`` and fails the args check."""
    dep: Any = copy.deepcopy(MODEL_DEPLOYMENT)
    dep["metadata"]["name"] = "llm"
    dep["spec"]["template"]["spec"]["containers"][0]["args"] = ["--model", "m", "--max-num-seqs", "256", "--x=1"]
    await client.AppsV1Api(api).create_namespaced_deployment(NS, dep)
    knobs = {
        "max_num_seqs": Knob(arg="--max-num-seqs"),
        "gpu_mem": Knob(arg="--gpu-memory-utilization"),
        "omp": Knob(env="OMP_NUM_THREADS"),
        "max_batch": Knob(file="/models/resnet/config.pbtxt", template=TRITON_PBTXT),
        "queue_delay_us": Knob(file="/models/resnet/config.pbtxt", template=TRITON_PBTXT),
        "instances": Knob(file="/models/resnet/config.pbtxt", template=TRITON_PBTXT),
    }
    wl = Workload(NS, "llm", knobs=knobs)
    config = {"max_num_seqs": 64, "gpu_mem": 0.85, "omp": 4, "max_batch": 16, "queue_delay_us": 500, "instances": 2}
    seen_cms: list[dict[str, Any]] = []

    class Spy(Results):
        async def wait(self, trial_id: str, timeout_s: float) -> TrialResult | None:
            cms = (await client.CoreV1Api(self.api).list_namespaced_config_map(NS)).items
            seen_cms.extend(self.api.sanitize_for_serialization(c) for c in cms)
            return await super().wait(trial_id, timeout_s)

    measured = TrialResult(TrialStatus.MEASURED, throughput=10.0, p99_ms=50.0)
    seen: list[dict[str, Any]] = []
    ctl = asyncio.create_task(controller(api, seen, "ready"))
    runner = ShadowTrialRunner(api, {"llm": wl}, Spy(api, measured), SETTINGS)
    try:
        result = await runner.run_trial(Trial("run1-llm-1", "llm", config, slo_ms=100.0, timeout_s=20))
    finally:
        ctl.cancel()
    assert result == measured
    [shadow] = seen
    c = shadow["spec"]["template"]["spec"]["containers"][0]
    assert c["args"] == ["--model", "m", "--x=1", "--max-num-seqs=64", "--gpu-memory-utilization=0.85"]
    assert {"name": "OMP_NUM_THREADS", "value": "4"} in c["env"]
    assert c["volumeMounts"] == [
        {"name": "shadowscale-knobs", "mountPath": "/models/resnet/config.pbtxt", "subPath": "f0", "readOnly": True}
    ]
    name = shadow["metadata"]["name"]
    assert {"name": "shadowscale-knobs", "configMap": {"name": name}} in shadow["spec"]["template"]["spec"]["volumes"]
    [files] = [cm for cm in seen_cms if cm["metadata"]["name"] == name]
    assert files["data"] == {
        "f0": TRITON_PBTXT.replace("${max_batch}", "16")
        .replace("${queue_delay_us}", "500")
        .replace("${instances}", "2")
    }
    assert files["metadata"]["ownerReferences"][0]["name"] == "llm-trial-run1-llm-1"
    assert await names(api, "configmaps") == [] and await names(api, "jobs") == []
    with pytest.raises(ValueError, match="exactly one of arg, env or file"):
        Knob(arg="--a", env="B")
    with pytest.raises(ValueError, match="not a command-line flag"):
        Knob(arg="rm -rf")
