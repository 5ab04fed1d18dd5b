"""Trace readers: bundled traces, the generic CSV and its error messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shadowscale.policies.types import IntArray
from shadowscale.simulators.catalog import default_data_dir, load_catalog
from shadowscale.simulators.llm_profiles import deployment, unit_profile
from shadowscale.simulators.traces import SINGLE_LLM_DEPLOYMENT, TRACE_NAMES, TraceError, load_trace
from shadowscale.simulators.workload import Workload

DATA = default_data_dir()
INV = DATA / "traces" / "azure-functions-2019" / "1000_inv.csv"


@pytest.fixture(scope="module")
def inv_counts() -> tuple[list[str], IntArray]:
    """Names and per-minute counts of 1000_inv.csv, read independently of the reader."""
    with INV.open() as f:
        header = f.readline().rstrip("\n").split(",")
        assert header[:3] == ["HashFunction", "HashOwner", "HashApp"]
        names: list[str] = []
        rows: list[list[int]] = []
        for line in f:
            fields = line.rstrip("\n").split(",")
            names.append("fn-" + fields[0][:12])
            rows.append([int(x) for x in fields[3:]])
    return names, np.array(rows, dtype=np.int64)


@pytest.fixture(scope="module")
def functions() -> Workload:
    return load_trace("azure-functions-2019", seed=0)


# ----------------------------------------------------------------------------------------------------
# azure functions


def test_functions_totals(functions: Workload) -> None:
    assert functions.n_requests == 608_228
    assert len(functions.services) == 1000
    assert functions.duration_s == 1440 * 60
    assert functions.arrival_s.dtype == np.float64 and functions.model.dtype == np.int64
    assert np.all(np.diff(functions.arrival_s) >= 0)
    assert np.all(functions.size == 1.0)
    assert functions.services[0].model == "fn-1779fd3337dd"
    assert all(s.cold_start_s == 60.0 and s.max_replicas == 1000 for s in functions.services)


def test_functions_every_arrival_in_its_minute(functions: Workload, inv_counts: tuple[list[str], IntArray]) -> None:
    names, counts = inv_counts
    assert [s.model for s in functions.services] == names
    minute = np.floor(functions.arrival_s / 60).astype(np.int64)
    got = np.bincount(functions.model * 1440 + minute, minlength=1000 * 1440).reshape(1000, 1440)
    np.testing.assert_array_equal(got, counts)
    # spot checks, one function and minute at a time
    busiest = int(np.argmax(counts.sum(axis=1)))
    for fn, m in [(busiest, 0), (busiest, 719), (0, int(np.argmax(counts[0]))), (999, 1439)]:
        in_cell = (functions.model == fn) & (functions.arrival_s >= 60 * m) & (functions.arrival_s < 60 * (m + 1))
        assert int(in_cell.sum()) == counts[fn, m]


def test_functions_uniform_within_the_minute(functions: Workload) -> None:
    offset = functions.arrival_s % 60
    # 608,228 draws of U(0, 60): the mean has a standard error of 0.022 s, each quartile share one of 0.0006
    assert offset.mean() == pytest.approx(30.0, abs=0.15)
    for q in (15, 30, 45):
        assert np.mean(offset < q) == pytest.approx(q / 60, abs=0.004)


def test_functions_seed_determinism(functions: Workload) -> None:
    again = load_trace("azure-functions-2019", seed=0)
    np.testing.assert_array_equal(again.arrival_s, functions.arrival_s)
    np.testing.assert_array_equal(again.model, functions.model)
    other = load_trace("azure-functions-2019", seed=1)
    assert other.n_requests == functions.n_requests
    assert not np.array_equal(other.arrival_s, functions.arrival_s)


def test_functions_models_picks_the_busiest(inv_counts: tuple[list[str], IntArray]) -> None:
    names, counts = inv_counts
    totals = counts.sum(axis=1)
    expected = sorted(range(len(names)), key=lambda i: (-int(totals[i]), names[i]))[:10]
    w = load_trace("azure-functions-2019", models=10)
    assert [s.model for s in w.services] == [names[i] for i in expected]
    np.testing.assert_array_equal(w.requests_per_model(), totals[expected])
    assert w.n_requests == int(totals[expected].sum())
    assert np.all(np.diff(w.requests_per_model()) <= 0)


def test_functions_hours(inv_counts: tuple[list[str], IntArray]) -> None:
    _, counts = inv_counts
    w = load_trace("azure-functions-2019", hours=1)
    assert w.duration_s == 3600
    assert w.arrival_s.max() < 3600
    assert w.n_requests == int(counts[:, :60].sum())
    assert len(w.services) == 1000


def test_workload_arrays_are_read_only(functions: Workload) -> None:
    with pytest.raises(ValueError):
        functions.arrival_s[0] = 1.0


# ----------------------------------------------------------------------------------------------------
# LLM traces


@pytest.mark.parametrize(
    ("name", "model", "count", "last_s"),
    [
        ("azure-llm-2023-conv", "llm-conv", 19_366, None),
        ("azure-llm-2023-code", "llm-code", 8_819, None),
        ("mooncake", "mooncake", 12_031, 3536.999),
    ],
)
def test_llm_traces(name: str, model: str, count: int, last_s: float | None) -> None:
    w = load_trace(name)
    assert w.n_requests == count
    assert [s.model for s in w.services] == [model]
    serving = deployment(SINGLE_LLM_DEPLOYMENT)
    assert w.services[0].llm == serving  # continuous batching on a long-context 7B-class deployment
    assert w.services[0].profile == unit_profile(serving)
    assert w.services[0].cold_start_s == pytest.approx(serving.cold_start_s)
    assert w.prompt_tokens is not None and w.output_tokens is not None
    assert w.prompt_tokens.shape == (count,) and np.all(w.prompt_tokens + w.output_tokens <= serving.arch.context)
    assert w.arrival_s[0] == 0.0
    assert np.all(np.diff(w.arrival_s) >= 0)
    assert np.all(w.size > 0)
    assert np.all(w.model == 0)
    assert w.arrival_s[-1] < w.duration_s <= w.arrival_s[-1] + 60
    if last_s is not None:
        assert w.arrival_s[-1] == pytest.approx(last_s)


def test_azure_llm_first_rows() -> None:
    w = load_trace("azure-llm-2023-conv")
    # rows 2 and 3: 18:15:46.6805900 (374 in, 44 out) and 18:15:50.9951690 (396 in, 109 out)
    assert w.arrival_s[1] == pytest.approx(50.9951690 - 46.6805900, abs=1e-6)
    # size: replica-seconds of (374 in, 44 out) over those of the unit request (256, 256) at max_batch
    serving = deployment(SINGLE_LLM_DEPLOYMENT)
    b = unit_profile(serving).max_batch
    cost = serving.request_cost_s(np.array([374.0, 256.0]), np.array([44.0, 256.0]), b)
    assert w.size[0] == pytest.approx(cost[0] / cost[1])
    assert 0.2 < w.size[0] < 1.0


def test_unknown_trace_name_lists_the_names() -> None:
    with pytest.raises(TraceError) as e:
        load_trace("azure-functions-2020")
    for name in TRACE_NAMES:
        assert name in str(e.value)


# ----------------------------------------------------------------------------------------------------
# generic CSV


def _write(tmp_path: Path, text: str, name: str = "trace.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_generic_numeric_unsorted(tmp_path: Path) -> None:
    path = _write(tmp_path, "timestamp,model\n100.5,b\n100,a\n130,b\n100.5,a\n")
    w = load_trace(str(path))
    assert w.name == str(path)
    assert [s.model for s in w.services] == ["b", "a"]  # order of first appearance
    np.testing.assert_array_equal(w.arrival_s, [0.0, 0.5, 0.5, 30.0])
    np.testing.assert_array_equal(w.model, [1, 0, 1, 0])  # stable: the two 100.5 rows keep file order
    np.testing.assert_array_equal(w.size, [1.0] * 4)
    assert w.duration_s == 60
    assert [s.profile for s in w.services] == [load_catalog().llm] * 2  # the licensed, bundled curve


def test_generic_iso_with_service_ms(tmp_path: Path) -> None:
    text = (
        "model,timestamp,service_ms\n"
        "m,2024-01-01T00:01:00Z,100\n"
        "m,2024-01-01T00:00:00+00:00,300\n"
        "m,2024-01-01T00:02:30.5+00:00,200\n"
    )
    w = load_trace(str(_write(tmp_path, text)), cold_start_s=5.0)
    np.testing.assert_allclose(w.arrival_s, [0.0, 60.0, 150.5])
    assert w.duration_s == 180
    p = w.services[0].profile
    assert p.batch_latency_s[0] == pytest.approx(0.2)  # the median service time
    assert w.services[0].cold_start_s == 5.0


def test_generic_naive_iso_is_utc(tmp_path: Path) -> None:
    w = load_trace(str(_write(tmp_path, "timestamp,model\n2024-03-31 01:59:00,a\n2024-03-31 02:01:00,a\n")))
    np.testing.assert_allclose(w.arrival_s, [0.0, 120.0])


def test_generic_tokens(tmp_path: Path) -> None:
    w = load_trace(str(_write(tmp_path, "timestamp,model,input_tokens,output_tokens\n0,x,256,256\n1,y,0,0\n")))
    serving = deployment(SINGLE_LLM_DEPLOYMENT)
    assert [s.profile for s in w.services] == [unit_profile(serving)] * 2
    assert [s.llm for s in w.services] == [serving] * 2
    assert w.size[0] == pytest.approx(1.0) and w.size[1] < 1.0
    assert w.prompt_tokens is not None and w.output_tokens is not None
    np.testing.assert_array_equal(w.prompt_tokens, [256, 0])
    np.testing.assert_array_equal(w.output_tokens, [256, 0])


def test_generic_hours_and_models(tmp_path: Path) -> None:
    rows = "".join(f"{t},{m}\n" for t, m in [(0, "a"), (10, "b"), (20, "b"), (4000, "a"), (4001, "a"), (30, "c")])
    path = _write(tmp_path, "timestamp,model\n" + rows)
    w = load_trace(str(path), hours=1)
    assert w.duration_s == 3600 and w.n_requests == 4
    w2 = load_trace(str(path), hours=1, models=2)
    assert [s.model for s in w2.services] == ["b", "a"]  # b: 2, then a and c tie on 1: by name
    np.testing.assert_array_equal(w2.model, [1, 0, 0])
    w3 = load_trace(str(path), models=1)
    assert [s.model for s in w3.services] == ["a"] and w3.n_requests == 3


BAD_CASES = [
    # (case id, file content, line, field or None)
    ("missing timestamp", "time,model\n1,a\n", 1, "timestamp"),
    ("missing model", "timestamp\n1\n", 1, "model"),
    ("empty file", "", 1, None),
    ("header only", "timestamp,model\n", 2, None),
    ("not a number", "timestamp,model\n1,a\nabc,a\n", 3, "timestamp"),
    ("negative time", "timestamp,model\n1,a\n\n-2,a\n", 4, "timestamp"),
    ("nan time", "timestamp,model\nnan,a\n", 2, "timestamp"),
    ("inf time", "timestamp,model\n1,a\ninf,a\n", 3, "timestamp"),
    ("bad iso", "timestamp,model\n2024-13-01T00:00:00,a\n", 2, "timestamp"),
    ("empty model", "timestamp,model\n1,a\n2, \n", 3, "model"),
    ("mixed numeric then iso", "timestamp,model\n1,a\n2024-01-01T00:00:00,a\n", 3, "timestamp"),
    ("mixed iso then numeric", "timestamp,model\n2024-01-01T00:00:00,a\n5,a\n", 3, "timestamp"),
    ("short row", "timestamp,model,service_ms\n1,a,3\n2,a\n", 3, "service_ms"),
    ("long row", "timestamp,model\n1,a,3\n", 2, None),
    ("bad tokens", "timestamp,model,input_tokens\n1,a,12\n2,a,many\n", 3, "input_tokens"),
    ("negative tokens", "timestamp,model,output_tokens\n1,a,-1\n", 2, "output_tokens"),
    ("fractional tokens", "timestamp,model,output_tokens\n1,a,1.5\n", 2, "output_tokens"),
    ("nan service", "timestamp,model,service_ms\n1,a,NaN\n", 2, "service_ms"),
    ("inf service", "timestamp,model,service_ms\n1,a,1\n2,a,-inf\n", 3, "service_ms"),
    ("empty service", "timestamp,model,service_ms\n1,a,\n", 2, "service_ms"),
]


@pytest.mark.parametrize(("content", "line", "field"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_generic_bad_input(tmp_path: Path, content: str, line: int, field: str | None) -> None:
    path = _write(tmp_path, content, "bad_input.csv")
    with pytest.raises(TraceError) as e:
        load_trace(str(path))
    msg = str(e.value)
    assert f"bad_input.csv:{line}:" in msg
    if field is not None:
        assert f"field {field!r}" in msg


def test_missing_column_lists_the_header(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="'time', 'model'"):
        load_trace(str(_write(tmp_path, "time,model\n1,a\n")))


# ----------------------------------------------------------------------------------------------------
# bundled formats are validated the same way (small fabricated copies in a temporary data folder)


def _data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    (root / "profiles").symlink_to(DATA / "profiles", target_is_directory=True)
    return root


def _functions_files(root: Path, rows: list[str], run_rows: list[str] | None = None) -> None:
    d = root / "traces" / "azure-functions-2019"
    d.mkdir(parents=True)
    (d / "1000_inv.csv").write_text("HashFunction,HashOwner,HashApp,minute_1,minute_2,minute_3\n" + "".join(rows))
    run_header = "HashOwner,HashApp,HashFunction,Average,Count\n"
    (d / "1000_run.csv").write_text(run_header + "".join(run_rows or []))


A = "aaaaaaaaaaaa1111"
B = "bbbbbbbbbbbb2222"


def test_functions_small_copy(tmp_path: Path) -> None:
    root = _data_dir(tmp_path)
    _functions_files(root, [f"{A},{A},{A},2,0,1\n", f"{B},{B},{B},0,3,0\n"], [f"{A},{A},{A},500,3\n"])
    w = load_trace("azure-functions-2019", data_dir=root, seed=7)
    assert w.duration_s == 180 and w.n_requests == 6
    assert [s.model for s in w.services] == ["fn-aaaaaaaaaaaa", "fn-bbbbbbbbbbbb"]
    assert w.services[0].profile.batch_latency_s[0] == pytest.approx(0.5)
    minute = np.floor(w.arrival_s / 60).astype(np.int64)
    np.testing.assert_array_equal(np.bincount(w.model * 3 + minute, minlength=6), [2, 0, 1, 0, 3, 0])


@pytest.mark.parametrize(
    ("rows", "run_rows", "file", "line", "field"),
    [
        ([f"{A},{A},{A},2,x,1\n"], [], "1000_inv.csv", 2, "minute_2"),
        ([f"{A},{A},{A},2,0,1\n", f"{B},{B},{B},0,-3,0\n"], [], "1000_inv.csv", 3, "minute_2"),
        ([f"{A},{A},{A},2,0,1\n", f"{B},{B},{B},0,1.5,0\n"], [], "1000_inv.csv", 3, "minute_2"),
        ([f"{A},{A},{A},2,0\n"], [], "1000_inv.csv", 2, None),
        ([f"zz,{A},{A},2,0,1\n"], [], "1000_inv.csv", 2, "HashFunction"),
        ([f"{A},{A},{A},2,0,1\n", f"{A},{A},{A},2,0,1\n"], [], "1000_inv.csv", 3, "HashFunction"),
        ([f"{A},{A},{A},2,0,1\n"], [f"{A},{A},{A},slow,3\n"], "1000_run.csv", 2, "Average"),
    ],
)
def test_functions_bad_rows(
    tmp_path: Path, rows: list[str], run_rows: list[str], file: str, line: int, field: str | None
) -> None:
    root = _data_dir(tmp_path)
    _functions_files(root, rows, run_rows)
    with pytest.raises(TraceError) as e:
        load_trace("azure-functions-2019", data_dir=root)
    msg = str(e.value)
    assert f"{file}:{line}:" in msg
    if field is not None:
        assert f"field {field!r}" in msg


@pytest.mark.parametrize(
    ("body", "line", "field"),
    [
        ("2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:47,abc,1\n", 3, "ContextTokens"),
        ("2023-11-16 18:15:46.6805900,374,44\nyesterday,1,1\n", 3, "TIMESTAMP"),
        ("2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:47,1,nan\n", 3, "GeneratedTokens"),
    ],
)
def test_azure_llm_bad_rows(tmp_path: Path, body: str, line: int, field: str) -> None:
    root = _data_dir(tmp_path)
    d = root / "traces" / "azure-llm-2023"
    d.mkdir(parents=True)
    (d / "AzureLLMInferenceTrace_conv.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + body)
    with pytest.raises(TraceError) as e:
        load_trace("azure-llm-2023-conv", data_dir=root)
    assert f"AzureLLMInferenceTrace_conv.csv:{line}: field {field!r}" in str(e.value)


def _record(ts: object = 0, i: object = 10, o: object = 5) -> str:
    return json.dumps({"timestamp": ts, "input_length": i, "output_length": o, "hash_ids": [0]}) + "\n"


@pytest.mark.parametrize(
    ("lines", "line", "field"),
    [
        ([_record(), "{not json\n"], 2, None),
        ([_record(), _record(ts="soon")], 2, "timestamp"),
        ([_record(), _record(i=-4)], 2, "input_length"),
        ([_record(), "\n", _record(o=True)], 3, "output_length"),
        ([json.dumps({"timestamp": 1, "input_length": 3}) + "\n"], 1, "output_length"),
    ],
)
def test_mooncake_bad_lines(tmp_path: Path, lines: list[str], line: int, field: str | None) -> None:
    root = _data_dir(tmp_path)
    d = root / "traces" / "mooncake"
    d.mkdir(parents=True)
    (d / "conversation_trace.jsonl").write_text("".join(lines))
    with pytest.raises(TraceError) as e:
        load_trace("mooncake", data_dir=root)
    msg = str(e.value)
    assert f"conversation_trace.jsonl:{line}:" in msg
    if field is not None:
        assert f"field {field!r}" in msg


def test_missing_bundled_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"conversation_trace\.jsonl"):
        load_trace("mooncake", data_dir=tmp_path)
