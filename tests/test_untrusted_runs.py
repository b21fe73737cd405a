"""No silent garbage, through the workflow as a user runs it: a run that diverges is flagged at
select, in the ablation table and at submission; a NaN loss stops with one line."""

import json

import pandas as pd
import pytest
from conftest import make_dataset, snakemake, tiny_overlay, write_overlay
from imageclf.evaluation.select import untrusted_reasons


def one_run(tmp_path, optimizer, **train):
    make_dataset(tmp_path / "data", train_per_class=3, val_per_class=2, test_per_class=1)
    overlay = tiny_overlay(tmp_path / "data", variants={"no_mlp": None, "no_mixup": None}, seeds=[0])
    overlay["train"].update(optimizer=optimizer, **train)
    return write_overlay(tmp_path / "run.yaml", overlay)


@pytest.mark.slow
def test_adamw_at_lr_1000_is_flagged_everywhere(tmp_path):
    """The issue's case: rc 0 and a full set of results, but every place says not to trust them."""
    configfile = one_run(tmp_path, {"name": "adamw", "lr": 1000.0})
    work = tmp_path / "work"
    result = snakemake(work, configfile, "results/submission.csv", "results/ablation/table.md")
    assert result.returncode == 0, result.stderr[-3000:]
    selection = json.loads((work / "results/train/full/seed0/selection.json").read_text())
    assert selection["warnings"], selection
    assert "not to be trusted" in result.stderr and "no better than chance" in result.stderr
    table = (work / "results/ablation/table.md").read_text()
    assert "untrusted runs" in table.splitlines()[0] and "| seed0 |" in table.splitlines()[2]
    assert "submitting a run that select flagged" in (work / "logs/submission.log").read_text()


@pytest.mark.slow
def test_a_nan_loss_is_one_line_that_says_what_was_kept(tmp_path):
    configfile = one_run(tmp_path, {"name": "sgd", "lr": 1e30}, precision="fp32", epochs=1)
    result = snakemake(tmp_path / "work", configfile, "results/train/full/seed0/history.csv")
    assert result.returncode != 0
    log = (tmp_path / "work/logs/train/full/seed0.log").read_text()
    assert "Traceback" not in log
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1, log[-2000:]
    assert "training loss is" in errors[0] and "lower train.optimizer.lr" in errors[0]
    assert "diverged in epoch 1, so no checkpoint or resume state was kept" in errors[0]
    assert "precision" not in errors[0]  # the run was fp32: no "or use fp32"


def history(train_loss):
    return pd.DataFrame({"epoch": range(1, len(train_loss) + 1), "train_loss": train_loss})


def test_a_healthy_run_is_not_flagged():
    labels = pd.Series([str(i % 10) for i in range(100)])
    assert untrusted_reasons(history([2.3, 1.1, 0.6]), 0.9, labels, 10) == []
    # 16 % on 100 images of 10 balanced classes: above chance (p < 0.05)
    assert untrusted_reasons(history([2.3, 2.2]), 0.17, labels, 10) == []


def test_chance_is_the_most_common_val_class():
    """Always answering the majority class of an imbalanced val set scores 80 %: no better than chance."""
    labels = pd.Series(["a"] * 80 + ["b"] * 20)
    (flag,) = untrusted_reasons(history([0.7, 0.6]), 0.8, labels, 2)
    assert "no better than chance" in flag and "80.0 %" in flag
    assert untrusted_reasons(history([0.7, 0.6]), 0.95, labels, 2) == []


def test_a_loss_that_ends_far_above_its_start_is_flagged():
    labels = pd.Series([str(i % 10) for i in range(100)])
    (flag,) = untrusted_reasons(history([2.0, 4.5]), 0.9, labels, 10)
    assert "more than twice where it started (2)" in flag
    # a first epoch that diverged already: the start is a uniform guess's loss, ln 10
    (flag,) = untrusted_reasons(history([6e7, 5e7]), 0.9, labels, 10)
    assert "(2.303)" in flag


def test_a_later_divergence_says_which_epoch_and_what_was_kept(tmp_path):
    """The resume state of this run config's finished epochs is named; another config's is not."""
    import torch
    from imageclf.core.config import config_hash
    from imageclf.core.io_utils import write_json
    from imageclf.training.train import what_diverged_kept

    run = {"variant": "full", "seed": 0, "train": {"optimizer": {"lr": 1000.0}}}
    write_json(tmp_path / "config.json", run)
    state_dir = tmp_path / "resume"
    state_dir.mkdir()
    torch.save({"config_hash": config_hash(run), "epoch": 4, "best": {"val_acc": 0.25, "val_loss": 2.1}},
               state_dir / "state.pt")
    said = what_diverged_kept(tmp_path / "config.json", state_dir)
    assert "lr 1000" in said and "diverged in epoch 5" in said and "resume state after epoch 4" in said
    assert "val_acc 0.2500" in said and str(state_dir) in said
    torch.save({"config_hash": "another", "epoch": 4, "best": {}}, state_dir / "state.pt")
    assert "diverged in epoch 1, so no checkpoint" in what_diverged_kept(tmp_path / "config.json", state_dir)
