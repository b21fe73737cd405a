"""Reading an image as a person sees it. The index, the cache, training, prediction and the plots
all read images through `open_image`, so every stage sees the same pixels.

- EXIF orientation is applied (a phone photo stored sideways is used upright).
- 16-bit images are scaled to 8 bits (v >> 8), 32-bit integer and float images by their range
  (see `high_bit_depth_to_8bit`): never clipped, so a 16-bit scan does not come out white.
- Palette, grey, CMYK and other modes become RGB; transparency is composited over white, as an
  image viewer on a white page shows it. Animated files give their first frame.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..core.errors import DataError

# Pillow's own decompression-bomb check warns, or fails with a message that names no file: it is
# switched off here, and open_image checks `max_pixels` (data.max_image_pixels) itself.
Image.MAX_IMAGE_PIXELS = None
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's default limit (about 0.25 GB of RGB pixels)

# Files that are not data, skipped wherever they are (compared lower-case). Names that start with
# a dot (.DS_Store, ._photo.jpg, .ipynb_checkpoints) are skipped too.
JUNK_NAMES = {"thumbs.db", "ehthumbs.db", "desktop.ini", "__macosx", "icon\r"}
EXIF_ORIENTATION = 0x0112


def is_junk(name: str) -> bool:
    return name.startswith(".") or name.lower() in JUNK_NAMES


@functools.lru_cache(maxsize=1)
def image_extensions() -> frozenset[str]:
    """Every file extension (lower-case, with the dot) of a format that Pillow can decode here
    (formats with only a stub reader, such as GRIB or HDF5, are not counted)."""
    Image.init()
    readable = {fmt for fmt, (factory, _) in Image.OPEN.items()
                if not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))}
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in readable)


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in image_extensions()


def high_bit_depth_to_8bit(image: Image.Image) -> Image.Image:
    """An 'L' image from a 16-bit, 32-bit integer or float image.

    16-bit modes (I;16*): v >> 8. Mode I (Pillow's 32-bit integers; 16-bit PNGs and TIFFs often
    open as I): values within 0..65535 are 16-bit data, v >> 8; others are scaled from their own
    minimum..maximum. Mode F (float): values within 0..1 are scaled by 255; others from their own
    minimum..maximum."""
    values = np.asarray(image)
    if image.mode.startswith("I;16"):
        return Image.fromarray((values.astype(np.uint16) >> 8).astype(np.uint8), "L")
    values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if image.mode == "I" and low >= 0 and high <= 65535:
        scaled = values / 256.0
    elif image.mode == "F" and low >= 0 and high <= 1:
        scaled = values * 255.0
    else:
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.floor(np.clip(scaled, 0, 255)).astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as a viewer shows it on a white page."""
    if image.mode.startswith("I") or image.mode == "F":
        image = high_bit_depth_to_8bit(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def open_image(path, max_pixels: int | None = None) -> Image.Image:
    """The RGB image a person sees in `path`. max_pixels: refuse larger images (None: no limit)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise DataError(
                    f"{path}: {width} x {height} = {width * height:,} pixels, above the limit of "
                    f"{max_pixels:,} (data.max_image_pixels; raise it if such images are really yours)")
            image.load()
            if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
                image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        raise DataError(f"{path}: not a readable image ({error})") from error
