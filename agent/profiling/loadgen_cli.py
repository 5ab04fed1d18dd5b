"""``shadowscale loadgen``'s arguments, apart from the load generator so that ``loadgen --help`` imports nothing
heavy (the program itself: :mod:`agent.profiling.loadgen`)."""

from __future__ import annotations

import argparse
import os
from typing import Any

SHAPE_ENV = "SHADOWSCALE_LOADGEN_SHAPE"
TRIAL_ENV = "SHADOWSCALE_TRIAL_ID"
DEFAULT_TOPIC = "shadowscale.trials"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target", required=True, metavar="URL", help="http(s)://HOST:PORT/PATH, openai+http(s)://… or tcp://HOST:PORT"
    )
    p.add_argument("--trial-id", default=os.environ.get(TRIAL_ENV), help=f"the trial (default ${TRIAL_ENV})")
    p.add_argument("--model", required=True, help="the model being profiled")
    p.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "default"), help="($POD_NAMESPACE)")
    p.add_argument("--slo-ms", required=True, type=float, help="p99 latency objective in ms")
    p.add_argument("--bootstrap", required=True, metavar="HOST:PORT", help="Kafka bootstrap servers")
    p.add_argument("--topic", default=DEFAULT_TOPIC, help=f"trial-results topic (default {DEFAULT_TOPIC})")
    p.add_argument("--config", metavar="FILE", help="agent YAML whose kafka section (TLS, SASL) is used")
    p.add_argument(
        "--security-protocol",
        choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        help="Kafka security protocol (overrides --config's)",
    )
    p.add_argument("--sasl-mechanism", choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"), help="SASL mechanism")
    p.add_argument("--ssl-cafile", metavar="FILE", help="CA bundle that signed the brokers' certificates")
    p.add_argument("--shape", metavar="FILE", help=f"request shape JSON (default ${SHAPE_ENV}, else empty bodies)")
    p.add_argument("--step-s", type=float, default=2.0, help="seconds of load per rate (2)")
    p.add_argument("--start-rps", type=float, default=10.0, help="first rate (10)")
    p.add_argument("--max-rps", type=float, default=20_000.0, help="highest rate tried (20000)")
    p.add_argument("--bisect-steps", type=int, default=4, help="bisection steps after the SLO breaks (4)")
    p.add_argument("--drain-s", type=float, help="wait for late answers per step (default 3 × SLO, >= 0.2 s)")
    p.add_argument("--connect-timeout-s", type=float, default=60.0, help="wait for the target to answer (60)")
    p.add_argument(
        "--warmup-s", type=float, default=5.0, help="unmeasured load at the first rate before the search (5)"
    )
    p.add_argument("--publish-timeout-s", type=float, default=60.0, help="retry an unreachable broker (60)")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """``shadowscale loadgen``: the same program as ``python -m agent.profiling.loadgen``."""
    p = sub.add_parser(
        "loadgen",
        help="load-test one shadow trial's target and publish its capacity at the SLO (the trial Job's program)",
        description=(
            "Load-test one shadow trial's target: wait until it answers, raise open-loop load shaped like the "
            "model's traffic until the p99 latency breaks the SLO, bisect to the capacity, then publish the result "
            "on the trials topic and print it. The shadow runner starts this as a Kubernetes Job. Exit status: 0 "
            "once the result is published, 1 if it could not be, 2 for bad arguments."
        ),
    )
    add_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from shadowscale.agent.profiling.loadgen import run_args

    return run_args(args)
