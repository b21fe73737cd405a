"""The training augmentation chain, one table for both of its paths.

OPS holds every augmentation op once: its config key, the torchvision transform that the loader
path runs per image (presets.train_transform builds the chain from it), and its batched version,
which `train.augment_on: device` (the default on a GPU) runs on whole batches on the device.
Adding an op is one entry here plus its entry in the config schema.

The batched chain keeps the reference chain's ops, in the same order, with the same parameter
distributions (tests/test_augment.py checks each against torchvision's own draws); it is not
bit-identical to the per-image chain. How it is made cheap:
- Every random number is a function of (sample seed, draw number): an integer hash (`uniforms`).
  So a sample's parameters depend on its seed alone, never on the batch it is in, the worker
  count or the process count. Erasing noise comes from a generator seeded by the batch's seeds.
- The parameters are drawn and prepared on the CPU, in the loader's workers (BatchAugment.plan,
  called by its collate): the device gets a Plan of small tensors and runs image work alone,
  without a host synchronisation.
- Consecutive geometric ops (flips, rotation, affine) are composed into one warp, with the fill of
  each op kept (a pixel that an op fills stays filled).
- ColorJitter's random order runs as blend passes on contiguous slices of the batch, sorted by
  where each sample's hue comes. RandAugment's picks are known on the CPU, so each of its groups
  of ops runs on the samples that picked it alone: a slot costs a gather, each sample's one op
  and a scatter, not every op for every sample.
Pixel values stay float in [0, 255] until the float conversion after the resize.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as nnf
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

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
    """A small constant tensor on the device, made once (not one host-to-device copy a batch)."""
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


def grid_theta(matrix: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A pixel-coordinate map as affine_grid's (B, 2, 3) theta, whose coordinates run from -1 to 1
    across each side: S M S^-1 with S = diag(2 / width, 2 / height, 1)."""
    scale = torch.tensor([2.0 / width, 2.0 / height, 1.0], dtype=torch.float64, device=matrix.device)
    theta = scale.view(3, 1) * matrix.to(torch.float64) / scale.view(1, 3)
    return theta[:, :2].to(torch.float32)


def compose(maps: list[tuple[torch.Tensor, bool]], height: int, width: int) -> dict:
    """Consecutive geometric ops, each its (output-to-input matrix, fills) in chain order, as one
    warp: {"theta": the chain's output to its input, "checks": the maps from the output to the
    input of each filling op whose fill the final resampling's zero padding does not already
    make}. The padding is the first op's own check; a later filling op needs one of its own
    unless every op before it maps the image onto itself (a flip: the ops that do not fill)."""
    suffix, checks = None, []
    for k in reversed(range(len(maps))):
        matrix, fills = maps[k]
        suffix = matrix if suffix is None else matrix @ suffix
        if fills and any(earlier_fills for _, earlier_fills in maps[:k]):
            checks.append(grid_theta(suffix, height, width))
    return {"theta": grid_theta(suffix, height, width), "checks": checks}


def resample(images: torch.Tensor, warp: dict) -> torch.Tensor:
    """One nearest-neighbour resampling through compose()'s warp (torchvision's default
    interpolation for rotation, affine and RandAugment); a pixel whose source lies outside the
    image at a filling op's input is 0, as that op's fill makes it. The grid is computed in the
    images' dtype (float16 on a GPU)."""
    size = list(images.shape)
    grid = nnf.affine_grid(warp["theta"].to(images.dtype), size, align_corners=False)
    for theta in warp["checks"]:
        outside = nnf.affine_grid(theta.to(images.dtype), size, align_corners=False).abs().amax(-1, keepdim=True) > 1
        grid = grid.masked_fill(outside, 2.0)  # beyond the edge: the zero padding fills it
    if images.dtype == torch.float16 and images.device.type == "cpu":  # torch's CPU kernel crashes on float16 batches
        return nnf.grid_sample(images.float(), grid.float(), mode="nearest", padding_mode="zeros",
                               align_corners=False).half()
    return nnf.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def warp(images: torch.Tensor, maps: list[tuple[torch.Tensor, bool]]) -> torch.Tensor:
    """The images through consecutive geometric ops ((matrix, fills) in chain order) in one warp."""
    return resample(images, compose(maps, *images.shape[-2:]))


