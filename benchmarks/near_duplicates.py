"""Measurement: precision and recall of the near-duplicate fingerprint (data/near_duplicates.py)
on planted data, by distance threshold, and its speed. The figures of docs/near_duplicates.md.

Two planted sets, each a `train` side of distinct originals and a `test` side of distinct other
images plus copies of some originals, one per kind: resized to 3/4, re-encoded as JPEG at quality
70, cropped by 5 % (2.5 % off each side), cropped by 5 % off one corner, mirrored, and all of
resize, centred crop, mirror and JPEG at once. A found pair is a train and a test image within the
distance; it is right when the test image is a copy of that original.

- photos: small smooth synthetic 'photos' (low-frequency colour noise and discs), 80 px;
- digits: the demo's scikit-learn digits (8 x 8 scans as 32 px PNGs; `imageclf demo` makes them),
  whose distinct images of one class often look alike at that resolution.

Not a test. Run from the repository root:
    python -m benchmarks.near_duplicates [--digits resources/demo]
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
import pandas as pd
from imageclf.data import near_duplicates as nd
from PIL import Image, ImageDraw, ImageOps

THRESHOLDS = (4, 6, 8, 10, 12)


def photo(rng: np.random.Generator, size: int = 80) -> Image.Image:
    image = Image.fromarray((rng.random((6, 6, 3)) * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = rng.integers(0, size, 2)
        r = int(rng.integers(5, size // 3))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image


def jpeg70(image):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=70)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def crop_centre(image, share=0.05):
    dx, dy = round(image.width * share / 2), round(image.height * share / 2)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


def crop_corner(image, share=0.05):
    return image.crop((0, 0, image.width - round(image.width * share), image.height - round(image.height * share)))


def resized(image):
    return image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.BILINEAR)


KINDS = {"resized": resized, "jpeg70": jpeg70, "crop 5 % centre": crop_centre, "crop 5 % corner": crop_corner,
         "mirrored": ImageOps.mirror, "all at once": lambda im: jpeg70(ImageOps.mirror(crop_centre(resized(im))))}


def fingerprints(images) -> pd.DataFrame:
    pairs = [nd.phash(image) for image in images]
    return pd.DataFrame({"phash": [nd.as_hex(p) for p, _ in pairs], "phash_mirror": [nd.as_hex(m) for _, m in pairs]})


def measure(name: str, originals: list, others: list, copies_per_kind: int) -> None:
    train = fingerprints(originals)
    test_images, source = list(others), [-1] * len(others)
    kind_of = ["distinct"] * len(others)
    for k, (kind, make) in enumerate(KINDS.items()):
        for i in range(copies_per_kind):
            original = (k * copies_per_kind + i) % len(originals)
            test_images.append(make(originals[original]))
            source.append(original)
            kind_of.append(kind)
    test = fingerprints(test_images)
    matrix = nd.distances(train, test)
    source = np.array(source)
    planted = source >= 0
    copy_distance = matrix[source[planted], np.flatnonzero(planted)]
    print(f"\n{name}: {len(originals)} originals, {len(others)} distinct other images, "
          f"{copies_per_kind} copies of each kind")
    print("| kind | " + " | ".join(f"recall at {t}" for t in THRESHOLDS) + " |")
    print("|---|" + "---|" * len(THRESHOLDS))
    kinds = np.array(kind_of)[planted]
    for kind in KINDS:
        d = copy_distance[kinds == kind]
        print(f"| {kind} | " + " | ".join(f"{np.mean(d <= t):.2f}" for t in THRESHOLDS) + " |")
    rows = ["| found pairs: right / all (precision) | "]
    for t in THRESHOLDS:
        found = matrix <= t
        right = int(sum(found[source[j], j] for j in np.flatnonzero(planted)))
        total = int(found.sum())
        rows.append(f"{right} / {total} ({right / max(total, 1):.2f}) | ")
    print("".join(rows))
    distinct = matrix[:, ~planted]
    print("distinct pairs within: " + ", ".join(f"{t}: {int((distinct <= t).sum())} of {distinct.size}"
                                                 for t in THRESHOLDS))


def speed() -> None:
    rng = np.random.default_rng(0)
    images = [photo(rng, 256) for _ in range(200)]
    start = time.perf_counter()
    fingerprints(images)
    per_s = len(images) / (time.perf_counter() - start)
    values = rng.integers(0, 2**63, 20_000, dtype=np.int64).astype(np.uint64)
    frame = pd.DataFrame({"phash": [f"{v:016x}" for v in values], "phash_mirror": [f"{v ^ 1:016x}" for v in values]})
    start = time.perf_counter()
    nd.close_pairs(frame, None, 8)
    print(f"\nspeed: {per_s:.0f} decoded 256 px images/s fingerprinted on one thread; all pairs of 20,000 images "
          f"searched in {time.perf_counter() - start:.1f} s")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", default=None, help="the demo data set's folder (resources/demo)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    measure("photos", [photo(rng) for _ in range(400)], [photo(rng) for _ in range(400)], 100)
    if args.digits:
        root = Path(args.digits)
        train = [Image.open(p).convert("RGB") for p in sorted((root / "train").glob("*/*.png"))]
        test = [Image.open(p).convert("RGB") for p in sorted((root / "test").glob("*.png"))]
        measure("digits", train, test, 100)
    speed()


if __name__ == "__main__":
    main()
