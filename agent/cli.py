"""``shadowscale agent --config FILE``: run the live agent (see ``docs/agent.md``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # keep `shadowscale --help` from importing Kafka and HTTP libraries
    from shadowscale.agent.app import ActuatorFactory


def register(sub: argparse._SubParsersAction[Any], simulated: ActuatorFactory | None = None) -> None:
    p = sub.add_parser(
        "agent",
        help="run the live autoscaling agent (Kafka events in, scale decisions out)",
        description=(
            "Consume traffic and GPU events from Kafka, decide replicas with a policy (hpa, keda, kpa, shadowscale) "
            "and apply them to Kubernetes or the simulated cluster. Configuration: YAML, overridden by "
            "SHADOWSCALE_AGENT__SECTION__KEY environment variables. Stops cleanly on SIGTERM/SIGINT."
        ),
    )
    p.add_argument("--config", required=True, type=Path, metavar="FILE", help="YAML configuration file")
    p.add_argument("--check", action="store_true", help="validate the configuration, print a summary and exit")
    p.set_defaults(func=lambda args: main(args, simulated))


def main(args: argparse.Namespace, simulated: ActuatorFactory | None) -> int:
    from shadowscale.agent.app import run
    from shadowscale.agent.config import load_config

    cfg = load_config(args.config)
    if args.check:
        print(
            f"{args.config}: ok — policy {cfg.policy}, {len(cfg.models)} models, actuator {cfg.actuator.kind}, "
            f"Kafka {cfg.kafka.bootstrap}{', dry-run' if cfg.dry_run else ''}"
        )
        return 0
    return run(cfg, simulated)
