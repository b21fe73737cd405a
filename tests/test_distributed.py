"""Several processes: the train rule launches torchrun (DistributedDataParallel, gloo on CPU)."""

import json

import pandas as pd
import pytest
import torch
from conftest import index_files, make_dataset, snakemake, tiny_overlay, write_overlay
from imageclf.core.metrics import SELECTABLE
from imageclf.training import train

pytestmark = pytest.mark.slow  # torchrun with two processes, through Snakemake


def test_two_process_training_matches_one_process(tmp_path):
    make_dataset(tmp_path / "data", train_per_class=20, val_per_class=4)
    overlay = tiny_overlay(tmp_path / "data", train={"epochs": 5, "devices": 2, "batch_size": 16})
    configfile = write_overlay(tmp_path / "ddp.yaml", overlay)
    work = tmp_path / "work"
    result = snakemake(work, configfile, "results/train/full/seed0/model.pt")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = work / "results/train/full/seed0"
    log = (work / "logs/train/full/seed0.log").read_text()
    assert "batch 16 on cpu x2" in log  # two processes, one global batch of 16
    assert log.count("epoch 5/5") == 1  # only rank 0 reports
    assert sorted(p.name for p in (run / "resume").iterdir()) == sorted(
        [f"best_{metric}.pt" for metric in SELECTABLE] + ["state.pt"])
    checkpoint = torch.load(run / "model.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in checkpoint["model"])  # loads without DDP
    distributed = pd.read_csv(run / "history.csv")

    single_config = tmp_path / "single.json"
    config = json.loads((run / "config.json").read_text())
    config["train"]["devices"] = 1
    single_config.write_text(json.dumps(config))
    single = train.train(single_config, index_files(work / "results/index"), tmp_path / "single", threads=1)
    assert distributed["epoch"].tolist() == single["epoch"].tolist() == [1, 2, 3, 4, 5]
    # Same global batch; BatchNorm statistics and mixup pairs are per process, so close, not equal:
    # both learn (10 classes, 48 val images), to a best epoch within a few images of each other.
    # The last epoch alone moved by 0.25 between CPUs with and without native bf16.
    assert min(distributed["val_acc"].max(), single["val_acc"].max()) >= 0.5
    assert abs(distributed["val_acc"].max() - single["val_acc"].max()) <= 0.25
    assert abs(distributed["train_loss"].iloc[0] - single["train_loss"].iloc[0]) <= 0.3


def test_two_processes_with_batched_augmentation_from_the_square_cache(tmp_path):
    """augment_on: device through the workflow: the s<margin> cache rule, torchrun, DDP."""
    make_dataset(tmp_path / "data", train_per_class=6, val_per_class=2)
    overlay = tiny_overlay(tmp_path / "data", train={"epochs": 2, "devices": 2, "batch_size": 8,
                                                     "augment_on": "device"})
    overlay["augment"] = {}  # the whole recipe chain, RandAugment and colour jitter included
    work = tmp_path / "work"
    result = snakemake(work, write_overlay(tmp_path / "dev.yaml", overlay), "results/train/full/seed0/history.csv")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (work / "results/cache/train_32px_s1.15.npy").is_file()
    log = (work / "logs/train/full/seed0.log").read_text()
    assert "batch 8 on cpu x2" in log and "augment_on device" in log and log.count("epoch 2/2") == 1
    history = pd.read_csv(work / "results/train/full/seed0/history.csv")
    assert history["train_loss"].notna().all() and history["epoch"].tolist() == [1, 2]
