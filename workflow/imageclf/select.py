"""Choose the checkpoint a run submits: the best epoch by `select.metric`."""

from __future__ import annotations

import argparse
import logging

import pandas as pd

from . import tables
from .errors import WeightsError
from .io_utils import copy_file
from .logs import add_log_argument, setup_logging
from .models import load_checkpoint_file

log = logging.getLogger("imageclf.select")

GOAL = {"val_acc": "max", "val_loss": "min"}


def best_epoch(history: pd.DataFrame, metric: str) -> int:
    """First epoch reaching the best value (training keeps that one: ties keep the earlier)."""
    if metric not in GOAL:
        raise ValueError(f"select.metric must be one of {sorted(GOAL)}, not '{metric}'")
    values = history[metric]
    best = values.max() if GOAL[metric] == "max" else values.min()
    return int(history.loc[values == best, "epoch"].iloc[0])


def select(history_path, checkpoints: dict, metric: str, model_out, selection_out, tta=()) -> dict:
    """checkpoints: {metric: path of the checkpoint training kept for it}. tta: the test-time
    augmentation views its predictions use (predict.tta), recorded with the choice."""
    history = tables.read_history(history_path)
    epoch = best_epoch(history, metric)
    source = checkpoints[metric]
    checkpoint = load_checkpoint_file(source)
    saved_epoch = checkpoint.get("meta", {}).get("epoch") if isinstance(checkpoint, dict) else None
    if saved_epoch != epoch:
        raise WeightsError(
            f"{source}: holds epoch {saved_epoch}, but {history_path} says the best {metric} "
            f"was at epoch {epoch}; retrain this run (delete its resume/ folder)"
        )
    row = history.loc[history["epoch"] == epoch].iloc[0]
    copy_file(source, model_out)
    other = "val_loss" if metric == "val_acc" else "val_acc"
    selection = {
        "metric": metric, "epoch": epoch, "epochs_trained": int(history["epoch"].max()),
        "val_acc": float(row["val_acc"]), "val_loss": float(row["val_loss"]),
        "reason": f"epoch {epoch} has the {GOAL[metric]}imum {metric} ({row[metric]:.4f}) of "
                  f"{len(history)} epochs; its {other} is {row[other]:.4f}",
        "source": str(source), "tta": list(tta),
    }
    tables.write_selection(selection_out, selection)
    log.info("selected %s", selection["reason"])
    return selection


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="imageclf select", description=__doc__.splitlines()[0])
    parser.add_argument("--history", required=True)
    parser.add_argument("--best-val-acc", required=True, help="checkpoint of the best val_acc epoch")
    parser.add_argument("--best-val-loss", required=True, help="checkpoint of the best val_loss epoch")
    parser.add_argument("--metric", required=True, choices=sorted(GOAL))
    parser.add_argument("--model-out", required=True)
    parser.add_argument("--selection-out", required=True)
    parser.add_argument("--tta", nargs="*", default=[], help="predict.tta, recorded in the selection")
    add_log_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_file)
    select(args.history, {"val_acc": args.best_val_acc, "val_loss": args.best_val_loss}, args.metric,
           args.model_out, args.selection_out, args.tta)
