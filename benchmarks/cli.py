"""``shadowscale bench …``: each benchmark registers a sub-command and prints one JSON object."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    from shadowscale.benchmarks import agent, chaos, placement, profiler, simulator

    parser = sub.add_parser("bench", help="run a benchmark and print JSON", description=__doc__)
    bench_sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    bench_sub.required = True
    simulator.register(bench_sub)
    placement.register(bench_sub)
    agent.register(bench_sub)
    profiler.register(bench_sub)
    chaos.register(bench_sub)
