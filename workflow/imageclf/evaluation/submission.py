"""The leaderboard file: image_name,pred_label, one row per test image, sorted by name."""

from __future__ import annotations

import argparse
import logging
import zipfile

import pandas as pd

from ..core import tables
from ..core.errors import SubmissionError
from ..core.io_utils import atomic_path
from ..core.logs import add_log_argument, setup_logging
from ..core.provenance import check_models

log = logging.getLogger("imageclf.submission")

# What this stage writes, as a version: raised by a change that alters its outputs, and by nothing else
# (core/stages.py). Raising it reruns this stage and everything downstream, on every project.
RESULTS_VERSION = 1

__all__ = ["SubmissionError", "build_submission", "write_submission"]


def build_submission(predictions: pd.DataFrame, test_index: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Check predictions against the test index and return the sorted two-column table."""
    names = predictions["image_name"].astype(str)
    expected = set(test_index["image_name"].astype(str))
    problems = []
    dupes = sorted(set(names[names.duplicated()]))
    if dupes:
        problems.append(f"image_name predicted more than once: {dupes[:5]}")
    missing = sorted(expected - set(names))
    if missing:
        problems.append(f"{len(missing)} test image(s) without a prediction: {missing[:5]}")
    extra = sorted(set(names) - expected)
    if extra:
        problems.append(f"{len(extra)} prediction(s) for images not in the test index: {extra[:5]}")
    bad_labels = sorted(set(predictions["pred_label"].astype(str)) - set(classes))
    if bad_labels:
        problems.append(f"predicted labels that are not classes: {bad_labels[:5]}")
    if problems:
        raise SubmissionError(
            f"predictions ({len(predictions)} rows) do not match the test index ({len(expected)} images): "
            + "; ".join(problems)
        )
    table = pd.DataFrame({"image_name": names, "pred_label": predictions["pred_label"].astype(str)})
    return table.sort_values("image_name", kind="stable").reset_index(drop=True)


def warn_if_untrusted(selections) -> list[str]:
    """A warning per submitted run that select flagged (its selection.json `warnings`)."""
    warnings = []
    for path in selections:
        for warning in tables.selection_warnings(tables.read_selection(path)):
            warnings.append(f"submitting a run that select flagged ({path}): {warning}")
            log.warning("%s", warnings[-1])
    return warnings


def write_submission(predictions_path, test_index, classes_csv, out_csv, out_zip, selections=(), models=(),
                     run_configs=()) -> pd.DataFrame:
    """selections: selection.json of each submitted run, to warn about any that select flagged.
    models, run_configs: each submitted model.pt with its run's config.json; a model trained under
    another configuration is refused (core/provenance.py)."""
    check_models(list(models), list(run_configs))
    warn_if_untrusted(selections)
    table = build_submission(tables.read_predictions(predictions_path), tables.read_index(test_index),
                             tables.read_classes(classes_csv))
    tables.write_submission(out_csv, table)
    with atomic_path(out_zip) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("prediction.csv", table.to_csv(index=False))
    log.info("wrote %s (%d rows) and %s from %s", out_csv, len(table), out_zip, predictions_path)
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="imageclf submission", description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", required=True, help="test predictions written by the predict stage")
    parser.add_argument("--test-index", required=True)
    parser.add_argument("--classes", required=True)
    parser.add_argument("--selections", nargs="*", default=[], help="selection.json of each submitted run")
    parser.add_argument("--models", nargs="*", default=[], help="model.pt of each submitted model")
    parser.add_argument("--run-configs", nargs="*", default=[], help="config.json of each, in the same order")
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out-zip", required=True)
    add_log_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_file)
    write_submission(args.predictions, args.test_index, args.classes, args.out_csv, args.out_zip, args.selections,
                     args.models, args.run_configs)
