"""The ``shadowscale`` command line: the composition root that wires simulators, benchmarks and the agent.

Every sub-command module exposes ``register(subparsers)`` that adds its parser and sets ``func`` to a callable
taking the parsed namespace and returning an exit status. Bad input raises :class:`UsageError` (or a
``ValueError`` subclass from an edge validator) and becomes a one-line message with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shadowscale import __version__


class UsageError(Exception):
    """A bad argument or input file; printed without a traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    from shadowscale import replay
    from shadowscale.agent import cli as agent_cli
    from shadowscale.agent.profiling import loadgen
    from shadowscale.benchmarks import cli as bench_cli
    from shadowscale.simulators import cli as sim_cli

    parser = argparse.ArgumentParser(
        prog="shadowscale",
        description="Event-driven autoscaling and GPU-sharing placement for ML inference on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"shadowscale {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    sim_cli.register(sub)
    bench_cli.register(sub)
    agent_cli.register(sub, simulated=replay.simulated_cluster)
    replay.register(sub)
    loadgen.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except (UsageError, ValueError, FileNotFoundError) as exc:
        print(f"shadowscale {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    raise SystemExit(main())
