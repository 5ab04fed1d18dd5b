"""The bundled ``llm-fleet`` trace: seeded, 60 endpoints of four sizes, lengths that fit, GPU demand in range."""

from __future__ import annotations

import numpy as np
import pytest

from shadowscale.simulators.fleet import ENDPOINTS
from shadowscale.simulators.traces import TRACE_NAMES, load_trace
from shadowscale.simulators.workload import Workload


@pytest.fixture(scope="module")
def fleet() -> Workload:
    return load_trace("llm-fleet")


def test_fleet_is_bundled_and_seeded(fleet: Workload) -> None:
    assert "llm-fleet" in TRACE_NAMES
    again = load_trace("llm-fleet")
    np.testing.assert_array_equal(again.arrival_s, fleet.arrival_s)
    np.testing.assert_array_equal(again.model, fleet.model)
    other = load_trace("llm-fleet", seed=1)
    assert other.n_requests != fleet.n_requests or not np.array_equal(other.arrival_s, fleet.arrival_s)


def test_fleet_has_many_endpoints_of_several_sizes_and_requests_that_fit(fleet: Workload) -> None:
    assert len(fleet.services) == ENDPOINTS >= 50
    archs = {s.llm.arch.name for s in fleet.services if s.llm is not None}
    assert archs == {"Llama-2-7B", "Llama-3.1-8B", "Llama-2-70B", "BLOOM-176B"}
    assert np.all(fleet.requests_per_model() > 0)
    assert fleet.prompt_tokens is not None and fleet.output_tokens is not None
    context = np.array([s.llm.arch.context for s in fleet.services if s.llm is not None])[fleet.model]
    assert np.all(fleet.prompt_tokens + fleet.output_tokens <= context)
    # cold starts follow the weights: the 176B takes minutes, the 7B tens of seconds
    cold = {s.llm.arch.name: s.cold_start_s for s in fleet.services if s.llm is not None}
    assert 10 < cold["Llama-2-7B"] < 60 < cold["Llama-2-70B"] < cold["BLOOM-176B"]


def test_fleet_needs_tens_to_hundreds_of_gpus_at_peak(fleet: Workload) -> None:
    """Fluid demand per minute (work ÷ each deployment's capacity × its GPUs) peaks between 20 and 500 GPUs.
    Mutation caught: dropping the per-endpoint
    scale ``k_e`` (raw invocation counts) leaves the fleet needing a few GPUs."""
    n = len(fleet.services)
    minute = (fleet.arrival_s // 60).astype(np.int64)
    work = np.zeros((60, n))
    np.add.at(work, (minute, fleet.model), fleet.size)
    cap = np.array([s.profile.capacity_rps for s in fleet.services])
    gpus = np.array([s.profile.gpu_fraction for s in fleet.services])
    need = (work / 60.0 / cap * gpus).sum(axis=1)
    assert 20.0 <= need.max() <= 500.0
    assert fleet.duration_s == 3600.0 and fleet.arrival_s.max() < 3600.0
