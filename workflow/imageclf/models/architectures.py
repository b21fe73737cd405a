"""What the configuration needs to know about a torchvision architecture before any job runs:
its parameter count with the configured head, whether it takes the configured image size, the
size it was built for, its weights and their normalisation.

Building a model on PyTorch's meta device costs no memory and no arithmetic, so these checks take
well under a second; the answers are kept in a small JSON cache (per torch/torchvision version),
so that a dry run does not import torchvision at all once they are known.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

from ..core.io_utils import write_text

log = logging.getLogger("imageclf.architectures")

DEFAULT_BUILT_SIZE = 224


def cache_key(arch: str, head: str, hidden: int, num_classes: int, image_size: int) -> str:
    return f"{arch}|{head}|{hidden}|{num_classes}|{image_size}"


@functools.lru_cache(maxsize=64)
def measure(arch: str, head: str, hidden: int, num_classes: int, image_size: int) -> dict:
    """Facts about one architecture with our head (imports torch and torchvision)."""
    import torch
    import torchvision

    from . import factory  # imports torch: only when the facts are not cached (no import cycle)

    if arch not in factory.architectures():
        return {"known": False, "architectures": factory.architectures()}
    try:
        found = build_and_try(arch, head, hidden, num_classes, image_size, torch.device("meta"))
    except NotImplementedError:  # a builder that reads tensor values (RegNet's widths): build it for real
        found = build_and_try(arch, head, hidden, num_classes, image_size, torch.device("cpu"))
    weights = {}
    built_size, mean, std = DEFAULT_BUILT_SIZE, None, None
    try:
        enum = torchvision.models.get_model_weights(arch)
    except (KeyError, ValueError):
        enum = []
    for member in enum:
        weights[member.name] = member.url
    if enum:
        default = enum.DEFAULT
        preset = default.transforms()
        built_size = int(getattr(preset, "crop_size", [DEFAULT_BUILT_SIZE])[0])
        mean, std = list(getattr(preset, "mean", [])), list(getattr(preset, "std", []))
        weights["DEFAULT"] = default.url
    return {"known": True, **found, "built_size": built_size, "mean": mean, "std": std, "weights": weights,
            "versions": versions()}


def build_and_try(arch: str, head: str, hidden: int, num_classes: int, image_size: int, device) -> dict:
    """Parameter count with our head, and whether a batch of this image size goes through."""
    import torch

    from . import factory  # imports torch: only when the facts are not cached (no import cycle)

    with device:
        model = factory.backbone(arch)
        try:
            factory.attach_head(model, num_classes, head, hidden, 0.0)
            head_error = None
        except Exception as error:  # noqa: BLE001 - reported as a config error
            head_error = str(error)
        parameters = factory.count_parameters(model)
        model.eval()
        try:
            with torch.no_grad():
                model(torch.zeros(2, 3, image_size, image_size))
            size_error = None
        except NotImplementedError:
            raise
        except Exception as error:  # noqa: BLE001 - whatever the architecture asserts
            size_error = str(error).splitlines()[0] if str(error) else type(error).__name__
    return {"parameters": parameters, "head_error": head_error, "size_error": size_error}


def versions() -> str:
    from importlib.metadata import version

    return f"torch {version('torch')}, torchvision {version('torchvision')}"


def facts(arch: str, head: str, hidden: int, num_classes: int, image_size: int, cache: str | Path | None = None) -> dict:
    """measure(), through the JSON cache at `cache` when given."""
    key = cache_key(arch, head, hidden, num_classes, image_size)
    stored = {}
    if cache is not None:
        try:
            stored = json.loads(Path(cache).read_text())
        except (OSError, ValueError):
            stored = {}
        if key in stored and stored[key].get("versions") == versions():
            return stored[key]
    found = measure(arch, head, hidden, num_classes, image_size)
    if cache is not None and found.get("known"):
        stored[key] = found
        write_text(cache, json.dumps(stored, indent=1, sort_keys=True) + "\n")
    return found
