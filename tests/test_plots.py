"""The ten worst classes: intervals, and which of them are surely worse."""

import numpy as np
import pandas as pd
from imageclf.report import plots


def test_worst_classes_carry_intervals_and_flag_only_the_surely_worse():
    rng = np.random.default_rng(0)
    classes = [f"c{i}" for i in range(10)]
    labels = np.repeat(classes, 50)
    right = rng.random(len(labels)) < np.where(labels == "c5", 0.5, 0.95)
    pred = np.where(right, labels, np.roll(labels, 50))  # a wrong answer: another class
    errors = plots.per_class_errors(pd.DataFrame({"label": labels, "pred_label": pred}), classes)
    assert errors["class"].iloc[0] == "c5" and bool(errors["surely_worse"].iloc[0])
    assert not errors["surely_worse"].iloc[1:].any()  # the next worst are worst by chance
    assert (errors["error_ci_low"] <= errors["error_rate"]).all() and (errors["error_rate"] <= errors["error_ci_high"]).all()


def test_the_worst_classes_plot_draws_when_classes_make_no_errors(tmp_path):
    classes = [str(i) for i in range(12)]
    labels = np.repeat(classes, 30)  # at 30 of 30 right, the float upper bound fell short of 1
    pred = labels.copy()
    pred[0] = "1"  # one error in all; the other classes are perfect, their intervals touch 0
    errors = plots.per_class_errors(pd.DataFrame({"label": labels, "pred_label": pred}), classes)
    plots.plot_worst(errors, "worst", tmp_path / "worst.png")
    assert (tmp_path / "worst.png").read_bytes()[:4] == b"\x89PNG"
