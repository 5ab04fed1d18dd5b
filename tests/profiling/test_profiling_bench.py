"""``shadowscale bench profiler``: the generic CSV form end to end, the benchmark rules, the bundled datasets'
shapes, and bad input (missing columns, empty values) as errors that name the file and the column."""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import pytest

from shadowscale.benchmarks import profiler as bench


def write_generic(path: Path, *, header: str = "task,model,cfg_batch,cfg_gpu,throughput,latency_ms,cost") -> Path:
    """Four tasks (two models × two settings), 12 configurations each; one cell of each task never reached the
    SLO (empty latency)."""
    lines = [header]
    for model, scale in (("m1", 1.0), ("m2", 3.0)):
        for setting, slow in (("s1", 1.0), ("s2", 2.0)):
            for batch in (1, 2, 4, 8, 16, 32):
                for gpu, speed in (("a", 1.0), ("b", 1.7)):
                    thr = scale * speed * batch / (1 + batch / 8)
                    lat = "" if (batch, gpu) == (32, "b") else f"{slow * batch * 4 / speed:.3f}"
                    cost = 1.0 if gpu == "a" else 2.0
                    lines.append(f"{model}-{setting},{model},{batch},{gpu},{thr:.3f},{lat},{cost}")
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="bench")
    bench.register(parser.add_subparsers(dest="benchmark"))
    args = parser.parse_args(["profiler", *argv])
    assert args.func(args) == 0
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


def test_generic_csv_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = write_generic(tmp_path / "tiny.csv")
    details = tmp_path / "details.json"
    out = run_cli(
        ["--dataset", str(csv_path), "--seeds", "2", "--min-configs", "10", "--details", str(details), "--json"],
        capsys,
    )
    assert set(out) == {"dataset", "tasks", "methods"} and out["tasks"] == 4
    methods = out["methods"]
    assert isinstance(methods, dict) and list(methods) == list(bench.METHODS)
    for name, stats in methods.items():
        planner = name in bench.PLANNERS
        keys = {"median_trials", "p90_trials", "median_fraction", "p90_fraction"}
        extra = {"stop_rule"} if planner else {"stop_rule", "stop_rule_by_patience"} if name == "consensus" else set()
        assert set(stats) == keys | extra
        assert 1.0 <= stats["median_trials"] <= stats["p90_trials"] <= 12.0
        assert 0.0 < stats["median_fraction"] <= stats["p90_fraction"] <= 1.0
        if planner:  # the planner as a user gets it: its own stopping rule
            stop = stats["stop_rule"]
            assert set(stop) == keys | {"median_value", "within_5pct"}
            assert 1.0 <= stop["median_trials"] <= 12.0 and 0.0 <= stop["within_5pct"] <= 1.0
            assert 0.0 < stop["median_value"] <= 1.0
    by_patience = methods["consensus"]["stop_rule_by_patience"]
    assert list(by_patience) == [str(k) for k in bench.CONSENSUS_PATIENCE]
    assert methods["consensus"]["stop_rule"] == by_patience[str(bench.PATIENCE)]
    trials = [by_patience[str(k)]["median_trials"] for k in bench.CONSENSUS_PATIENCE]
    assert trials == sorted(trials) and trials[0] >= 2.0  # more patience, never fewer trials; k=1 needs 2 at least
    d = json.loads(details.read_text())
    assert d["wall_s"] > 0 and d["seeds"] == [0, 1]
    assert d["per_task"]["random"]["m1-s1"]["configs"] == 12
    env = d["environment"]  # the BLAS kernel decides rounding, and close calls with it: recorded with the numbers
    assert env["packages"]["numpy"] and env["packages"]["scikit-learn"] and env["python"].startswith("3.")
    assert env["blas"] and all(b["internal_api"] for b in env["blas"])