# --- colour, on float batches in [0, 255]

GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma, with torchvision's arithmetic: three kernels on single channels (a
    convolution would have cuDNN choose an algorithm per batch size, a matrix product copies)."""
    red, green, blue = images.unbind(1)
    return red.mul(GRAY[0]).add_(green, alpha=GRAY[1]).add_(blue, alpha=GRAY[2]).unsqueeze(1)


BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2


def blend_weights(kind: torch.Tensor, factor: torch.Tensor) -> dict:
    """A blend's per-sample parameters from its kind (BRIGHTNESS, CONTRAST or SATURATION) and
    factor: what to blend towards, as weights of the grey image and of its mean."""
    grey, mean = (kind == SATURATION).to(torch.float32), (kind == CONTRAST).to(torch.float32)
    return {"factor": factor.to(torch.float32), "grey": grey, "mean": mean, "needs_grey": bool((grey + mean).any())}


def mix_grey(images: torch.Tensor, weights: dict, out: torch.Tensor | None = None) -> torch.Tensor:
    """Per sample: images * factor + other * (1 - factor), clamped, where other is 0 (brightness),
    the mean grey (contrast) or the grey image (saturation), as torchvision's _blend
    (blend_weights says which). A factor of 1 leaves a sample as it is. out=images works in place."""
    factor = weights["factor"].view(-1, 1, 1, 1).to(images.dtype)
    if not weights["needs_grey"]:  # brightness alone: no grey image to make, the same lerp towards 0
        return torch.lerp(torch.zeros_like(factor), images, factor, out=out).clamp_(0, 255)
    gray = grayscale(images)
    mean = gray.mean(dim=(2, 3), keepdim=True) * weights["mean"].view(-1, 1, 1, 1).to(images.dtype)
    other = torch.addcmul(mean, gray, weights["grey"].view(-1, 1, 1, 1).to(images.dtype))
    return torch.lerp(other, images, factor, out=out).clamp_(0, 255)


def blend(images: torch.Tensor, kind: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """mix_grey for each sample's kind and factor."""
    return mix_grey(images, blend_weights(kind, factor))


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Hue + shift (mod 1) per sample, as torchvision's adjust_hue through HSV, on [0, 255] values.
    The value (the max) and the spread (max - min) stay; channel k comes back as
    value - spread * clamp(min(n, 4 - n), 0, 1) with n = (k' + 6 hue) mod 6 (k' = 5, 3, 1), which
    is torchvision's v - v s ramp, since v s is the spread."""
    red, green, blue = images.unbind(1)
    value = torch.maximum(torch.maximum(red, green), blue)
    spread = value - torch.minimum(torch.minimum(red, green), blue)
    inverse = 1.0 / torch.where(spread == 0, 1.0, spread)
    # the hue in sixths of a turn, by which channel is the max (red before green before blue)
    sixths = torch.where(value == red, (green - blue) * inverse,
                         torch.where(value == green, (blue - red) * inverse + 2.0, (red - green) * inverse + 4.0))
    sixths = (sixths + (6.0 + 6.0 * shift.view(-1, 1, 1).to(images.dtype))).remainder_(6.0)
    offsets = constant((5.0, 3.0, 1.0), images.device, images.dtype).view(1, 3, 1, 1)
    n = (sixths.unsqueeze(1) + offsets).remainder_(6.0)
    ramp = torch.minimum(n, 4.0 - n).clamp_(0.0, 1.0)
    return torch.addcmul(value.unsqueeze(1), spread.unsqueeze(1), ramp, value=-1.0)


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
    """Each channel stretched to [0, 255]; a channel whose range is under 1/256 of a level is left
    as it is (flat, as torchvision's kernel treats an equal min and max): in float16 255 over a
    smaller range is infinite, and 0 times it NaN."""
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    flat = (high - low) < 1.0 / 256
    scale = 255.0 / torch.where(flat, 1.0, high - low)
    return torch.where(flat, images, ((images - low) * scale).clamp_(0, 255))


