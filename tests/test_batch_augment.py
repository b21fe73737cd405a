"""Batched augmentation on the device (train.augment_on: device) is the reference chain, per image."""

import copy

import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, index_dataset, index_files, make_dataset, tiny_overlay
from imageclf import batch_augment, cache, presets, train
from imageclf import config as C
from imageclf.checks import checked_config
from imageclf.io_utils import write_json
from torchvision.transforms import v2

RECIPE = yaml.safe_load((REPO / "config.yaml").read_text())
AUGMENT = RECIPE["augment"]  # every op of the recipe switched on


def smooth_images(count: int, side: int, seed: int = 0) -> torch.Tensor:
    """Photo-like uint8 images: smooth colour fields, so every op changes pixels."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 6, 6, generator=generator) * 255
    return torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear").to(torch.uint8)


def per_image_reference(augment: dict, size: int, images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """The loader path's way: the v2 chain on one image at a time, seeded with its sample seed."""
    chain = presets.train_transform(augment, size)
    out = []
    for image, seed in zip(images, seeds):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out.append(torch.as_tensor(chain(image)))
    return torch.stack(out)


@pytest.mark.parametrize("count, side, size", [(96, 37, 32), (16, 258, 224)])  # the demo's and the recipe's
def test_batched_chain_equals_the_reference_chain_image_by_image(count, side, size):
    images, seeds = smooth_images(count, side), list(range(5000, 5000 + count))
    augmenter = batch_augment.BatchAugment(AUGMENT, size)
    batched = augmenter(images, seeds)
    reference = per_image_reference(AUGMENT, size, images, seeds)
    assert batched.shape == reference.shape == (count, 3, size, size) and batched.dtype == torch.float32
    # same parameters, same arithmetic: every image bit-identical
    differing = [k for k in range(count) if not torch.equal(batched[k], reference[k])]
    assert not differing, f"images {differing} differ from the per-image chain"
    if count < 96:
        return
    # and the draws exercised the chain: both flip outcomes, most RandAugment ops, some erasing
    drawn = augmenter.draw(seeds, 37, 37)
    ops = [type(op) for op in augmenter.ops]
    flips = [params[ops.index(v2.RandomHorizontalFlip)] is not None for params in drawn]
    chosen = {name for params in drawn for name, _ in params[ops.index(v2.RandAugment)]}
    erased = [params[ops.index(v2.RandomErasing)] is not None for params in drawn]
    assert any(flips) and not all(flips) and len(chosen) >= 12 and any(erased)


def test_kernels_written_here_repeat_torchvisions_arithmetic():
    from torchvision.transforms.v2 import functional as F
    from torchvision.transforms.v2.functional import _color

    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (64, 3, 12, 12), dtype=torch.uint8, generator=generator)
    images[:8] = images[:8, :1]  # grey pixels (no hue), and ties between the largest channels
    images[8:16, 1] = images[8:16, 0]
    images[16:24, 2] = images[16:24, 1]
    rgb = images.float() / 255
    assert torch.equal(batch_augment.rgb_to_hsv(rgb), _color._rgb_to_hsv(rgb))
    # RandAugment's factors (1 +- its magnitude at the recipe's bin), round decimals (whose float
    # products round differently when fused or not) and random ones
    magnitude = float(torch.linspace(0.0, 0.9, 31)[10])
    factors = [1.0 + magnitude, 1.0 - magnitude, 1.3, 0.7] * 8
    factors += (torch.rand(32, generator=generator) * 1.9 + 0.05).tolist()
    sharpened = batch_augment.sharpness_batch(images, factors)
    assert torch.equal(sharpened, torch.stack([F.adjust_sharpness(im, f) for im, f in zip(images, factors)]))
    kinds, ratios = [k % 3 for k in range(64)], factors
    blended = batch_augment.blend_batch(images, kinds, ratios)
    adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
    assert torch.equal(blended, torch.stack([adjust[k](im, r) for im, k, r in zip(images, kinds, ratios)]))
    # ColorJitter keeps the batch in float between its steps: the same values as uint8 round trips,
    # and its input is left as it was
    assert torch.equal(batch_augment.blend_batch(images.float(), kinds, ratios), blended.float())
    as_float, shift = images.float(), torch.full((64,), 0.05, dtype=torch.float64)
    assert torch.equal(batch_augment.adjust_hue_batch(as_float, shift).to(torch.uint8),
                       batch_augment.adjust_hue_batch(images, shift))
    assert torch.equal(as_float, images.float())


def test_same_seeds_same_batch_and_the_callers_random_stream_is_untouched():
    images = smooth_images(8, 37)
    augmenter = batch_augment.BatchAugment(AUGMENT, 32)
    torch.manual_seed(123)
    first = augmenter(images, range(8))
    after = torch.rand(3)
    torch.manual_seed(123)
    again = augmenter(images, range(8))
    assert torch.equal(first, again) and torch.equal(after, torch.rand(3))
    assert not torch.equal(first, augmenter(images, range(100, 108)))


