"""The full fit (cv.full_fit): its plan's epoch count, learning rates and weights follow the
written rule from the folds' histories and selections, and training follows the plan."""

import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, index_dataset, index_files, make_dataset, tiny_overlay
from imageclf.checks import checked_config
from imageclf.core import config as C
from imageclf.core import tables
from imageclf.core.errors import ConfigError, DataError
from imageclf.core.io_utils import write_json
from imageclf.training import full_fit, train

BASE = {"variant": "full", "seed": 0, "train": {"epochs": 6, "optimizer": {"lr": 0.01}}}


def history(lrs):
    return pd.DataFrame({"epoch": range(1, len(lrs) + 1), "lr": lrs})


def test_the_epoch_count_is_the_median_of_the_selected_epochs_halves_up():
    assert full_fit.median_epoch([3, 7, 4]) == 4
    assert full_fit.median_epoch([3, 4]) == 4  # 3.5 rounds up
    assert full_fit.median_epoch([2, 2, 5, 6]) == 4  # 3.5 again
    assert full_fit.median_epoch([1, 1]) == 1


def test_the_plan_replays_the_folds_median_learning_rate_for_the_median_epoch():
    histories = [history([0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025]),
                 history([0.01, 0.005, 0.005, 0.0025, 0.0025, 0.00125]),
                 history([0.01, 0.01, 0.01, 0.005, 0.005, 0.005])]
    selections = [{"epoch": 5, "weights": "model"}, {"epoch": 2, "weights": "ema"}, {"epoch": 4, "weights": "model"}]
    planned = full_fit.plan(BASE, histories, selections, ["h0", "h1", "h2"])
    assert planned["train"]["epochs"] == 4 and planned["train"]["optimizer"] == BASE["train"]["optimizer"]
    assert planned["full_fit"]["fold_epochs"] == [5, 2, 4]
    assert planned["full_fit"]["lr_factors"] == pytest.approx([1.0, 1.0, 0.5, 0.5])
    assert planned["full_fit"]["weights"] == "model"  # one fold of three chose its EMA
    assert BASE["train"]["epochs"] == 6  # the fold models' config is left as it was


def test_most_folds_choosing_the_ema_gives_the_full_fit_the_ema():
    selections = [{"epoch": 1, "weights": "ema"}, {"epoch": 1, "weights": "ema"}, {"epoch": 1, "weights": "model"}]
    planned = full_fit.plan(BASE, [history([0.01])] * 3, selections, ["h0", "h1", "h2"])
    assert planned["full_fit"]["weights"] == "ema"


def test_a_fold_history_shorter_than_the_plan_is_named():
    histories = [history([0.01, 0.01, 0.01]), history([0.01])]
    with pytest.raises(DataError, match="fold1/history.csv: has no epoch 2"):
        full_fit.plan(BASE, histories, [{"epoch": 3}, {"epoch": 1}], ["fold0/history.csv", "fold1/history.csv"])


@pytest.fixture
def full_fit_config(tmp_path):
    """A tiny run config (backbone at a tenth of the head's rate, EMA on) with a full fit's plan:
    two epochs at half and a quarter of the rate, keeping the EMA."""
    make_dataset(tmp_path / "data")
    index_dataset(tmp_path / "data", tmp_path / "index")
    overlay = tiny_overlay(tmp_path / "data", train={"optimizer": {"lr": 0.002, "backbone_lr_scale": 0.1},
                                                     "ema": {"enabled": True, "decay": 0.9}})
    cfg = checked_config(C.deep_merge(yaml.safe_load((REPO / "config.yaml").read_text()), overlay))
    base = C.run_config(cfg, "full", 0)
    planned = {**base, "train": {**base["train"], "epochs": 2},
               "full_fit": {"fold_epochs": [2, 2], "lr_factors": [0.5, 0.25], "weights": "ema"}}
    path = tmp_path / "full" / "config.json"
    path.parent.mkdir()
    write_json(path, planned)
    return tmp_path, path


def test_a_full_fit_trains_its_plan_without_validation_and_keeps_its_last_ema(full_fit_config):
    tmp, run_config = full_fit_config
    index = {**index_files(tmp / "index"), "val": None}
    out = tmp / "full"
    history = train.train(run_config, index, out, threads=1, model_out=out / "model.pt")
    assert history["epoch"].tolist() == [1, 2] and history["val_acc"].isna().all()
    assert history["lr"].tolist() == pytest.approx([0.001, 0.0005])  # the head's rate, replayed
    assert not (out / "checkpoints").exists()  # nothing held out, nothing selected
    state = torch.load(out / "resume" / "state.pt", map_location="cpu", weights_only=True)
    backbone, head = state["optimizer"]["param_groups"]
    assert backbone["lr"] == pytest.approx(0.00005) and head["lr"] == pytest.approx(0.0005)
    saved = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert saved["meta"]["weights"] == "ema" and saved["meta"]["epoch"] == 2
    for key, tensor in saved["model"].items():  # the EMA's weights, not the trained ones
        assert torch.equal(tensor, state["ema"][f"module.{key}"]), key
    assert any(not torch.equal(t, state["model"][k]) for k, t in saved["model"].items())


def test_a_full_fit_called_like_a_fold_run_is_one_line(full_fit_config):
    tmp, run_config = full_fit_config
    with pytest.raises(ConfigError, match="a full fit .* takes --model-out and no --val-index"):
        train.train(run_config, index_files(tmp / "index"), tmp / "x", model_out=tmp / "x" / "model.pt")
    with pytest.raises(ConfigError, match="takes --model-out"):
        train.train(run_config, {**index_files(tmp / "index"), "val": None}, tmp / "x")


def test_the_stage_writes_the_plan_and_warns_about_folds_not_to_be_trusted(tmp_path, caplog):
    write_json(tmp_path / "config.json", BASE)
    histories, selections = [], []
    for k, (epoch, warnings) in enumerate([(3, []), (2, ["val accuracy 10.0 % is no better than chance"])]):
        frame = history([0.01, 0.01, 0.005]).assign(train_loss=1.0, val_loss=1.0, val_acc=0.5, seconds=1.0,
                                                    images_per_s=1.0)
        tables.write_history(tmp_path / f"h{k}.csv", frame)
        tables.write_selection(tmp_path / f"s{k}.json", {"epoch": epoch, "weights": "model", "warnings": warnings})
        histories.append(tmp_path / f"h{k}.csv")
        selections.append(tmp_path / f"s{k}.json")
    full_fit.run(tmp_path / "config.json", histories, selections, tmp_path / "full.json")
    planned = C.load_run_config(tmp_path / "full.json")
    assert planned["train"]["epochs"] == 3 and planned["full_fit"]["lr_factors"] == pytest.approx([1.0, 1.0, 0.5])
    warned = [r.message for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "s1.json" in warned[0] and "no better than chance" in warned[0]