def test_rules_slo_cost_and_within_five_percent(tmp_path: Path) -> None:
    ds = bench.load_dataset(str(write_generic(tmp_path / "tiny.csv")))
    task = next(t for t in ds.tasks if t.name == "m1-s1")
    assert task.model == "m1" and len(task) == 12
    finite = sorted(x for x in task.latency_ms if math.isfinite(x))
    assert task.slo_ms == pytest.approx((finite[5] + finite[6]) / 2 if len(finite) % 2 == 0 else finite[5])
    value, feasible = ds.values(task)
    good = ds.good(task)
    best = max(v for v, f in zip(value, feasible, strict=True) if f)
    assert good and all(feasible[i] and value[i] >= 0.95 * best for i in good)
    assert bench.scored_tasks(ds, 13) == [] and len(bench.scored_tasks(ds, 12)) == 4
    sources = bench.fit_sources(ds, None)
    prior = sources.for_task(task)
    assert prior is not None and all(name.startswith("m2") for name in prior.models)  # leave-one-model-out
    assert prior.mean_y.shape == (2, 12)


def test_bundled_datasets_have_the_documented_shape() -> None:
    llm = bench.load_dataset("llm-inference-bench")
    assert len(llm.tasks) == 75 and len(bench.scored_tasks(llm)) == 36
    assert {d.name for d in llm.dimensions} == {"hardware", "devices", "framework", "batch"}
    gpulet = bench.load_dataset("gpulet")
    assert len(gpulet.tasks) == 10 and all(len(t) == 42 for t in gpulet.tasks)
    inf = bench.load_dataset("infadapter")
    assert len(inf.tasks) == 20 and all(len(t) == 20 for t in inf.tasks)
    assert bench.scored_tasks(inf) == [] and len(bench.scored_tasks(inf, 20)) == 20
    assert {t.slo_ms for t in inf.tasks} == {500.0, 750.0, 1000.0, 1500.0}


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("task,cfg_batch,cfg_gpu,throughput,cost", "missing column(s) latency_ms"),
        ("model,cfg_batch,cfg_gpu,throughput,latency_ms", "missing column(s) task"),
        ("task,throughput,latency_ms", "no configuration column"),
        ("task,cfg_batch,throughput,latency_ms,p50_ms", "unknown column(s) p50_ms"),
        ("task,cfg_,throughput,latency_ms", "has no name after the prefix"),
    ],
)
def test_missing_columns_name_the_file_and_column(tmp_path: Path, header: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(header + "\n" + ",".join("1" for _ in header.split(",")) + "\n")
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        bench.load_dataset(str(path))
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("t1,1,a,,5", "line 2: column 'throughput' is empty"),
        ("t1,1,a,fast,5", "line 2: column 'throughput' is not a number"),
        ("t1,,a,3,5", "line 2: column 'cfg_batch' is empty"),
    ],
)
def test_bad_values_name_the_line_and_column(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("task,cfg_batch,cfg_gpu,throughput,latency_ms\n" + row + "\n")
    with pytest.raises(ValueError, match=message):
        bench.load_dataset(str(path))


def test_unknown_dataset_and_bad_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        bench.load_dataset("nope")
    csv_path = write_generic(tmp_path / "tiny.csv")
    with pytest.raises(ValueError, match="--methods"):
        run_cli(["--dataset", str(csv_path), "--methods", "grid"], capsys)
    with pytest.raises(ValueError, match="--seeds"):
        run_cli(["--dataset", str(csv_path), "--seeds", "a-b"], capsys)


def test_a_measurement_column_never_becomes_a_dimension(tmp_path: Path) -> None:
    """Mutation: treating every non-reserved column as configuration again (the old rule) makes ``p50_ms`` a
    dimension and this test fails; declared ``cfg_`` columns become dimensions without the prefix."""
    path = write_generic(tmp_path / "ok.csv")
    ds = bench.load_dataset(str(path))
    assert [d.name for d in ds.dimensions] == ["batch", "gpu"]
    text = path.read_text().splitlines()
    leaky = tmp_path / "leaky.csv"
    leaky.write_text("\n".join([text[0] + ",p50_ms", *(line + ",3.5" for line in text[1:])]) + "\n")
    with pytest.raises(ValueError, match=r"unknown column\(s\) p50_ms: .*cfg_p50_ms") as e:
        bench.load_dataset(str(leaky))
    assert str(leaky) in str(e.value)


def test_consensus_tries_what_other_models_found_best_first(tmp_path: Path) -> None:
    """The planner-free baseline: with m2 scaled from m1, the other model's best is this model's best, so one
    trial finds it. Mutation: ordering by ascending score makes it need many trials."""
    ds = bench.load_dataset(str(write_generic(tmp_path / "tiny.csv")))
    task = next(t for t in ds.tasks if t.name == "m1-s1")
    scores = bench.consensus_scores(ds, task)
    assert scores.shape == (12,) and all(0.0 <= x <= 1.0 for x in scores)
    assert [bench.run_consensus(ds, task, s).trials for s in range(3)] == [1, 1, 1]


def test_absolute_slo_and_price_variant(tmp_path: Path) -> None:
    """``llm-inference-bench-abs``: the SLO is 50 ms per output token of the task, the cost devices × the device
    price; a missing or bad price is an error naming it."""
    ds = bench.load_dataset("llm-inference-bench-abs")
    task = next(t for t in ds.tasks if t.name == "meta-llama/Llama-2-7b-hf io=512")
    assert task.slo_ms == 512 * bench.TPOT_SLO_MS
    space = ds.space(task)
    h100 = next(p for p in task.points if p[0] == "Nvidia H100 GPU" and p[1] == 2)
    assert ds.pricing.cost(space, h100) == pytest.approx(2 * bench.DEVICE_PRICES["Nvidia H100 GPU"])
    assert len(bench.scored_tasks(ds)) == 36
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"Nvidia H100 GPU": 1.0}))
    with pytest.raises(ValueError, match="no device price for hardware AMD MI250 GPU"):
        bench.load_dataset("llm-inference-bench-abs", prices=bench.load_prices(prices))
    prices.write_text(json.dumps({"Nvidia H100 GPU": -1}))
    with pytest.raises(ValueError, match="the price of 'Nvidia H100 GPU' must be a positive number"):
        bench.load_prices(prices)


