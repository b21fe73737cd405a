"""Plots: training curves of every variant, confusion matrix, worst classes, error gallery."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; works on a headless node
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402

from ..core import tables
from ..core.io_utils import atomic_path  # noqa: E402
from ..core.logs import add_log_argument, setup_logging  # noqa: E402
from ..data.images import open_image  # noqa: E402
from . import stats  # noqa: E402

log = logging.getLogger("imageclf.plots")

# What this stage writes, as a version: raised by a change that alters its outputs, and by nothing else
# (core/stages.py). Raising it reruns this stage and everything downstream, on every project.
RESULTS_VERSION = 1


def save(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=Path(path).suffix.lstrip("."))
    plt.close(fig)


def plot_curves(histories: dict[tuple, pd.DataFrame], out_path) -> None:
    """Training loss and validation accuracy per epoch; one colour per variant, one line per
    trained model (seed, and fold under cross-validation). Keys: (variant, seed[, fold])."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    variants = list(dict.fromkeys(key[0] for key in histories))
    colours = plt.cm.tab10(np.linspace(0, 1, 10))
    for i, variant in enumerate(variants):
        for j, history in enumerate(h for k, h in histories.items() if k[0] == variant):
            label = variant if j == 0 else None
            ax_loss.plot(history["epoch"], history["train_loss"], color=colours[i % 10], label=label, alpha=0.8)
            ax_loss.plot(history["epoch"], history["val_loss"], color=colours[i % 10], ls="--", alpha=0.5)
            ax_acc.plot(history["epoch"], 100 * history["val_acc"], color=colours[i % 10], label=label, alpha=0.8)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Training loss (solid) and validation loss (dashed)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy %", title="Validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no tick at 1.5
        ax.grid(alpha=0.3)
        ax.legend()
    save(fig, out_path)


