"""Choose the checkpoint a run submits: the best epoch by `select.metric`."""

from __future__ import annotations

import argparse
import logging

import pandas as pd

from . import tables
from .errors import DataError, WeightsError
from .io_utils import copy_file
from .logs import add_log_argument, setup_logging
from .models import load_checkpoint_file

log = logging.getLogger("imageclf.select")

# Training keeps the best checkpoint by each of these (train.KEPT); balanced accuracy and macro-F1
# weigh every class alike, for imbalanced data (history.csv columns from engine.evaluate).
GOAL = {"val_acc": "max", "val_loss": "min", "val_balanced_acc": "max", "val_macro_f1": "max"}


def best_epoch(history: pd.DataFrame, metric: str) -> tuple[int, str]:
    """(epoch, weights) of the best value: the first epoch reaching it (training keeps that one:
    ties keep the earlier), and "model" or, with train.ema, "ema" when the EMA weights did better
    (a tie keeps the trained weights)."""
    if metric not in GOAL:
        raise ValueError(f"select.metric must be one of {sorted(GOAL)}, not '{metric}'")
    pick = max if GOAL[metric] == "max" else min
    candidates = [(history[column], weights) for column, weights in ((metric, "model"), (f"{metric}_ema", "ema"))
                  if column in history]
    best = pick(values.max() if pick is max else values.min() for values, _ in candidates)
    for _, row in history.iterrows():
        for values, weights in candidates:
            if values.loc[row.name] == best:
                return int(row["epoch"]), weights
    raise ValueError(f"no epoch reaches the best {metric}")


def select(history_path, checkpoint, metric: str, model_out, selection_out, tta=()) -> dict:
    """checkpoint: the one training kept for `metric` (checkpoints/best_<metric>.pt). tta: the
    test-time augmentation views its predictions use (predict.tta), recorded with the choice."""
    history = tables.read_history(history_path)
    if metric not in history:
        raise DataError(f"{history_path}: has no {metric} column (trained by an older version); retrain this run "
                        "(delete its folder) or set select.metric to val_acc or val_loss")
    epoch, weights = best_epoch(history, metric)
    source = checkpoint
    checkpoint = load_checkpoint_file(source)
    meta = checkpoint.get("meta", {}) if isinstance(checkpoint, dict) else {}
    saved = (meta.get("epoch"), meta.get("weights", "model"))
    if saved != (epoch, weights):
        raise WeightsError(
            f"{source}: holds epoch {saved[0]} ({saved[1]} weights), but {history_path} says the best "
            f"{metric} was at epoch {epoch} ({weights} weights); retrain this run (delete its resume/ folder)"
        )
    row = history.loc[history["epoch"] == epoch].iloc[0]
    suffix = "_ema" if weights == "ema" else ""
    copy_file(source, model_out)
    other = "val_acc" if metric == "val_loss" else "val_loss"
    selection = {
        "metric": metric, "epoch": epoch, "weights": weights, "epochs_trained": int(history["epoch"].max()),
        "val_acc": float(row["val_acc" + suffix]), "val_loss": float(row["val_loss" + suffix]),
        **({metric: float(row[metric + suffix])} if metric not in ("val_acc", "val_loss") else {}),
        "reason": f"epoch {epoch}{' (EMA weights)' if suffix else ''} has the {GOAL[metric]}imum {metric} "
                  f"({row[metric + suffix]:.4f}) of {len(history)} epochs; its {other} is {row[other + suffix]:.4f}",
        "source": str(source), "tta": list(tta),
    }
    tables.write_selection(selection_out, selection)
    log.info("selected %s", selection["reason"])
    return selection


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="imageclf select", description=__doc__.splitlines()[0])
    parser.add_argument("--history", required=True)
    parser.add_argument("--checkpoint", required=True, help="the checkpoint training kept for --metric")
    parser.add_argument("--metric", required=True, choices=sorted(GOAL))
    parser.add_argument("--model-out", required=True)
    parser.add_argument("--selection-out", required=True)
    parser.add_argument("--tta", nargs="*", default=[], help="predict.tta, recorded in the selection")
    add_log_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_file)
    select(args.history, args.checkpoint, args.metric, args.model_out, args.selection_out, args.tta)
