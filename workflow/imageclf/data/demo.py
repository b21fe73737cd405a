"""A small real data set in the course layout, made from scikit-learn's bundled digits.

1,797 scanned handwritten digits (8x8, 17 grey levels) ship inside scikit-learn, so the demo
needs no download. Each is upscaled and saved as a grayscale PNG (the index converts to RGB).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..core import tables
from ..core.logs import add_log_argument, setup_logging

log = logging.getLogger("imageclf.demo")

# What this stage writes, as a version: raised by a change that alters its outputs, and by nothing else
# (core/stages.py). Raising it reruns this stage and everything downstream, on every project.
RESULTS_VERSION = 1

NUM_CLASSES = 10  # the digits 0-9


def digit_images(size: int) -> tuple[list[Image.Image], np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels, seen = [], [], set()
    for pixels, label in zip(digits.images, digits.target):
        grey = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)
        key = grey.tobytes()
        if key in seen:  # identical scans would become train/test leaks
            continue
        seen.add(key)
        images.append(Image.fromarray(grey, mode="L").resize((size, size), Image.BICUBIC))
        labels.append(int(label))
    return images, np.asarray(labels)


def split_indices(labels: np.ndarray, val_per_class: int, test_fraction: float, seed: int):
    """Stratified split: a fixed number of val images per class, a fraction for test."""
    rng = np.random.default_rng(seed)
    split = np.empty(len(labels), dtype=object)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(test_fraction * len(members)))
        split[members[:val_per_class]] = "val"
        split[members[val_per_class : val_per_class + n_test]] = "test"
        split[members[val_per_class + n_test :]] = "train"
    return split


def make_demo(out_dir, size: int, val_per_class: int, test_fraction: float, seed: int) -> pd.DataFrame:
    out_dir = Path(out_dir)
    images, labels = digit_images(size)
    split = split_indices(labels, val_per_class, test_fraction, seed)
    # File names carry no label: a shuffled running number.
    names = np.random.default_rng(seed + 1).permutation(len(labels))
    test_rows = []
    for image, label, part, number in zip(images, labels, split, names):
        name = f"{number:05d}"
        if part == "test":
            path = out_dir / "test" / f"{name}.png"
            test_rows.append({"image_name": name, "label": int(label)})
        else:
            path = out_dir / part / str(label) / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    labels_frame = pd.DataFrame(test_rows).sort_values("image_name")
    tables.write_table(out_dir / "test_labels.csv", labels_frame)
    counts = pd.Series(split).value_counts().to_dict()
    log.info("demo data set in %s: %s images of %d px, 10 classes", out_dir, counts, size)
    return labels_frame


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="imageclf demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--size", type=int, required=True, help="side of each PNG (demo.data.image_size)")
    parser.add_argument("--val-per-class", type=int, required=True)
    parser.add_argument("--test-fraction", type=float, required=True)
    parser.add_argument("--seed", type=int, required=True)
    add_log_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_file)
    make_demo(args.out_dir, args.size, args.val_per_class, args.test_fraction, args.seed)
