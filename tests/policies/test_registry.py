"""The policy registry (``make_policy``, ``parse_policies``) and the purity of every registered policy."""

from __future__ import annotations

import pytest
from policy_harness import Load, assert_pure, demand, drive, same, service, uniform

from shadowscale.policies.scaling import (
    HINDSIGHT_POLICIES,
    POLICY_NAMES,
    UnknownPolicyError,
    make_policy,
    parse_policies,
)

SVCS = [service("a"), service("b", min_replicas=1)]
DEMAND = demand(uniform(0, 300, 3000) + uniform(60, 120, 600, model=1), SVCS, duration_s=300)

# The real system's evaluation period for each baseline, and whether it knows the future.
EXPECTED = {
    "hpa": (15.0, False),
    "keda": (15.0, False),
    "kpa": (2.0, False),
    "static": (60.0, None),
    "oracle": (10.0, False),  # sized from the whole trace, but it pays cold starts
    "shadowscale": (2.0, False),
}


def test_registry_lists_the_five_baselines_and_shadowscale() -> None:
    assert POLICY_NAMES == ("hpa", "keda", "kpa", "static", "oracle", "shadowscale")
    assert frozenset({"static", "oracle"}) == HINDSIGHT_POLICIES


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_registered_name_builds(name: str) -> None:
    """Every name in POLICY_NAMES builds (static/oracle from a Demand) with its name, tick and hindsight flag."""
    policy = make_policy(name, DEMAND)
    tick_s, hindsight = EXPECTED[name]
    assert policy.name == name
    assert policy.tick_s == tick_s
    if hindsight is not None:
        assert policy.hindsight is hindsight
    replicas, _ = policy.init(SVCS)
    assert replicas.shape == (2,)
    assert replicas.dtype.kind == "i"


@pytest.mark.parametrize("name", sorted(HINDSIGHT_POLICIES))
def test_hindsight_policies_need_the_demand(name: str) -> None:
    """static and oracle are sized from the whole trace: without it they raise ValueError (not 'unknown')."""
    with pytest.raises(ValueError, match="needs it") as err:
        make_policy(name)
    assert not isinstance(err.value, UnknownPolicyError)


@pytest.mark.parametrize(
    ("name", "knob", "field", "value"),
    [
        pytest.param("hpa", 0.5, "target_utilization", 0.5, id="hpa-target-utilization"),
        pytest.param("keda", 25.0, "lag_threshold", 25.0, id="keda-lag-threshold"),
        pytest.param("kpa", 50.0, "target_concurrency", 50.0, id="kpa-target-concurrency"),
        pytest.param("hpa", None, "target_utilization", 0.7, id="hpa-default"),
        pytest.param("keda", None, "lag_threshold", 10.0, id="keda-default"),
        pytest.param("kpa", None, "target_concurrency", 100.0, id="kpa-default"),
    ],
)
def test_knob_sets_the_main_parameter(name: str, knob: float | None, field: str, value: float) -> None:
    """``knob`` overrides each baseline's swept parameter and nothing else."""
    policy = make_policy(name, knob=knob)
    assert getattr(policy, field) == value
    default = make_policy(name)
    assert type(policy) is type(default)


@pytest.mark.parametrize("name", ["HPA", "foo", "", " hpa", "knative"])
def test_unknown_names_raise_listing_valid_names(name: str) -> None:
    """An unknown name raises UnknownPolicyError (a ValueError) whose message lists every valid policy."""
    with pytest.raises(UnknownPolicyError) as err:
        make_policy(name, DEMAND)
    assert isinstance(err.value, ValueError)
    message = str(err.value)
    assert repr(name) in message
    for valid in POLICY_NAMES:
        assert valid in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("hpa", ["hpa"], id="one"),
        pytest.param("hpa,kpa", ["hpa", "kpa"], id="two"),
        pytest.param("  hpa ,  kpa  ", ["hpa", "kpa"], id="spaces"),
        pytest.param("hpa,,kpa,", ["hpa", "kpa"], id="empty-items"),
        pytest.param(" , oracle , ", ["oracle"], id="blank-items"),
        pytest.param("static,hpa,static", ["static", "hpa", "static"], id="order-and-repeats-kept"),
        pytest.param(",".join(POLICY_NAMES), list(POLICY_NAMES), id="all"),
    ],
)
def test_parse_policies_splits_and_strips(text: str, expected: list[str]) -> None:
    """Comma-separated names, surrounding spaces stripped, empty items skipped, order kept."""
    assert parse_policies(text) == expected


@pytest.mark.parametrize("text", ["", "   ", ",", " , , "])
def test_parse_policies_rejects_an_empty_list(text: str) -> None:
    """No name at all is an error that lists the valid policies (and is not an 'unknown policy')."""
    with pytest.raises(ValueError, match="no policy given") as err:
        parse_policies(text)
    assert not isinstance(err.value, UnknownPolicyError)
    for valid in POLICY_NAMES:
        assert valid in str(err.value)


@pytest.mark.parametrize(("text", "bad"), [("hpa,foo", "foo"), ("kpa, Keda", "Keda"), ("hpa kpa", "hpa kpa")])
def test_parse_policies_rejects_unknown_names(text: str, bad: str) -> None:
    """The first unknown name raises UnknownPolicyError naming it."""
    with pytest.raises(UnknownPolicyError, match=repr(bad)):
        parse_policies(text)


def varied(t: float) -> list[Load]:
    """Load that moves every policy through scale-up, hold, scale-down and idle phases, for two models."""
    phase = int(t // 60) % 4
    util = (0.9, 0.6, 0.1, 0.0)[phase]
    conc = (400.0, 60.0, 5.0, 0.0)[phase]
    lag = (80, 20, 2, 0)[phase]
    a = Load(util=util, concurrency=conc, outstanding=lag, rate=conc / 2)
    b = Load(util=1.0 - util, concurrency=conc / 4, outstanding=lag // 2, rate=conc / 8)
    return [a, b]


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_decide_is_pure_along_a_varied_run(name: str) -> None:
    """Deciding twice from the same (signals, state) gives identical decisions and states, and neither the
    state nor the signals passed in change (checked at every tick by the harness, with a 30 s cold start)."""
    policy = make_policy(name, DEMAND)
    run = drive(policy, SVCS, varied, until=480, cold_start_s=30, check_purity=True)
    assert len(run.decisions) == int(480 / policy.tick_s) + 1


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_an_old_state_can_be_replayed(name: str) -> None:
    """A state kept from earlier still gives the same decision later: later decides did not alter it."""
    policy = make_policy(name, DEMAND)
    run = drive(policy, SVCS, varied, until=300, cold_start_s=30, check_purity=False)
    k = len(run.decisions) // 2
    replayed, new_state = assert_pure(policy, run.signals[k], run.states[k - 1])
    assert same(replayed, run.decisions[k])
    assert same(new_state, run.states[k])
