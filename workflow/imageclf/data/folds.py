"""Splits of the labelled images decided by their contents: k-fold cross-validation folds, and
a validation split carved from train/ for data sets without val/.

Both deal images out class by class (stratified), in an order that depends only on the seed and
each image's SHA-256 (the index's `sha256` column), never on paths or listing order: renaming or
moving a file, or any change to test/, moves nothing. Images with the same content form one
group that always lands on one side, so no duplicate leaks between training and held-out images.
Under cross-validation, near-duplicates (a resized, re-encoded, cropped or mirrored copy:
near_duplicates.py) join their group too, when the folds stage is given the labelled fingerprints.
A group is dealt by its key, the smallest SHA-256 among its images, so an image without
near-duplicates is dealt exactly as before near-duplicates were grouped.
A group whose copies carry different labels goes with the first of them in the class order.
"""

from __future__ import annotations

import argparse
import hashlib
import logging

import pandas as pd

from ..core import tables
from ..core.errors import ConfigError
from ..core.logs import add_log_argument, setup_logging
from . import near_duplicates

log = logging.getLogger("imageclf.folds")

# What this stage writes, as a version: raised by a change that alters its outputs, and by nothing else
# (core/stages.py). Raising it reruns this stage and everything downstream, on every project.
RESULTS_VERSION = 1


def draw_key(seed: int, sha256: str) -> str:
    """An image's place in the deal: a hash of the seed and its content."""
    return hashlib.sha256(f"{seed}:{sha256}".encode()).hexdigest()


def group_keys(index: pd.DataFrame, group_of: pd.Series | None = None) -> pd.Series:
    """Each row's group key: its content hash, or its near-duplicate group's (near_duplicates.near_groups)."""
    if group_of is None:
        return index["sha256"]
    return index["sha256"].map(group_of).fillna(index["sha256"])


def groups_by_class(index: pd.DataFrame, classes: list[str], seed: int,
                    group_of: pd.Series | None = None) -> list[tuple[str, list[str]]]:
    """(class, [key of each group, in dealing order]) per class, in class order; a group's key is
    its content hash, or with group_of its near-duplicate group's key."""
    rank = {name: i for i, name in enumerate(classes)}
    first_label = (index.assign(rank=index["label"].map(rank), key=group_keys(index, group_of))
                   .sort_values("rank", kind="stable").drop_duplicates("key").set_index("key")["label"])
    dealt = []
    for name in classes:
        hashes = first_label.index[first_label == name].tolist()
        dealt.append((name, sorted(hashes, key=lambda sha: draw_key(seed, sha))))
    return dealt


def require_images_for(folds: int, distinct: int) -> None:
    """The one error for more folds than distinct labelled images."""
    if distinct < folds:  # a fold without images could neither train nor select
        raise ConfigError(f"cv.folds: {folds} folds, but the labelled images (train/ and val/) hold only {distinct} "
                          "distinct images; every fold needs at least one, so set cv.folds to at most that")


def check_fold_count(folds: int, index_files) -> None:
    """require_images_for on a finished labelled index (train.csv, val.csv): the workflow asks
    before any job, so a cv.folds too large for unchanged data stops Snakemake instead of failing
    the folds job, which would delete folds.csv and, once cv.folds is set back, retrain every
    fold run."""
    frames = [tables.read_index(path) for path in index_files]
    require_images_for(folds, pd.concat(frames)["sha256"].nunique())


def assign_folds(index: pd.DataFrame, classes: list[str], folds: int, seed: int,
                 group_of: pd.Series | None = None) -> pd.Series:
    """The fold (0 .. folds-1) of every row of `index` (the labelled images, with `label` and
    `sha256`), stratified by class and balanced in size.

    Each class's groups are dealt round robin, starting where the previous class stopped, so the
    folds' sizes differ by at most one group overall. A class with fewer images than folds is
    spread over as many folds as it has images (its other folds hold none of it): a warning.
    group_of: sha256 -> near-duplicate group key; every group then lands in one fold."""
    if folds < 2:
        raise ValueError("cross-validation needs at least 2 folds")
    dealt = groups_by_class(index, classes, seed, group_of)
    require_images_for(folds, sum(len(hashes) for _, hashes in dealt))
    fold_of, position = {}, 0
    short = []
    for name, hashes in dealt:
        if 0 < len(hashes) < folds:
            short.append(f"{name!r} ({len(hashes)})")
        for sha in hashes:
            fold_of[sha] = position % folds
            position += 1
    if short:
        log.warning("%d class(es) have fewer distinct images than the %d folds, so some folds hold none of "
                    "them: %s", len(short), folds, ", ".join(short[:10]))
    return group_keys(index, group_of).map(fold_of).astype(int)


