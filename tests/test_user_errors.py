"""Mistakes a user can fix stop a stage with one line naming the key or file, never a traceback."""

import subprocess

import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, index_dataset, make_dataset, tiny_overlay
from imageclf.core import config as C
from imageclf.core import tables
from imageclf.core.io_utils import write_json


def run(*args):
    result = subprocess.run(["imageclf", *map(str, args)], capture_output=True, text=True)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return result.returncode, lines


def assert_one_line(rc, lines, *words):
    assert rc == 1, lines
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    errors = [line for line in lines if " ERROR " in line]
    assert len(errors) == 1, "\n".join(lines)
    for word in words:
        assert word in errors[0], errors[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("user_errors")
    make_dataset(tmp / "data", train_per_class=1, val_per_class=1, test_per_class=1)
    index_dataset(tmp / "data", tmp / "index")
    cfg = C.effective_config(C.deep_merge(yaml.safe_load((REPO / "config.yaml").read_text()),
                                          tiny_overlay(tmp / "data")))
    return tmp, cfg


def train_with(tmp, cfg, name, **train):
    run_cfg = C.run_config(cfg, "full", 0)
    run_cfg["train"].update(train)
    write_json(tmp / f"{name}.json", run_cfg)
    return run("train", "--run-config", tmp / f"{name}.json", "--train-index", tmp / "index/train.csv",
               "--val-index", tmp / "index/val.csv", "--classes", tmp / "index/classes.csv",
               "--out-dir", tmp / name, "--log-file", tmp / f"{name}.log")


def test_a_batch_of_one_image_is_one_line(tiny):
    tmp, cfg = tiny
    assert_one_line(*train_with(tmp, cfg, "batch1", batch_size=1), "train.batch_size (variant", "BatchNorm")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line(tiny):
    tmp, cfg = tiny
    assert_one_line(*train_with(tmp, cfg, "cuda", device="cuda"), "train.device: 'cuda'", "no CUDA device")


def test_fp16_on_the_cpu_is_one_line(tiny):
    tmp, cfg = tiny
    assert_one_line(*train_with(tmp, cfg, "fp16", device="cpu", precision="fp16"), "train.precision: fp16")


def test_a_history_without_any_value_is_one_line(tmp_path):
    history = tmp_path / "history.csv"
    tables.write_history(history, pd.DataFrame({
        "epoch": [1, 2], "train_loss": [1.0, 1.0], "val_loss": [float("nan")] * 2,
        "val_acc": [float("nan")] * 2, "lr": [0.1, 0.1], "seconds": [1.0, 1.0], "images_per_s": [1.0, 1.0]}))
    rc, lines = run("select", "--history", history, "--checkpoint", tmp_path / "a.pt", "--metric", "val_acc",
                    "--model-out", tmp_path / "model.pt", "--selection-out", tmp_path / "selection.json",
                    "--log-file", tmp_path / "select.log")
    assert_one_line(rc, lines, str(history), "val_acc is NaN")
