"""Cross-validation's evaluation: every labelled image predicted by the fold model that did not
train on it (oof.csv), and a run's test predictions as the mean of its fold models'. The folds
themselves are dealt in data/folds.py."""

from __future__ import annotations

import argparse
import logging

import pandas as pd

from ..core import tables
from ..core.errors import DataError
from ..core.logs import add_log_argument, setup_logging
from . import ensemble

log = logging.getLogger("imageclf.folds")

# What this stage writes, as a version: raised by a change that alters its outputs, and by nothing else
# (core/stages.py). Raising it reruns this stage and everything downstream, on every project.
RESULTS_VERSION = 1


def out_of_fold(folds_csv, fold_predictions: list, out_csv) -> pd.DataFrame:
    """The `oof` stage: every labelled image's prediction by the model that did not train on it.

    fold_predictions: the held-out predictions of fold 0, 1, ... in order; each must predict
    exactly its fold's images. The result has the columns of a run's val.csv."""
    table = tables.read_folds(folds_csv)
    parts = []
    for fold, path in enumerate(fold_predictions):
        frame = tables.read_predictions(path)
        expected = sorted(zip(table.loc[table["fold"] == fold, "image_name"], table.loc[table["fold"] == fold, "label"]))
        if sorted(zip(frame["image_name"], frame["label"])) != expected:
            raise DataError(f"{path}: does not predict exactly the images of fold {fold} in {folds_csv}; "
                            "rerun its predict job")
        parts.append(frame)
    if len(parts) != table["fold"].nunique():
        raise DataError(f"{folds_csv}: {table['fold'].nunique()} folds, but {len(parts)} fold predictions given")
    result = pd.concat(parts, ignore_index=True).sort_values("image_name", kind="stable").reset_index(drop=True)
    tables.write_predictions(out_csv, result)
    log.info("out-of-fold predictions of %d images from %d folds: accuracy %.4f", len(result), len(parts),
             tables.accuracy(result))
    return result


def main_oof(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="imageclf oof", description=out_of_fold.__doc__)
    parser.add_argument("--folds-table", required=True, help="folds.csv")
    parser.add_argument("--fold-predictions", nargs="+", required=True, help="held-out predictions, fold 0 first")
    parser.add_argument("--out", required=True, help="oof.csv")
    add_log_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_file)
    out_of_fold(args.folds_table, args.fold_predictions, args.out)


def main_average(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="imageclf fold_average", description="a run's test predictions: "
                                     "the mean class probabilities of its fold models")
    parser.add_argument("--fold-predictions", nargs="+", required=True, help="each fold model's test predictions")
    parser.add_argument("--classes", required=True)
    parser.add_argument("--out", required=True)
    add_log_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_file)
    ensemble.run(args.fold_predictions, args.classes, args.out)
