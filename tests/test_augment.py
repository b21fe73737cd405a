"""The batched chain (train.augment_on: device): the reference chain's ops, in its order, with
torchvision's parameter distributions, each op doing what torchvision's kernel does, reproducible
from the samples' seeds, and a fixed number of kernels whatever the batch size."""

import copy
import math
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, index_dataset, index_files, make_dataset, tiny_overlay
from imageclf.checks import checked_config
from imageclf.core import config as C
from imageclf.core.io_utils import write_json
from imageclf.data import cache
from imageclf.training import augment as B
from imageclf.training import engine, presets, train
from scipy import stats
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from benchmarks.augment_cost import VIEWS

RECIPE = yaml.safe_load((REPO / "config.yaml").read_text())
AUGMENT = RECIPE["augment"]  # every op of the recipe switched on
DRAWS = 4000  # samples per distribution; the tests' p-value floor below is 1e-4
P_FLOOR = 1e-4


def smooth_images(count: int, height: int, width: int | None = None, seed: int = 0) -> torch.Tensor:
    """Photo-like uint8 images: smooth colour fields, so every op changes pixels."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 6, 6, generator=generator) * 255
    return nn_resize(coarse, height, width or height).round().to(torch.uint8)


def nn_resize(images, height, width):
    return torch.nn.functional.interpolate(images, size=(height, width), mode="bilinear")


def ours(op_class, config, height=40, width=50, count=DRAWS, seed=0) -> dict:
    op = op_class(config)
    return op.params(B.uniforms(torch.arange(seed, seed + count), op.draws), height, width)


def theirs(transform, height=40, width=50, count=DRAWS, seed=0, dtype=torch.uint8) -> list[dict]:
    torch.manual_seed(seed)
    image = torch.zeros(3, height, width, dtype=dtype)
    return [transform.make_params([image]) for _ in range(count)]


def same_distribution(a, b, what: str) -> None:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    p = stats.ks_2samp(a, b).pvalue
    assert p > P_FLOOR, f"{what}: KS p = {p:.2g} (ours mean {a.mean():.4g}, torchvision's {b.mean():.4g})"


def same_frequencies(ours_counts, expected_share, what: str) -> None:
    ours_counts = np.asarray(ours_counts, dtype=float)
    expected = np.asarray(expected_share, dtype=float) * ours_counts.sum()
    p = stats.chisquare(ours_counts, expected).pvalue
    assert p > P_FLOOR, f"{what}: chi-square p = {p:.2g} ({ours_counts} against {expected})"


# --- random numbers


def test_uniforms_are_splitmix64_of_seed_and_draw_whatever_the_batch():
    def splitmix(seed, draw):
        mask = (1 << 64) - 1
        x = (seed + (draw + 1) * 0x9E3779B97F4A7C15) & mask
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return ((x ^ (x >> 31)) >> 40) / (1 << 24)

    seeds = torch.tensor([0, 1, 2**62 - 1, 123_456_789_012_345, 2**40 + 7])
    u = B.uniforms(seeds, 6)
    assert torch.equal(u, torch.tensor([[splitmix(int(s), k) for k in range(6)] for s in seeds]))
    assert torch.equal(B.uniforms(seeds[2:4], 6), u[2:4])  # a sample's draws do not depend on its batch
    big = B.uniforms(torch.arange(20_000), 1).flatten()
    assert 0 <= big.min() and big.max() < 1 and stats.kstest(big.numpy(), "uniform").pvalue > P_FLOOR


# --- each op's parameters against torchvision's own draws


def test_flip_rotation_and_affine_draw_as_torchvision():
    for op_class, p in ((B.HorizontalFlip, 0.5), (B.VerticalFlip, 0.2)):
        flipped = ours(op_class, {"p": p})["flipped"]
        assert stats.binomtest(int(flipped.sum()), DRAWS, p).pvalue > P_FLOOR, op_class.key
    angles = ours(B.Rotation, {"degrees": 15})["angle"]
    same_distribution(angles, [d["angle"] for d in theirs(v2.RandomRotation(15))], "rotation angle")
    config = {"degrees": 10, "translate": [0.1, 0.2], "scale": [0.9, 1.1]}
    mine, reference = ours(B.Affine, config), theirs(B.Affine(config).reference())
    same_distribution(mine["angle"], [d["angle"] for d in reference], "affine angle")
    same_distribution(mine["tx"], [d["translate"][0] for d in reference], "affine tx")
    same_distribution(mine["ty"], [d["translate"][1] for d in reference], "affine ty")
    same_distribution(mine["scale"], [d["scale"] for d in reference], "affine scale")
    assert torch.equal(mine["tx"], mine["tx"].round())  # whole pixels, as torchvision's int(round(...))


def test_color_jitter_draws_factors_and_a_random_order_as_torchvision():
    config = {"brightness": 0.2, "contrast": 0.3, "saturation": 0.4, "hue": 0.1}
    mine, reference = ours(B.ColorJitter, config), theirs(B.ColorJitter(config).reference())
    for k, name in enumerate(("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")):
        same_distribution(mine["factors"][:, k], [d[name] for d in reference], name)
    # every adjustment equally likely at every position
    for position in range(4):
        counts = np.bincount(mine["order"][:, position].numpy(), minlength=4)
        same_frequencies(counts, [0.25] * 4, f"adjustment at position {position}")
    assert (mine["order"].sort(dim=1).values == torch.arange(4)).all()  # each order a permutation
    # an adjustment switched off (0) leaves its factor at no change
    off = ours(B.ColorJitter, {**config, "contrast": 0, "hue": 0}, count=10)["factors"]
    assert (off[:, 1] == 1).all() and (off[:, 3] == 0).all()


def test_rand_augment_picks_its_ops_signs_and_magnitudes_as_torchvision():
    config = {"num_ops": 2, "magnitude": 10}
    mine = ours(B.RandAugment, config, height=37, width=45)
    names = B.RAND_AUGMENT_NAMES
    space = v2.RandAugment()._AUGMENTATION_SPACE
    assert list(space) == list(names)  # torchvision's ops, in its order (the pick is an index into it)
    for slot in range(2):
        same_frequencies(np.bincount(mine["picks"][:, slot].numpy(), minlength=len(names)),
                         [1 / len(names)] * len(names), f"RandAugment slot {slot}")
    for k, name in enumerate(names):
        magnitudes_fn, signed = space[name]
        chosen = mine["magnitude"][mine["picks"] == k]
        expected = magnitudes_fn(31, 37, 45)
        expected = 0.0 if expected is None else float(expected[10])
        assert torch.allclose(chosen.abs(), torch.full_like(chosen, abs(expected))), name
        if signed and expected:
            negative = int((chosen < 0).sum())
            assert stats.binomtest(negative, len(chosen), 0.5).pvalue > P_FLOOR, name
        else:
            assert (chosen >= 0).all(), name


def test_random_erasing_draws_boxes_as_torchvision():
    config = {"p": 1.0, "scale": [0.02, 0.33], "ratio": [0.3, 3.3], "value": 0}
    mine = ours(B.RandomErasing, config, height=32, width=32)
    reference = theirs(B.RandomErasing(config).reference(), 32, 32, dtype=torch.float32)
    erased = [d for d in reference if d["v"] is not None]
    assert stats.binomtest(int(mine["erased"].sum()), DRAWS, len(erased) / DRAWS).pvalue > P_FLOOR
    keep = mine["erased"]
    for name, key in (("height", "h"), ("width", "w"), ("top", "i"), ("left", "j")):
        same_distribution(mine[name][keep], [d[key] for d in erased], f"erasing {name}")
    assert ((mine["top"] + mine["height"])[keep] <= 32).all() and ((mine["left"] + mine["width"])[keep] <= 32).all()
    coin = ours(B.RandomErasing, {**config, "p": 0.3})["erased"]
    assert stats.binomtest(int(coin.sum()), DRAWS, 0.3 * len(erased) / DRAWS).pvalue > P_FLOOR


# --- each op's pixels against torchvision's kernel, for given parameters


def within_rounding(mine: torch.Tensor, reference: torch.Tensor, what: str, share: float = 1.0) -> None:
    """torchvision rounds to uint8 inside and after every op (twice in contrast and sharpness);
    the batched chain keeps float in between."""
    close = ((mine - reference.float()).abs() <= 2.0).float().mean().item()
    assert close >= share, f"{what}: {close:.3f} of the values within rounding"


def test_geometric_ops_warp_as_torchvisions_kernels():
    image = smooth_images(1, 64, 80)
    height, width = image.shape[-2:]
    angle = torch.tensor([10.0])
    rotate = B.Rotation({"degrees": 15}).matrix({"angle": angle}, height, width)
    within_rounding(B.warp(image.float(), [(rotate, True)]), F.rotate(image, 10.0), "rotation")
    affine = B.Affine({}).matrix({"angle": torch.tensor([7.0]), "tx": torch.tensor([5.0]), "ty": torch.tensor([-3.0]),
                                  "scale": torch.tensor([1.07])}, height, width)
    within_rounding(B.warp(image.float(), [(affine, True)]),
                    F.affine(image, angle=7.0, translate=[5, -3], scale=1.07, shear=[0.0, 0.0]), "affine")
    for axis, flip in ((0, F.horizontal_flip), (1, F.vertical_flip)):
        mirrored = B.warp(image.float(), [(B.flip_matrix(torch.tensor([True]), axis), False)])
        assert torch.equal(mirrored, flip(image).float())
    index = {name: k for k, name in enumerate(B.RAND_AUGMENT_NAMES)}
    for name, magnitude, reference in (
        ("ShearX", 0.1, F.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=[math.degrees(math.atan(0.1)), 0.0],
                                 center=[0, 0])),
        ("ShearY", -0.1, F.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, math.degrees(math.atan(-0.1))],
                                  center=[0, 0])),
        ("TranslateX", -9.7, F.affine(image, angle=0.0, translate=[-9, 0], scale=1.0, shear=[0.0, 0.0])),
        ("TranslateY", 4.2, F.affine(image, angle=0.0, translate=[0, 4], scale=1.0, shear=[0.0, 0.0])),
        ("Rotate", -10.0, F.rotate(image, -10.0)),
        ("Identity", 0.0, image),
    ):
        matrix = B.RandAugment.slot_matrix(torch.tensor([index[name]]), torch.tensor([magnitude]), index, height, width)
        within_rounding(B.warp(image.float(), [(matrix, True)]), reference, name)
    # flip, rotation and affine in one warp: what three warps make, but for the pixels where
    # rounding to the nearest pixel twice lands elsewhere than once
    composed = B.warp(image.float(), [(B.flip_matrix(torch.tensor([True]), 0), False), (rotate, True), (affine, True)])
    reference = F.affine(F.rotate(F.horizontal_flip(image), 10.0), angle=7.0, translate=[5, -3], scale=1.07, shear=[0.0, 0.0])
    within_rounding(composed, reference, "flip, rotation, affine in one warp", share=0.6)
    assert (composed == 0).float().mean() == pytest.approx((reference == 0).float().mean().item(), abs=0.02)  # same fill


def test_colour_ops_compute_as_torchvisions_kernels():
    images = smooth_images(6, 30, 34)
    x = images.float()

    def each(fn, *values):
        return torch.stack([fn(image, *v) for image, *v in zip(images, *values)])

    factors = [0.6, 0.8, 1.0, 1.2, 1.5, 1.9]
    kinds = {B.BRIGHTNESS: F.adjust_brightness, B.CONTRAST: F.adjust_contrast, B.SATURATION: F.adjust_saturation}
    for kind, fn in kinds.items():
        within_rounding(B.blend(x, torch.full((6,), kind), torch.tensor(factors)), each(fn, factors), fn.__name__)
    shifts = [-0.1, -0.05, 0.0, 0.02, 0.07, 0.1]
    within_rounding(B.adjust_hue(x, torch.tensor(shifts)), each(F.adjust_hue, shifts), "hue")
    within_rounding(B.sharpen(x, torch.tensor(factors)), each(F.adjust_sharpness, factors), "sharpness")
    within_rounding(B.autocontrast(x), F.autocontrast(images), "autocontrast")
    # a channel spread over less than 1/256 of a level is flat: in float16 255 over it would be inf, 0 * inf NaN
    nearly_flat = torch.full((1, 3, 4, 4), 100.0)
    nearly_flat[0, 2] = 0
    nearly_flat[0, 2, 0, 0] = 0.002
    assert torch.isfinite(B.autocontrast(nearly_flat.half())).all()
    assert torch.equal(B.autocontrast(nearly_flat)[0, 2], nearly_flat[0, 2])
    assert torch.equal(B.equalize(x), F.equalize(images).float())
    # a factor of 1 leaves the sample exactly as it was (unpicked samples go through these)
    assert torch.equal(B.blend(x, torch.zeros(6, dtype=torch.long), torch.ones(6)), x)
    assert torch.equal(B.sharpen(x, torch.ones(6)), x)


def test_rand_augment_applies_each_samples_own_pick():
    images = smooth_images(len(B.RAND_AUGMENT_NAMES), 24, 28)
    op = B.RandAugment({"num_ops": 1, "magnitude": 9})
    picks = torch.arange(len(B.RAND_AUGMENT_NAMES)).view(-1, 1)
    magnitude = torch.tensor([[op.magnitude(name, 24, 28)] for name in B.RAND_AUGMENT_NAMES])
    out = op.apply(images.float(), op.prepare({"picks": picks, "magnitude": magnitude}, 24, 28))
    reference = v2.RandAugment(num_ops=1, magnitude=9)
    for k, name in enumerate(B.RAND_AUGMENT_NAMES):
        expected = reference._apply_image_or_video_transform(images[k], name, float(magnitude[k]), reference.interpolation,
                                                              reference._fill)
        within_rounding(out[k], expected, name)


def test_erasing_fills_the_drawn_box_with_the_value_or_the_noise():
    images = torch.full((2, 3, 10, 12), 0.5)
    params = {"erased": torch.tensor([True, False]), "top": torch.tensor([2.0, 2.0]), "left": torch.tensor([3.0, 3.0]),
              "height": torch.tensor([4.0, 4.0]), "width": torch.tensor([5.0, 5.0])}
    fixed = B.RandomErasing({"value": 0})
    out = fixed.apply(images, fixed.prepare(params, 10, 12))
    assert (out[0, :, 2:6, 3:8] == 0).all() and out[0].sum() == pytest.approx(0.5 * (360 - 60))
    assert torch.equal(out[1], images[1])
    noisy = B.RandomErasing({"value": "random"})
    prepared = {**noisy.prepare(params, 10, 12), "noise_seed": 7}
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(7))
    assert torch.equal(noisy.apply(images, prepared)[0, :, 2:6, 3:8], noise[0, :, 2:6, 3:8])
    # a batch that erases nothing is left as it is
    nothing = {**params, "erased": torch.tensor([False, False])}
    assert noisy.apply(images, noisy.prepare(nothing, 10, 12)) is images


# --- the chain


def test_same_seeds_same_batch_other_seeds_another_and_no_global_random_state_used():
    images = smooth_images(8, 37)
    augmenter = B.BatchAugment(AUGMENT, 32)
    torch.manual_seed(123)
    first = augmenter(images, torch.arange(8))
    after = torch.rand(3)
    torch.manual_seed(999)
    again = augmenter(images, torch.arange(8))
    assert torch.equal(first, again)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))  # the caller's random stream is untouched
    assert first.shape == (8, 3, 32, 32) and first.dtype == torch.float32
    assert not torch.equal(first, augmenter(images, torch.arange(100, 108)))


def test_a_samples_augmentation_depends_on_its_seed_not_its_batch():
    augment = {**AUGMENT, "random_erasing": {**AUGMENT["random_erasing"], "value": 0}}  # noise is drawn per batch
    augmenter = B.BatchAugment(augment, 32)
    images = smooth_images(8, 37)
    whole = augmenter(images, torch.arange(8))
    half = augmenter(images[4:], torch.arange(4, 8))
    assert torch.allclose(whole[4:], half, atol=1e-5)
    # alone in its batch too: ColorJitter's slices and RandAugment's groups then hold it alone
    singles = torch.cat([augmenter(images[k : k + 1], torch.arange(k, k + 1)) for k in range(8)])
    assert torch.allclose(whole, singles, atol=1e-5)




def test_kernel_launches_per_batch_do_not_grow_with_the_batch_size():
    augmenter = B.BatchAugment(AUGMENT, 32)

    def launches(batch: int) -> int:
        """The operators the chain calls on the device (each one kernel launch or a few on a GPU),
        not counting what they call inside."""
        images = smooth_images(batch, 37)
        plan = augmenter.plan(torch.arange(batch), 37, 37)  # on the CPU, in a loader worker
        augmenter.run(images, plan)  # constants made once
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            augmenter.run(images, plan)
        return sum(1 for event in profile.events() if event.cpu_parent is None and event.name.startswith("aten::")
                   and event.name.removeprefix("aten::") not in VIEWS)

    # Small batches may skip a RandAugment group that none of their samples picked; from a few
    # dozen samples every group is there, and the count stays where it is.
    small, large, larger = launches(4), launches(256), launches(1024)
    assert small <= large == larger and 50 < large < 400, (small, large, larger)


def test_the_float16_chain_of_a_gpu_makes_the_float32_batch_within_rounding():
    """On a GPU the chain computes in float16 (half the bytes); here both run on the CPU. Values
    differ by rounding, and where a rounded source coordinate lands on the next pixel."""
    images, seeds = smooth_images(64, 37), torch.arange(64)
    full = B.BatchAugment(AUGMENT, 32)(images, seeds)
    half = B.BatchAugment(AUGMENT, 32, dtype=torch.float16)(images, seeds)
    assert half.dtype == torch.float32 and half.shape == full.shape
    steps = (half - full).abs() * 0.225 * 255  # in uint8 steps (0.225: about the recipe's std)
    assert (steps <= 1).float().mean() > 0.93 and (steps <= 4).float().mean() > 0.98
    assert B.BatchAugment(AUGMENT, 32).compute_dtype(torch.device("cuda", 0)) == torch.float16
    torch.backends.cudnn.benchmark = True  # the chain turns cuDNN's search off for itself alone
    try:
        B.BatchAugment(AUGMENT, 32)(images[:2], seeds[:2])
        assert torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = False
    assert B.BatchAugment(AUGMENT, 32).compute_dtype(torch.device("cpu")) == torch.float32


def test_a_plan_made_in_the_compute_dtype_makes_the_same_batch_with_fewer_device_operators():
    """Given its dtype (train.py: the training device's), the chain makes its plans' float
    parameters in it on the CPU, where the device would otherwise cast each one (a kernel each)."""
    images, seeds = smooth_images(64, 37), torch.arange(64)
    augmenter = B.BatchAugment(AUGMENT, 32, dtype=torch.float16)
    cast_here = augmenter.plan(seeds, 37, 37)
    augmenter.dtype = None  # the plan as a dtype-less chain makes it: float32 parameters
    cast_there = augmenter.plan(seeds, 37, 37)
    augmenter.dtype = torch.float16
    assert any(t.dtype == torch.float16 for t in flat(cast_here.steps))
    assert not any(t.is_floating_point() and t.dtype != torch.float16 for t in flat(cast_here.steps))
    assert any(t.dtype == torch.float32 for t in flat(cast_there.steps))
    assert torch.equal(augmenter.run(images, cast_here), augmenter.run(images, cast_there))

    def operators(plan) -> int:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            augmenter.run(images, plan)
        return sum(1 for event in profile.events() if event.cpu_parent is None and event.name == "aten::to"
                   and event.cpu_children)

    assert operators(cast_here) < operators(cast_there)


def flat(tree) -> list[torch.Tensor]:
    tensors = []
    B.tree_map(tensors.append, tree)
    return tensors


def test_ops_switched_off_leave_resize_and_normalize():
    augment = copy.deepcopy(AUGMENT)
    for key in [*C.augment_op_keys(), *C.augment_op_keys(after_resize=True)]:
        augment[key]["enabled"] = False
    images = smooth_images(4, 40)
    expected = torch.stack([presets.eval_transform(augment, 32)(image) for image in images])
    batched = B.BatchAugment(augment, 32)(images, torch.arange(4))
    assert (batched - expected).abs().max() < 1.0 / 255 / 0.22  # one uint8 step: eval rounds after the resize


def test_the_chain_refuses_a_float_batch():
    with pytest.raises(TypeError, match="uint8"):
        B.BatchAugment(AUGMENT, 32)(torch.zeros(2, 3, 8, 8), torch.arange(2))


def test_device_batches_hand_the_step_augmented_batches_on_the_device():
    augmenter = B.BatchAugment(AUGMENT, 32)
    images, seeds = smooth_images(6, 37), torch.arange(6)
    loader = [(images[:4], torch.tensor([0, 1, 2, 3]), seeds[:4]), (images[4:], torch.tensor([4, 5]), seeds[4:])]
    batches = list(engine.DeviceBatches(loader, torch.device("cpu"), channels_last=True, augment=augmenter))
    assert [b[0].shape[0] for b in batches] == [4, 2] and batches[1][1].tolist() == [4, 5]
    assert torch.equal(batches[0][0], augmenter(images[:4], seeds[:4]))
    assert batches[0][0].is_contiguous(memory_format=torch.channels_last)
    # the loader's collate hands the same batch as a plan drawn on the CPU
    images_batch, targets, plan = augmenter.collate([(image, 0, int(seed)) for image, seed in zip(images[:4], seeds[:4])])
    assert isinstance(plan, B.Plan) and torch.equal(augmenter(images_batch, plan), batches[0][0].contiguous())


def test_a_plan_is_one_buffer_that_crosses_from_a_worker_whole():
    """A batch's plan (a few dozen small tensors) packs into one byte buffer: one transfer from a
    loader worker, one pin, one copy to the device."""
    augmenter = B.BatchAugment(AUGMENT, 32)
    images, seeds = smooth_images(16, 37), torch.arange(16)
    plan = augmenter.plan(seeds, 37, 37)
    assert plan.buffer.dtype == torch.uint8 and plan.buffer.ndim == 1
    expected = augmenter(images, seeds)
    assert torch.equal(augmenter(images, pickle.loads(pickle.dumps(plan))), expected)
    samples = [(images[i], 0, int(seeds[i])) for i in range(16)]
    loader = torch.utils.data.DataLoader(samples, batch_size=16, num_workers=1, collate_fn=augmenter.collate)
    batch_images, _, batch_plan = next(iter(loader))
    assert isinstance(batch_plan, B.Plan) and torch.equal(augmenter(batch_images, batch_plan), expected)
    with pytest.raises(ValueError, match="plan for"):
        augmenter(smooth_images(16, 40), plan)


def test_augment_on_auto_is_the_device_on_a_gpu_and_the_loader_on_a_cpu():
    assert engine.resolve_augment_on("auto", torch.device("cpu")) == "loader"
    assert engine.resolve_augment_on("auto", torch.device("cuda", 0)) == "device"
    assert engine.resolve_augment_on("device", torch.device("cpu")) == "device"
    # auto keeps the aspect-preserving cache, from which the workers make the squares a GPU job needs
    assert cache.cache_mode(AUGMENT, "train", 1.15, "auto") == cache.cache_mode(AUGMENT, "train", 1.15, "loader") == "m1.15"


@pytest.mark.slow  # three short trainings
def test_training_with_device_augmentation_from_either_cache_or_the_files(tmp_path):
    """One epoch on the tiny data set: from the square cache and from the JPEGs the same run; from
    the aspect-kept cache (augment_on: auto on a GPU) a run of its own that trains as well."""
    make_dataset(tmp_path / "data")
    index_dataset(tmp_path / "data", tmp_path / "index")
    overlay = tiny_overlay(tmp_path / "data", train={"epochs": 1, "augment_on": "device"})
    overlay["augment"] = {}  # the full recipe chain, colour ops included
    cfg = checked_config(C.deep_merge(copy.deepcopy(RECIPE), overlay))
    run = C.run_config(cfg, "full", 0)
    write_json(tmp_path / "config.json", run)
    runs = {}
    for mode in ("s1.15", "m1.15"):
        cache.build_cache(tmp_path / "index" / "train.csv", tmp_path / f"{mode}.npy", tmp_path / f"{mode}.csv", mode, 32)
        runs[mode] = train.train(tmp_path / "config.json", index_files(tmp_path / "index"), tmp_path / mode,
                                 train_cache=(tmp_path / f"{mode}.npy", tmp_path / f"{mode}.csv"))
    decoded = train.train(tmp_path / "config.json", index_files(tmp_path / "index"), tmp_path / "files")
    columns = ["epoch", "train_loss", "val_loss", "val_acc"]
    pd.testing.assert_frame_equal(runs["s1.15"][columns], decoded[columns], check_exact=True)
    assert runs["m1.15"]["train_loss"].notna().all() and (runs["m1.15"]["train_loss"] < 10).all()


def test_auto_is_decided_where_the_run_config_is_written(monkeypatch):
    """A run's identity says which path made its data: a CPU run keeps the identity it had before
    `auto` existed (its config hash is that of augment_on: loader), a GPU run is a run of its own."""
    monkeypatch.setattr(C, "gpu_visible", lambda: False)
    cfg = checked_config(copy.deepcopy(RECIPE))
    on_cpu = C.run_config(cfg, "full", 0)
    as_before = C.run_config(checked_config(C.deep_merge(copy.deepcopy(RECIPE), {"train": {"augment_on": "loader"}})),
                             "full", 0)
    assert on_cpu["train"]["augment_on"] == "loader" and C.config_hash(on_cpu) == C.config_hash(as_before)
    train_cfg = {"augment_on": "auto", "device": "auto"}
    assert C.resolved_augment_on({**train_cfg, "device": "cuda"}) == "device"
    assert C.resolved_augment_on({**train_cfg, "augment_on": "loader", "device": "cuda"}) == "loader"
    monkeypatch.setattr(C, "gpu_visible", lambda: True)
    assert C.resolved_augment_on(train_cfg) == "device"
    assert C.resolved_augment_on({**train_cfg, "device": "cpu"}) == "loader"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.undo()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not C.gpu_visible()  # a job hidden from every GPU trains on the CPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (benchmarks/gpu_check.sh counts the syncs there)")
def test_the_batched_chain_never_waits_for_the_gpu():
    augmenter = B.BatchAugment(AUGMENT, 32)
    images = smooth_images(32, 37).cuda()
    plan = augmenter.plan(torch.arange(32), 37, 37).pin_memory()
    augmenter(images, plan)  # the first call sets up the allocator, the constants, the kernels
    torch.cuda.set_sync_debug_mode("error")
    try:
        augmenter(images, plan)
    finally:
        torch.cuda.set_sync_debug_mode("default")
