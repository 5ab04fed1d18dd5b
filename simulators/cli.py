"""``shadowscale simulate``: replay a trace through autoscaling policies and write a report."""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shadowscale.errors import MissingExtra, UsageError
from shadowscale.simulators.executor import add_arguments as add_executor_arguments

if TYPE_CHECKING:
    from shadowscale.simulators.workload import Workload

DEFAULT_POLICIES = "hpa,keda,kpa,static,oracle,shadowscale"
# Named here so `simulate --help` imports no numpy; tests/test_cli.py checks them against the registries.
HELP_TRACES = ("azure-functions-2019", "azure-llm-2023-conv", "azure-llm-2023-code", "mooncake", "llm-fleet")
HELP_POLICIES = ("hpa", "keda", "kpa", "static", "oracle", "shadowscale")
HELP_SPEC_SETS = ("traced", "rightsized")


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive, finite number")
    return v


def non_negative_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return v


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return v


def seed_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return v


def without_chunked_prefill(workload: Workload) -> Workload:
    """The workload with every LLM service served without chunked prefill."""
    services = tuple(
        s if s.llm is None else replace(s, llm=replace(s.llm, chunked_prefill=False)) for s in workload.services
    )
    return replace(workload, services=services)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "simulate",
        help="replay a trace through autoscaling policies",
        description=(
            "Replay a request trace through each policy on a simulated cluster and compare SLO attainment "
            "with GPU-hours. Writes DIR/summary.json, DIR/timeseries_<policy>.csv and PNG plots."
        ),
        epilog=f"Bundled traces: {', '.join(HELP_TRACES)}. Policies: {', '.join(HELP_POLICIES)}, and the reference "
        "'bound' (a lower bound on GPU-hours, computed, not simulated). "
        "A generic CSV needs columns timestamp (seconds or ISO time) and model; input_tokens, "
        "output_tokens and service_ms are optional.",
    )
    p.add_argument("--trace", required=True, metavar="NAME|PATH", help="bundled trace name or a CSV file")
    p.add_argument(
        "--policies",
        default=DEFAULT_POLICIES,
        metavar="LIST",
        help=f"comma-separated policies (default: {DEFAULT_POLICIES})",
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory (created)")
    p.add_argument("--hours", type=positive_float, help="simulate only the first H hours")
    p.add_argument("--models", type=positive_int, metavar="N", help="keep the N busiest models")
    p.add_argument(
        "--seed",
        type=seed_int,
        default=0,
        help="seed for spreading per-minute counts and generating llm-fleet (default 0)",
    )
    p.add_argument(
        "--cold-start",
        type=non_negative_float,
        default=None,
        metavar="S",
        help="seconds before a new replica serves, for every model (default: 60 for a CNN-class model; an LLM's "
        "follows its weights: 20 s engine start + weights at 1.6 GB/s, about 28 s for 7B, 1.8 min for 70B)",
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=300.0,
        metavar="S",
        help="the serving stack's time-out: a request still queued after S seconds is dropped (default 300, "
        "Knative's revision timeoutSeconds, up to which its activator holds requests through a cold start); per "
        "model never shorter than its cold start. A request a replica reaches when it can no longer meet its SLO "
        "is dropped then.",
    )
    p.add_argument(
        "--spec",
        choices=("default", *HELP_SPEC_SETS),
        default="default",
        help="spec set every policy runs on: traced (the trace's whole-GPU profiles) or rightsized (GPU shares "
        "chosen from the traffic before the scored window, i.e. the --warmup); default: shadowscale and the "
        "oracle right-sized, the others traced",
    )
    p.add_argument(
        "--min-replicas",
        type=int,
        choices=(0, 1),
        default=None,
        metavar="N",
        help="every model's min replicas, 0 or 1 (default: each policy's own: HPA 1, KEDA and Knative 0)",
    )
    p.add_argument(
        "--warmup",
        type=non_negative_float,
        default=0.0,
        metavar="S",
        help="score from S seconds into the trace: earlier requests, GPU time, scale events and cold starts only "
        "warm the policies up (default 0: every run starts from the policy's initial replicas at t=0 and is "
        "scored throughout)",
    )
    p.add_argument(
        "--no-chunked-prefill",
        action="store_true",
        help="serve LLMs without chunked prefill (a prefill step runs whole prompts while every running request "
        "waits; vLLM before --enable-chunked-prefill became its default); default: chunked, 2,048 tokens a step",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="also run each policy across a fine log-spaced grid of its main knob (HPA target utilization, KEDA "
        "lag threshold, KPA target concurrency; shadowscale headroom), refined near shadowscale's attainment, × "
        "min replicas 0/1 × spec set (traced, right-sized), and compare shadowscale with each baseline's Pareto "
        "frontier (sweep.png; summary.json 'sweep', 'frontier', 'fair_ratio', 'oracle', 'bound')",
    )
    add_executor_arguments(p, default_help="2, at most the CPUs available; used by --sweep")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.table import Table
    except ImportError as e:
        raise MissingExtra("shadowscale simulate", "sim", "rich") from e

    from shadowscale.policies.scaling import parse_policies
    from shadowscale.simulators.bound import fluid_bound_all_hours, fluid_bound_hours
    from shadowscale.simulators.engine import SimConfig
    from shadowscale.simulators.report import plot, reference_ratios, timeseries, write_summary, write_timeseries
    from shadowscale.simulators.run import run_policies, summarize
    from shadowscale.simulators.traces import load_trace

    requested = [p.strip() for p in args.policies.split(",") if p.strip()]
    want_bound = "bound" in requested
    names = parse_policies(",".join(p for p in requested if p != "bound") or ("" if want_bound else args.policies))
    t0 = time.perf_counter()
    workload = load_trace(
        args.trace, seed=args.seed, hours=args.hours, models=args.models, cold_start_s=args.cold_start
    )
    if args.no_chunked_prefill:
        workload = without_chunked_prefill(workload)
    if args.warmup >= workload.duration_s:
        raise UsageError(
            f"--warmup {args.warmup:g} s leaves nothing to score: the trace {workload.name} lasts "
            f"{workload.duration_s:g} s"
        )
    config = SimConfig(timeout_s=args.timeout, warmup_s=args.warmup)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    err = Console(stderr=True, quiet=args.quiet)
    with Progress(
        TextColumn("{task.description:>8}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
        disable=args.quiet,
    ) as bar:
        tasks = {n: bar.add_task(n, total=1.0) for n in names}
        results = run_policies(
            workload,
            names,
            config,
            progress=lambda n, f: bar.update(tasks[n], completed=f),
            spec=None if args.spec == "default" else args.spec,
            min_replicas=args.min_replicas,
            workers=args.jobs or 1,
        )
    summaries = {n: summarize(r) for n, r in results.items()}
    for n, r in results.items():
        write_timeseries(out / f"timeseries_{n}.csv", timeseries(r, workload))
    if not args.no_plots:
        plot(out, results, workload.name)
    extra: dict[str, Any] = {}
    if want_bound:
        extra["bound"] = {
            "gpu_hours_all_work": fluid_bound_all_hours(workload, config.warmup_s),
            "gpu_hours_for_served_work": {n: fluid_bound_hours(workload, r) for n, r in results.items()},
        }
    if "shadowscale" in results and ("oracle" in results or want_bound):
        ours = summaries["shadowscale"]
        oracle = summaries.get("oracle")
        extra["shadowscale_vs_references"] = reference_ratios(
            (ours.gpu_hours, ours.gpus_held_hours),
            None if oracle is None else (oracle.gpu_hours, oracle.gpus_held_hours),
            extra["bound"]["gpu_hours_all_work"] if want_bound else None,
            extra["bound"]["gpu_hours_for_served_work"]["shadowscale"] if want_bound else None,
        )
    if args.sweep:
        from shadowscale.simulators.executor import make_executor
        from shadowscale.simulators.sweep import plot_sweep, run_sweep, summary_entries

        with Progress(
            TextColumn("{task.description:>8}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=err,
            disable=args.quiet,
        ) as bar:
            task = bar.add_task("sweep", total=1.0)
            with make_executor(args.jobs, args.dask, default=2) as executor:
                sweep = run_sweep(
                    workload, names, config, progress=lambda f: bar.update(task, completed=f), executor=executor
                )
        entries = summary_entries(sweep, fluid_bound_all_hours(workload, config.warmup_s))
        if want_bound:
            extra["bound"].update(entries.pop("bound"))
        else:
            entries.pop("bound")
        extra.update(entries)
        if not args.no_plots:
            plot_sweep(out / "sweep.png", sweep, workload.name)
    wall = time.perf_counter() - t0
    cfg = {
        "hours": args.hours,
        "models": len(workload.services),
        "cold_start_s": args.cold_start,
        "timeout_s": args.timeout,
        "spec": args.spec,
        "min_replicas": args.min_replicas,
        "warmup_s": args.warmup,
        "duration_s": workload.duration_s,
        "chunked_prefill": not args.no_chunked_prefill,
    }
    path = write_summary(out, workload, args.seed, summaries, wall, cfg, extra)

    if not args.quiet:
        table = Table(
            title=f"{workload.name}: {len(workload.services)} models, "
            f"{workload.arrival_s.shape[0]:,} requests, {workload.duration_s / 3600:.2f} h"
        )
        for col in ("policy", "SLO attainment", "GPU-hours", "p99 (ms)", "dropped", "scale events", "cold starts"):
            table.add_column(col, justify="right" if col != "policy" else "left")
        for n, s in summaries.items():
            table.add_row(
                n,
                f"{s.slo_attainment * 100:.3f} %",
                f"{s.gpu_hours:,.1f}",
                f"{s.p99_latency_ms:,.0f}" if math.isfinite(s.p99_latency_ms) else "inf",
                f"{s.dropped:,}",
                f"{s.scale_events:,}",
                f"{s.cold_starts:,}",
            )
        Console().print(table)
        if extra.get("fair_ratio"):
            _print_fair_ratio(extra["fair_ratio"])
        if "bound" in extra:
            print(f"bound (fluid, all work): {extra['bound']['gpu_hours_all_work']:,.2f} GPU-hours")
        print(f"wrote {path} and the time series/plots in {out}/ in {wall:.1f} s", file=sys.stdout)
    return 0


def _print_fair_ratio(c: dict[str, Any]) -> None:
    print(f"shadowscale (default) at SLO attainment {c['slo_attainment'] * 100:.3f} %:")
    for key in ("gpu_hours", "gpus_held_hours"):
        ratio = c[key]
        best = c[f"best_baseline_point_{key}"]
        if ratio is None:
            print(f"  {key}: no baseline frontier reaches this SLO attainment")
        else:
            print(
                f"  {key}: {ratio:.3f} x the best baseline frontier point ({best['policy']} knob {best['knob']:g}, "
                f"min {best['min_replicas']}, {best['spec']}: {best['slo_attainment'] * 100:.3f} %, "
                f"{best[key]:,.2f})"
            )
