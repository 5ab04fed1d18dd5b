"""The GPU exporter: NVML replaced by a fake module, Kafka the real bundled broker."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from producer_helpers import fresh_topic, read_all

from shadowscale.agent.broker import LocalBroker, free_port
from shadowscale.agent.config import KafkaConfig
from shadowscale.agent.events import Decoder, GpuEvent, GpuPod, encode
from shadowscale.agent.kafka import KafkaSink
from shadowscale.agent.producers import gpu as gpu_mod
from shadowscale.agent.producers.gpu import (
    HAMI_ALLOCATED,
    GpuExporter,
    NvmlReader,
    NvmlUnavailable,
    PodInfo,
    cgroup_pod_lookup,
    hami_share_lookup,
    hami_shares,
    pod_uid_of_pid,
)
from shadowscale.cli import main as shadowscale_main

GIB = 1024**3


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


class NVMLError_NotFound(NVMLError):
    pass


class NVMLError_GpuIsLost(NVMLError):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


def fake_nvml(gpus: list[dict[str, Any]], *, missing: bool = False) -> Any:
    """A stand-in for ``pynvml``: ``gpus`` is a list of dicts (uuid, util, used, total, pids, lost, mig)."""
    ns = SimpleNamespace(
        NVMLError=NVMLError,
        NVMLError_LibraryNotFound=NVMLError_LibraryNotFound,
        NVMLError_NotFound=NVMLError_NotFound,
        NVMLError_NotSupported=NVMLError_NotSupported,
        NVML_DEVICE_MIG_ENABLE=1,
        calls=[],
    )

    def init() -> None:
        if missing:
            raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")

    def dev(h: Any) -> dict[str, Any]:
        g: dict[str, Any] = h
        if g.get("lost"):
            raise NVMLError_GpuIsLost("GPU is lost")
        return g

    def mig_mode(h: Any) -> tuple[int, int]:
        if "mig" not in dev(h):
            raise NVMLError_NotSupported("Not Supported")
        return (1, 1)

    def mig_handle(h: Any, j: int) -> Any:
        slots = dev(h)["mig"]
        if j >= len(slots) or slots[j] is None:
            raise NVMLError_NotFound("Not Found")
        return slots[j]

    ns.nvmlInit = init
    ns.nvmlShutdown = lambda: None
    ns.nvmlDeviceGetCount = lambda: len(gpus)
    ns.nvmlDeviceGetHandleByIndex = lambda i: gpus[i]
    ns.nvmlDeviceGetUUID = lambda h: dev(h)["uuid"]
    ns.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=dev(h)["util"], memory=0)
    ns.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(used=dev(h)["used"], total=dev(h)["total"], free=0)
    ns.nvmlDeviceGetComputeRunningProcesses = lambda h: [
        SimpleNamespace(pid=p, usedGpuMemory=GIB) for p in dev(h).get("pids", ())
    ]
    ns.nvmlDeviceGetGraphicsRunningProcesses = lambda h: []
    ns.nvmlDeviceGetMigMode = mig_mode
    ns.nvmlDeviceGetMaxMigDeviceCount = lambda h: len(dev(h)["mig"])
    ns.nvmlDeviceGetMigDeviceHandleByIndex = mig_handle
    return ns


def two_gpus() -> list[dict[str, Any]]:
    return [
        {"uuid": "GPU-aaaa", "util": 37, "used": 10 * GIB, "total": 80 * GIB, "pids": [101, 102, 103]},
        {
            "uuid": "GPU-bbbb",
            "util": 90,
            "used": 0,
            "total": 80 * GIB,
            "mig": [
                {"uuid": "MIG-1111", "util": 0, "used": 3 * GIB, "total": 10 * GIB, "pids": [201]},
                None,
                {"uuid": "MIG-2222", "util": 0, "used": 0, "total": 20 * GIB, "pids": []},
            ],
        },
    ]


PODS: dict[int, GpuPod] = {
    101: GpuPod(namespace="serving", pod="resnet-0", model="resnet50"),
    102: GpuPod(namespace="serving", pod="resnet-0", model="resnet50"),  # a second process of the same pod
    201: GpuPod(namespace="llm", pod="llama-7b-0", model="llama"),
}


def lookup(pids: Sequence[int]) -> Mapping[int, GpuPod]:
    return {p: PODS[p] for p in pids if p in PODS}


def test_reader_turns_nvml_into_readings_per_gpu_and_mig_instance() -> None:
    r = NvmlReader(fake_nvml(two_gpus()))
    r.init()
    got = r.read()
    assert [(g.index, g.uuid, g.parent_uuid) for g in got] == [
        (0, "GPU-aaaa", None),
        (1, "MIG-1111", "GPU-bbbb"),
        (1, "MIG-2222", "GPU-bbbb"),
    ]
    assert got[0].utilization == pytest.approx(0.37)
    assert got[0].memory_used_bytes == 10 * GIB and got[0].pids == (101, 102, 103)
    assert got[1].utilization == pytest.approx(0.90)  # MIG: the parent's utilization
    assert (got[1].memory_used_bytes, got[1].memory_total_bytes, got[1].pids) == (3 * GIB, 10 * GIB, (201,))


def test_power_draw_is_read_in_watts_and_missing_power_is_none() -> None:
    """Catches: milliwatts published as watts (or the parent's power dropped for a MIG instance), and a GPU without
    power readings (NotSupported, or a binding without the function) failing the whole reading."""
    nv = fake_nvml(two_gpus())
    nv.nvmlDeviceGetPowerUsage = lambda h: 312_500 if h["uuid"] == "GPU-aaaa" else 95_000
    r = NvmlReader(nv)
    r.init()
    got = r.read()
    assert [g.power_watts for g in got] == [312.5, 95.0, 95.0]
    ev = gpu_mod.gpu_events("node-a", got[:1], {}, 1.0)
    assert ev[0].power_watts == 312.5

    def unsupported(h: Any) -> int:
        raise nv.NVMLError_NotSupported("Not Supported")

    nv.nvmlDeviceGetPowerUsage = unsupported
    assert [g.power_watts for g in r.read()] == [None, None, None]
    del nv.nvmlDeviceGetPowerUsage
    assert [g.power_watts for g in r.read()] == [None, None, None]


def test_memory_leaves_out_what_the_driver_reserves_like_nvidia_smi() -> None:
    """On an H200, NVML v1's ``used`` was 615 MiB above nvidia-smi's at idle: the driver's reserved memory.
    Catches: reading v1 where v2 exists (used would include the reserve), or not taking the reserve off total
    (total − used would overstate what can be allocated); and a binding or device without v2 failing the read."""
    nv = fake_nvml(two_gpus())
    v1 = nv.nvmlDeviceGetMemoryInfo
    nv.nvmlMemory_v2 = 0x02000028

    def info(h: Any, version: int | None = None) -> Any:
        if version is None:
            return v1(h)
        if "mig" in h or "MIG" in h["uuid"]:
            raise nv.NVMLError_NotSupported("Not Supported")
        return SimpleNamespace(used=h["used"], reserved=GIB // 2, total=h["total"], free=0)

    nv.nvmlDeviceGetMemoryInfo = info
    r = NvmlReader(nv)
    r.init()
    got = r.read()
    assert (got[0].memory_used_bytes, got[0].memory_total_bytes) == (10 * GIB, 80 * GIB - GIB // 2)
    assert (got[1].memory_used_bytes, got[1].memory_total_bytes) == (3 * GIB, 10 * GIB)  # MIG: v1


def test_lost_gpu_is_skipped_and_comes_back() -> None:
    gpus = two_gpus()
    r = NvmlReader(fake_nvml(gpus))
    r.init()
    gpus[0]["lost"] = True
    assert [g.uuid for g in r.read()] == ["MIG-1111", "MIG-2222"]
    assert 0 in r.failing
    gpus[0]["lost"] = False
    assert next(g.uuid for g in r.read()) == "GPU-aaaa"
    assert not r.failing


def test_missing_nvml_is_one_line_naming_nvml_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(gpu_mod, "load_nvml", lambda: fake_nvml([], missing=True))
    assert shadowscale_main(["produce", "gpu", "--bootstrap", "127.0.0.1:9092"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NVML" in err and "nvidia-ml-py" in err
    with pytest.raises(NvmlUnavailable, match="NVML Shared Library Not Found"):
        NvmlReader(fake_nvml([], missing=True)).init()


def test_no_nvml_on_this_machine_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        NvmlReader(gpu_mod.load_nvml()).init()
    except NvmlUnavailable:
        pass
    else:  # a machine with a GPU
        pytest.skip("NVML is present here")
    assert shadowscale_main(["produce", "gpu", "--bootstrap", "127.0.0.1:9092"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("shadowscale produce gpu: NVML not found")


def test_bad_bootstrap_and_interval_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert shadowscale_main(["produce", "gpu", "--bootstrap", "nohost"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        shadowscale_main(["produce", "gpu", "--bootstrap", "h:1", "--interval", "-1"])


def test_pod_uid_from_cgroupfs_and_systemd_paths(tmp_path: Path) -> None:
    uid = "0f1e2d3c-4b5a-6978-8899-aabbccddeeff"
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "cgroup").write_text(f"0::/kubepods/burstable/pod{uid}/cri-containerd-abc\n")
    (tmp_path / "8").mkdir()
    (tmp_path / "8" / "cgroup").write_text(
        f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid.replace('-', '_')}.slice/x\n"
    )
    (tmp_path / "9").mkdir()
    (tmp_path / "9" / "cgroup").write_text("0::/user.slice/session-1.scope\n")
    assert pod_uid_of_pid(7, tmp_path) == uid
    assert pod_uid_of_pid(8, tmp_path) == uid
    assert pod_uid_of_pid(9, tmp_path) is None
    assert pod_uid_of_pid(12345, tmp_path) is None  # gone
    find = cgroup_pod_lookup(
        lambda: {uid: PodInfo("serving", "resnet-0", {"shadowscale.io/model": "resnet50"})}, proc=tmp_path
    )
    assert find([7, 8, 9]) == {
        7: GpuPod(namespace="serving", pod="resnet-0", model="resnet50"),
        8: GpuPod(namespace="serving", pod="resnet-0", model="resnet50"),
    }


@pytest.mark.asyncio
async def test_events_through_the_real_broker(broker: LocalBroker) -> None:
    cfg, topic = await fresh_topic(broker.bootstrap, "gpu")
    exporter = GpuExporter(
        NvmlReader(fake_nvml(two_gpus())),
        lambda: KafkaSink(cfg),
        node="gpu-node-1",
        topic=topic,
        interval_s=0.2,
        pod_lookup=lookup,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(exporter.run(stop))
    recs = await read_all(cfg, topic, 6)
    stop.set()
    stats = await task
    assert stats.published >= 6 and stats.dropped == 0
    dec = Decoder()
    now = time.time()
    events = [dec.gpu(v, now) for _, v in recs]
    assert all(isinstance(e, GpuEvent) for e in events), events
    assert {k for k, _ in recs} == {b"gpu-node-1"}
    by_uuid = {e.gpu_uuid: e for e in events if isinstance(e, GpuEvent)}
    assert set(by_uuid) == {"GPU-aaaa", "MIG-1111", "MIG-2222"}
    a = by_uuid["GPU-aaaa"]
    assert (a.node, a.gpu_index) == ("gpu-node-1", 0) and a.utilization == pytest.approx(0.37)
    assert (a.memory_used_bytes, a.memory_total_bytes) == (10 * GIB, 80 * GIB)
    assert a.pods == (GpuPod(namespace="serving", pod="resnet-0", model="resnet50"),)  # pid 103: no pod
    m = by_uuid["MIG-1111"]
    assert (m.gpu_index, m.memory_total_bytes, m.pods) == (1, 10 * GIB, (PODS[201],))
    assert by_uuid["MIG-2222"].pods == ()
    assert json.loads(recs[0][1] or b"")["schema"] == "shadowscale.gpu/v1"


@pytest.mark.asyncio
async def test_broker_down_then_up_backs_off_and_recovers() -> None:
    late = LocalBroker(port=free_port())
    cfg = KafkaConfig(bootstrap=late.bootstrap, client_id="test-gpu")
    exporter = GpuExporter(
        NvmlReader(fake_nvml(two_gpus()[:1])),
        lambda: KafkaSink(cfg),
        node="n1",
        topic="gpu-late",
        interval_s=0.1,
        pod_lookup=lookup,
        backoff_max_s=0.5,
        send_timeout_s=2.0,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(exporter.run(stop))
    try:
        await asyncio.sleep(1.5)
        assert exporter.stats.broker_failures >= 1 and exporter.stats.dropped >= 1
        assert exporter.stats.published == 0
        await asyncio.to_thread(late.start)
        from shadowscale.agent.kafka import ensure_topics

        await ensure_topics(cfg, ["gpu-late"], 1)
        recs = await read_all(cfg, "gpu-late", 2)
        assert len(recs) >= 2
        assert exporter.stats.published >= 2
    finally:
        stop.set()
        await task
        late.stop()


def test_hami_annotation_parsing() -> None:
    anno = {HAMI_ALLOCATED: "GPU-aaaa,NVIDIA,4000,30:GPU-bbbb,NVIDIA,1000,0:;GPU-aaaa,NVIDIA,96,0:;junk,x,y:;"}
    assert hami_shares(anno) == {"GPU-aaaa": 4096 * 2**20, "GPU-bbbb": 1000 * 2**20}
    assert hami_shares({}) == {}


def test_hami_shared_gpu_is_reported_per_share_too() -> None:
    gpus = two_gpus()[:1]  # GPU-aaaa: pids 101, 102 (pod resnet-0), 103 (no pod)
    pods = {**PODS, 103: GpuPod(namespace="serving", pod="bert-0", model="bert")}
    index = {
        "u1": PodInfo("serving", "resnet-0", {}, {HAMI_ALLOCATED: "GPU-aaaa,NVIDIA,4096,50:;"}),
        "u2": PodInfo("serving", "bert-0", {}, {}),  # on the GPU without a HAMi share
    }
    exporter = GpuExporter(
        NvmlReader(fake_nvml(gpus)),
        lambda: KafkaSink(KafkaConfig()),
        node="n1",
        pod_lookup=lambda pids: {p: pods[p] for p in pids if p in pods},
        share_lookup=hami_share_lookup(lambda: index),
    )
    events = exporter.read_events()
    assert [e.gpu_uuid for e in events] == ["GPU-aaaa", "GPU-aaaa::serving/resnet-0"]
    whole, share = events
    assert [p.pod for p in whole.pods] == ["resnet-0", "bert-0"]
    assert share.pods == (PODS[101],) and share.gpu_index == 0
    assert (share.memory_used_bytes, share.memory_total_bytes) == (2 * GIB, 4 * GIB)  # two processes, 1 GiB each
    assert share.utilization == whole.utilization
    dec = Decoder()
    assert all(isinstance(dec.gpu(encode(e), time.time()), GpuEvent) for e in events)


def test_cli_publishes_through_the_real_broker(
    broker: LocalBroker, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(gpu_mod, "load_nvml", lambda: fake_nvml(two_gpus()[:1]))
    topic = f"gpu-cli-{time.monotonic_ns()}"
    argv = ["produce", "gpu", "--bootstrap", broker.bootstrap, "--interval", "0.2", "--duration", "1.2"]
    argv += ["--topic", topic, "--node", "node-a", "--no-pods", "--create-topic", "--partitions", "1"]
    assert shadowscale_main(argv) == 0
    assert "published" in capsys.readouterr().err
    recs = asyncio.run(read_all(KafkaConfig(bootstrap=broker.bootstrap), topic, 3))
    events = [Decoder().gpu(v, time.time()) for _, v in recs]
    assert len(events) >= 3 and all(isinstance(e, GpuEvent) and e.node == "node-a" for e in events)


def test_nvml_failing_as_a_whole_is_reinitialised_with_back_off() -> None:
    nv = fake_nvml(two_gpus()[:1])
    healthy = nv.nvmlDeviceGetCount
    inits: list[float] = []
    nv.nvmlInit = lambda: inits.append(time.monotonic())
    exporter = GpuExporter(NvmlReader(nv), lambda: KafkaSink(KafkaConfig()), node="n1", backoff_max_s=0.2)
    assert len(exporter.read_events()) == 1 and len(inits) == 1

    def broken() -> int:
        raise NVMLError("Unknown Error")

    nv.nvmlDeviceGetCount = broken
    assert exporter.read_events() == [] and not exporter.reader.initialised
    assert exporter.stats.nvml_failures == 1
    assert exporter.read_events() == [] and len(inits) == 1  # within the back-off: no re-init yet
    nv.nvmlDeviceGetCount = healthy
    time.sleep(0.25)
    assert len(exporter.read_events()) == 1 and len(inits) == 2  # re-initialised, reading again