def equalize(images: torch.Tensor) -> torch.Tensor:
    return F.equalize(images.round().clamp_(0, 255).to(torch.uint8)).to(images.dtype)  # batched, no sync


# --- the ops: one class each, in chain order in OPS


class Op:
    """key: its config key. draws: uniforms per sample. after_resize: runs after Resize and the
    float conversion (on [0, 1] values) instead of before. Geometric ops define matrix() and
    `fills` (only the flips, which map the image onto itself, do not fill); the others prepare()
    and apply(). params() and prepare() run on the CPU, in the loader's workers: the device runs
    image work alone."""

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
        """Each sample's parameters from its uniforms u (B, draws)."""
        raise NotImplementedError

    matrix = None  # (params, height, width) -> (B, 3, 3), for geometric ops

    def prepare(self, params: dict, height: int, width: int, seeds: torch.Tensor | None = None) -> dict:
        """What apply() takes: tensors, Python numbers and flags, made from params() on the CPU
        (seeds: the batch's sample seeds, for what is drawn per batch)."""
        return params

    def apply(self, images: torch.Tensor, prepared: dict) -> torch.Tensor:
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
    batch sorted by where each sample's hue comes, so the samples that make a blend in a given
    pass lie side by side; three blend passes before the hue, each on its slice, every sample's
    hue in one pass, three passes after it; then the batch back in its order."""

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

    def prepare(self, params, height, width, seeds=None):
        """The batch's order (by the hue's position) and, per blend pass, the (start, stop) of the
        samples that blend in it, with their blend_weights; passes that change nothing are left out."""
        hue_at = (params["order"] == 3).to(torch.int64).argmax(dim=1)
        batch = torch.argsort(hue_at, stable=True)
        order, factors, hue_at = params["order"][batch], params["factors"][batch], hue_at[batch]

        def blend_pass(start: int, stop: int, kinds: torch.Tensor) -> list:
            factor = factors[start:stop].gather(1, kinds.view(-1, 1)).squeeze(1)
            return [(start, stop, blend_weights(kinds, factor))] if bool((factor != 1.0).any()) else []

        before, after = [], []
        for j in range(3):  # pass j before the hue: the samples whose hue comes later; after it: earlier
            start = int((hue_at <= j).sum())
            before += blend_pass(start, len(batch), order[start:, j])
            stop = int((hue_at <= 2 - j).sum())
            after += blend_pass(0, stop, order[:stop].gather(1, hue_at[:stop].view(-1, 1) + 1 + j).squeeze(1))
        return {"batch": batch, "before": before, "after": after, "hue": factors[:, 3] if self.ranges()[3] else None}

    def apply(self, images, prepared):
        x = images.index_select(0, prepared["batch"])
        for start, stop, weights in prepared["before"]:
            mix_grey(x[start:stop], weights, out=x[start:stop])
        if prepared["hue"] is not None:
            x = adjust_hue(x, prepared["hue"])
        for start, stop, weights in prepared["after"]:
            mix_grey(x[start:stop], weights, out=x[start:stop])
        return torch.empty_like(x).index_copy_(0, prepared["batch"], x)


# RandAugment's ops in torchvision's order: (magnitudes over num_bins for height x width, signed,
# the group the batched chain runs it in: the samples of one group go through one kernel sequence)
RAND_AUGMENT_SPACE = {
    "Identity": (lambda bins, height, width: None, False, None),
    "ShearX": (lambda bins, height, width: torch.linspace(0.0, 0.3, bins), True, "warp"),
    "ShearY": (lambda bins, height, width: torch.linspace(0.0, 0.3, bins), True, "warp"),
    "TranslateX": (lambda bins, height, width: torch.linspace(0.0, 150.0 / 331.0 * width, bins), True, "warp"),
    "TranslateY": (lambda bins, height, width: torch.linspace(0.0, 150.0 / 331.0 * height, bins), True, "warp"),
    "Rotate": (lambda bins, height, width: torch.linspace(0.0, 30.0, bins), True, "warp"),
    "Brightness": (lambda bins, height, width: torch.linspace(0.0, 0.9, bins), True, "blend"),
    "Color": (lambda bins, height, width: torch.linspace(0.0, 0.9, bins), True, "blend"),
    "Contrast": (lambda bins, height, width: torch.linspace(0.0, 0.9, bins), True, "blend"),
    "Sharpness": (lambda bins, height, width: torch.linspace(0.0, 0.9, bins), True, "sharpen"),
    "Posterize": (lambda bins, height, width: (8 - (torch.arange(bins) / ((bins - 1) / 4))).round().int(), False,
                  "posterize"),
    "Solarize": (lambda bins, height, width: torch.linspace(1.0, 0.0, bins), False, "solarize"),
    "AutoContrast": (lambda bins, height, width: None, False, "autocontrast"),
    "Equalize": (lambda bins, height, width: None, False, "equalize"),
}
RAND_AUGMENT_NAMES = tuple(RAND_AUGMENT_SPACE)
NUM_MAGNITUDE_BINS = 31  # torchvision's default
GROUPS = tuple(dict.fromkeys(group for _, _, group in RAND_AUGMENT_SPACE.values() if group))
# each pick's group as its position in GROUPS (-1: Identity, which changes nothing)
GROUP_RANK = torch.tensor([GROUPS.index(group) if group else -1 for _, _, group in RAND_AUGMENT_SPACE.values()])


class RandAugment(Op):
    """Per slot, each sample picks one of RAND_AUGMENT_NAMES (uniformly) and, for a signed op, a
    sign. The picks are known on the CPU, so each slot runs each group of GROUPS on
    its own samples alone: the slot's changed samples are gathered (sorted by group), each group's
    kernels run on its slice, and the samples go back in one scatter. A slot costs a few passes
    over the batch (float32 at batch 64: about 6), whatever the number of ops it picks from.
    apply() changes the images it is given."""

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

    def prepare(self, params, height, width, seeds=None):
        """Per slot: the changed samples sorted by group ("index"), and each group's (name, start,
        stop, parameters) over that order."""
        index = {name: k for k, name in enumerate(RAND_AUGMENT_NAMES)}
        slots = []
        for slot in range(self.config["num_ops"]):
            pick, magnitude = params["picks"][:, slot], params["magnitude"][:, slot]
            group_of = GROUP_RANK[pick]
            order = torch.argsort(group_of, stable=True)
            order = order[group_of[order] >= 0]  # the identity picks stay where they are
            counts = torch.bincount(group_of[order], minlength=len(GROUPS)).tolist()
            groups, start = [], 0
            for name, count in zip(GROUPS, counts):
                if count:
                    members = order[start : start + count]
                    groups.append((name, start, start + count,
                                   self.group_params(name, pick[members], magnitude[members], index, height, width)))
                start += count
            slots.append({"index": order, "groups": groups})
        return {"slots": slots}

    def group_params(self, name, pick, magnitude, index, height, width):
        if name == "warp":
            return compose([(self.slot_matrix(pick, magnitude, index, height, width), True)], height, width)
        if name == "blend":
            kind = torch.where(pick == index["Contrast"], CONTRAST, torch.where(pick == index["Color"], SATURATION, BRIGHTNESS))
            return blend_weights(kind, 1.0 + magnitude)
        if name == "sharpen":
            return {"factor": 1.0 + magnitude}
        if name == "posterize":  # posterize keeps the top bits
            return {"step": 2.0 ** (8 - int(self.magnitude("Posterize", height, width)))}
        if name == "solarize":
            return {"threshold": 255.0 * self.magnitude("Solarize", height, width)}
        return {}

    def apply(self, images, prepared):
        """The picks of each slot in turn; changes `images` in place."""
        for slot in prepared["slots"]:
            if not slot["groups"]:
                continue
            chosen = images.index_select(0, slot["index"])
            for name, start, stop, group in slot["groups"]:
                part = chosen[start:stop]
                part.copy_(GROUP_KERNELS[name](part, group))
            images.index_copy_(0, slot["index"], chosen)
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


GROUP_KERNELS = {
    "warp": resample,
    "blend": mix_grey,
    "sharpen": lambda images, group: sharpen(images, group["factor"]),
    "posterize": lambda images, group: torch.floor(images * (1.0 / group["step"])) * group["step"],
    "solarize": lambda images, group: torch.where(images >= group["threshold"], 255.0 - images, images),
    "autocontrast": lambda images, group: autocontrast(images),
    "equalize": lambda images, group: equalize(images),
}


class RandomErasing(Op):
    """torchvision's ten tries at a box of random area and aspect ratio, the first that fits. With
    value: random, the box takes N(0, 1) noise from a generator seeded per batch ("noise_seed")."""

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

    def prepare(self, params, height, width, seeds=None):
        noise_seed = 0 if seeds is None else int(seeds.sum()) % (2**63 - 1)
        # the box in whole pixels, as integers: compared with float32 pixel indices, never cast to
        # the chain's float16 (exact up to 2048 only)
        box = {name: params[name].to(torch.int64) for name in ("top", "left", "height", "width")}
        return {**params, **box, "any": bool(params["erased"].any()), "noise_seed": noise_seed}

    def apply(self, images, prepared):
        if not prepared["any"]:
            return images
        rows = torch.arange(images.shape[-2], device=images.device, dtype=torch.float32).view(1, -1, 1)
        cols = torch.arange(images.shape[-1], device=images.device, dtype=torch.float32).view(1, 1, -1)
        view = {name: prepared[name].view(-1, 1, 1) for name in ("erased", "top", "left", "height", "width")}
        box = ((rows >= view["top"]) & (rows < view["top"] + view["height"]) & (cols >= view["left"])
               & (cols < view["left"] + view["width"]) & view["erased"])
        if self.config["value"] == "random":
            generator = torch.Generator(images.device).manual_seed(prepared["noise_seed"])
            value = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        else:
            value = torch.full_like(images[:1], float(self.config["value"]))
        return torch.where(box.unsqueeze(1), value, images)


OPS = (HorizontalFlip, VerticalFlip, Rotation, Affine, ColorJitter, RandAugment, RandomErasing)
OP_BY_KEY = {op.key: op for op in OPS}


def enabled_ops(augment: dict) -> list[Op]:
    """The config's switched-on ops, built, in chain order."""
    return [op(augment[op.key]) for op in OPS if augment.get(op.key, {}).get("enabled", False)]


