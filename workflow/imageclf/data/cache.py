"""Decoded-image cache: every image decoded and resized once, stored as uint8 in one .npy file.

Later epochs then read pixels from a memory map instead of decoding JPEGs, and the expensive
ops (ColorJitter's hue most of all) run on a small image instead of a full-size one.

Three layouts, chosen so that results change as little as possible:
- `exact`: the image already at (image_size, image_size), i.e. what Resize((size, size)) of the
  reference chain makes. Used for val/test (evaluation does nothing else before the resize), and for
  train when no op before the resize is switched on; cached and uncached tensors are then identical.
- `m<margin>` (e.g. m1.15): the short side at margin x image_size, aspect kept (never enlarged),
  for train with geometric/colour ops on. They then run before the final resize as in the reference,
  but on this smaller image: the one difference from the reference chain (docs/performance.md).
- `s<margin>` (e.g. s1.15): a square of ceil(margin x image_size) pixels a side, for train with
  `train.augment_on: device`, which augments whole batches and so needs one size for all images.
  With `auto` the layout is `m` (the job learns only on its node whether it has a GPU): the
  workers then make each square from it, a small resize of a uint8 image.
"""

from __future__ import annotations

import argparse
import copy
import functools
import logging
import math
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
from PIL import Image

from ..core import tables
from ..core.config import augment_op_keys, op_enabled
from ..core.errors import DataError
from ..core.io_utils import atomic_path, file_sha256
from ..core.logs import add_log_argument, setup_logging
from .images import open_image

log = logging.getLogger("imageclf.cache")

# What this stage writes, as a version: raised by a change that alters its outputs, and by nothing else
# (core/stages.py). Raising it reruns this stage and everything downstream, on every project.
RESULTS_VERSION = 1

EXACT = "exact"


def cache_mode(augment: dict, split: str, margin: float, augment_on: str = "loader") -> str:
    """Torch-free on purpose: the Snakefile calls it while building the DAG."""
    if split != "train" or not any(op_enabled(augment, key) for key in augment_op_keys()):
        return EXACT
    return f"{'s' if augment_on == 'device' else 'm'}{margin:g}"


def batch_input_size(augment: dict, image_size: int, margin: float) -> int:
    """Side of the square images that batched (device) augmentation starts from."""
    mode = cache_mode(augment, "train", margin, "device")
    return cached_size(image_size, image_size, mode, image_size)[0]


def cached_size(width: int, height: int, mode: str, image_size: int) -> tuple[int, int]:
    """(height, width) an image of this size is stored at."""
    if mode == EXACT:
        return image_size, image_size
    short = math.ceil(float(mode[1:]) * image_size)
    if mode.startswith("s"):
        return short, short
    if min(width, height) <= short:
        return height, width
    scale = short / min(width, height)
    return max(short, round(height * scale)), max(short, round(width * scale))


