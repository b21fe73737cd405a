"""Index a folder-per-class data set: one CSV row per image, checked before any training.

Layout: <root>/train/<label>/*, <root>/val/<label>/*, <root>/test/* (flat, unlabelled).
The folder name is the label, whatever it is (`None`, `NA`, `01`, `chat noir`).

Two stages, so that a change to the test images never retrains anything:
- `index` reads train/ and val/ and writes train.csv, val.csv and classes.csv (what training reads);
- `index_test` reads test/ and writes test.csv, summary.csv and leaks.csv.

Class order (class index 0, 1, ...): when every name is a run of digits, by their integer value
("2" before "10"), names of the same value ("1" and "01") by their text; otherwise by the text,
in Unicode code-point order ("B" before "a"). It depends on the names alone, never on the order
in which the file system lists the folders.
"""

from __future__ import annotations

import argparse
import logging
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from ..core import tables
from ..core.errors import DataError
from ..core.io_utils import file_sha256, write_json
from ..core.logs import add_log_argument, setup_logging
from . import folds, near_duplicates
from .images import DEFAULT_MAX_PIXELS, image_extensions, is_image_name, is_junk, open_image

LABELLED = ("train", "val")
MAX_LISTED_PROBLEMS = 25
# Images smaller than this on a side carry next to nothing (a 1 x 1 thumbnail, a tracking pixel):
# a warning, or an error with data.on_small_image: error.
MIN_IMAGE_SIDE = 8
SNAKEMAKE_TIMESTAMP = ".snakemake_timestamp"

log = logging.getLogger("imageclf.index")

# What this stage writes, as a version: raised by a change that alters its outputs, and by nothing else
# (core/stages.py). Raising it reruns this stage and everything downstream, on every project.
RESULTS_VERSION = 1

__all__ = ["DataError", "build_index", "build_test", "run", "run_test", "sort_class_names"]


def sort_class_names(names) -> list[str]:
    """The documented class order (module docstring)."""
    names = sorted(set(names))
    if names and all(name.isdigit() for name in names):
        return sorted(names, key=lambda name: (int(name), name))
    return names


def inspect_image(path: Path, max_pixels: int | None) -> dict:
    """Decode the whole image as the stages will (catches truncated files), hash its bytes."""
    image = open_image(path, max_pixels)
    return {"width": image.width, "height": image.height, "sha256": file_sha256(path)}


class Listing:
    """Files found under one split, with what is wrong and what was skipped."""

    def __init__(self):
        self.by_split: dict[str, list[tuple[Path, str]]] = {}
        self.problems: list[str] = []
        self.skipped: list[Path] = []

    def entries(self, folder: Path) -> list[Path]:
        found = []
        for path in sorted(folder.iterdir()):
            if path.name == SNAKEMAKE_TIMESTAMP:  # Snakemake's own mark in a folder it made (the demo's)
                continue
            (self.skipped if is_junk(path.name) else found).append(path)
        return found

    @property
    def pairs(self) -> list[tuple[Path, str]]:
        """Every split's (path, label) pairs, in split order."""
        return [pair for pairs in self.by_split.values() for pair in pairs]

    def add_file(self, split: str, path: Path, label: str) -> None:
        if is_image_name(path.name):
            self.by_split.setdefault(split, []).append((path, label))
        else:
            self.problems.append(f"{path}: not an image file (an extension Pillow reads, such as .jpg, "
                                 ".png, .webp, .tif; hidden files, Thumbs.db and desktop.ini are skipped)")


def list_split(root: Path, split: str, listing: Listing) -> None:
    """(path, label) pairs of one split into `listing`; label is '' for the flat test split."""
    split_dir = root / split
    if not split_dir.is_dir():
        hint = "; or set data.val_fraction to hold out part of train/" if split == "val" else ""
        listing.problems.append(f"{split_dir}: missing split folder (expected {root}/{split}/{hint})")
        return
    if split == "test":
        for path in listing.entries(split_dir):
            if path.is_dir():
                listing.problems.append(f"{path}: test/ must be flat (image files only), found a folder")
            else:
                listing.add_file(split, path, "")
        return
    for class_dir in listing.entries(split_dir):
        if not class_dir.is_dir():
            listing.problems.append(f"{class_dir}: a file directly in {split}/; images belong in {split}/<label>/")
            continue
        files = listing.entries(class_dir)
        if not files:
            listing.problems.append(f"{class_dir}: empty class folder")
        for path in files:
            if path.is_dir():
                listing.problems.append(f"{path}: a folder inside a class folder; images belong in {split}/<label>/")
            else:
                listing.add_file(split, path, class_dir.name)
    if not listing.by_split.get(split) and not listing.problems:
        listing.problems.append(f"{split_dir}: no class folders with images")


