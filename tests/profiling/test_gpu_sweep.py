"""The GPU configuration sweep (benchmarks/gpu_sweep.py) on the CPU: the numpy backend always, the PyTorch backend
with tiny models where torch is installed; the exporter-vs-nvidia-smi comparison on synthetic series."""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import math
import time
from pathlib import Path
from typing import Any

import pytest

from shadowscale.benchmarks import gpu_sweep as gs
from shadowscale.benchmarks.profiler import bench, load_generic


def _quick(models: list[str], backend: str, **kw: Any) -> gs.SweepSettings:
    base: dict[str, Any] = dict(
        models=models,
        backend=backend,
        device="cpu",
        batches=(1, 4),
        precisions=("fp32", "fp16"),
        threads=(1, 2),
        instances=(1, 2),
        budget_s=3.0,
        min_window_s=0.05,
        max_window_s=0.1,
        min_batches=5,
        max_s=1.0,
    )
    base.update(kw)
    return gs.SweepSettings(**base)


def test_numpy_sweep_measures_every_configuration_and_feeds_the_profiler_bench(tmp_path: Path) -> None:
    """The whole path the GPU run takes, on the numpy backend: sweep -> raw CSV -> generic CSV -> profiler bench.
    Catches: a configuration dropped or measured with the wrong instance count (rows, gpu_share), a p99 below the
    p50 (percentiles swapped), per-instance and total throughput confused, and a generic CSV the bench rejects."""
    raw = tmp_path / "raw.csv"
    rows = gs.sweep(_quick(["mlp"], "numpy"), raw)
    assert len(rows) == 2 * 2 * 2 * 2
    assert not [r for r in rows if r["error"]]
    with raw.open() as f:
        back = list(csv.DictReader(f))
    assert len(back) == len(rows) and tuple(back[0]) == gs.RAW_COLUMNS
    for r in back:
        n = int(r["instances"])
        assert float(r["gpu_share"]) == pytest.approx(1 / n)
        assert float(r["throughput"]) > 0 and float(r["p99_ms"]) >= float(r["p50_ms"]) > 0
        assert float(r["total_throughput"]) == pytest.approx(n * float(r["throughput"]), rel=1e-3)
        assert int(r["batches"]) >= 5 * n  # every instance measured at least min_batches
    gen = gs.to_generic(back, quantiles=(50,), core_price=0.1)
    assert len(gen) == len(back)
    assert {r["cost"] for r in gen if r["cfg_threads"] == "2" and r["cfg_gpu_share"] == "0.5"} == {0.7}
    path = tmp_path / "gen.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=gs.GENERIC_COLUMNS)
        w.writeheader()
        w.writerows(gen)
    ds = load_generic(path)
    assert [d.name for d in ds.dimensions] == ["batch", "precision", "threads", "gpu_share"]
    report, _ = bench(ds, methods=("random",), seeds=(0, 1), min_configs=8)
    assert report["tasks"] == 1 and report["methods"]["random"]["median_trials"] >= 1


class _Slow(gs.Runner):
    """Pre-processing takes ``prep_s`` per sample on one thread; the device step ``infer_s`` per batch."""

    def __init__(self, prep_s: float, infer_s: float) -> None:
        self.prep_s, self.infer_s = prep_s, infer_s

    def prep_one(self, i: int) -> int:
        time.sleep(self.prep_s)
        return i

    def collate(self, items: list[Any]) -> list[Any]:
        return items

    def infer(self, x: Any) -> Any:
        time.sleep(self.infer_s)
        return x

    def post(self, y: Any) -> None:
        pass


def test_threads_pre_process_in_parallel_and_overlap_the_device() -> None:
    """Batch 8, 10 ms of pre-processing per sample, 20 ms on the device: one thread gives 80 ms a batch, four
    give 20 ms, overlapped with the device's 20 ms: about 100 vs 400 samples/s.
    Catches: threads ignored (pre-processing serial), or pre-processing not overlapped with the device."""
    one = gs.measure(_Slow(0.01, 0.02), 8, 1, window_s=0.4, min_batches=4, max_s=3.0)
    four = gs.measure(_Slow(0.01, 0.02), 8, 4, window_s=0.4, min_batches=4, max_s=3.0)
    thr1, thr4 = one.samples / one.elapsed_s, four.samples / four.elapsed_s
    assert one.samples == 8 * len(one.latencies_s)
    assert thr1 < 115, thr1
    assert thr4 > 2.4 * thr1, (thr1, thr4)