def test_consensus_with_its_own_stopping_rule(tmp_path: Path) -> None:
    """``consensus`` as a user would run it: the other model's order (configuration k is its k-th best), stopped
    after ``patience`` trials in a row without a better feasible one. The target's values in that order are
    0.5, 0.8, 0.7, 1.0, 0.6, 0.4, so patience 1 stops after 3 trials at 0.8 of the best; patience 2 and 3 try
    all 6 (the best is the 4th); a budget of 3 stops there. Mutations caught: the counter not reset by an
    improvement, an off-by-one in the patience, the budget ignored, or the value of the last trial reported
    instead of the best's."""
    rows = ["task,model,cfg_k,throughput,latency_ms,slo_ms"]
    target = [0.5, 0.8, 0.7, 1.0, 0.6, 0.4]
    for k in range(6):
        rows.append(f"src,src,{k},{10.0 - k},1,10")  # the source ranks configuration 0 first, then 1, …
        rows.append(f"tgt,tgt,{k},{target[k]},1,10")
    path = tmp_path / "order.csv"
    path.write_text("\n".join(rows) + "\n")
    ds = bench.load_dataset(str(path))
    task = next(t for t in ds.tasks if t.name == "tgt")
    assert bench.run_consensus_stopping(ds, task, 0, 1) == (3, pytest.approx(0.8))
    assert bench.run_consensus_stopping(ds, task, 0, 2) == (6, pytest.approx(1.0))
    assert bench.run_consensus_stopping(ds, task, 0, 3) == (6, pytest.approx(1.0))  # every configuration tried
    assert bench.run_consensus_stopping(ds, task, 0, 2, budget=3) == (3, pytest.approx(0.8))