def per_class_errors(pred: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Error rate per class with its 95 % interval, whether the class is surely worse than the
    others (stats.class_accuracy: one-sided test, Holm-corrected across classes), and the class it
    is most often mistaken for."""
    accuracy = stats.class_accuracy(pred["label"], [(pred["label"] == pred["pred_label"]).to_numpy()], classes)
    rows = []
    for name, acc in zip(classes, accuracy):
        members = pred[pred["label"] == name]
        wrong = members[members["pred_label"] != name]
        confusion = wrong["pred_label"].value_counts()
        rows.append({
            "class": name, "images": len(members), "errors": len(wrong),
            "error_rate": len(wrong) / len(members) if len(members) else np.nan,
            "error_ci_low": 1 - acc["acc_ci_high"], "error_ci_high": 1 - acc["acc_ci_low"],
            "p_worse_holm": acc["p_worse_holm"], "surely_worse": acc["surely_worse"],
            "most_confused_with": confusion.index[0] if len(confusion) else "",
            "confusions": int(confusion.iloc[0]) if len(confusion) else 0,
        })
    frame = pd.DataFrame(rows)
    return frame.sort_values(["error_rate", "errors"], ascending=False, kind="stable").reset_index(drop=True)


def plot_confusion(pred: pd.DataFrame, classes: list[str], errors: pd.DataFrame, title: str, out_path) -> None:
    """Row-normalised confusion matrix, classes ordered worst first; readable at 100 classes."""
    order = errors["class"].tolist()
    matrix = confusion_matrix(pred["label"], pred["pred_label"], labels=order).astype(float)
    matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    n = len(order)
    size = min(max(6, n * 0.12), 16)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    step = 1 if n <= 30 else max(1, n // 30)
    ticks = list(range(0, n, step))
    worst = set(order[:10]) if n > 10 else set()  # with ten classes or fewer, red would mark them all
    ax.set_xticks(ticks, [order[i] for i in ticks], rotation=90, fontsize=7)
    ax.set_yticks(ticks, [order[i] for i in ticks], fontsize=7)
    for label in ax.get_yticklabels():
        if label.get_text() in worst:
            label.set_color("red")
    ax.set(xlabel="predicted", ylabel="true (worst classes first" + (", red: ten worst)" if worst else ")"), title=title)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if matrix[i, j] > 0:
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if matrix[i, j] < 0.5 else "black")
    save(fig, out_path)


def plot_worst(errors: pd.DataFrame, title: str, out_path, count: int = 10) -> None:
    """Bars with 95 % intervals; dark red: surely worse than the other classes."""
    worst = errors.head(count).iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(worst) + 1.5))
    spread = [100 * (worst["error_rate"] - worst["error_ci_low"]), 100 * (worst["error_ci_high"] - worst["error_rate"])]
    ax.barh([str(c) for c in worst["class"]], 100 * worst["error_rate"], xerr=spread, capsize=2,
            color=["darkred" if sure else "lightcoral" for sure in worst["surely_worse"]])
    for y, (_, r) in enumerate(worst.iterrows()):
        note = f" {r.errors}/{r.images}" + (f", mostly as {r.most_confused_with}" if r.most_confused_with else "")
        ax.text(100 * r.error_ci_high, y, note + (", surely worse" if r.surely_worse else ""), va="center", fontsize=8)
    ax.set(xlabel="error rate % (95 % interval; dark: surely worse than the other classes)", ylabel="class",
           title=title, xlim=(0, 139))
    save(fig, out_path)


def plot_gallery(pred: pd.DataFrame, index: pd.DataFrame, worst: list[str], out_path, per_class: int = 6) -> None:
    """Misclassified validation images of the worst classes, with true and predicted labels."""
    paths = dict(zip(index["image_name"].astype(str), index["path"]))
    fig, axes = plt.subplots(len(worst), per_class, figsize=(1.6 * per_class, 1.8 * len(worst)), squeeze=False)
    for row, name in enumerate(worst):
        wrong = pred[(pred["label"] == name) & (pred["pred_label"] != name)].head(per_class)
        for col in range(per_class):
            ax = axes[row, col]
            ax.axis("off")
            if col < len(wrong):
                item = wrong.iloc[col]
                ax.imshow(open_image(paths[item["image_name"]]))
                ax.set_title(f"true {name} → {item['pred_label']}", fontsize=7)
            elif col == 0:
                ax.text(0.5, 0.5, f"class {name}: no val errors", ha="center", va="center", fontsize=7)
    fig.suptitle("Misclassified validation images of the worst classes")
    fig.tight_layout()
    save(fig, out_path)


def run(manifest_path, out_dir) -> None:
    """Curves of every run of the manifest; the rest from its submitted predictions."""
    manifest = tables.read_manifest(manifest_path)
    out_dir = Path(out_dir)
    classes = tables.read_classes(manifest["index"]["classes"])
    histories = {(entry["variant"], int(entry["seed"]), model["fold"]): tables.read_history(model["history"])
                 for entry in manifest["runs"] for model in entry["models"]}
    plot_curves(histories, out_dir / "curves.png")
    submitted = manifest["submitted"]
    test, val = tables.read_predictions(submitted["test"]), tables.read_predictions(submitted["val"])
    split = "test" if (test["label"] != "").all() and len(test) else "val"
    pred = test if split == "test" else val
    errors = per_class_errors(pred, classes)
    tables.write_table(out_dir / "worst_classes.csv", errors.head(10))
    acc = (pred["label"] == pred["pred_label"]).mean()
    # under cross-validation, val is the out-of-fold predictions of the run's fold models
    cv = split == "val" and manifest["cv"]["folds"]
    what = "submitted run's fold models, out-of-fold" if cv else f"submitted model, {split}"
    plot_confusion(pred, classes, errors, f"Confusion matrix, {what} ({100 * acc:.1f} % right)",
                   out_dir / "confusion_matrix.png")
    plot_worst(errors, f"Ten worst classes by {split} error rate", out_dir / "worst_classes.png")
    plot_gallery(val, tables.read_index(manifest["index"]["val"]), errors["class"].head(10).tolist(),
                 out_dir / "error_gallery.png")
    log.info("plots written to %s (confusion and worst classes on %s)", out_dir, split)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="imageclf plots", description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="the workflow's manifest (results/manifest.json)")
    parser.add_argument("--out-dir", required=True)
    add_log_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_file)
    run(args.manifest, args.out_dir)
