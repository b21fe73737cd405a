"""The label audit: every labelled image ranked by how likely its label is wrong.

Method: confident learning (Northcutt, Jiang and Chuang, "Confident Learning: Estimating
Uncertainty in Dataset Labels", JAIR 2021), on out-of-sample class probabilities: the out-of-fold
predictions under cross-validation (every labelled image), val/'s predictions otherwise, of one run
(audit.variant and audit.seed) or the mean of its seeds' runs.

- Each class j gets a threshold t_j: the mean probability of j over the images labelled j (the
  model's average self-confidence in that class).
- An image's confident label is, among the classes whose probability reaches their threshold,
  the most probable one. An image whose confident label is another than its given label is
  `flagged`: it lies off the diagonal of the confident joint, the images cleanlab's
  `find_label_issues` (filter_by="confident_learning") returns.
- The ranking score is the normalized margin: the largest probability of another class minus the
  given label's (from -1, surely right, to 1, surely wrong). `suggested_label` is the confident
  label of a flagged image, else the most probable other class.

label_issues.csv lists every audited image, most suspect first; gallery.png shows the first
`audit.gallery` of them. A run that select flagged (it learned nothing, or diverged) is refused as a
source: its probabilities say nothing about the labels.
"""

from __future__ import annotations

import argparse
import logging
import math

import matplotlib

matplotlib.use("Agg")  # files only; works on a headless node
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..core import tables  # noqa: E402
from ..core.errors import DataError  # noqa: E402
from ..core.logs import add_log_argument, setup_logging  # noqa: E402
from ..data.images import open_image  # noqa: E402
from .plots import save  # noqa: E402

log = logging.getLogger("imageclf.audit")

# What this stage writes, as a version: raised by a change that alters its outputs, and by nothing else
# (core/stages.py). Raising it reruns this stage and everything downstream, on every project.
RESULTS_VERSION = 1


def confident_learning(probs: np.ndarray, given: np.ndarray) -> dict[str, np.ndarray]:
    """probs: images x classes (out-of-sample); given: each image's class index. Returns the
    per-class thresholds, each image's confident label (-1: none reaches its threshold), whether
    it is flagged, the normalized margin and the self-confidence."""
    n, k = probs.shape
    thresholds = np.full(k, np.inf)
    for j in range(k):
        mine = given == j
        if mine.any():
            thresholds[j] = probs[mine, j].mean()
    above = probs >= thresholds[None, :]
    masked = np.where(above, probs, -1.0)
    confident = np.where(above.any(1), masked.argmax(1), -1)
    flagged = (confident >= 0) & (confident != given)
    self_confidence = probs[np.arange(n), given]
    others = probs.copy()
    others[np.arange(n), given] = -1.0
    margin = others.max(1) - self_confidence
    suggested = np.where(flagged, confident, others.argmax(1))
    return {"thresholds": thresholds, "confident": confident, "flagged": flagged, "score": margin,
            "self_confidence": self_confidence, "suggested": suggested}


def mean_predictions(paths: list) -> pd.DataFrame:
    """The mean class probabilities of several runs' predictions of the same images."""
    frames = [tables.read_predictions(path) for path in paths]
    first = frames[0]
    columns = tables.probability_columns(first)
    for path, frame in zip(paths[1:], frames[1:]):
        if (frame["image_name"].tolist() != first["image_name"].tolist()
                or frame["label"].tolist() != first["label"].tolist()):
            raise DataError(f"{path}: does not predict the images of {paths[0]} in the same order; rerun its predict job")
    mean = first.copy()
    mean[columns] = np.mean([frame[columns].to_numpy() for frame in frames], axis=0)
    return mean


def with_paths(pred: pd.DataFrame, index: pd.DataFrame, index_csv) -> pd.Series:
    """Each prediction's image path, matched by (image_name, label) in the labelled index; copies
    of one key (a.jpg and a.png in one class folder) are matched in order."""
    slots: dict[tuple, list[str]] = {}
    for name, label, path in zip(index["image_name"], index["label"], index["path"]):
        slots.setdefault((name, label), []).append(path)
    paths = []
    for name, label in zip(pred["image_name"], pred["label"]):
        found = slots.get((name, label))
        if not found:
            raise DataError(f"{index_csv}: no labelled image '{name}' of class '{label}', which the audited "
                            "predictions hold; rerun the workflow so that both are current")
        paths.append(found.pop(0))
    return pd.Series(paths, index=pred.index)


