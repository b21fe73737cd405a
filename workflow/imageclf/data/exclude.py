"""data.exclude: images that training leaves out, so that a cleaned variant is an ordinary row of
the ablation table.

The list is a CSV with an `image` column holding paths as the index writes them (results/index/
train.csv's `path`), such as the label audit's results/audit/label_issues.csv. Optionally only
its first `top_k` rows, rows whose `score` is at least `min_score`, or rows the audit `flagged`.
Only the training set of a run changes: its val/ (or, under cross-validation, each fold's held-out
images) and test/ are predicted as for every other variant, so the paired comparison with the
reference is over the same images. Test images are never in a training index, so the exclusion
never touches test/.
"""

from __future__ import annotations

import hashlib
import logging
import os

import pandas as pd

from ..core import paths, tables
from ..core.errors import DataError

log = logging.getLogger("imageclf.exclude")

# The audit's output, which a variant's data.exclude may name before it exists (the workflow makes it).
AUDIT_ISSUES = paths.LABEL_ISSUES


def listed_images(spec: dict) -> list[str]:
    """The images data.exclude `spec` ({file, top_k, min_score, flagged}) names, in file order."""
    path = spec["file"]
    frame = tables.read_label_issues(path, "data.exclude file (a CSV with an `image` column)")
    if spec.get("flagged"):
        if "flagged" not in frame.columns:
            raise DataError(f"{path}: data.exclude.flagged is set, but this file has no `flagged` column")
        frame = frame[frame["flagged"].fillna(False).astype(bool)]
    if spec.get("min_score") is not None:
        if "score" not in frame.columns:
            raise DataError(f"{path}: data.exclude.min_score is set, but this file has no `score` column")
        frame = frame[frame["score"] >= spec["min_score"]]
    if spec.get("top_k") is not None:
        frame = frame.head(int(spec["top_k"]))
    return [os.path.normpath(image) for image in frame["image"]]


def exclusion_digest(images: list[str]) -> str:
    """What a run leaves out, as a short hash (part of its resume fingerprint)."""
    return hashlib.sha256("\n".join(sorted(images)).encode()).hexdigest()[:16]


def kept_rows(index: pd.DataFrame, spec: dict | None, where: str = "the training index") -> pd.Series:
    """True for each row of a training index that stays; all True without an exclusion.
    A list of which no image is in the index is an error (paths written another way, most
    likely); images of the list that are not there are held out here (another fold) or not
    labelled images at all, and are counted in the log."""
    if not spec:
        return pd.Series(True, index=index.index)
    images = set(listed_images(spec))
    paths = index["path"].map(os.path.normpath)
    dropped = paths.isin(images)
    if images and not dropped.any():
        example = next(iter(sorted(images)))
        raise DataError(f"{spec['file']}: data.exclude lists {len(images)} image(s), none of them in {where} "
                        f"(for example '{example}'); list paths as the index writes them (results/index/train.csv)")
    log.info("data.exclude: leaving out %d of %d training images (%d listed in %s; the others are held out or "
             "not in this training index)", int(dropped.sum()), len(index), len(images), spec["file"])
    return ~dropped
