"""The benchmark script: its bookkeeping (rounds, medians, ratios) and one tiny run end to end.

Only whether it runs and reports consistently is tested here; its figures are measurements."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks import bench


def test_rounds_interleave_columns_and_ratios_pair_each_round():
    calls = []
    a_values, c_values = iter([100.0, 50.0, 200.0]), iter([90.0, 40.0, 100.0])

    def column(name, values):
        def measure():
            calls.append(name)
            return next(values)
        return measure

    out = bench.measure_rounds({"a": column("a", a_values), "c": column("c", c_values)},
                               {"c_over_a": ("c", "a")}, rounds=3, threads=1)
    assert calls == ["a", "c"] * 3  # interleaved, not all of a then all of c
    assert out["a"] == 100.0 and out["c"] == 90.0  # medians
    assert out["a_spread"] == pytest.approx((200 - 50) / 100)
    # per-round ratios 0.9, 0.8, 0.5: their median, not the ratio of the medians (0.9)
    assert out["c_over_a"] == pytest.approx(0.8)


def test_tiny_benchmark_writes_every_column(tmp_path):
    out = tmp_path / "bench"
    bench.main(["--sizes", "demo", "--batch-size", "4", "--steps", "1", "--warmup", "1", "--rounds", "2",
                "--workers", "0", "--threads", "1", "--precisions", "bf16", "--no-dry-run", "--out-dir", str(out)])
    row = pd.read_csv(out / "throughput.csv").iloc[0]
    columns = ["a_model_img_s", "b_reference_path_img_s", "c_our_path_img_s", "d_device_aug_path_img_s",
               "aug_reference_img_s_per_core", "aug_ours_img_s_per_core", "aug_batched_on_device_img_s",
               "inference_img_s"]
    for name in columns:
        assert np.isfinite(row[name]) and row[name] > 0, name
    for name in columns[:4]:
        assert row[f"{name}_spread"] >= 0, name
    assert row["arch"] == "resnet18" and row["image_size"] == 32  # the demo overlay's model and size
    assert 0 < row["c_over_a"] and 0 < row["d_over_a"]
    # bf16's end-to-end speed-up over fp32 comes from the same rounds, against an fp32 run of (c)
    assert row["precision"] == "bf16" and np.isfinite(row["c_fp32_img_s"]) and row["c_fp32_img_s"] > 0
    assert row["c_over_fp32_c"] > 0 and row["c_fp32_img_s_spread"] >= 0
