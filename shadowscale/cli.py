"""The ``shadowscale`` command line: the composition root that wires simulators, benchmarks and the agent.

Every sub-command module exposes ``register(subparsers)`` that adds its parser and sets ``func`` to a callable
taking the parsed namespace and returning an exit status. Only the module of the command being run is imported
(``--version`` and ``--help`` import none), so answering them takes no numpy, Kafka or plotting import.

Exit status: 0 success; 2 a usage error (bad argument, configuration or input file: :class:`UsageError`, one
line, no traceback); 1 anything else: a :class:`~shadowscale.errors.ShadowscaleError` (missing extra, data that
cannot be found) as one line, any other exception (a bug) with its traceback; 130 interrupted. ``--debug`` shows
the traceback of every error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shadowscale import __version__
from shadowscale.errors import ShadowscaleError, UsageError

if TYPE_CHECKING:
    from shadowscale.policies.ports import Actuator, Clock

__all__ = ["COMMANDS", "UsageError", "build_parser", "main"]

COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("shadowscale.simulators.cli", "replay a trace through autoscaling policies"),
    "bench": ("shadowscale.benchmarks.cli", "run a benchmark and print its results as JSON"),
    "agent": ("shadowscale.agent.cli", "run the live autoscaling agent (Kafka events in, scale decisions out)"),
    "produce": ("shadowscale.produce", "publish events to Kafka (trace replay, GPU exporter)"),
    "loadgen": (
        "shadowscale.agent.profiling.loadgen_cli",
        "load-test one shadow trial's target (the trial Job's program)",
    ),
}
"""Sub-command -> (module with ``register``, one-line help shown by ``shadowscale --help``)."""


def _simulated_cluster(cfg: Any, clock: Clock) -> Actuator:
    """The agent's ``actuator.kind: simulated``, imported only when an agent asks for it."""
    from shadowscale.replay import simulated_cluster

    return simulated_cluster(cfg, clock)


def _command_of(argv: Sequence[str]) -> str | None:
    """The sub-command named in ``argv`` (the first word that is not an option), if any."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(command: str | None = None, argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser with ``command``'s full sub-parser (every command's when None: slow, for tests and docs);
    ``argv`` lets ``bench`` import only the benchmark it names."""
    parser = argparse.ArgumentParser(
        prog="shadowscale",
        description="Event-driven autoscaling and GPU-sharing placement for ML inference on Kubernetes.",
        epilog="Run 'shadowscale COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"shadowscale {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of any error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        if command is not None and name != command:
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        mod = importlib.import_module(module)
        if name == "agent":
            mod.register(sub, simulated=_simulated_cluster)
        elif name == "bench":
            mod.register(sub, argv=argv)
        else:
            mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(args_in)
    try:
        parser = build_parser(command if command is not None else "", args_in)
    except ShadowscaleError as exc:  # a command whose optional dependencies are missing
        if "--debug" in args_in:
            traceback.print_exc()
        print(f"shadowscale {command}: error: {exc}", file=sys.stderr)
        return exc.exit_status
    args = parser.parse_args(args_in)
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `shadowscale ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except ShadowscaleError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"shadowscale {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except OSError as exc:
        if exc.filename is None or args.debug:
            raise
        print(f"shadowscale {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