def refuse_flagged(selections: list) -> None:
    for path in selections:
        warnings = tables.selection_warnings(tables.read_selection(path))
        if warnings:
            raise DataError(f"{path}: select flagged this run ({warnings[0]}); its predictions cannot judge labels. "
                            "Set audit.variant (or audit.seed) to a run that learned")


def audit(predictions: list, index_csv, classes_csv, selections: list) -> pd.DataFrame:
    """The label issues table (tables.LABEL_ISSUES) from the audited runs' held-out predictions."""
    refuse_flagged(selections)
    classes = tables.read_classes(classes_csv)
    pred = mean_predictions(predictions)
    index = tables.read_index(index_csv)  # val.csv, or folds.csv (the index's columns and more)
    pred = pred[pred["label"] != ""].reset_index(drop=True)
    lookup = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(pred["label"]) - set(lookup))
    if unknown:
        raise DataError(f"{predictions[0]}: labels that are not classes: {unknown[:5]}")
    given = pred["label"].map(lookup).to_numpy()
    probs = pred[[f"{tables.PROB_PREFIX}{name}" for name in classes]].to_numpy(dtype=float)
    found = confident_learning(probs, given)
    table = pd.DataFrame({
        "image": with_paths(pred, index, index_csv), "image_name": pred["image_name"], "given_label": pred["label"],
        "suggested_label": [classes[j] for j in found["suggested"]], "score": found["score"].round(6),
        "flagged": found["flagged"], "self_confidence": found["self_confidence"].round(6),
    })
    table = table.sort_values(["score", "image"], ascending=[False, True], kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    log.info("audited %d labelled images: %d flagged by confident learning (%.1f %%)", len(table),
             int(table["flagged"].sum()), 100 * table["flagged"].mean() if len(table) else 0.0)
    return table


def plot_suspects(table: pd.DataFrame, out_path, count: int) -> None:
    """The `count` most suspect images with their given and suggested labels and score."""
    top = table.head(count)
    cols = min(8, max(1, len(top)))
    rows = max(1, math.ceil(len(top) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, item in zip(axes.ravel(), top.itertuples()):
        ax.imshow(open_image(item.image))
        mark = "*" if item.flagged else ""
        ax.set_title(f"{item.given_label} → {item.suggested_label}{mark}\n{item.score:+.2f}", fontsize=7)
    if not len(top):
        axes[0, 0].text(0.5, 0.5, "no labelled images audited", ha="center", va="center")
    fig.suptitle("Most likely mislabelled: given → suggested label (* flagged), margin")
    fig.tight_layout()
    save(fig, out_path)


def run(predictions: list, index_csv, classes_csv, selections: list, out_csv, gallery_out, gallery: int = 24):
    """The `audit` stage: label_issues.csv (every labelled image, most suspect first) and its gallery."""
    table = audit(predictions, index_csv, classes_csv, selections)
    tables.write_label_issues(out_csv, table)
    plot_suspects(table, gallery_out, gallery)
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="imageclf audit", description=run.__doc__)
    parser.add_argument("--predictions", nargs="+", required=True,
                        help="the audited runs' held-out predictions (oof.csv under cross-validation, val.csv)")
    parser.add_argument("--index", required=True, help="the labelled images they cover (folds.csv or val.csv)")
    parser.add_argument("--classes", required=True)
    parser.add_argument("--selections", nargs="*", default=[], help="the runs' selection.json: flagged runs are refused")
    parser.add_argument("--out", required=True, help="label_issues.csv")
    parser.add_argument("--gallery-out", required=True, help="gallery.png")
    parser.add_argument("--gallery", type=int, default=24, help="audit.gallery")
    add_log_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_file)
    run(args.predictions, args.index, args.classes, args.selections, args.out, args.gallery_out, args.gallery)
