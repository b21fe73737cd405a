"""The training augmentation chain, one table for both of its paths.

OPS holds every augmentation op once: its config key, the torchvision transform that the loader
path runs per image (presets.train_transform builds the chain from it), and its batched version,
which `train.augment_on: device` (the default on a GPU) runs on whole batches on the device.
Adding an op is one entry here plus its entry in the config schema.

The batched chain keeps the reference chain's ops, in the same order, with the same parameter
distributions (tests/test_augment.py checks each against torchvision's own draws); it is not
bit-identical to the per-image chain. How it is made cheap:
- Every random number is a function of (sample seed, draw number): an integer hash computed on the
  device for the whole batch at once (`uniforms`). So a sample's parameters depend on its seed
  alone, never on the batch it is in, the worker count or the process count, and they are the same
  on the CPU and on a GPU. Erasing noise comes from a generator seeded by the batch's seeds.
- Per-sample parameters are tensors, never Python values: no host synchronisation, one fixed set
  of kernels whatever the batch size (a CUDA graph can replay them).
- Consecutive geometric ops (flips, rotation, affine) are composed into one warp, with the fill of
  each op kept (a pixel that an op fills stays filled).
- An op with alternatives (ColorJitter's random order, RandAugment's pick) computes what the batch
  needs on the whole batch and selects per sample; a choice that leaves a sample unchanged is an
  exact identity (factor 1, identity matrix).
Pixel values stay float in [0, 255] until the float conversion after the resize.
"""

from __future__ import annotations

import functools
import logging
import math

import torch
import torch.nn.functional as nnf
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

log = logging.getLogger("imageclf.augment")

# --- random numbers: splitmix64 of (seed + (draw + 1) * golden ratio), top 24 bits as a float in [0, 1)


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


