"""The placement benchmark: input validation, the arrival procedure, and end-to-end runs through ``register``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from shadowscale.benchmarks import placement as bench
from shadowscale.policies.placement import POLICY_NAMES, PodRequest, task_classes


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="bench")
    bench.register(parser.add_subparsers(dest="benchmark"))
    args = parser.parse_args(["placement", *argv])
    assert args.func(args) == 0
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


@pytest.fixture
def tiny_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 20-node cluster (100 GPUs) and a 40-pod list under ``$SHADOWSCALE_DATA``."""
    d = tmp_path / "traces" / bench.TRACE
    d.mkdir(parents=True)
    (d / bench.NODE_FILE).write_text(
        "sn,cpu_milli,memory_mib,gpu,model\n"
        + "".join(
            f"n{i},{32000 if i % 2 else 96000},262144,{2 if i % 2 else 8},{'T4' if i % 2 else 'G2'}\n"
            for i in range(20)
        )
    )
    rows = ["name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec"]
    shapes = [(4000, 1, 500, ""), (8000, 1, 1000, ""), (2000, 0, 0, ""), (6000, 2, 1000, ""), (3000, 1, 300, "T4")]
    for i in range(40):
        cpu, k, milli, spec = shapes[i % len(shapes)]
        rows.append(f"p{i:03d},{cpu},4096,{k},{milli},{spec}")
    (d / "openb_pod_list_tiny.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.setenv("SHADOWSCALE_DATA", str(tmp_path))
    return d


@pytest.mark.parametrize(
    ("text", "seeds"),
    [("42-51", list(range(42, 52))), ("42", [42]), ("45,42", [42, 45]), ("1,5-7", [1, 5, 6, 7]), ("3-3,3", [3])],
)
def test_parse_seeds(text: str, seeds: list[int]) -> None:
    assert bench.parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "5-3", "-1", "1,,2", "1-b", "0-20000"])
def test_parse_seeds_rejects_bad_ranges(text: str) -> None:
    with pytest.raises(ValueError, match="seed"):
        bench.parse_seeds(text)


def test_parse_policy_list() -> None:
    assert bench.parse_policy_list(None) == list(POLICY_NAMES)
    assert bench.parse_policy_list("all") == list(POLICY_NAMES)
    assert bench.parse_policy_list("fgd, bestfit,FGD") == ["FGD", "BestFit"]
    with pytest.raises(ValueError, match="valid policies: Random, DotProd, GpuClustering"):
        bench.parse_policy_list("fgd,tetris")
    with pytest.raises(ValueError, match="no policy"):
        bench.parse_policy_list(" , ")


@pytest.mark.parametrize(
    ("row", "where"),
    [
        ("p1,,4096,1,500,", ":2:cpu_milli: missing value"),
        ("p1,4x,4096,1,500,", ":2:cpu_milli: not an integer"),
        ("p1,4000,-5,1,500,", ":2:memory_mib: negative"),
        ("p1,4000,4096,2,500,", ":2:gpu_milli:"),
        ("p1,4000,4096,0,300,", ":2:gpu_milli:"),
        ("p1,4000,4096,12,1000,", ":2:num_gpu:"),
        ("p1,4000,4096,1,500,,extra", ":2:gpu_spec: more fields"),
    ],
)
def test_malformed_pod_rows_name_file_line_and_field(tmp_path: Path, row: str, where: str) -> None:
    path = tmp_path / "pods.csv"
    path.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n" + row + "\n")
    with pytest.raises(ValueError) as err:
        bench.load_pods(path)
    assert f"{path}{where}" in str(err.value)


def test_missing_columns_and_bad_nodes_are_reported(tmp_path: Path) -> None:
    pods = tmp_path / "pods.csv"
    pods.write_text("name,cpu_milli,memory_mib,num_gpu\np1,1,1,0\n")
    with pytest.raises(ValueError, match=r"pods.csv:1:gpu_milli: missing column"):
        bench.load_pods(pods)
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("sn,cpu_milli,memory_mib,gpu,model\nn0,1000,1000,9,G2\n")
    with pytest.raises(ValueError, match=r"nodes.csv:2:gpu: at most 8"):
        bench.load_nodes(nodes)
    with pytest.raises(FileNotFoundError):
        bench.load_nodes(tmp_path / "absent.csv")