def raise_problems(problems: list[str], what: str) -> None:
    if not problems:
        return
    shown = problems[:MAX_LISTED_PROBLEMS]
    more = len(problems) - len(shown)
    text = "\n".join(f"  - {p}" for p in shown)
    if more > 0:
        text += f"\n  ... and {more} more"
    raise DataError(f"{what} ({len(problems)} problem(s)):\n{text}")


def report_skipped(skipped: list[Path]) -> None:
    if skipped:
        log.warning("skipped %d file(s) that are not data (hidden files, Thumbs.db, desktop.ini, ...), "
                    "for example %s", len(skipped), skipped[0])


def require_root(root: Path) -> None:
    """The one error for a data.root that is not a folder."""
    if not root.is_dir():
        where = "" if root.is_absolute() else f" (relative to {Path.cwd()})"
        raise DataError(f"data.root: folder '{root}'{where} does not exist; set data.root to a folder "
                        "with train/<label>/, val/<label>/ and test/")


def class_folders(root: Path) -> list[str]:
    """The class names under root/train/, listed by the index's own rules (junk skipped), in the
    class order; [] when there is no train/ folder yet."""
    train = root / "train"
    if not train.is_dir():
        return []
    return sort_class_names(path.name for path in Listing().entries(train) if path.is_dir())


def scan(root: Path, splits, what: str) -> Listing:
    require_root(root)
    listing = Listing()
    for split in splits:
        list_split(root, split, listing)
    raise_problems(listing.problems, f"{what} {root} is not in the expected layout")
    report_skipped(listing.skipped)
    return listing


def inspect_all(pairs: list[tuple[Path, str]], root: Path, threads: int, max_pixels: int | None) -> dict:
    log.info("checking %d images under %s with %d thread(s); formats read: %s", len(pairs), root, threads,
             " ".join(sorted(image_extensions())))

    def inspect(path):
        try:
            return inspect_image(path, max_pixels)
        except DataError as error:
            return error
        except OSError as error:
            return DataError(f"{path}: cannot read ({error})")

    paths = [path for path, _ in pairs]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = dict(zip(paths, pool.map(inspect, paths)))
    raise_problems([str(r) for r in results.values() if isinstance(r, DataError)],
                   f"data set {root} has unreadable images")
    return results


def check_small_images(results: dict, on_small: str, root: Path) -> None:
    """Images below MIN_IMAGE_SIDE pixels on a side: a warning listing them, or (on_small:
    "error", data.on_small_image) the error that lists them."""
    small = [f"{path}: {info['width']} x {info['height']} pixels" for path, info in results.items()
             if min(info["width"], info["height"]) < MIN_IMAGE_SIDE]
    if not small:
        return
    what = f"data set {root} has images below {MIN_IMAGE_SIDE} pixels on a side"
    if on_small == "error":
        raise_problems(small, what + " (data.on_small_image is 'error'; remove them, or set it to 'warn')")
    log.warning("%s (%d, which carry next to nothing; data.on_small_image: error refuses them): %s", what,
                len(small), "; ".join(small[:5]) + (" ..." if len(small) > 5 else ""))


def frame_of(pairs, results) -> pd.DataFrame:
    rows = [{"path": str(path), "label": label, "image_name": path.stem, **results[path]} for path, label in pairs]
    return pd.DataFrame(rows, columns=list(tables.INDEX))


