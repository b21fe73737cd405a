"""The metrics, each declared once: its name, its label in the table, which way is better, and
how it is computed. The ablation table's columns, the per-epoch columns of history.csv, the
choices of select.metric (and so the schema's) and the checkpoints kept while training all read
METRICS; a new metric is one entry here and one branch of `resampled`.

`resampled` computes every metric for many resamples of the same images at once (rows of
weights: how often each image is drawn), which is what the table's paired bootstrap needs;
`score` is the same computation for the images as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Metric:
    name: str  # as in the table's columns (val_<name>, test_<name>) and history.csv's (val_<name>)
    label: str  # in the table's headers
    goal: str = "max"  # which way is better: "max" or "min"


METRICS = (
    Metric("acc", "acc"),
    Metric("balanced_acc", "bal. acc"),
    Metric("macro_f1", "macro-F1"),
)
NAMES = tuple(metric.name for metric in METRICS)
LABELS = {metric.name: metric.label for metric in METRICS}
HEADLINE = "acc"  # the table's first section, with the p-values and verdicts
SECONDARY = tuple(name for name in NAMES if name != HEADLINE)  # the table's second section
# What select.metric may pick and the checkpoints training keeps: each metric on val/, by epoch,
# and the plain cross-entropy (history.csv's columns).
SELECTABLE = {"val_loss": "min", **{f"val_{metric.name}": metric.goal for metric in METRICS}}


def resampled(weights, labels, predictions, n_classes: int) -> dict:
    """Every metric of each resample (rows of `weights`, (resamples, images)), averaged over the
    runs (rows of `predictions`, class indices). Classes absent from a resample's labels and
    predictions are left out of its means."""
    truth = np.eye(n_classes)[labels]  # images x classes
    support = weights @ truth
    out = {name: 0.0 for name in NAMES}
    with np.errstate(divide="ignore", invalid="ignore"):
        for pred in predictions:
            right = (pred == labels).astype(float)
            hits = weights @ (truth * right[:, None])
            predicted = weights @ np.eye(n_classes)[pred]
            out["acc"] = out["acc"] + hits.sum(1) / weights.sum(1)
            out["balanced_acc"] = out["balanced_acc"] + np.nanmean(np.where(support > 0, hits / support, np.nan), 1)
            out["macro_f1"] = out["macro_f1"] + np.nanmean(2 * hits / (support + predicted), 1)
    return {name: value / len(predictions) for name, value in out.items()}


def score(labels, predictions, n_classes: int) -> dict:
    """Every metric of each run (rows of `predictions`, or one run), averaged over the runs."""
    weights = np.ones((1, len(labels)))
    return {name: float(value[0]) for name, value in
            resampled(weights, np.asarray(labels), np.atleast_2d(predictions), n_classes).items()}
