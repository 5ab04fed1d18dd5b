"""The GPU exporter: NVML readings per GPU (or MIG instance), mapped to pods and models, published to Kafka.

``shadowscale produce gpu --bootstrap HOST:PORT [--interval S]`` reads every GPU once per interval through NVML
(``nvidia-ml-py``, import name ``pynvml``): utilization, memory used/total and the processes on it. Each process is
mapped to its pod through its cgroup (``/proc/PID/cgroup`` names the pod UID) and the pod's labels (the model
label), and one ``shadowscale.gpu/v1`` event per GPU — per MIG instance on a GPU in MIG mode — is published keyed
by node name.

It keeps going: a GPU that cannot be read is skipped (and reported once) until it answers again, NVML failing as
a whole is re-initialised with back-off, and a broker that cannot be reached is retried with back-off while the
readings of those intervals are dropped (and counted). Without NVML it exits with status 2 and one line.

Everything NVML-specific sits behind :class:`NvmlReader`, which takes the ``pynvml`` module as an argument (tests
pass a fake module); the pod lookup is a plain function (:data:`PodLookup`) that tests replace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from shadowscale.agent.events import GPU_V1, GpuEvent, GpuPod, encode

log = structlog.get_logger("shadowscale.gpu")

MODEL_LABEL = "shadowscale.io/model"
"""The pod label whose value is the model name (the agent's ``kubernetes.label``)."""

NVML_MISSING = (
    "NVML not found ({detail}): this node needs the NVIDIA driver's libnvidia-ml.so.1 (install the NVIDIA driver, "
    "or run in a container with the NVIDIA container toolkit) and the Python binding: pip install nvidia-ml-py"
)


class NvmlUnavailable(RuntimeError):
    """NVML (the library or its Python binding) is not available on this machine; the message is one line."""


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One GPU or MIG instance at one instant. ``utilization`` is in [0, 1]; ``pids`` the processes holding it."""

    index: int
    uuid: str
    utilization: float
    memory_used_bytes: int
    memory_total_bytes: int
    pids: tuple[int, ...] = ()
    parent_uuid: str | None = None
    """For a MIG instance: the physical GPU's UUID (utilization is then the parent's; NVML has none per instance)."""
    pid_memory: Mapping[int, int] = field(default_factory=dict)
    """GPU memory used by each process (bytes; 0 where NVML does not say)."""
    power_watts: float | None = None
    """The board's power draw (for a MIG instance the parent's); None where NVML does not report it."""


def load_nvml() -> Any:
    """Import ``pynvml`` (nvidia-ml-py) or raise :class:`NvmlUnavailable`."""
    try:
        import importlib

        return importlib.import_module("pynvml")
    except ImportError as e:
        raise NvmlUnavailable(NVML_MISSING.format(detail=f"no Python binding: {e}")) from None


class NvmlReader:
    """Reads every GPU through an NVML module (``pynvml`` or a fake with the same functions)."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self.initialised = False
        self.failing: dict[int, str] = {}
        """GPU index -> the error it last gave (a GPU is reported once when it fails and once when it recovers)."""

    def init(self) -> None:
        """``nvmlInit``; raises :class:`NvmlUnavailable` if the library is missing, ``NVMLError`` otherwise."""
        nv = self.nvml
        try:
            nv.nvmlInit()
        except nv.NVMLError_LibraryNotFound as e:
            raise NvmlUnavailable(NVML_MISSING.format(detail=str(e) or "NVML Shared Library Not Found")) from None
        self.initialised = True

    def shutdown(self) -> None:
        if self.initialised:
            self.initialised = False
            with contextlib.suppress(Exception):
                self.nvml.nvmlShutdown()

    def read(self) -> list[GpuReading]:
        """One reading per GPU (per MIG instance in MIG mode). A GPU that fails is skipped and reported once.

        Raises ``NVMLError`` only when NVML itself fails (the device count cannot be read): the caller
        re-initialises with back-off.
        """
        nv = self.nvml
        out: list[GpuReading] = []
        for i in range(int(nv.nvmlDeviceGetCount())):
            try:
                out.extend(self._read_gpu(i))
            except nv.NVMLError as e:
                if self.failing.get(i) != str(e):
                    log.warning("GPU unreadable; skipping it until it answers again", gpu_index=i, error=str(e))
                self.failing[i] = str(e)
                continue
            if self.failing.pop(i, None) is not None:
                log.info("GPU readable again", gpu_index=i)
        return out

    def _read_gpu(self, i: int) -> list[GpuReading]:
        nv = self.nvml
        h = nv.nvmlDeviceGetHandleByIndex(i)
        uuid = _text(nv.nvmlDeviceGetUUID(h))
        util = _utilization(nv, h)
        power = _power(nv, h)
        if _mig_enabled(nv, h):
            shares = []
            for j in range(int(nv.nvmlDeviceGetMaxMigDeviceCount(h))):
                try:
                    mh = nv.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
                except nv.NVMLError_NotFound:
                    continue  # an empty slot
                used, total = _memory(nv, mh)
                shares.append(
                    GpuReading(
                        index=i,
                        uuid=_text(nv.nvmlDeviceGetUUID(mh)),
                        utilization=util,
                        memory_used_bytes=used,
                        memory_total_bytes=total,
                        parent_uuid=uuid,
                        power_watts=power,
                        **_procs(nv, mh),
                    )
                )
            return shares
        used, total = _memory(nv, h)
        return [
            GpuReading(
                index=i,
                uuid=uuid,
                utilization=util,
                memory_used_bytes=used,
                memory_total_bytes=total,
                power_watts=power,
                **_procs(nv, h),
            )
        ]