def build_index(root, threads: int = 1, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                val_fraction: float | None = None, seed: int = 0, on_small: str = "warn") -> dict[str, pd.DataFrame]:
    """train and val: one DataFrame each, and the class names (the `index` stage).

    val_fraction: when there is no val/ folder, the share of each class of train/ held out as the
    validation split, chosen by content (folds.holdout, with `seed`); None keeps val/ required.
    on_small: "warn" or "error" for images below MIN_IMAGE_SIDE on a side (data.on_small_image)."""
    root = Path(root)
    carve = val_fraction is not None and not (root / "val").is_dir()
    listing = scan(root, ("train",) if carve else LABELLED, "data set")
    by_split = {split: listing.by_split.get(split, []) for split in LABELLED}
    classes = sort_class_names(label for _, label in by_split["train"])
    problems = []
    if len(classes) < 2:
        problems.append(f"{root / 'train'}: {len(classes)} class folder(s) ({classes}); "
                        "a classifier needs at least two")
    unknown: dict[Path, list[str]] = {}  # one line per class folder, not one per image in it
    for path, label in by_split["val"]:
        if label not in classes:
            unknown.setdefault(path.parent, []).append(label)
    composed = {unicodedata.normalize("NFC", name): name for name in classes}
    for folder, labels in unknown.items():
        twin = composed.get(unicodedata.normalize("NFC", labels[0]))
        # the same name written with other Unicode code points (macOS writes NFD, most others NFC)
        hint = f"; train's '{twin}' looks the same but is spelled with other Unicode code points" if twin else ""
        problems.append(f"{folder}: class '{labels[0]}' is in val but not in train ({len(labels)} image(s)){hint}")
    raise_problems(problems, f"data set {root} has inconsistent splits")
    without_val = [name for name in classes if name not in {label for _, label in by_split["val"]}]
    if without_val:
        log.warning("%d train class(es) have no val images, so validation never checks them: %s",
                    len(without_val), ", ".join(repr(name) for name in without_val[:10]))
    results = inspect_all(listing.pairs, root, threads, max_pixels)
    check_small_images(results, on_small, root)
    frames = {split: frame_of(by_split[split], results) for split in LABELLED}
    if carve:
        held = folds.holdout(frames["train"], classes, val_fraction, seed)
        frames = {"train": frames["train"][~held].reset_index(drop=True), "val": frames["train"][held].reset_index(drop=True)}
        log.info("no val/ folder: %d of %d train images held out for validation (data.val_fraction %s)",
                 len(frames["val"]), int(len(held)), val_fraction)
    return {**frames, "classes": classes}


def build_test(root, threads: int = 1, max_pixels: int | None = DEFAULT_MAX_PIXELS, on_small: str = "warn") -> pd.DataFrame:
    """test: one row per image (the `index_test` stage)."""
    root = Path(root)
    listing = scan(root, ("test",), "test split of")
    problems, stems = [], {}
    for path, _ in listing.pairs:
        if path.stem in stems:
            problems.append(f"{path}: same image_name '{path.stem}' as {stems[path.stem]}; "
                            "test image names (file name without extension) must be unique")
        stems.setdefault(path.stem, path)
    raise_problems(problems, f"data set {root} has inconsistent splits")
    results = inspect_all(listing.pairs, root, threads, max_pixels)
    check_small_images(results, on_small, root)
    return frame_of(listing.pairs, results)


