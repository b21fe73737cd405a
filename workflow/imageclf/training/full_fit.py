"""The plan of a run's full fit (cv.full_fit): one more model, trained on every labelled image
with nothing held out, for as long and at the learning rates its fold models were selected at.

Written down as the rule (README: Cross-validation):
- epochs: the median of the fold models' selected epochs, halves rounded up;
- learning rate of each epoch: the median across the folds of the rate each fold trained that
  epoch at (history.csv `lr`), so warmup and a plateau scheduler's drops, which need a validation
  loss the full fit does not have, are replayed as the folds took them;
- weights: the EMA of the weights when most folds selected theirs (train.ema), else the trained
  weights, of the last epoch.
The plan goes into the full fit's run config (`full_fit`), which training follows.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics

from ..core import tables
from ..core.config import load_run_config, write_run_config
from ..core.errors import DataError
from ..core.logs import add_log_argument, setup_logging

log = logging.getLogger("imageclf.full_fit")

# What this stage writes, as a version: raised by a change that alters its outputs, and by nothing else
# (core/stages.py). Raising it reruns this stage and everything downstream, on every project.
RESULTS_VERSION = 1


def median_epoch(epochs: list[int]) -> int:
    """The median of the folds' selected epochs, halves rounded up (at least 1)."""
    return max(1, math.floor(statistics.median(epochs) + 0.5))


def plan(base: dict, histories: list, selections: list[dict], where: list[str]) -> dict:
    """The full fit's run config: `base` (a fold model's run config, the same for every fold)
    with train.epochs set by the rule and the plan under `full_fit`.

    histories: each fold's history (a DataFrame with `epoch` and `lr`), fold 0 first;
    selections: each fold's selection.json; where: their paths, for errors."""
    fold_epochs = [int(selection["epoch"]) for selection in selections]
    epochs = median_epoch(fold_epochs)
    lr = base["train"]["optimizer"]["lr"]
    factors = []
    for epoch in range(1, epochs + 1):
        rates = []
        for history, path in zip(histories, where):
            row = history.loc[history["epoch"] == epoch, "lr"]
            if row.empty:
                raise DataError(f"{path}: has no epoch {epoch}, which the full fit needs; retrain this fold")
            rates.append(float(row.iloc[0]))
        factors.append(statistics.median(rates) / lr)
    ema_votes = sum(selection.get("weights") == "ema" for selection in selections)
    weights = "ema" if 2 * ema_votes > len(selections) else "model"
    full_fit = {"fold_epochs": fold_epochs, "lr_factors": factors, "weights": weights}
    return {**base, "train": {**base["train"], "epochs": epochs}, "full_fit": full_fit}


def run(run_config, history_paths: list, selection_paths: list, out) -> dict:
    """The `full_fit_config` stage: write the full fit's run config."""
    base = load_run_config(run_config)
    histories = [tables.read_history(path) for path in history_paths]
    selections = [tables.read_selection(path) for path in selection_paths]
    planned = plan(base, histories, selections, [str(path) for path in history_paths])
    write_run_config(out, planned)
    for path, selection in zip(selection_paths, selections):
        for warning in tables.selection_warnings(selection):
            log.warning("full fit of %s seed %s follows a fold not to be trusted (%s): %s", base["variant"],
                        base["seed"], path, warning)
    log.info("full fit of %s seed %s: %d epochs (the median of the folds' selected epochs %s), %s weights",
             base["variant"], base["seed"], planned["train"]["epochs"], planned["full_fit"]["fold_epochs"],
             planned["full_fit"]["weights"])
    return planned


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="imageclf full_fit_config", description=run.__doc__)
    parser.add_argument("--run-config", required=True, help="a fold model's config.json")
    parser.add_argument("--histories", nargs="+", required=True, help="each fold's history.csv, fold 0 first")
    parser.add_argument("--selections", nargs="+", required=True, help="each fold's selection.json, fold 0 first")
    parser.add_argument("--out", required=True, help="the full fit's config.json")
    add_log_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_file)
    if len(args.histories) != len(args.selections):
        raise DataError(f"--histories names {len(args.histories)} files but --selections {len(args.selections)}: "
                        "give one of each per fold, fold 0 first")
    run(args.run_config, args.histories, args.selections, args.out)