def _text(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _utilization(nv: Any, h: Any) -> float:
    return min(max(float(nv.nvmlDeviceGetUtilizationRates(h).gpu) / 100.0, 0.0), 1.0)


def _memory(nv: Any, h: Any) -> tuple[int, int]:
    """``(used, total)`` bytes as ``nvidia-smi`` shows them: NVML's v2 memory info, whose ``used`` leaves out the
    memory the driver reserves (v1's ``used`` counts it: 615 MiB more on an idle H200 with driver 580, measured
    against nvidia-smi, docs/results.md), with the reserved memory taken off ``total`` too, so that total − used
    stays what can be allocated. Falls back to v1 where the driver or the binding has no v2 (MIG instances)."""
    version = getattr(nv, "nvmlMemory_v2", None)
    if version is not None:
        try:
            m = nv.nvmlDeviceGetMemoryInfo(h, version=version)
            return int(m.used), max(int(m.total) - int(m.reserved), 0)
        except (nv.NVMLError, TypeError, AttributeError):
            pass
    m = nv.nvmlDeviceGetMemoryInfo(h)
    return int(m.used), int(m.total)


def _power(nv: Any, h: Any) -> float | None:
    """Watts from ``nvmlDeviceGetPowerUsage`` (milliwatts); None where the GPU or the binding has none."""
    fn = getattr(nv, "nvmlDeviceGetPowerUsage", None)
    if fn is None:
        return None
    try:
        mw = float(fn(h))
    except (nv.NVMLError, TypeError, ValueError):
        return None
    return mw / 1000.0 if 0.0 <= mw <= 1e8 else None


def _mig_enabled(nv: Any, h: Any) -> bool:
    try:
        current, _pending = nv.nvmlDeviceGetMigMode(h)
    except nv.NVMLError:  # NotSupported on GPUs without MIG
        return False
    return bool(current == nv.NVML_DEVICE_MIG_ENABLE)


def _procs(nv: Any, h: Any) -> dict[str, Any]:
    """``pids`` and ``pid_memory`` of the processes on a GPU (compute and graphics)."""
    mem: dict[int, int] = {}
    for fn in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        try:
            procs = getattr(nv, fn)(h)
        except nv.NVMLError:
            continue
        for p in procs:
            used = getattr(p, "usedGpuMemory", None)
            mem[int(p.pid)] = mem.get(int(p.pid), 0) + (int(used) if isinstance(used, int) and used > 0 else 0)
    return {"pids": tuple(mem), "pid_memory": mem}


# -- processes -> pods ----------------------------------------------------------------------------------------------

PodLookup = Callable[[Sequence[int]], Mapping[int, GpuPod]]
"""Maps process IDs to the pods (and models) they run in; PIDs outside any known pod are left out."""

_POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")


def pod_uid_of_pid(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The pod UID in the cgroup path of ``pid`` (cgroupfs ``.../pod<uid>/...`` or systemd ``...-pod<uid>.slice``).

    On a node the exporter must see the host's PIDs (``hostPID: true``)."""
    try:
        text = (proc / str(pid) / "cgroup").read_text()
    except OSError:
        return None
    m = _POD_UID.search(text)
    return m.group(1).replace("_", "-") if m else None


@dataclass(frozen=True, slots=True)
class PodInfo:
    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


HAMI_ALLOCATED = "hami.io/vgpu-devices-allocated"
"""HAMi's pod annotation: per container ``UUID,type,memory MiB,cores:`` per device, ``;`` between containers."""


def hami_shares(annotations: Mapping[str, str]) -> dict[str, int]:
    """GPU UUID -> bytes of GPU memory HAMi allocated to the pod on it (summed over its containers)."""
    out: dict[str, int] = {}
    for container in annotations.get(HAMI_ALLOCATED, "").split(";"):
        for device in container.split(":"):
            fields = device.split(",")
            if len(fields) >= 3 and fields[0].strip():
                try:
                    mib = int(fields[2])
                except ValueError:
                    continue
                uuid = fields[0].strip()
                out[uuid] = out.get(uuid, 0) + max(mib, 0) * 1024 * 1024
    return out


ShareLookup = Callable[[GpuPod], Mapping[str, int]]
"""The HAMi shares of a pod: GPU UUID -> bytes of GPU memory allocated to it (empty: the pod holds no share)."""


class PodIndex(Protocol):
    def __call__(self) -> Mapping[str, PodInfo]:
        """The pods on this node by UID (may be cached)."""
        ...


def cgroup_pod_lookup(
    pods_by_uid: PodIndex, *, model_label: str = MODEL_LABEL, proc: Path = Path("/proc")
) -> PodLookup:
    """The default :data:`PodLookup`: cgroup of the PID -> pod UID -> the pod (and its model label)."""

    def lookup(pids: Sequence[int]) -> Mapping[int, GpuPod]:
        uids = {pid: pod_uid_of_pid(pid, proc) for pid in pids}
        if not any(uids.values()):
            return {}
        index = pods_by_uid()
        out: dict[int, GpuPod] = {}
        for pid, uid in uids.items():
            info = index.get(uid) if uid else None
            if info is not None:
                out[pid] = GpuPod(namespace=info.namespace, pod=info.name, model=info.labels.get(model_label))
        return out

    return lookup


class KubePodIndex:
    """Pods on ``node`` by UID from the Kubernetes API (in-cluster or kubeconfig), cached for ``ttl_s`` seconds.

    Synchronous by design (called from the exporter's reading step with a short timeout); a failing API is logged
    and the last known index is kept."""

    def __init__(self, node: str, *, ttl_s: float = 30.0, timeout_s: float = 3.0) -> None:
        self.node = node
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._index: dict[str, PodInfo] = {}
        self._at = -1e18

    def __call__(self) -> Mapping[str, PodInfo]:
        if time.monotonic() - self._at >= self.ttl_s:
            self._at = time.monotonic()
            try:
                self._index = asyncio.run(self._list())
            except Exception as e:
                log.warning("cannot list pods on this node; keeping the last known pods", node=self.node, error=str(e))
        return self._index

    async def _list(self) -> dict[str, PodInfo]:
        from kubernetes_asyncio import client, config

        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            await config.load_kube_config()
        async with client.ApiClient() as api:
            pods = await client.CoreV1Api(api).list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={self.node}", _request_timeout=self.timeout_s
            )
        return {
            p.metadata.uid: PodInfo(
                p.metadata.namespace,
                p.metadata.name,
                dict(p.metadata.labels or {}),
                dict(p.metadata.annotations or {}),
            )
            for p in pods.items
        }


def hami_share_lookup(pods_by_uid: PodIndex) -> ShareLookup:
    """The default :data:`ShareLookup`: the pod's ``hami.io/vgpu-devices-allocated`` annotation."""

    def lookup(pod: GpuPod) -> Mapping[str, int]:
        for info in pods_by_uid().values():
            if info.name == pod.pod and info.namespace == pod.namespace:
                return hami_shares(info.annotations)
        return {}

    return lookup


def no_pods(pids: Sequence[int]) -> Mapping[int, GpuPod]:
    """A :data:`PodLookup` that maps nothing (``--no-pods``: outside Kubernetes)."""
    return {}


# -- readings -> events ---------------------------------------------------------------------------------------------


def share_uuid(gpu_uuid: str, pod: GpuPod) -> str:
    """The ``gpu_uuid`` of a HAMi share: the GPU's UUID, ``::``, the pod (cut to the schema's 128 characters)."""
    return f"{gpu_uuid}::{pod.namespace}/{pod.pod}"[:128]


def gpu_events(
    node: str,
    readings: Iterable[GpuReading],
    pods: Mapping[int, GpuPod],
    now: float,
    shares: ShareLookup | None = None,
) -> list[GpuEvent]:
    """One event per reading; its pods are the distinct pods of its processes, in process order.

    With ``shares``, every pod holding a HAMi share of the GPU also gets an event of its own (``gpu_uuid`` from
    :func:`share_uuid`): the share's memory as total, its processes' memory as used, the GPU's utilization."""
    out = []
    for r in readings:
        seen: dict[tuple[str, str], GpuPod] = {}
        used_by: dict[tuple[str, str], int] = {}
        for pid in r.pids:
            p = pods.get(pid)
            if p is not None:
                seen.setdefault((p.namespace, p.pod), p)
                used_by[(p.namespace, p.pod)] = used_by.get((p.namespace, p.pod), 0) + r.pid_memory.get(pid, 0)
        out.append(
            GpuEvent(
                schema=GPU_V1,
                node=node,
                gpu_uuid=r.uuid[:128],
                gpu_index=r.index,
                event_time=now,
                utilization=r.utilization,
                memory_used_bytes=min(r.memory_used_bytes, r.memory_total_bytes),
                memory_total_bytes=r.memory_total_bytes,
                pods=tuple(seen.values()),
                power_watts=r.power_watts,
            )
        )
        if shares is None:
            continue
        for key, p in seen.items():
            total = shares(p).get(r.uuid, 0)
            if total > 0:
                out.append(
                    GpuEvent(
                        schema=GPU_V1,
                        node=node,
                        gpu_uuid=share_uuid(r.uuid, p),
                        gpu_index=r.index,
                        event_time=now,
                        utilization=r.utilization,
                        memory_used_bytes=min(used_by[key], total),
                        memory_total_bytes=total,
                        pods=(p,),
                    )
                )
    return out


# -- the loop -------------------------------------------------------------------------------------------------------


class Sink(Protocol):
    async def start(self, timeout_s: float = ...) -> None: ...
    async def stop(self, timeout_s: float = ...) -> None: ...
    async def write(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None: ...


@dataclass(slots=True)
class ExporterStats:
    intervals: int = 0
    published: int = 0
    dropped: int = 0
    """Events of intervals during which the broker could not be reached."""
    nvml_failures: int = 0
    broker_failures: int = 0


@dataclass(slots=True)
class Backoff:
    """Exponential back-off: ``initial_s`` doubling to ``max_s``; ``ready(now)`` once the wait has passed."""

    initial_s: float = 1.0
    max_s: float = 30.0
    delay_s: float = 0.0
    until: float = 0.0

    def fail(self, now: float) -> float:
        self.delay_s = min(self.max_s, self.delay_s * 2) if self.delay_s else self.initial_s
        self.until = now + self.delay_s
        return self.delay_s

    def ok(self) -> None:
        self.delay_s = 0.0
        self.until = 0.0

    def ready(self, now: float) -> bool:
        return now >= self.until


class GpuExporter:
    """Reads, maps and publishes once per ``interval_s`` until ``stop`` is set."""

    def __init__(
        self,
        reader: NvmlReader,
        sink_factory: Callable[[], Sink],
        *,
        node: str,
        topic: str = "shadowscale.gpu",
        interval_s: float = 1.0,
        pod_lookup: PodLookup = no_pods,
        share_lookup: ShareLookup | None = None,
        backoff_max_s: float = 30.0,
        send_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not interval_s > 0:
            raise ValueError("interval must be positive")
        self.reader = reader
        self.sink_factory = sink_factory
        self.node = node
        self.topic = topic
        self.interval_s = interval_s
        self.pod_lookup = pod_lookup
        self.share_lookup = share_lookup
        self.send_timeout_s = send_timeout_s
        self.clock = clock
        self.stats = ExporterStats()
        self._sink: Sink | None = None
        self._broker_backoff = Backoff(min(1.0, backoff_max_s), backoff_max_s)
        self._nvml_backoff = Backoff(min(1.0, backoff_max_s), backoff_max_s)

    def read_events(self) -> list[GpuEvent]:
        """One NVML pass turned into events; NVML failing as a whole is re-initialised with back-off."""
        mono = time.monotonic()
        if not self.reader.initialised:
            if not self._nvml_backoff.ready(mono):
                return []
            try:
                self.reader.init()
            except Exception as e:  # NvmlUnavailable too: the driver may be in the middle of an upgrade
                self.stats.nvml_failures += 1
                delay = self._nvml_backoff.fail(mono)
                log.warning("NVML init failed; retrying", error=str(e), retry_in_s=delay)
                return []
            if self._nvml_backoff.delay_s:
                log.info("NVML is back")
            self._nvml_backoff.ok()
        try:
            readings = self.reader.read()
        except Exception as e:
            self.stats.nvml_failures += 1
            self.reader.shutdown()
            delay = self._nvml_backoff.fail(mono)
            log.warning("NVML failed; re-initialising", error=str(e), retry_in_s=delay)
            return []
        pids = sorted({pid for r in readings for pid in r.pids})
        try:
            pods = self.pod_lookup(pids) if pids else {}
        except Exception as e:
            log.warning("pod lookup failed; publishing without pods", error=str(e))
            pods = {}
        shares = self.share_lookup
        if shares is not None:
            lookup = shares

            def safe(p: GpuPod) -> Mapping[str, int]:
                try:
                    return lookup(p)
                except Exception as e:
                    log.warning("share lookup failed", pod=p.pod, error=str(e))
                    return {}

            shares = safe
        return gpu_events(self.node, readings, pods, self.clock(), shares)

    async def publish(self, events: Sequence[GpuEvent]) -> bool:
        """Send one interval's events; False (and counted as dropped) when the broker cannot take them now."""
        if not events:
            return True
        mono = time.monotonic()
        if self._sink is None:
            if not self._broker_backoff.ready(mono):
                self.stats.dropped += len(events)
                return False
            sink = self.sink_factory()
            try:
                await sink.start(timeout_s=self.send_timeout_s)
            except Exception as e:
                return self._broker_down(events, f"cannot reach the broker: {e}")
            self._sink = sink
        key = self.node.encode()
        try:
            await asyncio.wait_for(
                self._sink.write(self.topic, [(key, encode(ev)) for ev in events]), self.send_timeout_s
            )
        except Exception as e:
            old, self._sink = self._sink, None
            with contextlib.suppress(Exception):
                await old.stop(timeout_s=2.0)
            return self._broker_down(events, f"send failed: {type(e).__name__}: {e}")
        if self._broker_backoff.delay_s:
            log.info("broker reachable again; publishing", dropped_so_far=self.stats.dropped)
        self._broker_backoff.ok()
        self.stats.published += len(events)
        return True

    def _broker_down(self, events: Sequence[GpuEvent], why: str) -> bool:
        self.stats.broker_failures += 1
        self.stats.dropped += len(events)
        delay = self._broker_backoff.fail(time.monotonic())
        log.warning(f"{why}; dropping this interval's events and retrying with back-off", retry_in_s=delay)
        return False

    async def run(self, stop: asyncio.Event) -> ExporterStats:
        """The loop: read, map, publish, then sleep to the next interval boundary (or until ``stop``)."""
        try:
            next_at = time.monotonic()
            while not stop.is_set():
                events = await asyncio.to_thread(self.read_events)
                await self.publish(events)
                self.stats.intervals += 1
                next_at += self.interval_s
                wait = next_at - time.monotonic()
                if wait < 0:  # fell behind (a slow send): skip the missed ticks instead of bursting
                    next_at = time.monotonic()
                    wait = 0.0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
        finally:
            if self._sink is not None:
                await self._sink.stop(timeout_s=5.0)
                self._sink = None
            self.reader.shutdown()
        return self.stats


def node_name() -> str:
    """``NODE_NAME`` (set from the downward API in the DaemonSet) or the host name."""
    return os.environ.get("NODE_NAME") or socket.gethostname()
