"""The churn variant of the placement benchmark: event order and pod conservation, the lifetime stretch, the
replay with and without defragmentation, and the CLI (``--mode churn``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from shadowscale.benchmarks import placement as bench
from shadowscale.policies.placement import PodRequest

ARRIVE, DEPART, DEPART_SAME_TIME = 1, 0, 2


@pytest.fixture
def churn_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 20-node cluster (100 GPUs), a 40-pod list with creation and deletion times, and one without times."""
    d = tmp_path / "traces" / bench.TRACE
    d.mkdir(parents=True)
    (d / bench.NODE_FILE).write_text(
        "sn,cpu_milli,memory_mib,gpu,model\n"
        + "".join(
            f"n{i},{32000 if i % 2 else 96000},262144,{2 if i % 2 else 8},{'T4' if i % 2 else 'G2'}\n"
            for i in range(20)
        )
    )
    header = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time"
    rows = [header]
    shapes = [(4000, 1, 500, ""), (8000, 1, 1000, ""), (2000, 0, 0, ""), (6000, 2, 1000, ""), (3000, 1, 300, "T4")]
    for i in range(40):
        cpu, k, milli, spec = shapes[i % len(shapes)]
        created = (i // 2) * 100  # pairs share a creation time
        rows.append(f"p{i:03d},{cpu},4096,{k},{milli},{spec},LS,Running,{created},{created + (i % 7) * 250}")
    (d / "openb_pod_list_tiny.csv").write_text("\n".join(rows) + "\n")
    (d / "openb_pod_list_multigpu50.csv").write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n" + "".join(f"m{i},1000,10,1,1000\n" for i in range(5))
    )
    monkeypatch.setenv("SHADOWSCALE_DATA", str(tmp_path))
    return d


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="bench")
    bench.register(parser.add_subparsers(dest="benchmark"))
    args = parser.parse_args(["placement", *argv])
    assert args.func(args) == 0
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


def random_times(rng: np.random.Generator, n: int) -> tuple[list[PodRequest], dict[str, tuple[int, int | None]]]:
    pods = [PodRequest(1000, 0, 1, int(rng.choice([250, 500, 1000])), name=f"p{i}") for i in range(n)]
    times: dict[str, tuple[int, int | None]] = {}
    for p in pods:
        created = int(rng.integers(0, 50))  # many ties
        life = int(rng.choice([0, 0, 5, 20, 100]))
        times[p.name] = (created, None if rng.random() < 0.1 else created + life)
    return pods, times


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("stretch", [1.0, 3.0])
def test_every_pod_arrives_once_and_departs_at_most_once_after_it_arrived(seed: int, stretch: float) -> None:
    rng = np.random.default_rng(seed)
    pods, times = random_times(rng, 200)
    copies = [PodRequest(1000, 0, 1, 500, name=f"p{i}-tuned-{i}") for i in range(20)]  # replicas share times
    sched = bench.churn_schedule([*pods, *copies], times, stretch)
    n = len(pods) + len(copies)
    arrive = sched.pod[sched.kind == ARRIVE]
    assert sorted(arrive.tolist()) == list(range(n))
    departs = sched.pod[sched.kind != ARRIVE]
    assert len(set(departs.tolist())) == departs.shape[0]
    position = {(int(k == ARRIVE), int(i)): e for e, (k, i) in enumerate(zip(sched.kind, sched.pod, strict=True))}
    for i in departs.tolist():
        assert position[(0, i)] > position[(1, i)]
    assert (np.diff(sched.time) >= 0).all()
    last_arrival = float(sched.time[sched.kind == ARRIVE].max())
    assert (sched.time <= last_arrival).all()  # departures after the last arrival are not replayed
    for e in range(1, sched.time.shape[0]):  # at equal times: departures, arrivals, then zero-lifetime departures
        if sched.time[e] == sched.time[e - 1]:
            rank = {DEPART: 0, ARRIVE: 1, DEPART_SAME_TIME: 2}
            assert rank[int(sched.kind[e - 1])] <= rank[int(sched.kind[e])]
    never = {i for i, p in enumerate([*pods, *copies]) if times[bench.source_name(p)][1] is None}
    assert never.isdisjoint(departs.tolist())
    gpu = np.array([p.total_gpu_milli for p in [*pods, *copies]])
    signed = np.where(sched.kind == ARRIVE, gpu[sched.pod], -gpu[sched.pod])
    assert (sched.demand_milli == np.cumsum(signed)).all() and (sched.demand_milli >= 0).all()


