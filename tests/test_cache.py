"""The decoded-image cache: exact round trip, and the same tensors as decoding from disk."""

import copy

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, index_dataset
from imageclf.core import tables
from imageclf.core.config import augment_op_keys
from imageclf.core.errors import DataError
from imageclf.data import cache, loaders
from imageclf.data.images import open_image
from imageclf.training import presets
from PIL import Image
from torchvision.transforms import v2

AUGMENT = yaml.safe_load((REPO / "config.yaml").read_text())["augment"]


def augment_off():
    augment = copy.deepcopy(AUGMENT)
    for key in augment_op_keys():
        augment[key]["enabled"] = False
    augment["random_erasing"]["enabled"] = False
    return augment


@pytest.fixture
def indexed(dataset, tmp_path):
    # a few larger, non-square images, so the margin layout really resizes
    for i, size in enumerate([(80, 50), (41, 97)]):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
            dataset / "train" / "0" / f"big{i}.png")
    index_dataset(dataset, tmp_path / "idx")
    return tmp_path / "idx"


def test_modes_follow_the_augmentation():
    assert cache.cache_mode(AUGMENT, "train", 1.15) == "m1.15"
    assert cache.cache_mode(AUGMENT, "val", 1.15) == "exact"
    assert cache.cache_mode(augment_off(), "train", 1.15) == "exact"
    assert cache.cached_size(80, 50, "m1.15", 32) == (37, 59)  # short side ceil(1.15 * 32)
    assert cache.cached_size(30, 20, "m1.15", 32) == (20, 30)  # never enlarged
    # batched (device) augmentation needs one size: squares, small images enlarged too
    assert cache.cache_mode(AUGMENT, "train", 1.15, "device") == "s1.15"
    assert cache.cache_mode(AUGMENT, "val", 1.15, "device") == "exact"
    assert cache.cached_size(80, 50, "s1.15", 32) == cache.cached_size(20, 30, "s1.15", 32) == (37, 37)
    assert cache.batch_input_size(AUGMENT, 32, 1.15) == 37
    assert cache.batch_input_size(augment_off(), 32, 1.15) == 32


@pytest.mark.parametrize("mode", ["exact", "m1.15", "s1.15"])
def test_cache_round_trips_images(indexed, tmp_path, mode):
    csv = indexed / "train.csv"
    cache.build_cache(csv, tmp_path / "c.npy", tmp_path / "c.csv", mode, 32, threads=2)
    cached = cache.CachedImages(tmp_path / "c.npy", tmp_path / "c.csv", csv)
    frame = tables.read_index(csv)
    for i, path in enumerate(frame["path"]):
        expected = cache.resize_for_cache(open_image(path), mode, 32)
        got = np.asarray(cached.image(i))
        assert got.dtype == np.uint8 and np.array_equal(got, expected), path
        if mode == "m1.15" and min(Image.open(path).size) <= 37:
            assert np.array_equal(got, np.asarray(open_image(path)))  # small images stored as they are
    shapes = {np.asarray(cached.image(i)).shape for i in range(len(frame))}
    assert {"exact": shapes == {(32, 32, 3)}, "m1.15": (37, 59, 3) in shapes, "s1.15": shapes == {(37, 37, 3)}}[mode]


@pytest.mark.parametrize("split, augment", [("train", "off"), ("val", "eval")])
def test_cached_and_uncached_tensors_are_identical(indexed, tmp_path, split, augment):
    csv = indexed / f"{split}.csv"
    aug = augment_off()
    transform = presets.train_transform(aug, 32) if augment == "off" else presets.eval_transform(AUGMENT, 32)
    mode = cache.cache_mode(aug, split, 1.15)
    assert mode == "exact"
    cache.build_cache(csv, tmp_path / "c.npy", tmp_path / "c.csv", mode, 32)
    frame = tables.read_index(indexed / f"{split}.csv")
    classes = tables.read_classes(indexed / "classes.csv")
    plain = loaders.ImageDataset(frame, classes, transform)
    cached = loaders.ImageDataset(frame, classes, transform, cache.CachedImages(tmp_path / "c.npy", tmp_path / "c.csv", csv))
    sampler = loaders.SeededSampler(len(plain), seed=3)
    for item in list(sampler)[:20]:
        a, b = plain[item], cached[item]
        assert a[1] == b[1] and torch.equal(a[0], b[0])


def test_cache_from_another_index_is_refused(indexed, tmp_path):
    csv = indexed / "val.csv"
    cache.build_cache(csv, tmp_path / "c.npy", tmp_path / "c.csv", "exact", 32)
    changed = tmp_path / "val.csv"
    tables.write_index(changed, tables.read_index(csv).iloc[::-1])  # same images, another index
    with pytest.raises(DataError, match="made from another version"):
        cache.CachedImages(tmp_path / "c.npy", tmp_path / "c.csv", changed)


def test_cached_dataset_works_in_worker_processes(indexed, tmp_path):
    csv = indexed / "val.csv"
    cache.build_cache(csv, tmp_path / "c.npy", tmp_path / "c.csv", "exact", 32)
    frame = tables.read_index(indexed / "val.csv")
    dataset = loaders.ImageDataset(frame, tables.read_classes(indexed / "classes.csv"), presets.eval_transform(AUGMENT, 32),
                                cache.CachedImages(tmp_path / "c.npy", tmp_path / "c.csv", csv))
    loader = loaders.make_loader(dataset, batch_size=8, num_workers=2)
    batches = [images for images, _ in loader]
    assert sum(len(b) for b in batches) == len(frame)
    assert torch.equal(torch.cat(batches), torch.stack([dataset[i][0] for i in range(len(frame))]))


def test_reference_ops_are_unchanged_by_the_cache():
    """The cache changes where the pixels come from, not which ops run with which parameters."""
    chain = presets.train_transform(AUGMENT, 224).transforms
    assert [type(t) for t in chain][:7] == [v2.RandomHorizontalFlip, v2.RandomVerticalFlip, v2.RandomRotation,
                                            v2.RandomAffine, v2.ColorJitter, v2.RandAugment, v2.Resize]


def test_cached_squares_skip_pil_and_match_it(indexed, tmp_path, monkeypatch):
    """augment_on: device reads the s-layout squares straight into tensors; the PIL route of the
    same transform gives the same uint8 values, and uncached images still take that route."""
    csv = indexed / "train.csv"
    cache.build_cache(csv, tmp_path / "c.npy", tmp_path / "c.csv", "s1.15", 32)
    squares = cache.CachedImages(tmp_path / "c.npy", tmp_path / "c.csv", csv)
    frame, classes = tables.read_index(indexed / "train.csv"), tables.read_classes(indexed / "classes.csv")
    transform = presets.batch_input_transform(37)
    via_pil = loaders.ImageDataset(frame, classes, transform, squares, pass_seed=True)
    direct = loaders.ImageDataset(frame, classes, transform, squares, pass_seed=True, square_size=37)
    uncached = loaders.ImageDataset(frame, classes, transform, pass_seed=True, square_size=37)
    for item in list(loaders.SeededSampler(len(frame), seed=1))[:12]:
        a, b, c = via_pil[item], direct[item], uncached[item]
        assert a[1:] == b[1:] == c[1:] and b[0].shape == (3, 37, 37) and torch.equal(a[0], b[0])
        assert c[0].shape == (3, 37, 37)  # decoded and squashed by the transform instead
    monkeypatch.setattr(cache.CachedImages, "image", lambda *_: pytest.fail("went through PIL"))
    direct[(0, 5)]
