"""Image transforms built from the `augment` and `train.image_size` config keys.

The training chain follows the reference order exactly (docs/recipe.md): geometric and colour ops on
the full-size image, then Resize((size, size)), float conversion, RandomErasing, Normalize.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from .config import PRE_RESIZE_OP_KEYS, op_enabled

# The builder of each op that works on the PIL image before the resize, by config key; their
# order is config.PRE_RESIZE_OP_KEYS (the reference order), which the cache reads too.
PRE_RESIZE_BUILDERS = {
    "horizontal_flip": lambda c: v2.RandomHorizontalFlip(p=c["p"]),
    "vertical_flip": lambda c: v2.RandomVerticalFlip(p=c["p"]),
    "rotation": lambda c: v2.RandomRotation(degrees=c["degrees"]),
    "affine": lambda c: v2.RandomAffine(degrees=c["degrees"], translate=tuple(c["translate"]), scale=tuple(c["scale"])),
    "color_jitter": lambda c: v2.ColorJitter(
        brightness=c["brightness"], contrast=c["contrast"], saturation=c["saturation"], hue=c["hue"]
    ),
    "rand_augment": lambda c: v2.RandAugment(num_ops=c["num_ops"], magnitude=c["magnitude"]),
}


def random_erasing(c: dict) -> v2.RandomErasing:
    return v2.RandomErasing(
        p=c["p"], scale=tuple(c["scale"]), ratio=tuple(c["ratio"]), value=c["value"]
    )


def to_float_and_normalize(augment: dict) -> tuple[list, v2.Normalize]:
    norm = augment["normalize"]
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)], v2.Normalize(norm["mean"], norm["std"])


def train_transform(augment: dict, image_size: int) -> v2.Compose:
    """The reference training chain; ops switched off in the config are left out."""
    ops = [PRE_RESIZE_BUILDERS[key](augment[key]) for key in PRE_RESIZE_OP_KEYS if op_enabled(augment, key)]
    ops.append(v2.Resize((image_size, image_size), antialias=True))
    to_float, normalize = to_float_and_normalize(augment)
    ops += to_float
    if op_enabled(augment, "random_erasing"):
        ops.append(random_erasing(augment["random_erasing"]))
    ops.append(normalize)
    return v2.Compose(ops)


def batch_input_transform(input_size: int) -> v2.Compose:
    """What the workers do when the batch is augmented on the device: a fixed-size uint8 square
    (a no-op resize when the cache already holds squares of this size)."""
    return v2.Compose([v2.Resize((input_size, input_size), antialias=True), v2.PILToTensor()])


def eval_transform(augment: dict, image_size: int) -> v2.Compose:
    """Resize((size, size)), to float, normalize: no crop, as in the reference."""
    to_float, normalize = to_float_and_normalize(augment)
    return v2.Compose([v2.Resize((image_size, image_size), antialias=True), *to_float, normalize])
