"""Index a folder-per-class data set: one CSV row per image, checked before any training.

Layout: <root>/train/<label>/*, <root>/val/<label>/*, <root>/test/* (flat, unlabelled).
The folder name is the label. Classes are ordered numerically when every name is an integer
("2" before "10"), so class index and folder name never disagree the way ImageFolder's string
sort makes them disagree.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from .io_utils import setup_logging, write_csv

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
SPLITS = ("train", "val", "test")
INDEX_COLUMNS = ["path", "label", "image_name", "width", "height", "sha256"]
MAX_LISTED_PROBLEMS = 25

log = logging.getLogger("imageclf.index")


class DataError(ValueError):
    """The data set on disk is not usable; the message names the files and the fix."""


def sort_class_names(names) -> list[str]:
    """Integers in numeric order, otherwise plain string order."""
    names = list(names)
    if names and all(name.isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


def is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def inspect_image(path: Path) -> dict:
    """Decode the whole image (catches truncated files) and hash its bytes."""
    data = path.read_bytes()
    try:
        with Image.open(path) as image:
            image.load()
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{path}: not a readable image ({error})") from error
    return {"width": width, "height": height, "sha256": hashlib.sha256(data).hexdigest()}


def list_split(root: Path, split: str, problems: list[str]) -> list[tuple[Path, str]]:
    """(path, label) pairs of one split; label is '' for the flat test split."""
    split_dir = root / split
    if not split_dir.is_dir():
        problems.append(f"{split_dir}: missing split folder (expected {root}/{split}/)")
        return []
    entries = sorted(p for p in split_dir.iterdir() if not is_hidden(p))
    if split == "test":
        pairs = []
        for path in entries:
            if path.is_dir():
                problems.append(f"{path}: test/ must be flat (image files only), found a folder")
            elif path.suffix.lower() not in IMAGE_SUFFIXES:
                problems.append(f"{path}: not an image file (expected {sorted(IMAGE_SUFFIXES)})")
            else:
                pairs.append((path, ""))
        return pairs
    pairs = []
    for class_dir in entries:
        if not class_dir.is_dir():
            problems.append(f"{class_dir}: a file directly in {split}/; images belong in {split}/<label>/")
            continue
        files = sorted(p for p in class_dir.iterdir() if not is_hidden(p))
        if not files:
            problems.append(f"{class_dir}: empty class folder")
        for path in files:
            if path.is_dir() or path.suffix.lower() not in IMAGE_SUFFIXES:
                problems.append(f"{path}: not an image file (expected {sorted(IMAGE_SUFFIXES)})")
            else:
                pairs.append((path, class_dir.name))
    if not pairs and not any("empty class folder" in p for p in problems):
        problems.append(f"{split_dir}: no class folders with images")
    return pairs


def raise_problems(problems: list[str], what: str) -> None:
    if not problems:
        return
    shown = problems[:MAX_LISTED_PROBLEMS]
    more = len(problems) - len(shown)
    text = "\n".join(f"  - {p}" for p in shown)
    if more > 0:
        text += f"\n  ... and {more} more"
    raise DataError(f"{what} ({len(problems)} problem(s)):\n{text}")


def find_leaks(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Images with identical content in two different splits."""
    stacked = pd.concat(
        [frame.assign(split=split)[["split", "path", "sha256"]] for split, frame in frames.items()]
    )
    rows = []
    for digest, group in stacked.groupby("sha256", sort=True):
        if group["split"].nunique() < 2:
            continue
        records = group.to_dict("records")
        for i, a in enumerate(records):
            for b in records[i + 1 :]:
                if a["split"] != b["split"]:
                    rows.append(
                        {"sha256": digest, "split_a": a["split"], "path_a": a["path"],
                         "split_b": b["split"], "path_b": b["path"]}
                    )
    return pd.DataFrame(rows, columns=["sha256", "split_a", "path_a", "split_b", "path_b"])


def read_test_labels(path: str | Path, test: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Load and check data.test_labels: every test image exactly once, every label a class."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.test_labels: file {path} does not exist")
    labels = pd.read_csv(path, dtype=str)
    missing_cols = {"image_name", "label"} - set(labels.columns)
    if missing_cols:
        raise DataError(f"{path}: missing column(s) {sorted(missing_cols)}; expected image_name,label")
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


