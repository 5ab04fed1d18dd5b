"""The profile catalogue: the SLO / max_batch rule, the measured profiles and the mapping rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shadowscale.policies.types import ModelProfile
from shadowscale.simulators.catalog import (
    DEFAULT_PROMPT_WEIGHT,
    Catalog,
    DataError,
    default_data_dir,
    derive_prompt_weight,
    load_catalog,
    make_profile,
    max_batch_for,
    read_gpulet,
    read_llm_bench,
    scale_profile,
)
from shadowscale.simulators.datasets import locate
from shadowscale.simulators.traces import TraceError, load_trace

RESNET50_100 = (0.0047624, 0.0047646, 0.0049369, 0.0050452, 0.0072425, 0.0133591, 0.0256861)
RESNET50_40 = (0.0047416, 0.0047993, 0.0049004, 0.0070183, 0.01234, 0.0223721, 0.0427417)
LLAMA_A100_256 = (3.3717476343736053, 4.405158071778715, 5.564838409423828, 7.8823969308286905)
CNNS = (
    "densenet121",
    "densenet169",
    "densenet201",
    "inception",
    "mobilenet",
    "resnet101",
    "resnet152",
    "resnet50",
    "vgg16",
    "vgg19",
)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


# ----------------------------------------------------------------------------------------------------
# the rule


@pytest.mark.parametrize(
    ("sizes", "latencies", "expected"),
    [
        # slo = 5, slo/2 = 2.5: L(4) = 2.5 exactly fits, L(5) = 3.0 does not
        ((1, 2, 4, 8), (1.0, 1.5, 2.5, 4.5), 4),
        # interpolation between measured points: L(b) = 1 + 0.5 (b - 1) <= 2.5  <=>  b <= 4
        ((1, 10), (1.0, 5.5), 4),
        # everything fits: capped at the largest measured batch size
        ((1, 4), (1.0, 2.0), 4),
        # nothing beyond 1 fits
        ((1, 2), (1.0, 3.0), 1),
        # a flat curve: the largest measured batch
        ((1, 64), (2.0, 2.0), 64),
    ],
)
def test_max_batch_rule(sizes: tuple[int, ...], latencies: tuple[float, ...], expected: int) -> None:
    p = make_profile("hand", "test", sizes, latencies)
    assert p.slo_s == pytest.approx(5 * latencies[0])
    assert p.max_batch == expected
    table = p.latency_table()
    assert table[p.max_batch] <= p.slo_s / 2
    if p.max_batch < sizes[-1]:
        assert table.size == p.max_batch + 1
        nxt = np.interp(p.max_batch + 1, sizes, latencies)
        assert nxt > p.slo_s / 2


def test_max_batch_with_a_given_slo_is_at_least_one() -> None:
    assert max_batch_for((1, 2), (1.0, 2.0), slo_s=1.0) == 1
    assert max_batch_for((1, 2), (1.0, 2.0), slo_s=4.0) == 2


def test_scale_profile_scales_latency_and_slo_but_not_max_batch() -> None:
    p = make_profile("hand", "test", (1, 2, 4, 8), (1.0, 1.5, 2.5, 4.5))
    q = scale_profile(p, 3.0)
    assert q.batch_latency_s == pytest.approx((3.0, 4.5, 7.5, 13.5))
    assert q.slo_s == pytest.approx(15.0)
    assert q.max_batch == p.max_batch
    with pytest.raises(ValueError):
        scale_profile(p, 0.0)


# ----------------------------------------------------------------------------------------------------
# measured profiles


def test_cnn_models_are_the_ten_gpulet_models_sorted(catalog: Catalog) -> None:
    assert catalog.cnn_models == CNNS


def test_resnet50_profile_from_the_csv(catalog: Catalog) -> None:
    p = catalog.cnn("resnet50")
    assert p.name == "gpulet/resnet50"
    assert p.gpu_fraction == 1.0
    assert p.batch_sizes == (1, 2, 4, 8, 16, 32, 64)
    assert p.batch_latency_s == pytest.approx(RESNET50_100)
    assert p.slo_s == pytest.approx(5 * 0.0047624)
    # slo/2 = 11.906 ms lies between L(16) = 7.24 ms and L(32) = 13.36 ms: b = 16 + 16 * 4.66 / 6.12 = 28.2
    assert p.max_batch == 28
    assert p.capacity_rps == pytest.approx(28 / (0.0072425 + 12 / 16 * (0.0133591 - 0.0072425)))


def test_profile_at_another_share(catalog: Catalog) -> None:
    p = catalog.cnn("resnet50", 40)
    assert p.gpu_fraction == pytest.approx(0.4)
    assert p.batch_latency_s == pytest.approx(RESNET50_40)
    assert p.slo_s == pytest.approx(5 * 0.0047416)
    with pytest.raises(KeyError):
        catalog.cnn("resnet50", 30)
    with pytest.raises(KeyError):
        catalog.cnn("alexnet")


@pytest.mark.parametrize("share", [20, 40, 50, 60, 80, 100])
def test_at_share_keeps_the_slo_and_the_scale(catalog: Catalog, share: int) -> None:
    base = catalog.function_profile("1779fd3337dd353e", 224.0)  # a scaled profile
    moved = catalog.at_share(base, share)
    assert moved.slo_s == pytest.approx(base.slo_s)
    assert moved.gpu_fraction == pytest.approx(share / 100)
    model, k = catalog.cnn_of(base)
    raw = catalog.curve(model, share).latency_s
    assert moved.batch_latency_s == pytest.approx(tuple(x * k for x in raw))
    assert moved.max_batch == max_batch_for(moved.batch_sizes, moved.batch_latency_s, base.slo_s)


def test_llm_profile(catalog: Catalog) -> None:
    p = catalog.llm
    assert p.batch_sizes == (1, 16, 32, 64)
    assert p.batch_latency_s == pytest.approx(LLAMA_A100_256)
    assert p.slo_s == pytest.approx(5 * LLAMA_A100_256[0])
    assert p.max_batch == 64  # L(64) = 7.88 s <= slo/2 = 8.43 s


def test_prompt_weight_is_derived_from_ttft(catalog: Catalog) -> None:
    pw = catalog.prompt_weight
    assert pw.derived
    # A100, vLLM, Llama-2-7B, batch 16, 1024 tokens: TTFT 1.0300 s, end-to-end 25.0505 s
    ttft, end, n = 1.029996186029166, 25.050500875338912, 1024
    assert pw.value == pytest.approx((ttft / n) / ((end - ttft) / (n - 1)))
    assert 0.03 < pw.value < 0.06


def test_prompt_weight_falls_back_without_usable_rows(tmp_path: Path) -> None:
    rows = read_llm_bench(default_data_dir() / "profiles" / "llm-inference-bench" / "All_results.csv")
    missing = derive_prompt_weight(tmp_path / "nothing.csv", rows)
    assert (missing.value, missing.derived) == (DEFAULT_PROMPT_WEIGHT, False)
    bad = tmp_path / "ttft.csv"
    bad.write_text(
        "Hardware,Num of Hardware,Framework,Model,Input Length,Output Length,Batch Size,"
        "TTFT Latency,end_latency\n"
        # end_latency does not match All_results.csv
        "Nvidia A100 GPU,1,vLLM,meta-llama/Llama-2-7b-hf,1024,1,16,1.03,99.0\n"
        # no end_latency
        "Nvidia A100 GPU,1,vLLM,meta-llama/Llama-2-7b-hf,1024,1,16,1.03\n"
    )
    assert derive_prompt_weight(bad, rows).derived is False


@pytest.mark.parametrize(
    ("tokens_in", "tokens_out", "expected"),
    [
        (256, 256, 1.0),
        (0, 512, None),  # 512 / (256 (1 + w))
        (0, 0, 0.01),  # clamped
        (100_000, 0, None),
    ],
)
def test_llm_request_size(catalog: Catalog, tokens_in: int, tokens_out: int, expected: float | None) -> None:
    w = catalog.prompt_weight.value
    size = catalog.llm_request_size(np.array([tokens_in], float), np.array([tokens_out], float))
    if expected is None:
        expected = (tokens_out + w * tokens_in) / (256 * (1 + w))
    assert size[0] == pytest.approx(expected)


# ----------------------------------------------------------------------------------------------------
# mapping rules


@pytest.mark.parametrize(
    ("hash_function", "average_ms", "expected_l1"),
    [
        ("1779fd3337dd353e424d808d9190aff8", 224.0, 0.224),  # within [L(1), 1 s]
        ("bd28ee142ca5b46259f6e27fc3a4216f", 287.0, 0.287),
        ("00000000aaaaaaaa", 5000.0, 1.0),  # clamped to 1 s
        ("00000001aaaaaaaa", 0.0, None),  # clamped to L(1): k = 1
        ("00000002aaaaaaaa", None, None),  # no duration: k = 1
    ],
)
def test_function_profile(
    catalog: Catalog, hash_function: str, average_ms: float | None, expected_l1: float | None
) -> None:
    model = CNNS[int(hash_function[:8], 16) % 10]
    p = catalog.function_profile(hash_function, average_ms)
    raw = catalog.cnn(model)
    l1 = raw.batch_latency_s[0] if expected_l1 is None else expected_l1
    k = l1 / raw.batch_latency_s[0]
    got_model, got_k = catalog.cnn_of(p)
    assert got_model == model
    assert got_k == pytest.approx(k)
    assert p.batch_latency_s == pytest.approx(tuple(x * k for x in raw.batch_latency_s))
    assert p.slo_s == pytest.approx(5 * l1)
    assert p.max_batch == raw.max_batch
    assert p.name == (f"gpulet/{model}" if k == 1 else f"gpulet/{model}×{k:.3g}")


def test_named_profile_is_the_licensed_llm_curve(catalog: Catalog) -> None:
    """A user's CSV model maps onto the bundled LLM curve (never gpulet's unlicensed CNNs), scaled to its service
    time. Mutation caught: mapping it back onto ``cnn_by_hash`` fails the name check."""
    assert catalog.named_profile("my-model", None) == catalog.llm
    p = catalog.named_profile("my-model", 300.0)
    assert p.name.startswith("llm-bench/") and p.batch_latency_s[0] == pytest.approx(0.3)
    k = 0.3 / catalog.llm.batch_latency_s[0]
    assert p.batch_latency_s == pytest.approx([x * k for x in catalog.llm.batch_latency_s])
    assert catalog.named_profile("m", 0.0).batch_latency_s[0] == pytest.approx(0.001)  # at least 1 ms
    assert catalog.specs_of(p) == ()


def test_data_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHADOWSCALE_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("SHADOWSCALE_DATA")
    assert (default_data_dir() / "profiles" / "gpulet-reimpl" / "inference.csv").is_file()


def test_profiles_are_valid_model_profiles(catalog: Catalog) -> None:
    for model in catalog.cnn_models:
        for share in (20, 40, 50, 60, 80, 100):
            p = catalog.cnn(model, share)
            assert isinstance(p, ModelProfile)
            assert p.latency_table()[p.max_batch] <= p.slo_s / 2


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ("resnet50,1,100,throughput,209.9,latency,abc,1", "latency_s"),
        ("resnet50,1,100,throughput,209.9,latency,-0.1,1", "latency_s"),
        ("resnet50,1,100,throughput,209.9,latency,0,1", "latency_s"),
        ("resnet50,x,100,throughput,209.9,latency,0.1,1", "batch_size"),
        ("resnet50,1,120,throughput,209.9,latency,0.1,1", "gpu_share_pct"),
        (",1,100,throughput,209.9,latency,0.1,1", "model"),
        ("resnet50,1,100,throughput,209.9,latency,0.1", None),
    ],
)
def test_bad_gpulet_row(tmp_path: Path, row: str, field: str | None) -> None:
    path = tmp_path / "inference.csv"
    path.write_text("resnet50,2,100,throughput,419.7,latency,0.0047646,1\n" + row + "\n")
    with pytest.raises(DataError) as e:
        read_gpulet(path)
    assert "inference.csv:2:" in str(e.value)
    if field is not None:
        assert f"field {field!r}" in str(e.value)


def test_bad_profile_file_surfaces_as_trace_error(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "profiles" / "llm-inference-bench").mkdir(parents=True)
    (root / "profiles" / "llm-inference-bench" / "All_results.csv").write_text("Hardware,Num of Hardware\nx,1\n")
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("timestamp,model\n0,a\n")
    with pytest.raises(TraceError, match=r"All_results\.csv:1: field 'Framework'"):
        load_trace(str(csv_path), data_dir=root)


def test_right_sizing_specs_are_charged_the_measured_co_location_slowdown(catalog: Catalog) -> None:
    """A share below 100 % of a CNN with interference data runs slower by the mean measured slowdown at each batch
    size (vgg19 at 40 %, batch 1: the mean over 5 co-runners × 7 co-runner batches); a whole GPU and CNNs without
    data are not charged. Catches specs_of ignoring interference.csv."""
    base = catalog.cnn("vgg19")
    specs = {round(p.gpu_fraction * 100): p for p in catalog.specs_of(base)}
    solo = catalog.at_share(base, 40)
    rows = [
        line.split(",")
        for line in locate("profiles/gpulet-reimpl/interference.csv", catalog.data_dir).read_text().splitlines()
    ]
    co = [float(r[8]) for r in rows if r[0] == "vgg19" and r[1] == "1" and r[2] == "40"]
    assert len(co) == 35
    factor = float(np.mean(co)) / catalog.curve("vgg19", 40).latency_s[0]
    assert factor > 1.2
    assert specs[40].batch_latency_s[0] == pytest.approx(solo.batch_latency_s[0] * factor)
    assert specs[40].slo_s == base.slo_s
    assert specs[100] == catalog.at_share(base, 100)
    mobilenet = catalog.cnn("mobilenet")  # no interference rows of its own
    assert catalog.specs_of(mobilenet)[0] == catalog.at_share(mobilenet, 20)


def test_shares_on_one_gpu_fit_its_memory_bandwidth(catalog: Catalog) -> None:
    """mem_util.csv: no CNN uses more than 65.45 % of peak DRAM throughput per whole GPU share (mobilenet, batch 16,
    20 %), so shares packed up to one GPU never oversubscribe its memory bandwidth."""
    assert catalog.dram_per_share == pytest.approx(13.09 / 0.2)
    assert catalog.dram_per_share < 100.0
