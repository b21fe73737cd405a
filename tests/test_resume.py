"""Determinism and crash-proof training: a run killed with SIGKILL resumes bit-identically."""

import os
import signal

import pandas as pd
import pytest
import torch
from conftest import REPO, index_dataset, index_files, make_dataset, snakemake, start_snakemake, tiny_overlay, wait_for, write_overlay
from imageclf.checks import checked_config
from imageclf.core import config as C
from imageclf.core.io_utils import write_json
from imageclf.training import checkpoints, train

COMPARED = ["epoch", "train_loss", "val_loss", "val_acc", "lr"]  # all but wall-clock columns


@pytest.fixture
def prepared(tmp_path):
    make_dataset(tmp_path / "data")
    index_dataset(tmp_path / "data", tmp_path / "index")
    cfg = checked_config(C.deep_merge(
        __import__("yaml").safe_load((REPO / "config.yaml").read_text()),
        tiny_overlay(tmp_path / "data", train={"epochs": 3}),
    ))
    run_config = tmp_path / "config.json"
    write_json(run_config, C.run_config(cfg, "full", 0))
    return tmp_path, run_config


def checkpoint_tensors(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_run(dir_a, dir_b):
    history_a = pd.read_csv(dir_a / "history.csv")[COMPARED]
    history_b = pd.read_csv(dir_b / "history.csv")[COMPARED]
    pd.testing.assert_frame_equal(history_a, history_b, check_exact=True)
    for name in ("best_val_acc.pt", "best_val_loss.pt"):
        a, b = checkpoint_tensors(dir_a / "checkpoints" / name), checkpoint_tensors(dir_b / "checkpoints" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key} differs"


def test_same_config_and_seed_give_identical_runs(prepared):
    tmp, run_config = prepared
    train.train(run_config, index_files(tmp / "index"), tmp / "a", threads=1)
    train.train(run_config, index_files(tmp / "index"), tmp / "b", threads=1)
    assert_same_run(tmp / "a", tmp / "b")


@pytest.mark.slow  # 10-15 s each: the full suite runs them, the quick loop keeps one bit-identity test
def test_worker_processes_do_not_change_the_run(prepared):
    # why train.num_workers is kept out of the run config (config.EXECUTION_ONLY)
    tmp, run_config = prepared
    train.train(run_config, index_files(tmp / "index"), tmp / "a", threads=1, num_workers=0)
    train.train(run_config, index_files(tmp / "index"), tmp / "b", threads=1, num_workers=2)
    assert_same_run(tmp / "a", tmp / "b")


def test_resume_state_from_another_config_is_discarded(prepared, caplog):
    tmp, run_config = prepared
    train.train(run_config, index_files(tmp / "index"), tmp / "a", threads=1)
    changed = C.load_run_config(run_config)
    changed["train"]["epochs"] = 1
    changed_path = tmp / "changed.json"
    write_json(changed_path, changed)
    with caplog.at_level("WARNING"):
        history = train.train(changed_path, index_files(tmp / "index"), tmp / "a", threads=1)
    assert "discarding resume state" in caplog.text and "config_hash" in caplog.text
    assert history["epoch"].tolist() == [1]


def interrupted_after_epoch_two_then_resumed(monkeypatch, run_config, tmp):
    """Train into tmp/resumed, killed right after epoch 2's resume state is saved, then again:
    (the resumed history, the epochs whose state was saved before the kill)."""
    saves = []
    real_save = checkpoints.torch_save

    def crash_after_epoch_two(obj, path):
        real_save(obj, path)
        if str(path).endswith("state.pt"):
            saves.append(obj["epoch"])
            if obj["epoch"] == 2:
                raise KeyboardInterrupt("killed after epoch 2")

    monkeypatch.setattr(checkpoints, "torch_save", crash_after_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train.train(run_config, index_files(tmp / "index"), tmp / "resumed", threads=1)
    monkeypatch.setattr(checkpoints, "torch_save", real_save)
    return train.train(run_config, index_files(tmp / "index"), tmp / "resumed", threads=1), saves


@pytest.mark.slow  # 10-15 s each: the full suite runs them, the quick loop keeps one bit-identity test
def test_an_interrupted_run_with_ema_resumes_bit_identically(prepared, monkeypatch):
    """train.ema on: the EMA weights (and their step count) are part of the resume state."""
    tmp, run_config = prepared
    cfg = C.load_run_config(run_config)
    cfg["train"]["ema"] = {"enabled": True, "decay": 0.9}
    ema_config = tmp / "ema.json"
    write_json(ema_config, cfg)
    whole = train.train(ema_config, index_files(tmp / "index"), tmp / "whole", threads=1)
    assert {"val_loss_ema", "val_acc_ema"} <= set(whole.columns) and whole["val_acc_ema"].notna().all()

    resumed, saves = interrupted_after_epoch_two_then_resumed(monkeypatch, ema_config, tmp)
    assert saves == [1, 2] and resumed["epoch"].tolist() == [1, 2, 3]
    columns = COMPARED + ["val_loss_ema", "val_acc_ema"]
    pd.testing.assert_frame_equal(whole[columns], resumed[columns], check_exact=True)
    assert_same_run(tmp / "whole", tmp / "resumed")
    state = torch.load(tmp / "resumed" / "resume" / "state.pt", weights_only=True)
    whole_state = torch.load(tmp / "whole" / "resume" / "state.pt", weights_only=True)
    for key, value in whole_state["ema"].items():
        assert torch.equal(value, state["ema"][key]), key


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])  # 2: the recipe's DataLoader workers, which persist across epochs
def test_sigkilled_training_resumes_bit_identically(tmp_path, workers):
    make_dataset(tmp_path / "data")
    overlay = tiny_overlay(tmp_path / "data", train={"epochs": 4, "num_workers": workers})
    configfile = write_overlay(tmp_path / "tiny.yaml", overlay)
    work = tmp_path / "work"
    target = "results/train/full/seed0/history.csv"
    process = start_snakemake(work, configfile, target, cores=1)
    log = work / "logs/train/full/seed0.log"
    try:
        wait_for(log, "epoch 2/4", process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # snakemake and the training job, mid-run
        process.wait()
    assert not (work / target).exists()
    state = torch.load(work / "results/train/full/seed0/resume/state.pt", weights_only=True)
    assert 1 <= state["epoch"] < 4  # killed part-way: some epochs done, not all

    assert snakemake(work, configfile, "--unlock").returncode == 0
    rerun = snakemake(work, configfile, target)  # the default profile adds --rerun-incomplete
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming full from results/train/full/seed0/resume/state.pt after epoch {state['epoch']}" in log.read_text()
    assert f"augment_on loader, {workers} DataLoader workers" in log.read_text()  # the rule passed the count

    # The same run uninterrupted, straight from the package, on the same index and run config.
    run_dir = work / "results/train/full/seed0"
    # threads=1 as the rule ran it: float sums (and so results) depend on the thread count
    train.train(run_dir / "config.json", index_files(work / "results/index"), tmp_path / "uninterrupted", threads=1,
                num_workers=workers)
    assert_same_run(run_dir, tmp_path / "uninterrupted")
    history = pd.read_csv(run_dir / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3, 4]


def test_each_epoch_is_written_for_tensorboard(prepared, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tmp, run_config = prepared
    history = train.train(run_config, index_files(tmp / "index"), tmp / "a", threads=1,
                          tensorboard_dir=tmp / "tb" / "full" / "seed0")
    events = EventAccumulator(str(tmp / "tb" / "full" / "seed0"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train_loss", "val_loss", "val_acc", "lr", "images_per_s"} <= tags
    values = [event.value for event in events.Scalars("val_acc")]
    assert [event.step for event in events.Scalars("val_acc")] == history["epoch"].tolist()
    assert values == pytest.approx(history["val_acc"].tolist())


def with_train(tmp, run_config, name, **train_keys):
    cfg = C.load_run_config(run_config)
    cfg["train"].update(train_keys)
    write_json(tmp / name, cfg)
    return tmp / name


@pytest.mark.slow  # 10-15 s each: the full suite runs them, the quick loop keeps one bit-identity test
def test_raising_the_epochs_of_a_finished_run_extends_it_bit_identically(prepared, caplog):
    """plateau: the 2-epoch run is the first 2 epochs of the 3-epoch run, so the extension continues
    from its resume state and ends as a run trained for 3 epochs from the start."""
    from imageclf.evaluation import select
    tmp, run_config = prepared
    short = with_train(tmp, run_config, "short.json", epochs=2, ema={"enabled": True, "decay": 0.9})
    long = with_train(tmp, run_config, "long.json", epochs=3, ema={"enabled": True, "decay": 0.9})
    first = train.train(short, index_files(tmp / "index"), tmp / "extended", threads=1)
    with caplog.at_level("INFO"):
        extended = train.train(long, index_files(tmp / "index"), tmp / "extended", threads=1)
    assert "extending full: train.epochs raised from 2 to 3; continuing from" in caplog.text
    assert "discarding" not in caplog.text
    # epochs 1 and 2 were not trained again: their wall-clock times are the first run's
    assert extended["seconds"].tolist()[:2] == first["seconds"].tolist() and len(extended) == 3
    whole = train.train(long, index_files(tmp / "index"), tmp / "whole", threads=1)
    columns = COMPARED + ["val_loss_ema", "val_acc_ema"]
    pd.testing.assert_frame_equal(whole[columns], extended[columns], check_exact=True)
    assert_same_run(tmp / "whole", tmp / "extended")
    for metric in ("val_acc", "val_loss"):
        assert select.best_epoch(extended, metric) == select.best_epoch(whole, metric)
        meta = [torch.load(tmp / run / "checkpoints" / f"best_{metric}.pt", weights_only=True)["meta"]
                for run in ("whole", "extended")]
        assert meta[0] == meta[1]  # the kept checkpoints carry the 3-epoch run's config hash


def test_raising_the_epochs_under_cosine_retrains_and_says_why(prepared, caplog):
    tmp, run_config = prepared
    short = with_train(tmp, run_config, "short.json", epochs=1, scheduler={**C.load_run_config(run_config)["train"]
                                                                          ["scheduler"], "name": "cosine"})
    long = with_train(tmp, short, "long.json", epochs=2)
    train.train(short, index_files(tmp / "index"), tmp / "a", threads=1)
    with caplog.at_level("INFO"):
        history = train.train(long, index_files(tmp / "index"), tmp / "a", threads=1)
    assert "train.epochs raised from 1 to 2, but the cosine schedule depends on the epoch count" in caplog.text
    assert [r.levelname for r in caplog.records if "cosine schedule" in r.message] == ["WARNING"]  # on the console
    assert "extending" not in caplog.text and history["epoch"].tolist() == [1, 2]


@pytest.mark.slow
def test_raising_the_epochs_through_snakemake_extends_plateau_and_retrains_cosine(tmp_path):
    """The run config changes, so Snakemake reruns the train job; the job itself extends the run
    (plateau) or retrains it (cosine), and a dry run shows the train job either way."""
    from conftest import planned_jobs

    make_dataset(tmp_path / "data")
    work, target = tmp_path / "work", "results/train/full/seed0/history.csv"
    log = work / "logs/train/full/seed0.log"

    def overlay(name, **train_keys):
        return write_overlay(tmp_path / f"{name}.yaml", tiny_overlay(tmp_path / "data", train=train_keys))

    short, longer = overlay("short", epochs=2), overlay("long", epochs=3)
    assert snakemake(work, short, target, cores=1).returncode == 0
    first = pd.read_csv(work / target)
    dry = snakemake(work, longer, target, "-n", cores=1)
    assert dry.returncode == 0 and planned_jobs(dry.stdout).get("train") == 1, dry.stdout[-2000:]
    rerun = snakemake(work, longer, target, cores=1)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "extending full: train.epochs raised from 2 to 3" in log.read_text()
    extended = pd.read_csv(work / target)
    assert extended["epoch"].tolist() == [1, 2, 3] and extended["seconds"].tolist()[:2] == first["seconds"].tolist()
    run_dir = work / "results/train/full/seed0"
    train.train(run_dir / "config.json", index_files(work / "results/index"), tmp_path / "whole", threads=1)
    assert_same_run(run_dir, tmp_path / "whole")

    # cosine stretches its curve over the epoch count: raising it retrains, and the console says why
    cosine_short = overlay("cosine2", epochs=2, scheduler={"name": "cosine"})
    cosine_long = overlay("cosine3", epochs=3, scheduler={"name": "cosine"})
    assert snakemake(work, cosine_short, target, cores=1).returncode == 0
    dry = snakemake(work, cosine_long, target, "-n", cores=1)
    assert dry.returncode == 0 and planned_jobs(dry.stdout).get("train") == 1, dry.stdout[-2000:]
    retrain = snakemake(work, cosine_long, target, cores=1)
    assert retrain.returncode == 0, retrain.stderr[-3000:]
    assert "but the cosine schedule depends on the epoch count" in retrain.stderr
    assert "extending" not in log.read_text()


@pytest.mark.slow  # 10-15 s each: the full suite runs them, the quick loop keeps one bit-identity test
def test_an_interrupted_run_with_cutmix_accumulation_and_clipping_resumes_bit_identically(prepared, monkeypatch):
    """The levers' draws (mixup or CutMix per batch, the box) come from the epoch's seeded streams."""
    tmp, run_config = prepared
    levers = with_train(tmp, run_config, "levers.json", cutmix_alpha=1.0, mix_switch_prob=0.5,
                        accumulate_steps=2, clip_grad_norm=1.0)
    whole = train.train(levers, index_files(tmp / "index"), tmp / "whole", threads=1)
    resumed, _ = interrupted_after_epoch_two_then_resumed(monkeypatch, levers, tmp)
    pd.testing.assert_frame_equal(whole[COMPARED], resumed[COMPARED], check_exact=True)
    assert_same_run(tmp / "whole", tmp / "resumed")
    plain = train.train(run_config, index_files(tmp / "index"), tmp / "plain", threads=1)
    assert not plain["train_loss"].equals(whole["train_loss"])  # the levers did change the training
