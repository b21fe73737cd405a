"""A synthetic data set in the course's layout and size, for speed checks where the real one is absent.

`python -m benchmarks.synthetic --root DIR` writes train/<label>/*.jpg, val/<label>/*.jpg and test/*.jpg:
by default 100 classes, 20,724 / 300 / 2,344 images of 500 x 375 pixels (the course's counts and
typical size), so one epoch costs what a real one costs: JPEG decoding, caching, augmenting.
The pictures are smooth colour gradients with noise, each one different (no duplicates for the
index to flag), with a class-dependent base colour so that a model can learn something.
"""

from __future__ import annotations

import argparse
import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from imageclf.core.logs import setup_logging
from PIL import Image

log = logging.getLogger("imageclf.synthetic")


def photo_like(rng: np.random.Generator, width: int, height: int, base=None) -> np.ndarray:
    """uint8 (height, width, 3): a colour gradient plus texture, roughly as compressible as a photo."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(0, 255, 3) if base is None else np.asarray(base, dtype=np.float64)
    slope = rng.uniform(-0.4, 0.4, (2, 3))
    pixels = base + xx[..., None] * slope[0] + yy[..., None] * slope[1] + rng.normal(0, 20, (height, width, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_jpegs(jobs: list[tuple[str, int, int, int, tuple | None]]) -> int:
    """jobs: (path, seed, width, height, base colour or None for a random one)."""
    for path, seed, width, height, base in jobs:
        rng = np.random.default_rng(seed)
        Image.fromarray(photo_like(rng, width, height, base)).save(path, quality=90)
    return len(jobs)


def write_all(jobs: list, workers: int = 1) -> None:
    """write_jpegs over chunks of jobs, in `workers` processes when more than one."""
    chunks = [jobs[i : i + 256] for i in range(0, len(jobs), 256)]
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(write_jpegs, chunks))
    else:
        for chunk in chunks:
            write_jpegs(chunk)


def make_dataset(root, classes: int = 100, train: int = 20724, val: int = 300, test: int = 2344,
                 width: int = 500, height: int = 375, workers: int = 1, seed: int = 0) -> Path:
    """Images spread evenly over the classes (the first classes get one more when it does not divide)."""
    root = Path(root)
    palette = np.random.default_rng(seed).uniform(30, 225, (classes, 3))
    jobs, number = [], 0
    for split, count in (("train", train), ("val", val), ("test", test)):
        for i in range(count):
            label = i % classes
            folder = root / split if split == "test" else root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{split}_{i:06d}.jpg"
            jobs.append((str(folder / name), seed * 10_000_019 + number, width, height, tuple(palette[label])))
            number += 1
    log.info("writing %d JPEGs of %dx%d into %s with %d processes", len(jobs), width, height, root, workers)
    write_all(jobs, workers)
    return root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--train", type=int, default=20724)
    parser.add_argument("--val", type=int, default=300)
    parser.add_argument("--test", type=int, default=2344)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    setup_logging()
    make_dataset(args.root, args.classes, args.train, args.val, args.test, args.width, args.height,
                 args.workers, args.seed)


if __name__ == "__main__":
    main()
