"""Choose the checkpoint a run submits: the best epoch by `select.metric`."""

from __future__ import annotations

import argparse
import logging
import math

import pandas as pd

from ..core import tables
from ..core.errors import ConfigError, DataError, WeightsError
from ..core.io_utils import copy_file
from ..core.logs import add_log_argument, setup_logging
from ..core.metrics import SELECTABLE
from ..core.provenance import check_meta_config
from ..models.factory import load_checkpoint_file

log = logging.getLogger("imageclf.select")

# What this stage writes, as a version: raised by a change that alters its outputs, and by nothing else
# (core/stages.py). Raising it reruns this stage and everything downstream, on every project.
RESULTS_VERSION = 1



def best_epoch(history: pd.DataFrame, metric: str, where="history.csv") -> tuple[int, str]:
    """(epoch, weights) of the best value: the first epoch reaching it (training keeps that one:
    ties keep the earlier), and "model" or, with train.ema, "ema" when the EMA weights did better
    (a tie keeps the trained weights)."""
    if metric not in SELECTABLE:
        raise ConfigError(f"select.metric: must be one of {sorted(SELECTABLE)}, not '{metric}'")
    pick = max if SELECTABLE[metric] == "max" else min
    candidates = [(history[column], weights) for column, weights in ((metric, "model"), (f"{metric}_ema", "ema"))
                  if column in history]
    best = pick(values.max() if pick is max else values.min() for values, _ in candidates)
    for _, row in history.iterrows():
        for values, weights in candidates:
            if values.loc[row.name] == best:
                return int(row["epoch"]), weights
    raise DataError(f"{where}: every epoch's {metric} is NaN; retrain this run (delete its resume/ folder)")


def untrusted_reasons(history: pd.DataFrame, val_acc: float, val_labels: pd.Series, n_classes: int) -> list[str]:
    """Why a run's result is not to be trusted, one sentence each (none: []): a selected checkpoint
    no better than always answering val's most common class (one-sided exact binomial test,
    p >= 0.05), or a train loss that ends more than twice where it started (its first epoch, or
    ln(classes), a uniform guess's loss, when the first epoch already diverged)."""
    from scipy.stats import binomtest

    flags = []
    n = len(val_labels)
    if n:
        chance = float(val_labels.value_counts(normalize=True).max())
        p = binomtest(round(val_acc * n), n, chance, alternative="greater").pvalue
        if p >= 0.05:
            flags.append(f"val accuracy {100 * val_acc:.1f} % is no better than chance (always the most common "
                         f"val class: {100 * chance:.1f} %, binomial p = {p:.2g})")
    first, last = float(history["train_loss"].iloc[0]), float(history["train_loss"].iloc[-1])
    start = min(first, math.log(max(n_classes, 2)))
    if last > 2 * start:
        flags.append(f"train loss ended at {last:.4g} (epoch {int(history['epoch'].iloc[-1])}), more than twice "
                     f"where it started ({start:.4g}): training diverged; lower train.optimizer.lr")
    return flags


def select(history_path, checkpoint, metric: str, model_out, selection_out, val_index=None,
           run_config=None) -> dict:
    """checkpoint: the one training kept for `metric` (checkpoints/best_<metric>.pt). val_index:
    val.csv of the index, for the chance level that the choice is checked against
    (selection.json: warnings). run_config: the run's config.json; a checkpoint trained under
    another configuration is refused (core/provenance.py)."""
    history = tables.read_history(history_path)
    if metric not in history:
        raise DataError(f"{history_path}: has no {metric} column (trained by an older version); retrain this run "
                        "(delete its folder) or set select.metric to val_acc or val_loss")
    epoch, weights = best_epoch(history, metric, history_path)
    source = checkpoint
    checkpoint = load_checkpoint_file(source)
    meta = checkpoint.get("meta", {}) if isinstance(checkpoint, dict) else {}
    if run_config is not None:
        check_meta_config(source, meta.get("config_hash"), run_config)
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
        "reason": f"epoch {epoch}{' (EMA weights)' if suffix else ''} has the {SELECTABLE[metric]}imum {metric} "
                  f"({row[metric + suffix]:.4f}) of {len(history)} epochs; its {other} is {row[other + suffix]:.4f}",
        "source": str(source),
    }
    labels = tables.read_index(val_index)["label"] if val_index else pd.Series(dtype=str)
    selection["warnings"] = untrusted_reasons(history, selection["val_acc"], labels,
                                          len(meta.get("classes") or []) or labels.nunique())
    tables.write_selection(selection_out, selection)
    log.info("selected %s", selection["reason"])
    for warning in selection["warnings"]:
        log.warning("%s: not to be trusted: %s", history_path, warning)
    return selection


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="imageclf select", description=__doc__.splitlines()[0])
    parser.add_argument("--history", required=True)
    parser.add_argument("--checkpoint", required=True, help="the checkpoint training kept for --metric")
    parser.add_argument("--metric", required=True, choices=sorted(SELECTABLE))
    parser.add_argument("--model-out", required=True)
    parser.add_argument("--selection-out", required=True)
    parser.add_argument("--val-index", default=None, help="val.csv of the index: the chance level")
    parser.add_argument("--run-config", default=None,
                        help="the run's config.json: a checkpoint trained under another is refused")
    add_log_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_file)
    select(args.history, args.checkpoint, args.metric, args.model_out, args.selection_out, args.val_index,
           args.run_config)
