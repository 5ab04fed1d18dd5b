"""``shadowscale produce gpu``: the CLI of the GPU exporter (``register_gpu`` adds it under ``produce``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from shadowscale.errors import UsageError


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return v


def register_gpu(psub: argparse._SubParsersAction[Any]) -> None:
    g = psub.add_parser(
        "gpu",
        help="publish NVML GPU readings (per GPU or MIG instance) as GPU events",
        description=(
            "Read every GPU through NVML once per interval (utilization, memory, processes), map processes to pods "
            "and models (cgroup -> pod UID -> labels) and publish shadowscale.gpu/v1 events keyed by node. "
            "Retries an unreachable broker and unreadable GPUs with back-off. Exit status 2 without NVML."
        ),
    )
    g.add_argument("--bootstrap", required=True, metavar="HOST:PORT", help="Kafka bootstrap servers")
    g.add_argument("--interval", type=_positive, default=1.0, metavar="S", help="seconds between readings (1)")
    g.add_argument("--topic", default="shadowscale.gpu", help="GPU topic (default shadowscale.gpu)")
    g.add_argument("--node", help="node name in the events (default $NODE_NAME, else the host name)")
    g.add_argument("--model-label", default="shadowscale.io/model", help="pod label naming the model")
    g.add_argument("--no-pods", action="store_true", help="do not map processes to pods (outside Kubernetes)")
    g.add_argument("--duration", type=_positive, metavar="S", help="stop after S seconds")
    g.add_argument("--config", metavar="FILE", help="agent YAML whose kafka section (TLS, SASL) is used")
    g.add_argument("--create-topic", action="store_true", help="create the topic if it does not exist")
    g.add_argument("--partitions", type=int, default=4, help="partitions of a created topic (default 4)")
    g.set_defaults(func=gpu_main)


def gpu_main(args: argparse.Namespace) -> int:
    from shadowscale.agent.producers.gpu import NvmlReader, NvmlUnavailable, load_nvml

    bootstrap = str(args.bootstrap).strip()
    if not bootstrap or ":" not in bootstrap:
        raise UsageError(f"--bootstrap must be HOST:PORT, got {args.bootstrap!r}")
    try:
        reader = NvmlReader(load_nvml())
        reader.init()
    except NvmlUnavailable as e:
        print(f"shadowscale produce gpu: {e}", file=sys.stderr)
        return 2
    return run_gpu(args, reader)


def run_gpu(args: argparse.Namespace, reader: Any) -> int:
    """Run the exporter with an initialised reader until SIGTERM/SIGINT or ``--duration``."""
    import asyncio
    import contextlib
    import signal

    import msgspec

    from shadowscale.agent.config import KafkaConfig, LogConfig, load_config
    from shadowscale.agent.kafka import KafkaSink, KafkaUnavailable, ensure_topics
    from shadowscale.agent.logs import configure
    from shadowscale.agent.producers.gpu import (
        GpuExporter,
        KubePodIndex,
        cgroup_pod_lookup,
        hami_share_lookup,
        no_pods,
        node_name,
    )

    cfg = load_config(args.config) if args.config else None
    configure(cfg.log if cfg else LogConfig(), file=_Stderr())  # type: ignore[arg-type]
    kafka = cfg.kafka if cfg else KafkaConfig()
    kafka = msgspec.structs.replace(kafka, bootstrap=str(args.bootstrap).strip(), client_id="shadowscale-gpu")
    node = args.node or node_name()
    index = KubePodIndex(node)
    lookup = no_pods if args.no_pods else cgroup_pod_lookup(index, model_label=args.model_label)
    exporter = GpuExporter(
        reader,
        lambda: KafkaSink(kafka, linger_ms=5),
        node=node,
        topic=args.topic,
        interval_s=args.interval,
        pod_lookup=lookup,
        share_lookup=None if args.no_pods else hami_share_lookup(index),
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        if args.duration:
            loop.call_later(args.duration, stop.set)
        if args.create_topic:
            try:
                await ensure_topics(kafka, [args.topic], max(1, args.partitions))
            except KafkaUnavailable as e:
                print(f"shadowscale produce gpu: {e} (not creating the topic; retrying sends)", file=sys.stderr)
        await exporter.run(stop)

    asyncio.run(main())
    s = exporter.stats
    print(
        f"published {s.published:,} GPU events in {s.intervals:,} intervals; dropped {s.dropped:,} "
        f"(broker failures {s.broker_failures}, NVML failures {s.nvml_failures})",
        file=sys.stderr,
    )
    return 0


class _Stderr:
    """Writes to whatever ``sys.stderr`` is at the time (JSON log lines on stderr, like the agent's)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()
