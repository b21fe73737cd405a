"""Every CSV and JSON file that one stage hands to another: one reader and one writer each.

Each CSV is read with every field as text first, then each column is converted to its declared
type. Strings therefore come back exactly as written: a class folder named `None`, `NA`, `null`
or `01` stays that string (pandas' defaults would turn the first three into NaN and the last into 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError
from .io_utils import atomic_path, read_json, write_json

# column -> type, in file order; "float" columns read "" as NaN, "bool" reads True/False/"" (unknown)
INDEX = {"path": "str", "label": "str", "image_name": "str", "width": "int", "height": "int", "sha256": "str"}
CLASSES = {"index": "int", "name": "str"}
TEST_LABELS = {"image_name": "str", "label": "str"}
CACHE_META = {"path": "str", "offset": "int", "height": "int", "width": "int", "mode": "str",
              "image_size": "int", "index_sha256": "str"}
PREDICTIONS = {"image_name": "str", "label": "str", "pred_label": "str", "correct": "bool"}
PROB_PREFIX = "prob_"  # then one float column per class, in class order
HISTORY = {"epoch": "int", "train_loss": "float", "val_loss": "float", "val_acc": "float", "lr": "float",
           "seconds": "float", "images_per_s": "float"}
SUBMISSION = {"image_name": "str", "pred_label": "str"}
FOLDS = {**INDEX, "split": "str", "fold": "int"}  # every labelled image, its folder (train/val) and fold
# one row per distinct image content: its perceptual fingerprint and that of its mirror image (hex)
FINGERPRINTS = {"sha256": "str", "phash": "str", "phash_mirror": "str"}
# pairs of images in two splits: identical (same sha256, distance 0) or near (fingerprint distance)
LEAKS = {"sha256": "str", "split_a": "str", "path_a": "str", "split_b": "str", "path_b": "str", "kind": "str",
         "distance": "int", "sha256_b": "str"}
# the label audit: every labelled image, most suspect first (report/audit.py)
LABEL_ISSUES = {"rank": "int", "image": "str", "image_name": "str", "given_label": "str", "suggested_label": "str",
                "score": "float", "flagged": "bool", "self_confidence": "float"}


def read_table(path, columns: dict[str, str], what: str, extra: str | None = None,
               required: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Read `path`, check it has `columns` (or `required` of them), convert each to its type.

    extra: a prefix whose further columns are floats (the predictions' prob_<class>)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} missing")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise DataError(f"{path}: cannot read this {what} ({error})") from error
    needed = required if required is not None else tuple(columns)
    missing = [name for name in needed if name not in frame.columns]
    if missing:
        raise DataError(f"{path}: {what} lacks column(s) {missing}; expected {list(columns)}")
    kinds = {name: kind for name, kind in columns.items() if name in frame.columns}
    if extra:
        kinds.update({name: "float" for name in frame.columns if name.startswith(extra)})
    try:
        for name, kind in kinds.items():
            frame[name] = convert(frame[name], kind)
    except ValueError as error:
        raise DataError(f"{path}: a value in this {what} has the wrong type ({error})") from error
    return frame


def convert(column: pd.Series, kind: str) -> pd.Series:
    if kind == "str":
        return column.astype(str)
    if kind == "int":
        return column.astype(np.int64)
    if kind == "float":
        return pd.to_numeric(column.replace("", np.nan), errors="raise").astype(float)
    if kind == "bool":
        values = {"True": True, "False": False, "": None}
        unknown = set(column) - set(values)
        if unknown:
            raise ValueError(f"expected True, False or empty, found {sorted(unknown)[:3]}")
        return column.map(values).astype(object)
    raise ValueError(f"unknown column type {kind}")


def write_table(path, frame: pd.DataFrame, columns: dict[str, str] | None = None) -> None:
    """Write atomically, without the index; `columns` first and in their order when given."""
    if columns:
        frame = frame[list(columns) + [c for c in frame.columns if c not in columns]]
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


# -- the index -------------------------------------------------------------------------------

def read_index(path) -> pd.DataFrame:
    return read_table(path, INDEX, "index file (run the index stage first)")


def write_index(path, frame: pd.DataFrame) -> None:
    write_table(path, frame, INDEX)


def read_classes(path) -> list[str]:
    """Class names in class-index order (index 0 first)."""
    frame = read_table(path, CLASSES, "class table (classes.csv of the index)")
    return frame.sort_values("index")["name"].tolist()


def write_classes(path, names: list[str]) -> None:
    write_table(path, pd.DataFrame({"index": range(len(names)), "name": names}), CLASSES)


def read_folds(path) -> pd.DataFrame:
    return read_table(path, FOLDS, "fold table (folds.csv of the index)")


def write_folds(path, frame: pd.DataFrame) -> None:
    write_table(path, frame, FOLDS)


def read_fingerprints(path) -> pd.DataFrame:
    return read_table(path, FINGERPRINTS, "fingerprints file (run the fingerprints stage first)")


def write_fingerprints(path, frame: pd.DataFrame) -> None:
    write_table(path, frame, FINGERPRINTS)


def write_leaks(path, frame: pd.DataFrame) -> None:
    write_table(path, frame, LEAKS)


def read_leaks(path) -> pd.DataFrame:
    return read_table(path, LEAKS, "leak list (leaks.csv of the index)")


def write_label_issues(path, frame: pd.DataFrame) -> None:
    write_table(path, frame, LABEL_ISSUES)


def read_label_issues(path, what: str = "label issues file") -> pd.DataFrame:
    """The audit's label_issues.csv, or a list of images a user wrote (data.exclude): only the
    `image` column is required; score and flagged, when present, are read as their types."""
    return read_table(path, LABEL_ISSUES, what, required=("image",))


def read_test_labels_file(path) -> pd.DataFrame:
    """data.test_labels, a file the user writes: image_name,label, other columns ignored."""
    return read_table(path, TEST_LABELS, "test labels file (image_name,label)")


# -- the decoded-image cache -----------------------------------------------------------------

def read_cache_meta(path) -> pd.DataFrame:
    return read_table(path, CACHE_META, "cache table")


def write_cache_meta(path, frame: pd.DataFrame) -> None:
    write_table(path, frame, CACHE_META)


# -- training, selection, prediction ---------------------------------------------------------

def read_history(path) -> pd.DataFrame:
    """history.csv; columns beyond the fixed ones (for example EMA metrics) come back as floats."""
    frame = read_table(path, HISTORY, "training history")
    for name in frame.columns:
        if name not in HISTORY:
            frame[name] = convert(frame[name], "float")
    return frame


def write_history(path, frame: pd.DataFrame) -> None:
    write_table(path, frame, HISTORY)


def read_predictions(path) -> pd.DataFrame:
    return read_table(path, PREDICTIONS, "predictions file", extra=PROB_PREFIX)


def write_predictions(path, frame: pd.DataFrame) -> None:
    write_table(path, frame, PREDICTIONS)


def predictions_table(image_names, labels, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """The predictions format from class probabilities (images x classes): predicted label,
    whether it is right (empty where the label is unknown), prob_<class>; sorted by image_name."""
    labels = [str(label) for label in labels]
    predicted = [classes[i] for i in probs.argmax(1)]
    out = pd.DataFrame({
        "image_name": [str(name) for name in image_names], "label": labels, "pred_label": predicted,
        "correct": [(p == t) if t else None for p, t in zip(predicted, labels)],
    })
    prob_cols = pd.DataFrame(probs.round(6), columns=[f"{PROB_PREFIX}{c}" for c in classes])
    return pd.concat([out, prob_cols], axis=1).sort_values("image_name", kind="stable").reset_index(drop=True)


def accuracy(frame: pd.DataFrame) -> float | None:
    """The share of right predictions in a predictions table, over its labelled rows; None when no
    row is labelled (an unlabelled test split)."""
    known = frame["correct"].dropna()
    return float(known.astype(bool).mean()) if len(known) else None


def probability_columns(frame: pd.DataFrame) -> list[str]:
    return [name for name in frame.columns if name.startswith(PROB_PREFIX)]


def write_submission(path, frame: pd.DataFrame) -> None:
    write_table(path, frame, SUBMISSION)


def read_selection(path) -> dict:
    return read_json(path, "selection record")


def write_selection(path, selection: dict) -> None:
    write_json(path, selection)


def selection_warnings(selection: dict) -> list[str]:
    """Why select did not trust the run (selection.json `warnings`; none in records made before)."""
    return list(selection.get("warnings", []))


def read_run(path) -> dict:
    return read_json(path, "run record (run.json)")


def write_run(path, run: dict) -> None:
    write_json(path, run)


# -- the manifest: what the aggregating stages (ensemble, ablation, plots) read ---------------
# One entry per row, each with named fields, so a later field (a fold, its oof.csv) is one more
# key rather than one more list to keep in step. Written by the workflow from its DAG.
MANIFEST_VERSION = 1
MANIFEST_FIELDS = {
    "index": ("classes", "val"),
    "cv": ("folds",),
    # models: fold (None without cv), run, selection, history, model, config; with cv.full_fit also
    # full_fit (its test.csv)
    "runs": ("variant", "seed", "models", "val", "test"),
    "ensembles": ("name", "tta", "members", "val", "test"),  # members: variant, seed, val, test
    "submitted": ("name", "val", "test"),
}


def write_manifest(path, manifest: dict) -> bool:
    """Write the manifest only when its content changes (an unchanged one keeps its mtime, so
    nothing downstream reruns). Returns whether it wrote."""
    manifest = {"version": MANIFEST_VERSION, **manifest}
    path = Path(path)
    if path.is_file():
        try:
            if read_json(path, "manifest") == manifest:
                return False
        except DataError:
            pass  # unreadable: rewrite it
    write_json(path, manifest)
    return True


def read_manifest(path) -> dict:
    manifest = read_json(path, "manifest")
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        raise DataError(f"{path}: not a version-{MANIFEST_VERSION} manifest; rerun the workflow to rewrite it")
    for section, fields in MANIFEST_FIELDS.items():
        entries = manifest.get(section)
        for entry in entries if isinstance(entries, list) else [entries]:
            missing = [name for name in fields if not isinstance(entry, dict) or name not in entry]
            if missing:
                raise DataError(f"{path}: a '{section}' entry lacks {missing}; rerun the workflow to rewrite it")
    return manifest


def manifest_ensemble(manifest: dict, name: str) -> dict:
    """The manifest's entry for the ensemble `name`."""
    for entry in manifest["ensembles"]:
        if entry["name"] == name:
            return entry
    raise DataError(f"the manifest has no ensemble '{name}' (known: {[e['name'] for e in manifest['ensembles']]})")
