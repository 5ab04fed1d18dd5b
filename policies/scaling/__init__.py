"""Autoscaling policies, one per module, and a registry by name.

``make_policy(name, demand)`` builds a policy with its real defaults; ``knob`` sets the one parameter a sweep
varies (HPA target utilization, KEDA lag threshold, KPA target concurrency, shadowscale's headroom). ``static``
and ``oracle`` are sized from the whole trace (``demand``), which only the simulator has; the oracle starts each
replica one cold start ahead of need and pays it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from shadowscale.errors import UsageError
from shadowscale.policies.scaling.base import Decisions, Reason, Resumable, ScalingPolicy, Signals
from shadowscale.policies.scaling.demand import Demand
from shadowscale.policies.scaling.hpa import HPA
from shadowscale.policies.scaling.keda import KEDA
from shadowscale.policies.scaling.kpa import KPA
from shadowscale.policies.scaling.oracle import Oracle, ahead_of_need, oracle_policy, oracle_schedule
from shadowscale.policies.scaling.shadowscale import Shadowscale
from shadowscale.policies.scaling.static import Static, peak_replicas

POLICY_NAMES: tuple[str, ...] = ("hpa", "keda", "kpa", "static", "oracle", "shadowscale")
RIGHT_SIZED_POLICIES: frozenset[str] = frozenset({"shadowscale", "oracle"})
"""Policies that run on right-sized specs by default (shadowscale chooses them; the oracle is given them)."""
HINDSIGHT_POLICIES: frozenset[str] = frozenset({"static", "oracle"})

ORACLE_BIN_S = 10.0


class UnknownPolicyError(UsageError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown policy {name!r}; valid policies: {', '.join(POLICY_NAMES)}")


def make_policy(name: str, demand: Demand | None = None, knob: float | None = None) -> ScalingPolicy[Any]:
    """The policy called ``name`` with its documented defaults (``knob`` overrides its main parameter)."""
    if name == "hpa":
        hpa = HPA()
        return hpa if knob is None else replace(hpa, target_utilization=knob)
    if name == "keda":
        keda = KEDA()
        return keda if knob is None else replace(keda, lag_threshold=knob)
    if name == "kpa":
        kpa = KPA()
        return kpa if knob is None else replace(kpa, target_concurrency=knob)
    if name == "shadowscale":
        ss = Shadowscale()
        return ss if knob is None else replace(ss, headroom=knob)
    if name in HINDSIGHT_POLICIES:
        if demand is None:
            raise ValueError(f"policy {name!r} is sized from the whole trace and needs it (simulator only)")
        if name == "static":
            return Static(peak_replicas(demand))
        return oracle_policy(demand, ORACLE_BIN_S)
    raise UnknownPolicyError(name)


def parse_policies(text: str) -> list[str]:
    """Split a comma-separated list and check every name; raises :class:`UnknownPolicyError`."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise UsageError(f"no policy given; valid policies: {', '.join(POLICY_NAMES)}")
    for n in names:
        if n not in POLICY_NAMES:
            raise UnknownPolicyError(n)
    return names


__all__ = [
    "HPA",
    "KEDA",
    "KPA",
    "ORACLE_BIN_S",
    "POLICY_NAMES",
    "RIGHT_SIZED_POLICIES",
    "Decisions",
    "Demand",
    "Oracle",
    "Reason",
    "Resumable",
    "ScalingPolicy",
    "Shadowscale",
    "Signals",
    "Static",
    "UnknownPolicyError",
    "ahead_of_need",
    "make_policy",
    "oracle_policy",
    "oracle_schedule",
    "parse_policies",
]
