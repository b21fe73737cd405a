"""Weights through the workflow: torchvision's file is fetched by the local weights rule and read
by training from results/weights/; a local file is an input by content."""

import os
import time

import pytest
import torch
import torchvision
from conftest import planned_jobs, snakemake, tiny_overlay, write_overlay

pytestmark = pytest.mark.slow


def random_resnet18(path, seed):
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)


def test_weights_are_files_of_the_workflow(dataset, tmp_path, monkeypatch):
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    random_resnet18(hub / "resnet18-f37072fd.pth", seed=0)  # the name torchvision's download gives it
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    local = tmp_path / "my weights" / "ddp.pth"
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    local.parent.mkdir()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, local)  # DDP, Lightning layout
    overlay = tiny_overlay(dataset, model={"arch": "resnet18", "weights": "IMAGENET1K_V1"}, train={
        "image_size": 32, "epochs": 1, "batch_size": 8, "num_workers": 0, "optimizer": {"lr": 0.002}})
    overlay["variants"] = {"full": {}, "no_mlp": None, "no_mixup": None, "local": {"model": {"weights": str(local)}}}
    configfile = write_overlay(tmp_path / "run.yaml", overlay)
    work = tmp_path / "work"
    targets = ["results/train/full/seed0/history.csv", "results/train/local/seed0/history.csv"]
    result = snakemake(work, configfile, *targets)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    fetched = work / "results" / "weights" / "resnet18-f37072fd.pth"
    assert fetched.read_bytes() == (hub / "resnet18-f37072fd.pth").read_bytes()
    assert f"from {fetched.relative_to(work)}" in (work / "logs/train/full/seed0.log").read_text()

    def planned():
        dry = snakemake(work, configfile, "-n", *targets)
        assert dry.returncode == 0, dry.stderr[-3000:]
        return planned_jobs(dry.stdout), dry.stdout

    assert planned()[0] == {}
    time.sleep(0.01)
    os.utime(local)  # touched, same content: nothing to do
    assert planned()[0] == {}
    random_resnet18(local, seed=2)  # replaced: the variant that uses it retrains, the other does not
    jobs, text = planned()
    assert jobs.get("train") == 1 and "results/train/local/seed0/history.csv" in text, text[-3000:]
    torch.save({"conv1.weight": torch.zeros(3)}, local)  # does not fit: stopped before any job, keys named
    dry = snakemake(work, configfile, "-n", *targets)
    assert dry.returncode != 0 and "does not fit resnet18" in dry.stdout + dry.stderr