def build_index(root: str | Path, threads: int = 1) -> dict[str, pd.DataFrame]:
    """Scan and check every image; return one DataFrame per split plus the class table."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root: folder {root} does not exist (set data.root in config.yaml)")
    problems: list[str] = []
    pairs = {split: list_split(root, split, problems) for split in SPLITS}
    raise_problems(problems, f"data set {root} is not in the expected layout")

    classes = sort_class_names({label for _, label in pairs["train"]})
    unknown: dict[Path, list[str]] = {}  # one line per class folder, not one per image in it
    for path, label in pairs["val"]:
        if label not in classes:
            unknown.setdefault(path.parent, []).append(label)
    for folder, labels in unknown.items():
        problems.append(f"{folder}: class '{labels[0]}' is in val but not in train ({len(labels)} image(s))")
    stems: dict[str, Path] = {}
    for path, _ in pairs["test"]:
        if path.stem in stems:
            problems.append(
                f"{path}: same image_name '{path.stem}' as {stems[path.stem]}; "
                "test image names (file name without extension) must be unique"
            )
        stems.setdefault(path.stem, path)
    raise_problems(problems, f"data set {root} has inconsistent splits")

    all_paths = [path for split in SPLITS for path, _ in pairs[split]]
    log.info("checking %d images under %s with %d thread(s)", len(all_paths), root, threads)

    def inspect(path):
        try:
            return inspect_image(path)
        except DataError as error:
            return error
        except OSError as error:
            return DataError(f"{path}: cannot read ({error})")

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = dict(zip(all_paths, pool.map(inspect, all_paths)))
    problems = [str(r) for r in results.values() if isinstance(r, DataError)]
    raise_problems(problems, f"data set {root} has unreadable images")

    frames = {}
    for split in SPLITS:
        rows = [
            {"path": str(path), "label": label, "image_name": path.stem, **results[path]}
            for path, label in pairs[split]
        ]
        frames[split] = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    frames["classes"] = pd.DataFrame({"index": range(len(classes)), "name": classes})
    return frames


def summarize(frames: dict[str, pd.DataFrame], test_labels: pd.DataFrame | None) -> pd.DataFrame:
    """Images per class per split."""
    summary = pd.DataFrame({"label": frames["classes"]["name"]})
    for split in ("train", "val"):
        counts = frames[split]["label"].value_counts()
        summary[split] = summary["label"].map(counts).fillna(0).astype(int)
    if test_labels is not None:
        counts = test_labels["label"].value_counts()
        summary["test"] = summary["label"].map(counts).fillna(0).astype(int)
    return summary


def run(root, out_dir, test_labels=None, on_leak="warn", threads=1) -> dict[str, pd.DataFrame]:
    """Index `root` and write train/val/test/classes/summary/leaks CSVs into `out_dir`."""
    frames = build_index(root, threads=threads)
    classes = frames["classes"]["name"].tolist()
    labels = read_test_labels(test_labels, frames["test"], classes) if test_labels else None
    leaks = find_leaks({s: frames[s] for s in SPLITS})
    if len(leaks):
        message = (
            f"{len(leaks)} image pair(s) with identical content across splits "
            f"(see {Path(out_dir) / 'leaks.csv'}); first: {leaks.iloc[0]['path_a']} == "
            f"{leaks.iloc[0]['path_b']}"
        )
        if on_leak == "error":
            raise DataError(message + " (data.on_leak is 'error'; set it to 'warn' to continue)")
        log.warning(message)
    else:
        log.info("no identical images across splits")
    out_dir = Path(out_dir)
    for split in SPLITS:
        write_csv(out_dir / f"{split}.csv", frames[split])
    write_csv(out_dir / "classes.csv", frames["classes"])
    write_csv(out_dir / "summary.csv", summarize(frames, labels))
    write_csv(out_dir / "leaks.csv", leaks)
    log.info(
        "indexed %d classes: %d train, %d val, %d test images",
        len(classes), len(frames["train"]), len(frames["val"]), len(frames["test"]),
    )
    return frames


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="data set folder (data.root)")
    parser.add_argument("--out-dir", required=True, help="where the index CSVs go")
    parser.add_argument("--test-labels", default=None, help="CSV image_name,label for test")
    parser.add_argument("--on-leak", choices=["warn", "error"], default="warn")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    setup_logging()
    run(args.root, args.out_dir, args.test_labels or None, args.on_leak, args.threads)