def normalization(augment: dict) -> tuple[list, list]:
    norm = augment["normalize"]
    return norm["mean"], norm["std"]


def tree_map(fn, tree, leaf: type = torch.Tensor):
    """fn on every `leaf` of nested dicts, lists and tuples; everything else as it is."""
    if isinstance(tree, leaf):
        return fn(tree)
    if isinstance(tree, dict):
        return {key: tree_map(fn, value, leaf) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_map(fn, value, leaf) for value in tree)
    return tree


class Packed:
    """Where one of a Plan's tensors lies in its buffer: byte offset, dtype and shape."""

    __slots__ = ("offset", "dtype", "shape")

    def __init__(self, offset: int, dtype: torch.dtype, shape: tuple):
        self.offset, self.dtype, self.shape = offset, dtype, shape

    def view(self, buffer: torch.Tensor) -> torch.Tensor:
        size = math.prod(self.shape) * self.dtype.itemsize
        return buffer[self.offset : self.offset + size].view(self.dtype).view(self.shape)


class Plan:
    """One batch's augmentation, drawn and prepared on the CPU (in a loader worker): what each
    stage of the chain takes, for images of `shape` (height, width). Its tensors (a few dozen
    small ones) are packed into one byte buffer, so that handing it from a worker, pinning it and
    copying it to the device are one transfer each rather than one per tensor; `steps` are views
    of that buffer, on whatever device it is."""

    def __init__(self, steps: list, shape: tuple[int, int], buffer: torch.Tensor | None = None):
        self.shape = shape
        if buffer is not None:  # steps: a layout of Packed entries over this buffer
            self.layout, self.buffer = steps, buffer
            return
        tensors, end = [], 0

        def place(tensor: torch.Tensor) -> Packed:
            nonlocal end
            end = -(-end // 8) * 8  # every tensor 8-byte aligned, so any dtype can view its bytes
            tensors.append((end, tensor.reshape(-1)))
            packed = Packed(end, tensor.dtype, tuple(tensor.shape))
            end += tensor.numel() * tensor.element_size()
            return packed

        self.layout = tree_map(place, steps)
        self.buffer = torch.empty(end, dtype=torch.uint8)
        for offset, flat in tensors:  # copied into a view of the buffer: the source's strides do not matter
            self.buffer[offset : offset + flat.numel() * flat.element_size()].view(flat.dtype).copy_(flat)

    @property
    def steps(self) -> list:
        return tree_map(lambda packed: packed.view(self.buffer), self.layout, Packed)

    def pin_memory(self) -> Plan:
        return Plan(self.layout, self.shape, self.buffer.pin_memory())

    def to(self, device: torch.device) -> Plan:
        return Plan(self.layout, self.shape, self.buffer.to(device, non_blocking=True))


class BatchAugment:
    """Callable: (uint8 images (B, 3, S, S) on the device, their Plan or their int64 sample seeds
    (B,) on the CPU) -> the normalized float32 batch (B, 3, size, size). Image work runs on the
    images' device, in compute_dtype(); the parameters are drawn on the CPU (plan(), which
    collate() calls in the loader's workers)."""

    def __init__(self, augment: dict, image_size: int, dtype: torch.dtype | None = None):
        self.ops = enabled_ops(augment)
        # what the chain computes in; None: dtype_for(the images' device). Given, plan() makes the
        # float parameters in it, so the device has none to cast.
        self.dtype = dtype
        self.image_size = image_size
        self.mean, self.std = normalization(augment)
        self.draws = sum(op.draws for op in self.ops)
        self.stages = self.chain_stages(self.ops)

    @staticmethod
    def chain_stages(ops: list[Op]) -> list[tuple[str, object]]:
        """The chain as run: ("warp", [consecutive geometric ops]), ("resize", None) before the
        first op after the resize (or at the end), ("op", op) for the others."""
        stages, resized = [], False
        for op in ops:
            if op.matrix is not None:
                if stages and stages[-1][0] == "warp":
                    stages[-1][1].append(op)
                else:
                    stages.append(("warp", [op]))
                continue
            if op.after_resize and not resized:
                stages.append(("resize", None))
                resized = True
            stages.append(("op", op))
        return stages if resized else [*stages, ("resize", None)]

    def collate(self, samples: list) -> tuple:
        """collate_fn for (uint8 image, target, seed) samples: (images, targets, Plan)."""
        images = torch.stack([image for image, _, _ in samples])
        targets = torch.tensor([target for _, target, _ in samples])
        seeds = torch.tensor([seed for _, _, seed in samples], dtype=torch.int64)
        return images, targets, self.plan(seeds, *images.shape[-2:])

    def size_for(self, op: Op, height: int, width: int) -> tuple[int, int]:
        """The image size an op works at: the final size after the resize, the input's before."""
        return (self.image_size, self.image_size) if op.after_resize else (height, width)

    def draw(self, seeds: torch.Tensor, height: int, width: int) -> dict:
        """Every op's parameters for these samples, by op."""
        u, first, drawn = uniforms(seeds, self.draws), 0, {}
        for op in self.ops:
            drawn[op] = op.params(u[:, first : first + op.draws], *self.size_for(op, height, width))
            first += op.draws
        return drawn

    def plan(self, seeds: torch.Tensor, height: int, width: int) -> Plan:
        """The batch's Plan for images of height x width, from its samples' seeds (on the CPU)."""
        seeds = seeds.cpu()
        drawn, steps = self.draw(seeds, height, width), []
        for kind, item in self.stages:
            if kind == "warp":
                steps.append(compose([(op.matrix(drawn[op], height, width), op.fills) for op in item], height, width))
            elif kind == "op":
                steps.append(item.prepare(drawn[item], *self.size_for(item, height, width), seeds=seeds))
            else:
                steps.append(None)
        # the float parameters in the chain's dtype, which the device would otherwise cast them to
        # one kernel each (integral ones, such as the erasing box, are integers)
        if self.dtype is not None:
            steps = tree_map(lambda t: t.to(self.dtype) if t.is_floating_point() else t, steps)
        return Plan(steps, (height, width))

    def __call__(self, images: torch.Tensor, plan) -> torch.Tensor:
        """images: uint8 on the device; plan: their Plan, or their seeds (the plan is then drawn here)."""
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError(f"batched augmentation takes a uint8 (B, C, H, W) batch, got {images.dtype} "
                            f"{tuple(images.shape)}")
        if isinstance(plan, torch.Tensor):
            plan = self.plan(plan, *images.shape[-2:])
            if images.device.type == "cuda":
                plan = plan.pin_memory()
        if tuple(plan.shape) != tuple(images.shape[-2:]):
            raise ValueError(f"an augmentation plan for {plan.shape} images was given {tuple(images.shape[-2:])} ones")
        return self.run(images, plan.to(images.device))

    @staticmethod
    def dtype_for(device: torch.device) -> torch.dtype:
        """float16 on a GPU, where the chain's time is the bytes its kernels move (pixel values are
        integers up to 255 between ops, which float16 holds exactly, and its 11 bits keep most of
        what each op computes within a uint8 step; the hue, whose arithmetic runs up to 12, within
        two); float32 on a CPU, which has few native float16 kernels."""
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32

    def compute_dtype(self, device: torch.device) -> torch.dtype:
        return self.dtype or self.dtype_for(device)

    def run(self, images: torch.Tensor, plan: Plan) -> torch.Tensor:
        """The chain, on the device alone: image work only, and no host sync."""
        x = images.to(self.compute_dtype(images.device))
        # sharpening convolves slices whose size changes every batch: no cuDNN algorithm search
        # for each (IMAGECLF_CUDNN_BENCHMARK=1 would wait for the GPU, and pick per size)
        benchmark, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False
        try:
            for (kind, item), prepared in zip(self.stages, plan.steps):
                if kind == "warp":
                    x = resample(x, prepared)
                elif kind == "resize":
                    x = self.resize(x)
                else:
                    x = item.apply(x, prepared)
        finally:
            torch.backends.cudnn.benchmark = benchmark
        return self.normalize(x)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """Resize((size, size)) with antialiasing, then the float conversion's scale to [0, 1]."""
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.resize(x, [self.image_size, self.image_size], antialias=True).clamp_(0, 255)
        return x.mul(1.0 / 255)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std in one float32 kernel, whatever the chain computed in."""
        scale = constant(tuple(1.0 / s for s in self.std), x.device).view(1, -1, 1, 1)
        shift = constant(tuple(-m / s for m, s in zip(self.mean, self.std)), x.device).view(1, -1, 1, 1)
        return torch.addcmul(shift, x, scale)