def test_a_failing_configuration_is_a_row_with_its_error_not_a_crash(tmp_path: Path) -> None:
    """bf16 does not exist in the numpy backend: each such row says so, the other rows are measured.
    Catches: one bad configuration stopping the sweep (on the GPU: out of memory at a large batch)."""
    rows = gs.sweep(_quick(["mlp"], "numpy", precisions=("fp32", "bf16"), instances=(1,)), tmp_path / "raw.csv")
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 4 and all("bf16" in r["error"] for r in bad)
    assert all(float(r["throughput"]) > 0 for r in rows if not r["error"])
    gen = gs.to_generic(rows, quantiles=(50,))
    assert sorted((r["throughput"], r["latency_ms"]) for r in gen if r["cfg_precision"] == "bf16") == [(0, "")] * 4


def test_exporter_comparison_pairs_nearest_samples_and_reports_each_metric() -> None:
    """Exporter events 100 MiB and 3 W above nvidia-smi, utilization equal; one event with no sample near it.
    Catches: bytes not converted to MiB, utilization fraction not converted to percent, pairs farther apart
    than the gap allowed, nvidia-smi's timestamp misread."""
    t0 = time.mktime(time.strptime("2026/12/04 16:05:01", "%Y/%m/%d %H:%M:%S"))
    smi_text = "\n".join(
        [
            "2026/12/04 16:05:01.000, 40, 1000, 100.00",
            "2026/12/04 16:05:01.500, 60, 2000, 200.00",
            "2026/12/04 16:05:02.000, [N/A], 0, 0",  # skipped
        ]
    )
    smi = gs.parse_smi(smi_text)
    assert [s[0] - t0 for s in smi] == pytest.approx([0.0, 0.5])
    mib = 2**20
    events = [
        {"event_time": t0 + 0.1, "utilization": 0.4, "memory_used_bytes": 1100 * mib, "power_watts": 103.0},
        {"event_time": t0 + 0.45, "utilization": 0.6, "memory_used_bytes": 2100 * mib, "power_watts": 203.0},
        {"event_time": t0 + 5.0, "utilization": 0.0, "memory_used_bytes": 0, "power_watts": None},
    ]
    res = gs.compare(events, smi)
    assert (res["pairs"], res["events"], res["smi_samples"]) == (2, 3, 2)
    assert res["mad_utilization_pct"] == 0.0
    assert res["mad_memory_used_mib"] == pytest.approx(100.0)
    assert res["mad_power_w"] == pytest.approx(3.0)
    assert res["mean_gap_s"] == pytest.approx(0.075)


def test_local_trial_runner_measures_the_sweep_server() -> None:
    """The local trial runner starts the sweep's server (numpy backend) and finds a capacity at the SLO.
    Catches: a server that does not answer in the runner's protocol (capacity 0 or a failed trial)."""
    res = asyncio.run(
        gs.local_trials(
            [{"threads": 1, "batch": 4}],
            model="mlp",
            precision="fp32",
            backend="numpy",
            device="cpu",
            slo_ms=200.0,
            step_s=0.3,
            start_rps=50.0,
            bisect_steps=0,
            timeout_s=60.0,
        )
    )
    assert res[0]["status"] == "measured", res
    assert res[0]["capacity_rps"] >= 50.0 and math.isfinite(res[0]["p99_ms"])


@pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None,
    reason="PyTorch and transformers are not installed (pip install shadowscale[gpu-bench])",
)
def test_torch_sweep_of_tiny_models_on_the_cpu(tmp_path: Path) -> None:
    """The PyTorch backend with tiny models (a ResNet-18 on 32×32 images, a 2-layer BERT) on the CPU.
    Catches: the image or text pre-processing, the model wrappers or the precision casts broken."""
    rows = gs.sweep(
        _quick(["tiny-cnn", "tiny-bert"], "torch", precisions=("fp32", "bf16"), instances=(1,), batches=(2,)),
        tmp_path / "raw.csv",
    )
    assert len(rows) == 2 * 2 * 2
    assert not [r for r in rows if r["error"]], rows