def test_stretch_reaches_the_peak_load_and_no_less_does() -> None:
    pods, times = random_times(np.random.default_rng(7), 300)
    total = sum(p.total_gpu_milli for p in pods)
    capacity = int(bench.churn_schedule(pods, times, 1e6).demand_milli.max() * 0.9)
    s = bench.stretch_for_peak(pods, times, capacity, 1.0)
    assert s > 1
    assert bench.churn_schedule(pods, times, s).demand_milli.max() >= capacity
    assert bench.churn_schedule(pods, times, s * 0.99).demand_milli.max() < capacity
    assert bench.stretch_for_peak(pods, times, total * 100, 0.001) == 1.0
    with pytest.raises(ValueError, match="out of reach"):
        bench.stretch_for_peak(pods, times, capacity, 4.0)
    with pytest.raises(ValueError, match="stretch must be a positive"):
        bench.churn_schedule(pods, times, 0.0)


def test_pod_lists_without_times_are_refused(churn_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=r"multigpu50.csv: no creation_time/deletion_time column.*multigpu"):
        bench.load_pod_times(churn_trace / "openb_pod_list_multigpu50.csv")
    with pytest.raises(ValueError, match="churn mode cannot replay"):
        run_cli(["--pods", "multigpu50", "--mode", "churn", "--seeds", "1", "--json"], capsys)
    bad = churn_trace / "bad.csv"
    bad.write_text("name,creation_time,deletion_time\np,10,5\n")
    with pytest.raises(ValueError, match=r"bad.csv:2:deletion_time: 5 is before creation_time 10"):
        bench.load_pod_times(bad)


@pytest.mark.parametrize("policy", ["FGD", "BestFit"])
def test_replay_accounts_for_every_pod(churn_trace: Path, policy: str) -> None:
    w = bench.load_workload("tiny")
    times = bench.load_pod_times(churn_trace / "openb_pod_list_tiny.csv")
    sched = bench.churn_schedule_for_seed(w, times, 3, peak_load=1.0)
    assert sched.demand_milli.max() >= w.spec.total_gpu_milli
    plain = bench.simulate_churn(w.spec, sched, w.classes, policy, 3)
    fixed = bench.simulate_churn(w.spec, sched, w.classes, policy, 3, bench.DefragSettings(max_moves=2))
    for r in (plain, fixed):
        arrivals = int((sched.kind == ARRIVE).sum())
        assert r.n_pods == arrivals == len(sched.pods)
        assert r.departures <= arrivals - r.failed
        assert (r.allocated_milli >= 0).all() and (r.allocated_milli <= r.capacity_milli).all()
        assert (r.allocated_milli <= r.demand_milli).all()
        assert 0 < r.alloc_pct_at_peak <= 100 and r.demand_pct_at_peak >= 100
        assert 0 <= r.frag_rate_at_peak <= 1
    assert plain.rescued == plain.migrations == 0 and not plain.defrag
    assert fixed.defrag and fixed.migrations >= fixed.rescued
    assert fixed.plans_not_found <= fixed.failed
    again = bench.simulate_churn(w.spec, sched, w.classes, policy, 3)
    assert (again.allocated_milli == plain.allocated_milli).all()


def test_churn_cli_prints_plain_and_defrag_results(
    churn_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "churn.png"
    argv = ["--pods", "tiny", "--mode", "churn", "--seeds", "1-2", "--policies", "BestFit,FGD", "--defrag"]
    out = run_cli([*argv, "--max-moves", "2", "--json", "--plot", str(png)], capsys)
    assert out["mode"] == "churn" and out["peak_load"] == 1.0 and out["seeds"] == [1, 2]
    assert out["defrag_settings"] == {"max_moves": 2, "budget": 1}
    policies = out["policies"]
    assert isinstance(policies, dict) and list(policies) == ["BestFit", "FGD"]
    for s in policies.values():
        for key in ("alloc_pct_at_peak", "alloc_std_at_peak", "failed_pods", "failed_gpu_pct", "frag_rate_at_peak"):
            assert key in s and key in s["defrag"]
        assert {"rescued_pods", "migrations", "migrations_per_rescued"} <= set(s["defrag"])
        assert "rescued_pods" not in s
    assert png.stat().st_size > 10_000
    with pytest.raises(ValueError, match="not both"):
        run_cli(["--pods", "tiny", "--mode", "churn", "--stretch", "2", "--peak-load", "1"], capsys)


def test_literal_replay_of_the_real_trace_is_light() -> None:
    """Replayed as recorded, openb asks for at most ~1.3 % of the cluster's GPUs at once (with the copies), so
    churn mode stretches lifetimes; for seed 42 a peak at capacity takes a stretch of about 8,300."""
    w = bench.load_workload("default")
    times = bench.load_pod_times(bench.resolve_pod_list("default"))
    literal = bench.churn_schedule_for_seed(w, times, 42, stretch=1.0)
    assert len(literal.pods) == 10_825
    assert literal.demand_milli.max() < 0.02 * w.spec.total_gpu_milli
    loaded = bench.churn_schedule_for_seed(w, times, 42)
    assert 7_000 < loaded.stretch < 10_000
    assert loaded.demand_milli.max() >= w.spec.total_gpu_milli
