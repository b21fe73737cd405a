"""Image transforms built from the `augment` and `train.image_size` config keys.

The training chain follows the reference order exactly (docs/recipe.md): geometric and colour ops on
the full-size image, then Resize((size, size)), float conversion, RandomErasing, Normalize. The ops
themselves, and their order, are augment.OPS.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from .augment import enabled_ops


def to_float_and_normalize(augment: dict) -> tuple[list, v2.Normalize]:
    norm = augment["normalize"]
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)], v2.Normalize(norm["mean"], norm["std"])


def train_transform(augment: dict, image_size: int) -> v2.Compose:
    """The reference training chain, per image (the loader path): the ops of augment.OPS
    switched on in the config, each as torchvision's transform, around the resize."""
    ops = enabled_ops(augment)
    to_float, normalize = to_float_and_normalize(augment)
    return v2.Compose([*(op.reference() for op in ops if not op.after_resize),
                       v2.Resize((image_size, image_size), antialias=True), *to_float,
                       *(op.reference() for op in ops if op.after_resize), normalize])


def batch_input_transform(input_size: int) -> v2.Compose:
    """What the workers do when the batch is augmented on the device: a fixed-size uint8 square
    (a no-op resize when the cache already holds squares of this size)."""
    return v2.Compose([v2.Resize((input_size, input_size), antialias=True), v2.PILToTensor()])


def eval_transform(augment: dict, image_size: int) -> v2.Compose:
    """Resize((size, size)), to float, normalize: no crop, as in the reference."""
    to_float, normalize = to_float_and_normalize(augment)
    return v2.Compose([v2.Resize((image_size, image_size), antialias=True), *to_float, normalize])