def resize_for_cache(image: Image.Image, mode: str, image_size: int) -> np.ndarray:
    height, width = cached_size(image.width, image.height, mode, image_size)
    if (height, width) != (image.height, image.width):
        # PIL's bilinear resize, which is what torchvision's Resize(antialias=True) runs on a PIL image
        # (the same pixels, tested), without importing torch: that takes seconds on a GPU host
        image = image.resize((width, height), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


CHUNK = 64  # images per task of the cache's worker processes


def fill_chunk(pixels_path: str, paths: list[str], shapes: list, offsets, mode: str, image_size: int,
               chunk: range) -> int:
    """Decode, resize and write images `chunk` into the cache file (a process of build_cache's pool)."""
    pixels = np.load(pixels_path, mmap_mode="r+")
    for i in chunk:
        array = resize_for_cache(open_image(paths[i]), mode, image_size)
        if array.shape != (*shapes[i], 3):
            raise DataError(f"{paths[i]}: size differs from the index; re-run the index")
        pixels[offsets[i] : offsets[i] + array.size] = array.reshape(-1)
    pixels.flush()
    return len(chunk)


def build_cache(index_csv, pixels_out, meta_out, mode: str, image_size: int, threads: int = 1) -> pd.DataFrame:
    """Two passes: shapes from the index's width/height, then the pixels into one memory map."""
    frame = tables.read_index(index_csv)
    shapes = [cached_size(w, h, mode, image_size) for w, h in zip(frame["width"], frame["height"])]
    sizes = np.array([h * w * 3 for h, w in shapes], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    total = int(sizes.sum())
    log.info("caching %d images (%s, %d px) into %.1f MB", len(frame), mode, image_size, total / 2**20)

    with atomic_path(pixels_out) as tmp:
        pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(max(total, 1),))
        del pixels  # the file exists at its full size; each process maps it for itself
        paths = frame["path"].tolist()
        chunks = [range(start, min(start + CHUNK, len(paths))) for start in range(0, len(paths), CHUNK)]
        work = functools.partial(fill_chunk, str(tmp), paths, shapes, offsets, mode, image_size)
        if threads > 1 and len(chunks) > 1:
            # processes, not threads: decoding and resizing hold the GIL for part of each image, and
            # threads made 16 cores cache 340 images/s on a GPU host (docs/performance.md)
            with ProcessPoolExecutor(max_workers=threads) as pool:
                list(pool.map(work, chunks))
        else:
            for chunk in chunks:
                work(chunk)
    meta = pd.DataFrame({
        "path": frame["path"], "offset": offsets, "height": [h for h, _ in shapes],
        "width": [w for _, w in shapes],
    }).assign(mode=mode, image_size=image_size, index_sha256=file_sha256(index_csv))
    tables.write_cache_meta(meta_out, meta)
    return meta


class CachedImages:
    """Read-only access to a cache; the memory map opens lazily in each DataLoader worker."""

    def __init__(self, pixels_path, meta_path, index_csv):
        self.pixels_path = str(pixels_path)
        meta = tables.read_cache_meta(meta_path)
        index = tables.read_index(index_csv)
        if len(meta) and meta["index_sha256"].iloc[0] != file_sha256(index_csv):
            raise DataError(f"{meta_path}: made from another version of {index_csv}; re-run the cache rule")
        if meta["path"].tolist() != index["path"].tolist():
            raise DataError(f"{meta_path}: does not list the images of {index_csv}; re-run the cache rule")
        self.offsets = meta["offset"].to_numpy()
        self.shapes = list(zip(meta["height"], meta["width"]))
        self._pixels = None

    def subset(self, rows) -> CachedImages:
        """The same cache, seen through these rows of its index only (data.exclude)."""
        view = copy.copy(self)
        view.offsets = self.offsets[rows]
        view.shapes = [self.shapes[i] for i in rows]
        view._pixels = None
        return view

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_pixels"] = None  # never pickle the mapped array into a worker
        return state

    def array(self, i: int) -> np.ndarray:
        """Image i as a (height, width, 3) uint8 copy of the mapped pixels."""
        if self._pixels is None:
            self._pixels = np.load(self.pixels_path, mmap_mode="r")
        height, width = self.shapes[i]
        start = int(self.offsets[i])
        return np.array(self._pixels[start : start + height * width * 3]).reshape(height, width, 3)

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(self.array(i), "RGB")


def open_cache(paths, index_csv) -> CachedImages | None:
    """paths: (pixels.npy, meta.csv) of the cache of the split indexed in `index_csv`, or None to
    decode from disk."""
    if not paths:
        return None
    return CachedImages(paths[0], paths[1], index_csv)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="imageclf cache", description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True, help="the split's index CSV")
    parser.add_argument("--pixels-out", required=True)
    parser.add_argument("--meta-out", required=True)
    parser.add_argument("--mode", required=True, help="exact, m<margin> or s<margin>, e.g. m1.15")
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    add_log_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_file)
    build_cache(args.index, args.pixels_out, args.meta_out, args.mode, args.image_size, args.threads)
