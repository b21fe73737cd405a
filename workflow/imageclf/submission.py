"""The leaderboard file: image_name,pred_label, one row per test image, sorted by name."""

from __future__ import annotations

import argparse
import logging
import zipfile
from pathlib import Path

import pandas as pd

from .data import read_classes, read_index
from .io_utils import atomic_path, setup_logging, write_csv

log = logging.getLogger("imageclf.submission")


class SubmissionError(ValueError):
    """The predictions do not cover the test split exactly; nothing was written."""


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


def write_submission(predictions_path, index_dir, out_csv, out_zip) -> pd.DataFrame:
    predictions = pd.read_csv(predictions_path, dtype={"image_name": str, "pred_label": str}, keep_default_na=False)
    table = build_submission(predictions, read_index(index_dir, "test"), read_classes(index_dir))
    write_csv(out_csv, table)
    with atomic_path(out_zip) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("prediction.csv", table.to_csv(index=False))
    log.info("wrote %s (%d rows) and %s from %s", out_csv, len(table), out_zip, predictions_path)
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", required=True, help="test.csv written by the predict stage")
    parser.add_argument("--index-dir", required=True)
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out-zip", required=True)
    args = parser.parse_args(argv)
    setup_logging()
    write_submission(args.predictions, args.index_dir, args.out_csv, Path(args.out_zip))