def find_leaks(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Images with identical content in two different splits (the near ones: the leaks stage)."""
    return near_duplicates.find_leaks(frames, None, None)


def read_test_labels(path, test: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Load and check data.test_labels: every test image exactly once, every label a class."""
    labels = tables.read_test_labels_file(path)
    problems = []
    dupes = labels["image_name"][labels["image_name"].duplicated()].tolist()
    if dupes:
        problems.append(f"{path}: image_name listed twice: {dupes[:5]}")
    unknown = sorted(set(labels["label"]) - set(classes))
    if unknown:
        problems.append(f"{path}: labels that are not training classes: {unknown[:5]}")
    absent = sorted(set(test["image_name"]) - set(labels["image_name"]))
    if absent:
        problems.append(f"{path}: no label for test image(s) {absent[:5]}")
    raise_problems(problems, f"test labels {path} do not match the test split")
    return labels


def summarize(frames: dict[str, pd.DataFrame], classes: list[str], test_labels: pd.DataFrame | None) -> pd.DataFrame:
    """Images per class per split."""
    summary = pd.DataFrame({"label": classes})
    for split in LABELLED:
        counts = frames[split]["label"].value_counts()
        summary[split] = summary["label"].map(counts).fillna(0).astype(int)
    if test_labels is not None:
        counts = test_labels["label"].value_counts()
        summary["test"] = summary["label"].map(counts).fillna(0).astype(int)
    return summary


def write_checked(check_out, root, what: str, images: int) -> None:
    """The marker of a passed check (see `run`): what was checked, and how many images."""
    write_json(check_out, {"checked": what, "root": str(root), "images": images})
    log.info("%s of %s passed every check (%d images): %s", what, root, images, check_out)


def run(root, train_out, val_out, classes_out, on_leak="warn", threads=1,
        max_pixels: int | None = DEFAULT_MAX_PIXELS, val_fraction: float | None = None, seed: int = 0,
        on_small: str = "warn", check_out=None) -> dict:
    """The `index` stage: train/ and val/ into train.csv, val.csv and classes.csv.

    check_out: check only, and write this marker instead of the index files (the workflow's
    check_data rule, which runs before the index is touched: a data problem then stops the run
    and the finished index stays as it was)."""
    frames = build_index(root, threads=threads, max_pixels=max_pixels, val_fraction=val_fraction, seed=seed,
                         on_small=on_small)
    near_duplicates.check_pairs(find_leaks({split: frames[split] for split in LABELLED}),
                                {"identical": (on_leak, "data.on_leak")}, "train and val")
    if check_out is not None:
        write_checked(check_out, root, "train/ and val/", sum(len(frames[split]) for split in LABELLED))
        return frames
    tables.write_index(train_out, frames["train"])
    tables.write_index(val_out, frames["val"])
    tables.write_classes(classes_out, frames["classes"])
    log.info("indexed %d classes: %d train, %d val images", len(frames["classes"]), len(frames["train"]),
             len(frames["val"]))
    return frames


def run_test(root, train_index, val_index, classes_csv, test_out, summary_out, leaks_out, test_labels=None,
             on_leak="warn", threads=1, max_pixels: int | None = DEFAULT_MAX_PIXELS, on_small: str = "warn",
             check_out=None) -> pd.DataFrame:
    """The `index_test` stage: test/ into test.csv; the per-class summary and every cross-split leak.
    check_out: check only, and write this marker instead (see `run`)."""
    test = build_test(root, threads=threads, max_pixels=max_pixels, on_small=on_small)
    classes = tables.read_classes(classes_csv)
    frames = {"train": tables.read_index(train_index), "val": tables.read_index(val_index), "test": test}
    labels = read_test_labels(test_labels, test, classes) if test_labels else None
    leaks = find_leaks(frames)
    if leaks_out:
        where = f"see {leaks_out}"
    else:  # under 'error' the leak list is never made: the log lists them
        where = "the log of this check lists them" if on_leak == "error" else "`snakemake results/index/leaks.csv` lists them"
    near_duplicates.check_pairs(leaks, {"identical": (on_leak, "data.on_leak")}, where)
    if check_out is not None:
        write_checked(check_out, root, "test/", len(test))
        return test
    tables.write_index(test_out, test)
    tables.write_table(summary_out, summarize(frames, classes, labels))
    if leaks_out is not None:  # the workflow's leaks stage writes leaks.csv, with the near pairs
        tables.write_leaks(leaks_out, leaks)
    log.info("indexed %d test images", len(test))
    return test


def common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, help="data set folder (data.root)")
    parser.add_argument("--on-leak", choices=["warn", "error"], default="warn")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="refuse larger images (data.max_image_pixels)")
    parser.add_argument("--on-small-image", choices=["warn", "error"], default="warn",
                        help=f"images below {MIN_IMAGE_SIDE} pixels on a side (data.on_small_image)")
    parser.add_argument("--check-out", default=None,
                        help="check only: write this marker instead of the index files")
    add_log_argument(parser)


def outputs_or_check(parser: argparse.ArgumentParser, args, names: list[str]) -> None:
    """Either every output file or --check-out (the parser's error otherwise)."""
    missing = [name for name in names if getattr(args, name) is None]
    if args.check_out is None and missing:
        parser.error("the following arguments are required without --check-out: "
                     + ", ".join("--" + name.replace("_", "-") for name in missing))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="imageclf index", description=run.__doc__)
    common_arguments(parser)
    parser.add_argument("--train-out", default=None)
    parser.add_argument("--val-out", default=None)
    parser.add_argument("--classes-out", default=None)
    parser.add_argument("--val-fraction", type=float, default=None,
                        help="without val/: hold out this share of train/ (data.val_fraction)")
    parser.add_argument("--seed", type=int, default=0, help="the seed of that choice (cv.seed)")
    args = parser.parse_args(argv)
    outputs_or_check(parser, args, ["train_out", "val_out", "classes_out"])
    setup_logging(args.log_file)
    run(args.root, args.train_out, args.val_out, args.classes_out, args.on_leak, args.threads, args.max_image_pixels,
        args.val_fraction, args.seed, args.on_small_image, args.check_out)


def main_test(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="imageclf index_test", description=run_test.__doc__)
    common_arguments(parser)
    parser.add_argument("--train-index", required=True)
    parser.add_argument("--val-index", required=True)
    parser.add_argument("--classes", required=True)
    parser.add_argument("--test-labels", default=None, help="CSV image_name,label for test (data.test_labels)")
    parser.add_argument("--test-out", default=None)
    parser.add_argument("--summary-out", default=None)
    parser.add_argument("--leaks-out", default=None, help="identical pairs only (the leaks stage adds the near ones)")
    args = parser.parse_args(argv)
    outputs_or_check(parser, args, ["test_out", "summary_out"])
    setup_logging(args.log_file)
    run_test(args.root, args.train_index, args.val_index, args.classes, args.test_out, args.summary_out,
             args.leaks_out, args.test_labels or None, args.on_leak, args.threads, args.max_image_pixels,
             args.on_small_image, args.check_out)
