"""The training chain on whole batches, on the training device (`train.augment_on: device`).

With it the DataLoader workers only hand over uint8 images of one fixed square size (made once by
the cache) and each sample's seed; the augmentation then runs here, batched, on the GPU (or CPU).
On a GPU host this takes the per-image CPU work (ColorJitter's hue most of all) off the workers.

Same ops, same parameters, same random draws: each sample's parameters are drawn by the transform
objects of presets.train_transform themselves (their make_params), under that sample's seed and in
chain order, exactly as the loader path draws them. Only the application is batched:
- resize, float conversion and normalize are torchvision's, on the whole batch; RandAugment's
  posterize, solarize, autocontrast and equalize are torchvision's, on the group of samples that
  drew the same op and magnitude; ColorJitter's hue uses torchvision's HSV-to-RGB conversion,
  which takes batches, with a shift per sample, and every sample's hue runs in one call (the
  blends before and after it keep each sample's own order);
- everything else whose value differs per sample (flips, rotation, affine, brightness, contrast,
  saturation, RGB-to-HSV, RandAugment's geometric, brightness/contrast/colour and sharpness picks,
  erasing) runs kernels written here that repeat torchvision's float arithmetic operation for
  operation, a few launches per batch rather than per image; tests/test_batch_augment.py checks
  that every image is bit-identical to torchvision's per-image chain.
Per-sample values reach a GPU from pinned memory, asynchronously (to_device): the chain never
makes the CPU wait for the GPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from . import presets

FLIPS = {v2.RandomHorizontalFlip: -1, v2.RandomVerticalFlip: -2}  # op -> the axis it mirrors
NO_RANDOMNESS = (v2.Resize, v2.ToImage, v2.ToDtype, v2.Normalize)


class BatchAugment:
    """Callable: (uint8 images (B, 3, S, S) on any device, B sample seeds) -> normalized float batch."""

    def __init__(self, augment: dict, image_size: int):
        self.ops = list(presets.train_transform(augment, image_size).transforms)
        for op in self.ops:
            if not isinstance(op, (*FLIPS, *NO_RANDOMNESS, v2.RandomRotation, v2.RandomAffine,
                                   v2.ColorJitter, v2.RandAugment, v2.RandomErasing)):
                raise TypeError(f"{type(op).__name__} has no batched implementation in batch_augment.py")
        self.drawers = [params_drawer(op) for op in self.ops]

    def draw(self, seeds, height: int, width: int) -> list[list]:
        """Each sample's parameters for every op, drawn as the op's own forward() would draw them.

        Cheap but not free (docs/performance.md), so the DataLoader workers do it (collate)."""
        # make_params reads only the shape of the image it is given: the op's input at its position
        shape_of, steps = torch.empty((3, height, width), dtype=torch.uint8), []
        for op, drawer in zip(self.ops, self.drawers):
            if isinstance(op, v2.Resize):
                shape_of = torch.empty((3, *op.size), dtype=torch.uint8)
            steps.append((drawer, shape_of))
        drawn = []
        with torch.random.fork_rng(devices=[]):  # leave the caller's random stream untouched
            for seed in seeds:
                torch.default_generator.manual_seed(int(seed))  # CPU only: torch.manual_seed seeds every backend
                drawn.append([drawer(shape) if drawer else None for drawer, shape in steps])
        return drawn

    def collate(self, samples: list) -> tuple:
        """collate_fn for (uint8 image, target, seed) samples: the batch plus its drawn parameters."""
        images = torch.stack([image for image, _, _ in samples])
        targets = torch.tensor([target for _, target, _ in samples])
        return images, targets, self.draw([seed for _, _, seed in samples], *images.shape[-2:])

    def apply(self, images: torch.Tensor, drawn: list[list]) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError(f"batched augmentation takes a uint8 (B, C, H, W) batch, got {images.dtype} "
                            f"{tuple(images.shape)}")
        for position, op in enumerate(self.ops):
            images = apply_op(op, images, [params[position] for params in drawn])
        return images

    def __call__(self, images: torch.Tensor, seeds) -> torch.Tensor:
        return self.apply(images, self.draw(seeds, *images.shape[-2:]))


def params_drawer(op):
    """A function (the op's input, for its shape) -> parameters, making the random draws of the op's
    forward (torchvision.transforms.v2) in the same order; None for ops that draw nothing."""
    if isinstance(op, tuple(FLIPS)):  # _RandomApplyTransform: a coin, then make_params
        return lambda image: None if torch.rand(1) >= op.p else True
    if isinstance(op, v2.RandomErasing):
        return lambda image: None if torch.rand(1) >= op.p else op.make_params([image])
    if isinstance(op, (v2.RandomRotation, v2.RandomAffine, v2.ColorJitter)):
        return lambda image: op.make_params([image])
    if isinstance(op, v2.RandAugment):
        return rand_augment_drawer(op)
    return None


# RandAugment's ops in torchvision's order, with (magnitudes for num_bins at height x width, signed):
# the values of torchvision's RandAugment, written out here so that no private attribute is read.
# tests/test_batch_augment.py checks every image against torchvision's own RandAugment.
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


def rand_augment_drawer(op: v2.RandAugment):
    """RandAugment.forward's draws: an op name, then for signed ops a coin for the sign."""
    names = tuple(RAND_AUGMENT_SPACE)
    magnitude_of = {}  # (name, height, width) -> (magnitude or None, signed); computing it draws nothing

    def draw(image: torch.Tensor) -> list[tuple[str, float]]:
        chosen = []
        for _ in range(op.num_ops):
            name = names[int(torch.randint(len(names), ()))]
            key = (name, *image.shape[-2:])
            if key not in magnitude_of:
                magnitudes_fn, signed = RAND_AUGMENT_SPACE[name]
                magnitudes = magnitudes_fn(op.num_magnitude_bins, *image.shape[-2:])
                magnitude_of[key] = (None if magnitudes is None else float(magnitudes[op.magnitude]), signed)
            magnitude, signed = magnitude_of[key]
            if magnitude is None:
                magnitude = 0.0
            elif signed and torch.rand(()) <= 0.5:
                magnitude = -magnitude
            chosen.append((name, magnitude))
        return chosen

    return draw


def to_device(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small tensor of per-sample values (factors, matrices, indices) on the device. On a GPU the
    copy is asynchronous, from pinned memory: torch.tensor(..., device="cuda") would wait for the
    GPU to finish all the work queued so far, dozens of times a batch."""
    tensor = torch.tensor(values, dtype=dtype)
    return tensor if device.type == "cpu" else tensor.pin_memory().to(device, non_blocking=True)


def apply_op(op, images: torch.Tensor, params: list) -> torch.Tensor:
    device = images.device
    if isinstance(op, tuple(FLIPS)):
        mask = to_device([p is not None for p in params], torch.bool, device).view(-1, 1, 1, 1)
        return torch.where(mask, images.flip(FLIPS[type(op)]), images)
    if isinstance(op, v2.RandomRotation):
        # v2's rotate(angle) is affine(-angle) about the centre
        matrices = [inverse_affine_matrix(-p["angle"], (0.0, 0.0), 1.0, (0.0, 0.0)) for p in params]
        return affine_batch(images, matrices, op.interpolation, fill_for(op.fill))
    if isinstance(op, v2.RandomAffine):
        matrices = [inverse_affine_matrix(p["angle"], p["translate"], p["scale"], p["shear"]) for p in params]
        return affine_batch(images, matrices, op.interpolation, fill_for(op.fill))
    if isinstance(op, v2.ColorJitter):
        return color_jitter_batch(images, params)
    if isinstance(op, v2.RandAugment):
        return rand_augment_batch(op, images, params)
    if isinstance(op, v2.RandomErasing):
        images = images.clone()
        for k, p in enumerate(params):
            if p is not None and p["v"] is not None:
                i, j, h, w = p["i"], p["j"], p["h"], p["w"]
                images[k, :, i : i + h, j : j + w] = p["v"].to(device, images.dtype, non_blocking=True)
        return images
    if isinstance(op, v2.ToImage):
        return images  # already a tensor batch
    return op(images)  # Resize, ToDtype, Normalize: the same for every sample


def inverse_affine_matrix(angle: float, translate, scale: float, shear, center=(0.0, 0.0)) -> list[float]:
    """Output-to-input map of a rotation/scale/shear about `center`, then a translation, in
    coordinates whose origin is the image centre (the convention of torchvision's affine)."""
    rot, shear_x, shear_y = (math.radians(a) for a in (angle, *shear))
    (tx, ty), (cx, cy) = translate, center
    # forward linear part R(angle) . S(scale) . ShearY . ShearX, as [[a, b], [c, d]] / scale
    a = math.cos(rot - shear_y) / math.cos(shear_y)
    b = -(a * math.tan(shear_x) + math.sin(rot))
    c = math.sin(rot - shear_y) / math.cos(shear_y)
    d = math.cos(rot) - c * math.tan(shear_x)
    # its inverse (the determinant of [[a, b], [c, d]] is 1), after undoing translation and centre
    m = [d / scale, -b / scale, 0.0, -c / scale, a / scale, 0.0]
    m[2] = cx - m[0] * (cx + tx) - m[1] * (cy + ty)
    m[5] = cy - m[3] * (cx + tx) - m[4] * (cy + ty)
    return m


def affine_batch(images: torch.Tensor, matrices: list, interpolation, fill_values) -> torch.Tensor:
    """Each image warped by its own inverse matrix; pixels from outside the image take
    `fill_values` (per channel), or zeros when None."""
    batch, channels, height, width = images.shape
    device = images.device
    theta = to_device(matrices, torch.float32, device).view(batch, 2, 3)
    # pixel-centre coordinates with the origin at the image centre, as (x, y, 1)
    xs = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width, device=device)
    ys = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height, device=device)
    x, y = (c.reshape(1, -1) for c in torch.broadcast_tensors(xs.view(1, -1), ys.view(-1, 1)))
    scale_to_unit = to_device([0.5 * width, 0.5 * height], torch.float32, device)
    coeff = (theta.transpose(1, 2) / scale_to_unit).unsqueeze(-1)  # (batch, x|y|1, u|v, 1)
    # torchvision's grid is (x, y, 1) @ coeff per image (bmm); written out, in the same order of
    # float operations, it is bit-identical on CPU and faster than a bmm with so small a K
    u = (x * coeff[:, 0, 0] + y * coeff[:, 1, 0]) + coeff[:, 2, 0]
    v = (x * coeff[:, 0, 1] + y * coeff[:, 1, 1]) + coeff[:, 2, 1]
    grid = torch.stack((u, v), -1)
    mode = v2.InterpolationMode(interpolation).value
    source = images.float()
    if fill_values is not None:  # a ones channel marks where the sample came from inside the image
        source = torch.cat([source, torch.ones(batch, 1, height, width, device=device)], 1)
    warped = nnf.grid_sample(source, grid.view(batch, height, width, 2), mode=mode, padding_mode="zeros",
                             align_corners=False)
    if fill_values is not None:
        warped, inside = warped[:, :channels], warped[:, channels:]
        fill_image = to_device(fill_values, warped.dtype, device).view(1, -1, 1, 1)
        warped = torch.where(inside < 0.5, fill_image.expand_as(warped), warped)
    return warped.round_().to(images.dtype)


def fill_for(fill):
    """v2 ops store fill per input type; None means zeros (the padding already gives them)."""
    if isinstance(fill, dict):
        fill = fill.get(torch.Tensor, fill.get(next(iter(fill)), None)) if fill else None
    if fill is None:
        return None
    return [float(v) for v in fill] if isinstance(fill, (list, tuple)) else [float(fill)]


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma as float, floored as torchvision does for uint8 input."""
    r, g, b = images.float().unbind(1)
    return (r * 0.2989 + g * 0.587 + b * 0.114).floor_().unsqueeze(1)


def as_input_dtype(values: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """uint8 conversion (truncation) of a result in [0, 255], or the same values kept in float when
    `images` is a float batch of whole numbers (ColorJitter keeps one float copy across its steps).
    The values are never negative, so floor is the truncation (and faster than trunc on CPU)."""
    return values.to(torch.uint8) if images.dtype == torch.uint8 else values.floor_()


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) floats in [0, 1] -> hue, saturation, value, each value exactly as torchvision's
    _rgb_to_hsv computes it (same float operations in the same order). Only the bookkeeping is
    cheaper: max/min as elementwise chains (aminmax over a strided dim is slow on CPU) and the
    hue's case split as a selection rather than multiplications by masks."""
    red, green, blue = rgb.unbind(dim=-3)
    value = torch.maximum(torch.maximum(red, green), blue)
    smallest = torch.minimum(torch.minimum(red, green), blue)
    grey = value == smallest  # no hue and no saturation; divide by one instead of by zero
    spread = value - smallest
    saturation = spread / value.masked_fill(grey, 1.0)
    rc, gc, bc = ((value.unsqueeze(-3) - rgb) / spread.masked_fill(grey, 1.0).unsqueeze(-3)).unbind(dim=-3)
    # the sector of the largest channel: red first, then green, then blue (as torchvision's masks)
    hue = torch.where(value == red, bc - gc, torch.where(value == green, (rc + 2.0) - bc, (gc + 4.0) - rc))
    hue = hue.mul_(1.0 / 6.0).add_(1.0).fmod_(1.0)
    return torch.stack((hue, saturation, value), dim=-3)


def adjust_hue_batch(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Hue + shift (mod 1) per image, with torchvision's uint8 <-> float scaling (to_dtype_image)
    and its conversion back to RGB; the shift is added in float32, as adjust_hue_image adds its
    Python float."""
    # not in place: .float() of a float batch is the batch itself
    hue, saturation, value = rgb_to_hsv(images.float().mul(1.0 / 255)).unbind(dim=-3)
    hue = hue.add(shift.to(hue.dtype).view(-1, 1, 1)).remainder_(1.0)
    rgb = hsv_to_rgb(hue, saturation, value)
    return as_input_dtype(rgb.mul_(255 + 1.0 - 1e-3), images)


# Which of (v, p, q, t) each of r, g, b takes in each of the six hue sectors.
HSV_SECTOR_CHANNELS = ((0, 2, 1, 1, 3, 0), (3, 0, 0, 2, 1, 1), (1, 1, 3, 0, 0, 2))


def hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """(N, H, W) planes in [0, 1] to (N, 3, H, W) RGB: torchvision's arithmetic, step for step
    (adjust_hue's conversion back), so the result is bit-identical."""
    h6 = hue.mul(6)
    sector = torch.floor(h6)
    fraction = h6.sub_(sector)
    sector = sector.to(torch.int64).remainder_(6)
    s_times_f = saturation * fraction
    one_minus_s = 1.0 - saturation
    q = (1.0 - s_times_f).mul_(value).clamp_(0.0, 1.0)
    t = s_times_f.add_(one_minus_s).mul_(value).clamp_(0.0, 1.0)
    p = one_minus_s.mul_(value).clamp_(0.0, 1.0)
    vpqt = torch.stack((value, p, q, t), dim=-3)
    table = torch.tensor(HSV_SECTOR_CHANNELS, dtype=torch.int64).to(hue.device, non_blocking=True)
    return vpqt.gather(-3, table[:, sector].moveaxis(0, -3))


BLEND_WITH_ZERO, BLEND_WITH_MEAN_GRAY, BLEND_WITH_GRAY = 0, 1, 2  # brightness, contrast, saturation


def blend_batch(images: torch.Tensor, kind: list[int], ratio: list[float]) -> torch.Tensor:
    """Brightness, contrast or saturation per sample (kind): images * ratio + other * (1 - ratio),
    where other is 0, the mean grey or the grey image, clamped and truncated to uint8 as
    torchvision's _blend does; one pass over the batch.

    ratio and 1 - ratio are computed in double first, as torchvision's Python floats are; addcmul
    rounds like torchvision's add_(other, alpha=...). A ratio of 1 leaves a sample exactly as it is
    (x * 1 + y * 0 == x in float)."""
    rows = [[r, 1.0 - r, k == BLEND_WITH_GRAY, k == BLEND_WITH_MEAN_GRAY] for k, r in zip(kind, ratio)]
    weight, other_weight, is_gray, is_mean = to_device(rows, torch.float32, images.device).view(
        -1, 4, 1, 1, 1).unbind(1)
    gray = grayscale(images)
    # 0/1 factors pick the other image exactly (a product by 1, plus a product by 0)
    other = torch.addcmul(gray.mean(dim=(1, 2, 3), keepdim=True) * is_mean, gray, is_gray)
    blended = torch.addcmul(images.float() * weight, other, other_weight).clamp_(0, 255)
    return as_input_dtype(blended, images)


def blend_steps(images: torch.Tensor, steps: list[list[tuple[int, float]]]) -> torch.Tensor:
    """Each sample's own list of (blend kind, ratio) applied in order, step j of every sample in one
    pass. Samples with fewer steps get ratio 1 (exactly no change) when at least half the batch has
    a step j; smaller groups are blended on their own (less pixel work, one gather and scatter)."""
    for j in range(max(map(len, steps), default=0)):
        members = [k for k, sample in enumerate(steps) if j < len(sample)]
        if 2 * len(members) > len(steps):
            kind = [sample[j][0] if j < len(sample) else BLEND_WITH_ZERO for sample in steps]
            ratio = [sample[j][1] if j < len(sample) else 1.0 for sample in steps]
            images = blend_batch(images, kind, ratio)
        else:
            kind, ratio = zip(*(steps[k][j] for k in members))
            index = to_device(members, torch.int64, images.device)
            images = images.index_copy(0, index, blend_batch(images[index], kind, ratio))
    return images


def color_jitter_batch(images: torch.Tensor, params: list) -> torch.Tensor:
    """ColorJitter with each sample's own factors and own random order of the four adjustments.

    Per sample the order is kept; across samples the steps are regrouped as: the blends before
    the sample's hue, every sample's hue in one call, the blends after it. The batch stays in float
    (whole numbers, truncated where torchvision converts to uint8) until the end."""
    names = ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")
    before, after, shifts = [], [], []
    for p in params:
        steps, shift = ([], []), None
        for fn_id in p["fn_idx"].tolist():  # adjustment ids 0..3 (the names above) in this sample's order
            value = p[names[fn_id]]
            if value is None:  # switched off in the config
                continue
            if fn_id == 3:
                shift = value
            else:  # make_params' Python floats, used as they are
                steps[shift is not None].append((fn_id, value))
        before.append(steps[0])
        after.append(steps[1])
        shifts.append(shift)
    images_float = blend_steps(images.float(), before)
    hued = [k for k, shift in enumerate(shifts) if shift is not None]
    if hued:
        shift = to_device([shifts[k] for k in hued], torch.float64, images.device)
        if len(hued) == len(params):
            images_float = adjust_hue_batch(images_float, shift)
        else:
            index = to_device(hued, torch.int64, images.device)
            images_float = images_float.index_copy(0, index, adjust_hue_batch(images_float[index], shift))
    return blend_steps(images_float, after).to(images.dtype)


def sharpness_batch(images: torch.Tensor, factors: list[float]) -> torch.Tensor:
    """adjust_sharpness with a factor per sample: torchvision's 3x3 smoothing kernel and its blend
    of the inner pixels, on uint8 images; the blend weight 1 - factor per sample goes through
    addcmul, which rounds as torchvision's add_(alpha=...) does."""
    channels, height, width = images.shape[-3:]
    if height <= 2 or width <= 2:
        return images
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = to_device([[a, a, a], [a, b, a], [a, a, a]], torch.float32, images.device).expand(channels, 1, 3, 3)
    output = images.to(torch.float32, copy=True)
    smoothed = nnf.conv2d(output, kernel, groups=channels).round_()
    inner = output[..., 1:-1, 1:-1]
    weight = to_device([1.0 - f for f in factors], torch.float32, images.device)
    inner.addcmul_(smoothed.sub_(inner), weight.view(-1, 1, 1, 1))
    return output.clamp_(0, 255).to(torch.uint8)


# RandAugment ops applied per sample by the kernels above instead of one group per setting
RAND_AUGMENT_BLENDS = {"Brightness": BLEND_WITH_ZERO, "Contrast": BLEND_WITH_MEAN_GRAY, "Color": BLEND_WITH_GRAY}


def rand_augment_matrix(name: str, magnitude: float, height: int, width: int) -> list[float] | None:
    """The inverse matrix of RandAugment's geometric ops (torchvision's definitions), else None."""
    if name in ("ShearX", "ShearY"):  # sheared about the top-left corner
        shear = math.degrees(math.atan(magnitude))
        return inverse_affine_matrix(0.0, (0, 0), 1.0, (shear, 0.0) if name == "ShearX" else (0.0, shear),
                                     center=(-0.5 * width, -0.5 * height))
    if name in ("TranslateX", "TranslateY"):
        shift = int(magnitude)
        return inverse_affine_matrix(0.0, (shift, 0) if name == "TranslateX" else (0, shift), 1.0, (0.0, 0.0))
    if name == "Rotate":
        return inverse_affine_matrix(-magnitude, (0.0, 0.0), 1.0, (0.0, 0.0))
    return None


def rand_augment_batch(op: v2.RandAugment, images: torch.Tensor, params: list) -> torch.Tensor:
    """Slot by slot: all geometric picks in one warp, all brightness/contrast/colour picks in one
    blend, all sharpness picks in one convolution, and torchvision's kernels for the rest (posterize,
    solarize, autocontrast, equalize), one call per (op, magnitude) group."""
    device, (height, width) = images.device, images.shape[-2:]
    for slot in range(op.num_ops):
        picks = [chosen[slot] for chosen in params]
        out = images.clone()
        matrices = [rand_augment_matrix(name, magnitude, height, width) for name, magnitude in picks]
        warped = [k for k, matrix in enumerate(matrices) if matrix is not None]
        if warped:
            index = to_device(warped, torch.int64, device)
            out[index] = affine_batch(images[index], [matrices[k] for k in warped], op.interpolation,
                                      fill_for(op.fill))
        blends = [k for k, (name, _) in enumerate(picks) if name in RAND_AUGMENT_BLENDS]
        if blends:
            index = to_device(blends, torch.int64, device)
            kind = [RAND_AUGMENT_BLENDS[picks[k][0]] for k in blends]
            ratio = [1.0 + picks[k][1] for k in blends]
            out[index] = blend_batch(images[index], kind, ratio)
        sharpened = [k for k, (name, _) in enumerate(picks) if name == "Sharpness"]
        if sharpened:  # both signs in one convolution
            index = to_device(sharpened, torch.int64, device)
            out[index] = sharpness_batch(images[index], [1.0 + picks[k][1] for k in sharpened])
        groups: dict[tuple, list[int]] = {}
        for k, (name, magnitude) in enumerate(picks):
            if matrices[k] is None and name not in (*RAND_AUGMENT_BLENDS, "Sharpness", "Identity"):
                groups.setdefault((name, magnitude), []).append(k)
        for (name, magnitude), members in groups.items():
            index = to_device(members, torch.int64, device)
            out[index] = pixel_op(name, images[index], magnitude)
        images = out
    return images


def pixel_op(name: str, images: torch.Tensor, magnitude: float) -> torch.Tensor:
    """RandAugment's ops that have no batched version here, through torchvision's public kernels
    with RandAugment's own arguments."""
    if name == "Posterize":
        return F.posterize(images, bits=int(magnitude))
    if name == "Solarize":
        bound = 255.0 if images.dtype == torch.uint8 else 1.0
        return F.solarize(images, threshold=bound * magnitude)
    if name == "AutoContrast":
        return F.autocontrast(images)
    if name == "Equalize":
        return F.equalize(images)
    raise ValueError(f"RandAugment op {name} has no batched implementation")