def test_drawn_parameters_survive_the_pinned_loader_on_a_gpu(monkeypatch):
    # With a GPU the DataLoader passes each batch through pin_memory, which rebuilds every
    # container of the drawn parameters. Its container logic is run here for real; only the
    # pinning itself, which needs an accelerator, becomes a copy.
    from torch.utils.data._utils.pin_memory import pin_memory

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *args, **kwargs: self.clone())
    images, seeds = smooth_images(32, 37), list(range(32))
    augmenter = batch_augment.BatchAugment(AUGMENT, 32)
    batch, targets, drawn = augmenter.collate([(image, 0, seed) for image, seed in zip(images, seeds)])
    pinned_batch, _, pinned_drawn = pin_memory((batch, targets, drawn))
    assert torch.equal(augmenter.apply(pinned_batch, pinned_drawn), augmenter.apply(batch, drawn))


def test_per_sample_values_reach_an_accelerator_from_pinned_memory(monkeypatch):
    # torch.tensor(..., device="cuda") waits for the GPU to finish all queued work; to_device pins
    # the values and copies them asynchronously instead. The "meta" device stands in for a GPU.
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *args, **kwargs: pinned.append(self) or self)
    on_cpu = batch_augment.to_device([[1.0, 0.5]], torch.float32, torch.device("cpu"))
    assert on_cpu.device.type == "cpu" and not pinned
    on_meta = batch_augment.to_device([[1.0, 0.5]], torch.float32, torch.device("meta"))
    assert on_meta.device.type == "meta" and on_meta.shape == (1, 2) and len(pinned) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_the_batched_chain_never_waits_for_the_gpu():
    # as in training: the loader pins the batch and its drawn parameters (erasing's patches)
    from torch.utils.data._utils.pin_memory import pin_memory

    augmenter = batch_augment.BatchAugment(AUGMENT, 32)
    samples = [(image, 0, seed) for seed, image in enumerate(smooth_images(32, 37))]
    batch, _, drawn = pin_memory(augmenter.collate(samples))
    images = batch.cuda(non_blocking=True)
    augmenter.apply(images, drawn)  # first call: allocator and kernel set-up may synchronize
    torch.cuda.set_sync_debug_mode("error")
    try:
        augmenter.apply(images, drawn)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_ops_switched_off_leave_resize_and_normalize():
    augment = copy.deepcopy(AUGMENT)
    for key in [*C.PRE_RESIZE_OP_KEYS, "random_erasing"]:
        augment[key]["enabled"] = False
    images = smooth_images(4, 40)
    expected = torch.stack([presets.eval_transform(augment, 32)(image) for image in images])
    assert torch.equal(batch_augment.BatchAugment(augment, 32)(images, range(4)), expected)


def test_an_op_without_a_batched_kernel_is_refused(monkeypatch):
    with pytest.raises(TypeError, match="uint8"):
        batch_augment.BatchAugment(AUGMENT, 32).apply(torch.zeros(2, 3, 8, 8), [[], []])
    monkeypatch.setattr(presets, "train_transform", lambda augment, size: v2.Compose([v2.GaussianBlur(3)]))
    with pytest.raises(TypeError, match="GaussianBlur"):
        batch_augment.BatchAugment(AUGMENT, 32)


def test_training_with_device_augmentation_cached_or_not(tmp_path):
    """One epoch on the tiny data set, from the square cache and from the JPEGs: the same run."""
    make_dataset(tmp_path / "data")
    index_dataset(tmp_path / "data", tmp_path / "index")
    overlay = tiny_overlay(tmp_path / "data", train={"epochs": 1, "augment_on": "device"})
    overlay["augment"] = {}  # the full recipe chain, colour ops included
    cfg = checked_config(C.deep_merge(copy.deepcopy(RECIPE), overlay))
    run = C.run_config(cfg, "full", 0)
    write_json(tmp_path / "config.json", run)
    mode = cache.cache_mode(run["augment"], "train", run["train"]["cache_margin"], "device")
    assert mode == "s1.15"
    cache.build_cache(tmp_path / "index" / "train.csv", tmp_path / "c.npy", tmp_path / "c.csv", mode, 32)
    cached = train.train(tmp_path / "config.json", index_files(tmp_path / "index"), tmp_path / "a",
                         train_cache=(tmp_path / "c.npy", tmp_path / "c.csv"))
    decoded = train.train(tmp_path / "config.json", index_files(tmp_path / "index"), tmp_path / "b")
    columns = ["epoch", "train_loss", "val_loss", "val_acc"]
    pd.testing.assert_frame_equal(cached[columns], decoded[columns], check_exact=True)
    assert cached["train_loss"].notna().all() and (cached["train_loss"] < 10).all()
