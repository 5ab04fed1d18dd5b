"""``shadowscale bench simulator``: simulator throughput on the full 24-hour azure-functions-2019 trace.

Prints ``{"requests": int, "wall_s": float, "simulated_requests_per_s": float}`` plus ``cpu_s`` (CPU time of
the same run: on a shared machine it shows how much of ``wall_s`` was waiting), ``load_s`` (reading and spreading
the trace, not part of ``wall_s``), the policy and the trace. ``wall_s`` is the simulation itself, best of
``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from shadowscale.errors import UsageError


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "simulator", help="simulated requests per second (24 h azure-functions-2019, hpa)", description=__doc__
    )
    p.add_argument("--trace", default="azure-functions-2019", help="trace to replay (default: the 24 h sample)")
    p.add_argument("--policy", default="hpa", help="policy to run (default hpa)")
    p.add_argument("--repeat", type=int, default=1, help="runs; the fastest is reported (default 1)")
    p.add_argument("--json", action="store_true", help="print only the JSON object (no summary on stderr)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from shadowscale.simulators.engine import SimConfig
    from shadowscale.simulators.run import run_policy
    from shadowscale.simulators.traces import load_trace

    if args.repeat < 1:
        raise UsageError("--repeat must be >= 1")
    t0 = time.perf_counter()
    workload = load_trace(args.trace, seed=0)
    load_s = time.perf_counter() - t0
    best = float("inf")
    best_cpu = float("inf")
    for _ in range(args.repeat):
        t1 = time.perf_counter()
        c1 = time.process_time()
        result = run_policy(workload, args.policy, SimConfig())
        best = min(best, time.perf_counter() - t1)
        best_cpu = min(best_cpu, time.process_time() - c1)
    n = result.requests
    print(
        json.dumps(
            {
                "requests": n,
                "wall_s": round(best, 6),
                "simulated_requests_per_s": round(n / best, 1),
                "cpu_s": round(best_cpu, 4),
                "load_s": round(load_s, 4),
                "policy": args.policy,
                "trace": workload.name,
                "models": len(workload.services),
            }
        )
    )
    if not args.json:
        print(
            f"simulator bench: {n:,} requests of {workload.name} through {args.policy} in {best:.2f} s: "
            f"{n / best:,.0f} simulated requests/s (CPU {best_cpu:.2f} s; loading the trace {load_s:.2f} s)",
            file=sys.stderr,
        )
    return 0