def holdout(index: pd.DataFrame, classes: list[str], fraction: float, seed: int) -> pd.Series:
    """True for the rows of `index` (train/) that form the validation split: in each class, the
    first round(fraction x its distinct images) groups in dealing order, at least one when the
    class has two or more (so each such class is validated) and never all of them."""
    held = set()
    for _, hashes in groups_by_class(index, classes, seed):
        count = min(len(hashes) - 1, max(1, round(fraction * len(hashes)))) if len(hashes) > 1 else 0
        held.update(hashes[:count])
    return index["sha256"].isin(held)


def pooled(train: pd.DataFrame, val: pd.DataFrame) -> pd.DataFrame:
    """train/ and val/ as one table of labelled images, each with the folder it came from."""
    return pd.concat([train.assign(split="train"), val.assign(split="val")], ignore_index=True)


def run(train_index, val_index, classes_csv, out_csv, folds: int, seed: int, fingerprints_csv=None,
        near_distance: int | None = None) -> pd.DataFrame:
    """The `folds` stage: every labelled image (train/ and val/ pooled) with its fold; with the
    labelled fingerprints, each group of near-duplicates (within near_distance) in one fold."""
    classes = tables.read_classes(classes_csv)
    frame = pooled(tables.read_index(train_index), tables.read_index(val_index))
    group_of = None
    if fingerprints_csv is not None and near_distance is not None:
        group_of = near_duplicates.near_groups(frame, tables.read_fingerprints(fingerprints_csv), near_distance)
        sizes = group_of.value_counts()
        joined = sizes[sizes > 1]
        log.info("%d group(s) of near-duplicates (distance at most %d) of %d distinct images in all, each kept in "
                 "one fold; the largest holds %d", len(joined), near_distance, int(joined.sum()),
                 int(sizes.max()) if len(sizes) else 0)
        if len(sizes) and sizes.max() > frame["sha256"].nunique() / folds / 2:
            log.warning("a group of %d near-duplicates fills half a fold or more; lower data.near_duplicates.distance "
                        "if these images are not copies of one another", int(sizes.max()))
    frame["fold"] = assign_folds(frame, classes, folds, seed, group_of)
    tables.write_folds(out_csv, frame)
    sizes = frame["fold"].value_counts().sort_index().tolist()
    log.info("%d labelled images in %d folds of %s images (seed %d)", len(frame), folds, sizes, seed)
    return frame


def split_fold(folds_csv, fold: int | None, train_out, val_out) -> None:
    """The `fold_index` stage: index files of one fold's run, its training images (every other
    fold) and its held-out images (this fold); with no fold, every labelled image to train on and
    none held out (a full fit)."""
    frame = tables.read_folds(folds_csv)
    held_out = frame["fold"] == fold if fold is not None else pd.Series(False, index=frame.index)
    index_columns = list(tables.INDEX)
    tables.write_index(train_out, frame.loc[~held_out, index_columns])
    if val_out is not None:
        tables.write_index(val_out, frame.loc[held_out, index_columns])
    log.info("fold %s: %d images to train on, %d held out", "all" if fold is None else fold,
             int((~held_out).sum()), int(held_out.sum()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="imageclf folds", description=run.__doc__)
    parser.add_argument("--train-index", required=True)
    parser.add_argument("--val-index", required=True)
    parser.add_argument("--classes", required=True)
    parser.add_argument("--out", required=True, help="folds.csv")
    parser.add_argument("--folds", type=int, required=True, help="cv.folds")
    parser.add_argument("--seed", type=int, required=True, help="cv.seed")
    parser.add_argument("--fingerprints", default=None, help="fingerprints_labelled.csv: keep near-duplicates in one fold")
    parser.add_argument("--near-distance", type=near_duplicates.distance_argument, default=None,
                        help="data.near_duplicates.distance")
    add_log_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_file)
    run(args.train_index, args.val_index, args.classes, args.out, args.folds, args.seed, args.fingerprints,
        args.near_distance)


def main_split(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="imageclf fold_index", description=split_fold.__doc__)
    parser.add_argument("--folds-table", required=True, help="folds.csv")
    parser.add_argument("--fold", type=int, default=None, help="the held-out fold (none: a full fit)")
    parser.add_argument("--train-out", required=True)
    parser.add_argument("--val-out", default=None, help="the held-out images (none for a full fit)")
    add_log_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_file)
    split_fold(args.folds_table, args.fold, args.train_out, args.val_out)