def test_multigpu_lists_without_gpu_spec_load(tiny_trace: Path) -> None:
    path = tiny_trace / "openb_pod_list_five.csv"
    path.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1000,10,4,1000\n")
    (pod,) = bench.load_pods(path)
    assert pod == PodRequest(1000, 10, 4, 1000, frozenset(), "p0")


def test_unknown_pod_list_lists_the_valid_ones(tiny_trace: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown pod list 'nope'; valid pod lists: tiny"):
        bench.resolve_pod_list("nope")


def test_arrivals_shuffle_then_inflate_to_130_percent() -> None:
    pods = [PodRequest(1000, 0, 1, m, name=f"p{i}") for i, m in enumerate([500, 1000, 250, 1000, 750])]
    capacity = 4000
    a = bench.arrivals(pods, capacity, np.random.default_rng(1))
    b = bench.arrivals(list(reversed(pods)), capacity, np.random.default_rng(1))
    assert [p.name for p in a] == [p.name for p in b]  # sorted by name before the shuffle
    assert sorted(p.name for p in a[:5]) == [f"p{i}" for i in range(5)]
    assert all("-tuned-" in p.name for p in a[5:])
    total = sum(p.total_gpu_milli for p in a)
    assert 1.3 * capacity - 1000 < total <= 1.3 * capacity


def test_inflation_checks_the_drawn_pods_per_gpu_share_like_the_artifact() -> None:
    """The artifact's stop test adds the drawn pod's per-GPU share, not its total, so a multi-GPU draw may
    overshoot 130 %: 3 x 4 GPUs = 12 of 13 GPUs' worth, the 4th draw adds 1 (<= 13) and goes in, the 5th stops.
    Catches checking the total (4 GPUs: the 4th draw would stop it at 3 pods)."""
    pods = [PodRequest(1000, 0, 4, 1000, name="p0")]
    a = bench.arrivals(pods, 10_000, np.random.default_rng(0))
    assert [p.name for p in a] == ["p0", "p0-tuned-0", "p0-tuned-1", "p0-tuned-2"]
    assert sum(p.total_gpu_milli for p in a) == 16_000


def test_discretize_averages_per_rounded_percent_with_fallback() -> None:
    pct = np.array([0.2, 0.6, 1.4, 3.0])
    vals = np.array([10.0, 20.0, 30.0, 50.0])
    out = bench.discretize(pct, vals, round_values=False)
    assert out[0] == 10.0 and out[1] == 25.0 and out[3] == 50.0
    assert out[2] == pytest.approx((20 + 30 + 50) / 3)  # no pod at 2 %: the ±1 neighbours
    assert np.isnan(out[10])


def test_end_to_end_on_a_tiny_trace(tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "curves.png"
    out = run_cli(["--pods", "tiny", "--seeds", "1-2", "--json", "--plot", str(png)], capsys)
    assert out["pods"] == "tiny" and out["seeds"] == [1, 2] and out["paper"] == {}
    policies = out["policies"]
    assert isinstance(policies, dict) and list(policies) == list(POLICY_NAMES)
    for s in policies.values():
        assert set(s) == {"alloc_pct_at_100", "alloc_pct_at_130", "alloc_std_at_130", "frag_rate_at_90", "pods_per_s"}
        assert 0 < s["alloc_pct_at_130"] <= 100
    assert png.stat().st_size > 10_000


def test_cli_errors_are_value_errors(tiny_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in [
        (["--pods", "tiny", "--seeds", "9-1"], "seed range"),
        (["--pods", "tiny", "--policies", "tetris"], "valid policies"),
        (["--pods", "huge"], "valid pod lists: tiny"),
        (["--pods", "tiny", "--plot", "x.svg"], ".png"),
    ]:
        with pytest.raises(ValueError, match=message):
            run_cli(argv, capsys)


# Seed 42 on the default openb list, measured on d907411 (the runs are deterministic: one numpy generator drives
# the shuffle, the inflation, the node ranks and the policy's own draws).
PINNED_SEED_42 = {
    # policy: (arrivals, failed, allocated GPU shares at the end, allocation % at 130 % arrived)
    "BestFit": (10825, 2629, 5791380, 93.23),
    "FGD": (10825, 2464, 5932090, 95.49),
    "shadowscale": (10825, 2436, 5959610, 95.94),
}


@pytest.fixture(scope="module")
def openb() -> bench.Workload:
    return bench.load_workload("default")


@pytest.mark.parametrize("policy", list(PINNED_SEED_42))
def test_real_trace_per_seed_values_are_pinned_exactly(openb: bench.Workload, policy: str) -> None:
    """Exact values, not a tolerance: ours beats FGD by 0.45 points here, so a ±0.5 band could not tell a broken
    policy from a working one. Mutations this catches (each tried once): FGD taking the tightest GPU within the
    node instead of the first best one (FGD's value moves); the inflation checking the drawn pod's total instead
    of its per-GPU share (the arrival count moves); task classes keeping every class instead of the 95 % most
    popular (FGD's and ours' values move)."""
    r = bench.simulate(openb.spec, openb.pods, openb.classes, policy, 42)
    n, failed, allocated, at_130 = PINNED_SEED_42[policy]
    assert (r.n_pods, r.failed, int(r.allocated_milli[-1]), float(r.alloc_curve[130])) == (n, failed, allocated, at_130)


def test_real_trace_classes_keep_the_popular_95_percent(openb: bench.Workload) -> None:
    """The artifact's ``GetTypicalPods`` keeps the most popular classes up to 95 % of the pods (catches keeping
    every class: the weights then sum over the long tail too)."""
    c = openb.classes
    assert len(c) == 35 and len(task_classes(openb.pods, 1.0)) == 91 and abs(float(c.weight.sum()) - 1) < 1e-9


def test_real_trace_matches_the_paper_for_one_seed(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_cli(["--pods", "default", "--seeds", "42", "--policies", "BestFit,FGD", "--json"], capsys)
    ours, paper = out["policies"], out["paper"]
    assert isinstance(ours, dict) and isinstance(paper, dict) and set(paper) == {"BestFit", "FGD"}
    for name in ("BestFit", "FGD"):
        assert abs(ours[name]["alloc_pct_at_130"] - paper[name]["alloc_pct_at_130"]) < 0.5
        assert abs(ours[name]["frag_rate_at_90"] - paper[name]["frag_rate_at_90"]) < 3
    assert ours["FGD"]["alloc_pct_at_130"] > ours["BestFit"]["alloc_pct_at_130"] + 1.5


def test_live_flag_reports_decision_times(tiny_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_cli(["--pods", "tiny", "--seeds", "1", "--policies", "FGD,shadowscale", "--json", "--live"], capsys)
    live = out["live"]
    assert isinstance(live, dict) and set(live) == {"FGD", "shadowscale"}
    for r in live.values():
        assert r["bound_pods"] > 0 and r["decisions"] == bench.LIVE_DECISIONS
        assert 0 < r["decision_ms_p50"] <= r["decision_ms_p99"] <= r["decision_ms_max"]


@pytest.mark.parametrize("policy", ["FGD", "shadowscale"])
def test_the_live_cluster_places_like_the_simulator(openb: bench.Workload, policy: str) -> None:
    """Parity on the real cluster: 1,500 arrivals decided by the live scheduler's LiveCluster (incremental
    arrays, filters, cached memo) land exactly where the simulator's loop puts them. Catches any drift between
    the live state and the simulator's (e.g. a stale memo after an update, a tag counted wrongly)."""
    from shadowscale.policies.placement import ClusterState, make_policy
    from shadowscale.policies.placement.scheduler import Binding, LiveCluster, running_pod

    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    order = bench.arrivals(openb.pods, openb.spec.total_gpu_milli, np.random.default_rng(42))[:1500]
    live = LiveCluster(bench.live_nodes(openb.spec))
    sim_policy, live_policy = make_policy(policy), make_policy(policy)
    state = ClusterState.empty(live.state().spec)  # the live cluster's node order (sorted names)
    memo = sim_policy.init(state, openb.classes)
    for i, pod in enumerate(order):
        want, memo = sim_policy.place(state, pod, memo, rng_a)
        pending = bench.pending_of(pod, f"p{i}")
        got = live.decide(pending, live_policy, classes=openb.classes, rng=rng_b)
        if want is None:
            assert not isinstance(got, Binding), i
            continue
        state = state.apply(pod, want)
        assert isinstance(got, Binding) and (got.node, got.gpu_indices) == (state.spec.names[want.node], want.gpus), i
        live.add_pod(running_pod(pending, got))
    assert (live.state().gpu_free == state.gpu_free).all() and (live.state().cpu_free == state.cpu_free).all()