GOLDEN, MIX1, MIX2 = _int64(0x9E3779B97F4A7C15), _int64(0xBF58476D1CE4E5B9), _int64(0x94D049BB133111EB)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical shift of int64 (torch's >> is arithmetic): the sign bits masked off."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def uniforms(seeds: torch.Tensor, count: int, first: int = 0) -> torch.Tensor:
    """(B, count) float32 uniforms in [0, 1): draws first..first+count-1 of each sample's stream.
    int64 products wrap modulo 2**64 on every torch backend (checked against Python integers in
    the tests), so the draws are the same on every device."""
    draws = torch.arange(first + 1, first + count + 1, dtype=torch.int64, device=seeds.device)
    x = seeds.to(torch.int64).view(-1, 1) + draws * GOLDEN
    x = (x ^ _shift_right(x, 30)) * MIX1
    x = (x ^ _shift_right(x, 27)) * MIX2
    x = x ^ _shift_right(x, 31)
    return _shift_right(x, 40).to(torch.float32) * (1.0 / (1 << 24))


def between(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * u


@functools.lru_cache(maxsize=None)
def constant(values: tuple, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A small constant tensor on the device, made once: a copy made during a CUDA graph's capture
    would be replayed from host memory that no longer holds it."""
    return torch.tensor(values, dtype=dtype).to(device)


# --- geometry: output-to-input maps as (B, 3, 3) matrices in pixel coordinates centred on the image


def inverse_affine(angle, translate_x, translate_y, scale, shear_x, shear_y, center=(0.0, 0.0)) -> torch.Tensor:
    """torchvision's inverse affine matrix (rotation, scale and shear about `center`, then a
    translation) for per-sample tensors of degrees, pixels and factors."""
    rot, sx, sy = (torch.deg2rad(torch.as_tensor(a, dtype=torch.float32)) for a in (angle, shear_x, shear_y))
    rot, sx, sy = torch.broadcast_tensors(rot, sx, sy)
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -(a * torch.tan(sx) + torch.sin(rot))
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = torch.cos(rot) - c * torch.tan(sx)
    m00, m01, m10, m11 = d / scale, -b / scale, -c / scale, a / scale
    cx, cy = center
    tx, ty = cx + translate_x, cy + translate_y
    m02 = cx - m00 * tx - m01 * ty
    m12 = cy - m10 * tx - m11 * ty
    zeros, ones = torch.zeros_like(m00), torch.ones_like(m00)
    return torch.stack([m00, m01, m02, m10, m11, m12, zeros, zeros, ones], -1).view(-1, 3, 3)


def flip_matrix(flipped: torch.Tensor, axis: int) -> torch.Tensor:
    """Mirror about the centre (axis 0: x, 1: y) where `flipped`; exact at pixel centres."""
    sign = 1.0 - 2.0 * flipped.to(torch.float32)
    ones, zeros = torch.ones_like(sign), torch.zeros_like(sign)
    sx, sy = (sign, ones) if axis == 0 else (ones, sign)
    return torch.stack([sx, zeros, zeros, zeros, sy, zeros, zeros, zeros, ones], -1).view(-1, 3, 3)


def warp(images: torch.Tensor, maps: list[tuple[torch.Tensor, bool]]) -> torch.Tensor:
    """The images through consecutive geometric ops in one nearest-neighbour resampling (torchvision's
    default interpolation for rotation, affine and RandAugment). maps: each op's (output-to-input
    matrix, fills) in chain order; a pixel whose source lies outside the image at the input of
    a filling op is 0, as that op's fill makes it."""
    batch, _, height, width = images.shape
    device = images.device
    xs = torch.arange(width, device=device, dtype=torch.float32) - (width - 1) * 0.5
    ys = torch.arange(height, device=device, dtype=torch.float32) - (height - 1) * 0.5
    inside, suffix = None, None
    for matrix, fills in reversed(maps):  # suffix: the map from the chain's output to this op's input
        suffix = matrix if suffix is None else matrix @ suffix
        if fills:
            u = suffix[:, 0, 0, None, None] * xs + suffix[:, 0, 1, None, None] * ys[:, None] + suffix[:, 0, 2, None, None]
            v = suffix[:, 1, 0, None, None] * xs + suffix[:, 1, 1, None, None] * ys[:, None] + suffix[:, 1, 2, None, None]
            here = (u.abs() <= width * 0.5) & (v.abs() <= height * 0.5)
            inside = here if inside is None else inside & here
    u = suffix[:, 0, 0, None, None] * xs + suffix[:, 0, 1, None, None] * ys[:, None] + suffix[:, 0, 2, None, None]
    v = suffix[:, 1, 0, None, None] * xs + suffix[:, 1, 1, None, None] * ys[:, None] + suffix[:, 1, 2, None, None]
    grid = torch.stack((u * (2.0 / width), v * (2.0 / height)), -1)
    out = nnf.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out if inside is None else out * inside.unsqueeze(1)


# --- colour, on float batches in [0, 255]

GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def grayscale(images: torch.Tensor) -> torch.Tensor:
    weights = constant(GRAY, images.device, images.dtype)
    return torch.einsum("bchw,c->bhw", images, weights).unsqueeze(1)


BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2


def blend(images: torch.Tensor, kind: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per sample: images * factor + other * (1 - factor), clamped, where other is 0 (brightness),
    the mean grey (contrast) or the grey image (saturation), as torchvision's _blend. A factor of 1
    leaves a sample as it is."""
    gray = grayscale(images)
    kind = kind.view(-1, 1, 1, 1)
    other = torch.where(kind == SATURATION, gray, gray.mean(dim=(2, 3), keepdim=True) * (kind == CONTRAST))
    factor = factor.view(-1, 1, 1, 1).to(images.dtype)
    return torch.lerp(other, images, factor).clamp_(0, 255)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Hue + shift (mod 1) per sample, through HSV as torchvision's adjust_hue."""
    rgb = images * (1.0 / 255)
    red, green, blue = rgb.unbind(1)
    value = torch.maximum(torch.maximum(red, green), blue)
    spread = value - torch.minimum(torch.minimum(red, green), blue)
    grey = spread == 0
    saturation = spread / torch.where(grey, 1.0, value)
    safe = torch.where(grey, 1.0, spread)
    rc, gc, bc = (value - red) / safe, (value - green) / safe, (value - blue) / safe
    hue = torch.where(value == red, bc - gc, torch.where(value == green, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = (hue / 6.0 + 1.0 + shift.view(-1, 1, 1)).remainder(1.0)
    # back to RGB: channel k is v - v*s*clamp(min(n, 4 - n), 0, 1) with n = (k' + 6h) mod 6 (k' = 5, 3, 1)
    offsets = constant((5.0, 3.0, 1.0), images.device).view(1, 3, 1, 1)
    n = (offsets + hue.unsqueeze(1) * 6.0).remainder(6.0)
    ramp = torch.minimum(n, 4.0 - n).clamp(0.0, 1.0)
    value, saturation = value.unsqueeze(1), saturation.unsqueeze(1)
    return (value - value * saturation * ramp) * 255.0


def sharpen(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """adjust_sharpness per sample: the inner pixels blended with torchvision's 3x3 smoothing
    (border pixels kept); a factor of 1 leaves a sample as it is."""
    channels = images.shape[1]
    kernel = constant(((1 / 13, 1 / 13, 1 / 13), (1 / 13, 5 / 13, 1 / 13), (1 / 13, 1 / 13, 1 / 13)), images.device,
                      images.dtype).expand(channels, 1, 3, 3)
    smoothed = nnf.pad(nnf.conv2d(images, kernel, groups=channels), (1, 1, 1, 1))
    border = torch.ones_like(images[:1, :1])
    border[..., 1:-1, 1:-1] = 0
    smoothed = torch.where(border.bool(), images, smoothed)
    return torch.lerp(smoothed, images, factor.view(-1, 1, 1, 1).to(images.dtype)).clamp_(0, 255)


def autocontrast(images: torch.Tensor) -> torch.Tensor:
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    flat = high == low
    scale = 255.0 / torch.where(flat, 1.0, high - low)
    return torch.where(flat, images, ((images - low) * scale).clamp_(0, 255))


def equalize(images: torch.Tensor) -> torch.Tensor:
    return F.equalize(images.round().clamp_(0, 255).to(torch.uint8)).to(images.dtype)  # batched, no sync


# --- the ops: one class each, in chain order in OPS


class Op:
    """key: its config key. draws: uniforms per sample. after_resize: runs after Resize and the
    float conversion (on [0, 1] values) instead of before. Geometric ops define matrix() and
    `fills`; the others apply()."""

    key = ""
    draws = 0
    after_resize = False
    fills = False

    def __init__(self, config: dict):
        self.config = config

    def reference(self):
        """The torchvision transform of the loader path, per image."""
        raise NotImplementedError

    def params(self, u: torch.Tensor, height: int, width: int) -> dict:
        raise NotImplementedError

    matrix = None  # (params, height, width) -> (B, 3, 3), for geometric ops

    def apply(self, images: torch.Tensor, params: dict) -> torch.Tensor:
        raise NotImplementedError


class HorizontalFlip(Op):
    key, draws, axis = "horizontal_flip", 1, 0

    def reference(self):
        return v2.RandomHorizontalFlip(p=self.config["p"])

    def params(self, u, height, width):
        return {"flipped": u[:, 0] < self.config["p"]}

    def matrix(self, params, height, width):
        return flip_matrix(params["flipped"], self.axis)


class VerticalFlip(HorizontalFlip):
    key, axis = "vertical_flip", 1

    def reference(self):
        return v2.RandomVerticalFlip(p=self.config["p"])


class Rotation(Op):
    key, draws, fills = "rotation", 1, True

    def reference(self):
        return v2.RandomRotation(degrees=self.config["degrees"])

    def params(self, u, height, width):
        return {"angle": between(u[:, 0], -self.config["degrees"], self.config["degrees"])}

    def matrix(self, params, height, width):  # v2's rotate(angle) is affine(-angle)
        zeros = torch.zeros_like(params["angle"])
        return inverse_affine(-params["angle"], zeros, zeros, 1.0, zeros, zeros)


class Affine(Op):
    key, draws, fills = "affine", 4, True

    def reference(self):
        c = self.config
        return v2.RandomAffine(degrees=c["degrees"], translate=tuple(c["translate"]), scale=tuple(c["scale"]))

    def params(self, u, height, width):
        c = self.config
        max_dx, max_dy = c["translate"][0] * width, c["translate"][1] * height
        return {"angle": between(u[:, 0], -c["degrees"], c["degrees"]),
                "tx": torch.round(between(u[:, 1], -max_dx, max_dx)), "ty": torch.round(between(u[:, 2], -max_dy, max_dy)),
                "scale": between(u[:, 3], *c["scale"])}

    def matrix(self, params, height, width):
        zeros = torch.zeros_like(params["angle"])
        return inverse_affine(params["angle"], params["tx"], params["ty"], params["scale"], zeros, zeros)


class ColorJitter(Op):
    """Brightness, contrast, saturation and hue, each sample in its own random order. Run as: the
    blends before each sample's hue (three passes, identity where a sample has fewer), every
    sample's hue in one pass, the blends after it."""

    key, draws = "color_jitter", 8
    NAMES = ("brightness", "contrast", "saturation", "hue")

    def reference(self):
        return v2.ColorJitter(**{name: self.config[name] for name in self.NAMES})

    def ranges(self) -> list:
        c = self.config
        ranges = [(max(0.0, 1.0 - c[name]), 1.0 + c[name]) if c[name] > 0 else None for name in self.NAMES[:3]]
        return [*ranges, (-c["hue"], c["hue"]) if c["hue"] > 0 else None]

    def params(self, u, height, width):
        values = [between(u[:, k], *r) if r else torch.full_like(u[:, k], 0.0 if k == 3 else 1.0)
                  for k, r in enumerate(self.ranges())]
        return {"factors": torch.stack(values, 1), "order": u[:, 4:8].argsort(dim=1)}  # a uniform random order

    def apply(self, images, params):
        order, factors = params["order"], params["factors"]
        hue_at = (order == 3).to(torch.int64).argmax(dim=1, keepdim=True)
        passes = torch.arange(3, device=images.device).view(1, 3)
        after = hue_at + 1 + passes  # the positions after the hue, in order
        images = self.blends(images, order[:, :3], passes < hue_at, factors)
        if self.ranges()[3]:
            images = adjust_hue(images, factors[:, 3])
        return self.blends(images, order.gather(1, after.clamp(max=3)), after <= 3, factors)

    @staticmethod
    def blends(images, kinds, active, factors):
        """Three passes; in pass j a sample with `active` makes its blend kinds[:, j], the rest none."""
        for j in range(3):
            kind = torch.where(active[:, j], kinds[:, j], BRIGHTNESS)
            factor = factors.gather(1, kind.clamp(max=2).view(-1, 1)).squeeze(1)
            images = blend(images, kind, torch.where(active[:, j], factor, 1.0))
        return images


# RandAugment's ops in torchvision's order: (magnitudes over num_bins for height x width, signed)
RAND_AUGMENT_SPACE = {
    "Identity": (lambda bins, height, width: None, False),
    "ShearX": (lambda bins, height, width: torch.linspace(0.0, 0.3, bins), True),
    "ShearY": (lambda bins, height, width: torch.linspace(0.0, 0.3, bins), True),
    "TranslateX": (lambda bins, height, width: torch.linspace(0.0, 150.0 / 331.0 * width, bins), True),
    "TranslateY": (lambda bins, height, width: torch.linspace(0.0, 150.0 / 331.0 * height, bins), True),
    "Rotate": (lambda bins, height, width: torch.linspace(0.0, 30.0, bins), True),
    "Brightness": (lambda bins, height, width: torch.linspace(0.0, 0.9, bins), True),
    "Color": (lambda bins, height, width: torch.linspace(0.0, 0.9, bins), True),
    "Contrast": (lambda bins, height, width: torch.linspace(0.0, 0.9, bins), True),
    "Sharpness": (lambda bins, height, width: torch.linspace(0.0, 0.9, bins), True),
    "Posterize": (lambda bins, height, width: (8 - (torch.arange(bins) / ((bins - 1) / 4))).round().int(), False),
    "Solarize": (lambda bins, height, width: torch.linspace(1.0, 0.0, bins), False),
    "AutoContrast": (lambda bins, height, width: None, False),
    "Equalize": (lambda bins, height, width: None, False),
}
RAND_AUGMENT_NAMES = tuple(RAND_AUGMENT_SPACE)
NUM_MAGNITUDE_BINS = 31  # torchvision's default


class RandAugment(Op):
    """Per slot, each sample picks one of RAND_AUGMENT_NAMES (uniformly) and, for a signed op, a sign.
    One warp for every geometric pick (identity for the others), one blend for brightness, colour
    and contrast, one sharpening; posterize, solarize, autocontrast and equalize are selected."""

    key = "rand_augment"

    def __init__(self, config):
        super().__init__(config)
        self.draws = 2 * config["num_ops"]

    def reference(self):
        return v2.RandAugment(num_ops=self.config["num_ops"], magnitude=self.config["magnitude"])

    @functools.lru_cache(maxsize=None)  # a few (op, size) pairs per run, read every batch
    def magnitude(self, name: str, height: int, width: int) -> float:
        magnitudes = RAND_AUGMENT_SPACE[name][0](NUM_MAGNITUDE_BINS, height, width)
        return 0.0 if magnitudes is None else float(magnitudes[self.config["magnitude"]])

    def params(self, u, height, width):
        picks = (u[:, 0::2] * len(RAND_AUGMENT_NAMES)).to(torch.int64).clamp_(max=len(RAND_AUGMENT_NAMES) - 1)
        signed = constant(tuple(RAND_AUGMENT_SPACE[name][1] for name in RAND_AUGMENT_NAMES), u.device, torch.bool)
        sign = torch.where(signed[picks] & (u[:, 1::2] < 0.5), -1.0, 1.0)
        table = constant(tuple(self.magnitude(name, height, width) for name in RAND_AUGMENT_NAMES), u.device)
        return {"picks": picks, "magnitude": table[picks] * sign}

    def apply(self, images, params):
        height, width = images.shape[-2:]
        index = {name: k for k, name in enumerate(RAND_AUGMENT_NAMES)}
        for slot in range(self.config["num_ops"]):
            pick, magnitude = params["picks"][:, slot], params["magnitude"][:, slot]
            images = warp(images, [(self.slot_matrix(pick, magnitude, index, height, width), True)])
            kind = torch.where(pick == index["Contrast"], CONTRAST, torch.where(pick == index["Color"], SATURATION, BRIGHTNESS))
            is_blend = (pick == index["Brightness"]) | (pick == index["Color"]) | (pick == index["Contrast"])
            images = blend(images, kind, torch.where(is_blend, 1.0 + magnitude, 1.0))
            images = sharpen(images, torch.where(pick == index["Sharpness"], 1.0 + magnitude, 1.0))
            step = 2.0 ** (8 - int(self.magnitude("Posterize", height, width)))  # posterize keeps the top bits
            threshold = 255.0 * self.magnitude("Solarize", height, width)
            for name, changed in (("Posterize", lambda x: torch.floor(x / step) * step),
                                  ("Solarize", lambda x: torch.where(x >= threshold, 255.0 - x, x)),
                                  ("AutoContrast", autocontrast), ("Equalize", equalize)):
                chosen = (pick == index[name]).view(-1, 1, 1, 1)
                images = torch.where(chosen, changed(images), images)
        return images

    @staticmethod
    def slot_matrix(pick, magnitude, index, height, width) -> torch.Tensor:
        """Each sample's geometric pick as an output-to-input matrix (identity for the rest)."""
        zeros = torch.zeros_like(magnitude)
        shear = torch.rad2deg(torch.atan(magnitude))
        is_x, is_y = pick == index["ShearX"], pick == index["ShearY"]
        sheared = inverse_affine(zeros, zeros, zeros, 1.0, torch.where(is_x, shear, 0.0), torch.where(is_y, shear, 0.0),
                                 center=(-0.5 * width, -0.5 * height))  # RandAugment shears about the top-left corner
        shift = magnitude.trunc()
        moved = inverse_affine(zeros, torch.where(pick == index["TranslateX"], shift, 0.0),
                               torch.where(pick == index["TranslateY"], shift, 0.0), 1.0, zeros, zeros)
        rotated = inverse_affine(-torch.where(pick == index["Rotate"], magnitude, 0.0), zeros, zeros, 1.0, zeros, zeros)
        # at most one of the three differs from the identity, so their product is that one
        return sheared @ moved @ rotated


class RandomErasing(Op):
    """torchvision's ten tries at a box of random area and aspect ratio, the first that fits."""

    key, draws, after_resize = "random_erasing", 1 + 4 * 10, True
    TRIES = 10

    def reference(self):
        c = self.config
        return v2.RandomErasing(p=c["p"], scale=tuple(c["scale"]), ratio=tuple(c["ratio"]), value=c["value"])

    def params(self, u, height, width):
        c = self.config
        tries = u[:, 1:].reshape(-1, self.TRIES, 4)
        area = height * width * between(tries[..., 0], *c["scale"])
        aspect = torch.exp(between(tries[..., 1], math.log(c["ratio"][0]), math.log(c["ratio"][1])))
        h, w = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
        fits = (h < height) & (w < width)
        first = fits.to(torch.int64).argmax(dim=1, keepdim=True)  # the first try that fits
        h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
        top = torch.floor(tries[..., 2].gather(1, first).squeeze(1) * (height - h + 1))
        left = torch.floor(tries[..., 3].gather(1, first).squeeze(1) * (width - w + 1))
        erased = (u[:, 0] < c["p"]) & fits.any(dim=1)
        return {"erased": erased, "top": top, "left": left, "height": h, "width": w}

    def apply(self, images, params, noise=None):
        rows = torch.arange(images.shape[-2], device=images.device, dtype=torch.float32).view(1, -1, 1)
        cols = torch.arange(images.shape[-1], device=images.device, dtype=torch.float32).view(1, 1, -1)
        view = {name: value.view(-1, 1, 1) for name, value in params.items()}
        box = ((rows >= view["top"]) & (rows < view["top"] + view["height"]) & (cols >= view["left"])
               & (cols < view["left"] + view["width"]) & view["erased"])
        value = noise if self.config["value"] == "random" else torch.full_like(images[:1], float(self.config["value"]))
        return torch.where(box.unsqueeze(1), value, images)


OPS = (HorizontalFlip, VerticalFlip, Rotation, Affine, ColorJitter, RandAugment, RandomErasing)
OP_BY_KEY = {op.key: op for op in OPS}


def enabled_ops(augment: dict) -> list[Op]:
    """The config's switched-on ops, built, in chain order."""
    return [op(augment[op.key]) for op in OPS if augment.get(op.key, {}).get("enabled", False)]


def normalization(augment: dict) -> tuple[list, list]:
    norm = augment["normalize"]
    return norm["mean"], norm["std"]


class BatchAugment:
    """Callable: (uint8 images (B, 3, S, S) on the device, their int64 sample seeds (B,)) -> the
    normalized float batch (B, 3, size, size). Everything runs on the images' device."""

    def __init__(self, augment: dict, image_size: int):
        self.ops = enabled_ops(augment)
        self.image_size = image_size
        self.mean, self.std = normalization(augment)
        self.draws = sum(op.draws for op in self.ops)

    def collate(self, samples: list) -> tuple:
        """collate_fn for (uint8 image, target, seed) samples: (images, targets, seeds)."""
        images = torch.stack([image for image, _, _ in samples])
        targets = torch.tensor([target for _, target, _ in samples])
        return images, targets, torch.tensor([seed for _, _, seed in samples], dtype=torch.int64)

    def draw(self, seeds: torch.Tensor, height: int, width: int) -> list[dict]:
        """Every op's parameters for these samples, as tensors on the seeds' device."""
        u, first, drawn = uniforms(seeds, self.draws), 0, []
        for op in self.ops:
            size = (self.image_size, self.image_size) if op.after_resize else (height, width)
            drawn.append(op.params(u[:, first : first + op.draws], *size))
            first += op.draws
        return drawn

    def noise(self, seeds: torch.Tensor, images: torch.Tensor) -> torch.Tensor | None:
        """Random erasing's N(0, 1) values, from a generator seeded by the batch's seeds (on the CPU,
        where the seeds are: reading them from a GPU would wait for it)."""
        if not any(isinstance(op, RandomErasing) and op.config["value"] == "random" for op in self.ops):
            return None
        seed = int(seeds.sum()) % (2**63 - 1) if seeds.device.type == "cpu" else 0
        generator = torch.Generator(images.device).manual_seed(seed)
        shape = (images.shape[0], images.shape[1], self.image_size, self.image_size)
        return torch.randn(shape, generator=generator, device=images.device)

    def __call__(self, images: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """images: uint8 on the device; seeds: on the CPU, where the loader made them."""
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError(f"batched augmentation takes a uint8 (B, C, H, W) batch, got {images.dtype} "
                            f"{tuple(images.shape)}")
        return self.run(images, seeds.to(images.device, non_blocking=True), self.noise(seeds, images))

    def run(self, images: torch.Tensor, seeds: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """The chain, on the device alone: no host sync and no host copy (a CUDA graph can replay it)."""
        height, width = images.shape[-2:]
        drawn = self.draw(seeds, height, width)
        x, maps, resized = images.float(), [], False
        for op, params in zip(self.ops, drawn):
            if op.matrix is not None:  # geometric: composed with its neighbours into one warp
                maps.append((op.matrix(params, height, width), op.fills))
                continue
            if maps:
                x, maps = warp(x, maps), []
            if op.after_resize and not resized:
                x, resized = self.resize(x), True
            x = op.apply(x, params, noise) if isinstance(op, RandomErasing) else op.apply(x, params)
        if maps:
            x = warp(x, maps)
        if not resized:
            x = self.resize(x)
        return self.normalize(x)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """Resize((size, size)) with antialiasing, then the float conversion's scale to [0, 1]."""
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.resize(x, [self.image_size, self.image_size], antialias=True).clamp_(0, 255)
        return x.mul(1.0 / 255)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = constant(tuple(self.mean), x.device).view(1, -1, 1, 1)
        std = constant(tuple(self.std), x.device).view(1, -1, 1, 1)
        return (x - mean) / std


class ReplayedAugment:
    """A BatchAugment on a GPU, replayed as one CUDA graph per batch shape. The chain is a few
    hundred small kernels, and launching them from Python costs more than running them (about 20 ms
    a batch on an H200: docs/performance.md); a replay is one launch. Same kernels, same results.
    A shape whose capture fails runs eagerly, with one warning."""

    def __init__(self, augment: BatchAugment):
        self.augment, self.graphs = augment, {}
        self.image_size = augment.image_size

    def __call__(self, images: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        key = tuple(images.shape)
        if key not in self.graphs:
            self.graphs[key] = self.capture(images, seeds)
        if self.graphs[key] is None:
            return self.augment(images, seeds)
        graph, static = self.graphs[key]
        static["images"].copy_(images, non_blocking=True)
        static["seeds"].copy_(seeds, non_blocking=True)
        if static["noise"] is not None:
            static["noise"].copy_(self.augment.noise(seeds, images))
        graph.replay()
        return static["out"].clone()  # the next replay overwrites the graph's output

    def capture(self, images: torch.Tensor, seeds: torch.Tensor):
        device = images.device
        noise = self.augment.noise(seeds, images)
        static = {"images": images.clone(), "seeds": seeds.to(device), "noise": None if noise is None else noise.clone()}
        try:
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):  # warm-up: the allocator, the constants, cuDNN's choices
                for _ in range(2):
                    self.augment.run(static["images"], static["seeds"], static["noise"])
            torch.cuda.current_stream(device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # the loader's threads call CUDA too
                static["out"] = self.augment.run(static["images"], static["seeds"], static["noise"])
            return graph, static
        except RuntimeError as error:
            log.warning("batched augmentation of %s batches runs without a CUDA graph: %s", tuple(images.shape),
                        str(error).splitlines()[0])
            return None


def on_device(augment: BatchAugment, device: torch.device):
    """The chain as the training loop runs it on `device`: replayed as CUDA graphs on a GPU."""
    return ReplayedAugment(augment) if device.type == "cuda" else augment
