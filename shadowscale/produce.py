"""``shadowscale produce``: the event producers' command line (parsers only; the work is imported on use)."""

from __future__ import annotations

import argparse
from typing import Any

from shadowscale.agent.producers.cli import register_gpu
from shadowscale.simulators.cli import positive_float, positive_int


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "produce",
        help="publish events to Kafka (trace replay, GPU exporter)",
        description="Publish the events the agent consumes: a trace replayed as per-pod traffic events, or the "
        "readings of this node's GPUs.",
    )
    psub = p.add_subparsers(dest="producer", metavar="PRODUCER")
    psub.required = True
    r = psub.add_parser(
        "replay",
        help="publish a trace as per-pod traffic events",
        description="Publish a bundled trace or a CSV as shadowscale.traffic/v1 events, paced in real time x SPEED.",
    )
    r.add_argument("--trace", required=True, metavar="NAME|PATH", help="bundled trace name or a CSV file")
    r.add_argument(
        "--speed", type=positive_float, default=1.0, metavar="X", help="trace seconds per second (default 1)"
    )
    r.add_argument("--bootstrap", required=True, metavar="HOST:PORT", help="Kafka bootstrap servers")
    r.add_argument("--topic", default="shadowscale.traffic", help="traffic topic (default shadowscale.traffic)")
    r.add_argument("--hours", type=positive_float, help="replay only the first H hours of the trace")
    r.add_argument("--models", type=positive_int, default=20, metavar="N", help="the N busiest models (default 20)")
    r.add_argument("--window", type=positive_float, default=1.0, metavar="S", help="trace seconds per event window")
    r.add_argument("--pods", type=positive_int, default=1, metavar="N", help="pods per model (fixed; default 1)")
    r.add_argument("--namespace", default="default", help="namespace the events name (default default)")
    r.add_argument("--duration", type=positive_float, metavar="S", help="stop after S wall seconds")
    r.add_argument("--seed", type=int, default=0, help="seed for spreading per-minute counts (default 0)")
    r.add_argument("--create-topic", action="store_true", help="create the topic if it does not exist")
    r.add_argument("--partitions", type=positive_int, default=4, help="partitions of a created topic (default 4)")
    r.set_defaults(func=_replay)
    register_gpu(psub)


def _replay(args: argparse.Namespace) -> int:
    from shadowscale.replay import replay_main

    return replay_main(args)
