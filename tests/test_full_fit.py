"""The full fit's plan (cv.full_fit): its epoch count, learning rates and weights follow the
written rule from the folds' histories and selections."""

import pandas as pd
import pytest
from imageclf import full_fit
from imageclf.errors import DataError

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
