"""An ensemble: the mean of its member runs' class probabilities, as a run's own predictions.

The output has a run's prediction columns (image_name, label, pred_label, correct, prob_<class>),
so the submission and the ablation table take an ensemble like any run.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import pandas as pd

from ..core import tables
from ..core.errors import DataError
from ..core.logs import add_log_argument, setup_logging
from ..core.provenance import check_model_config

log = logging.getLogger("imageclf.ensemble")

# What this stage writes, as a version: raised by a change that alters its outputs, and by nothing else
# (core/stages.py). Raising it reruns this stage and everything downstream, on every project.
RESULTS_VERSION = 1


def average(members: list[pd.DataFrame], classes: list[str], names: list[str]) -> pd.DataFrame:
    """Mean probabilities of `members` (prediction tables of the same images); names: for errors."""
    first = members[0]
    columns = [f"{tables.PROB_PREFIX}{name}" for name in classes]
    for frame, name in zip(members, names):
        if frame["image_name"].tolist() != first["image_name"].tolist():
            raise DataError(f"{name}: predicts other images than {names[0]}; rerun its predict job")
        if tables.probability_columns(frame) != columns:
            raise DataError(f"{name}: its classes differ from the index's ({columns[:3]}...)")
    probs = np.mean([frame[columns].to_numpy(dtype=np.float64) for frame in members], axis=0)
    return tables.predictions_table(first["image_name"], first["label"], probs, classes)


def run(member_paths: list[str], classes_csv, out_csv) -> pd.DataFrame:
    classes = tables.read_classes(classes_csv)
    members = [tables.read_predictions(path) for path in member_paths]
    result = average(members, classes, [str(p) for p in member_paths])
    tables.write_predictions(out_csv, result)
    acc = tables.accuracy(result)
    log.info("ensemble of %d runs -> %s: %d images, accuracy %s", len(members), out_csv, len(result),
             "n/a (no labels)" if acc is None else f"{acc:.4f}")
    return result


def check_member_models(manifest: dict, entry: dict) -> None:
    """Refuse an ensemble whose member runs hold a model of another configuration than their
    config.json (core/provenance.py): every trained model of every member run."""
    runs = {(run["variant"], int(run["seed"])): run for run in manifest["runs"]}
    for member in entry["members"]:
        run = runs.get((member["variant"], int(member["seed"])))
        if run is None:
            raise DataError(f"the manifest's ensemble '{entry['name']}' names run {member['variant']} seed "
                            f"{member['seed']}, which is not among its runs; rerun the workflow to rewrite it")
        for model in run["models"]:
            check_model_config(model["model"], model["config"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="imageclf ensemble", description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="the workflow's manifest (results/manifest.json)")
    parser.add_argument("--name", required=True, help="the ensemble, as named in the manifest")
    parser.add_argument("--split", required=True, choices=["val", "test"])
    parser.add_argument("--out", required=True)
    add_log_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_file)
    manifest = tables.read_manifest(args.manifest)
    entry = tables.manifest_ensemble(manifest, args.name)
    check_member_models(manifest, entry)
    run([member[args.split] for member in entry["members"]], manifest["index"]["classes"], args.out)
