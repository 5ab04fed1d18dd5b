"""``shadowscale bench llm-model``: how well the LLM iteration-time model predicts held-out Splitwise points.

Fits each (model, hardware, tensor-parallel) configuration of ``data/profiles/splitwise-perf-model`` on the
training part of its sweeps and prints the error on the held-out part (the split and the exclusion rules are in
:mod:`simulators.llm_profiles`): ``{"mape_decode_step", "mape_prefill", "median_err_e2e", "points",
"excluded"}`` plus ``e2e_points`` and ``e2e_stopped_early`` (held-out rows left out of the e2e error because
they generated fewer tokens than asked) and ``configs``. Targets (issue 11): decode <= 0.05, prefill <= 0.15.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from shadowscale.simulators.llm_profiles import splitwise_bench


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "llm-model", help="held-out error of the LLM iteration-time model (Splitwise data)", description=__doc__
    )
    p.add_argument("--json", action="store_true", help="print JSON only (the default output is JSON too)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    del args
    print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in splitwise_bench().items()}))
    return 0
