"""Real-world data sets: images read as a person sees them, any folder name kept as written,
junk files skipped, bad files named, results readable by the team (issue: Real-world data)."""

import itertools
import logging
import os
import stat

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, class_image, index_dataset, index_files, save_image, tiny_overlay
from imageclf.checks import checked_config
from imageclf.core import config as C
from imageclf.core import tables
from imageclf.core.errors import DataError
from imageclf.core.io_utils import write_json, write_text
from imageclf.data import cache, index, loaders
from imageclf.data.images import image_extensions, open_image
from imageclf.training import train
from PIL import Image


def build(root, classes, per_split=(("train", 3), ("val", 1)), test=2, suffix=".png"):
    rng = np.random.default_rng(0)
    for split, count in per_split:
        for number, name in enumerate(classes):
            for i in range(count):
                save_image(class_image(number, rng), root / split / name / f"{split}_{number}_{i}{suffix}", "RGB")
    for i in range(test):
        save_image(class_image(i, rng), root / "test" / f"t{i}{suffix}", "RGB")
    return root


def test_folder_names_that_pandas_reads_as_missing_stay_names(tmp_path):
    names = ["None", "NA", "null", "nan", "", "01"]
    names = [n for n in names if n]  # a folder cannot be named ""
    root = build(tmp_path / "data", names)
    index_dataset(root, tmp_path / "idx")
    classes = tables.read_classes(tmp_path / "idx" / "classes.csv")
    assert sorted(classes) == sorted(names)
    train = tables.read_index(tmp_path / "idx" / "train.csv")
    assert set(train["label"]) == set(names)
    targets = loaders.ImageDataset(train, classes, transform=lambda image: image).targets
    assert min(targets) >= 0 and [classes[t] for t in targets] == train["label"].tolist()
    # predictions keep them too, and an unknown label stays empty, not NaN
    frame = pd.DataFrame({"image_name": ["NA", "null"], "label": ["None", ""], "pred_label": ["NA", "null"],
                          "correct": [False, None], "prob_NA": [0.6, 0.2], "prob_null": [0.4, 0.8]})
    tables.write_predictions(tmp_path / "p.csv", frame)
    back = tables.read_predictions(tmp_path / "p.csv")
    assert back["image_name"].tolist() == ["NA", "null"] and back["label"].tolist() == ["None", ""]
    assert back["correct"].tolist() == [False, None] and back["prob_null"].tolist() == [0.4, 0.8]


@pytest.mark.parametrize("names", [["1", "01", "2", "10"], ["b", "B", "a", "10", "9"]])
def test_class_order_is_the_same_whatever_order_the_folders_come_in(tmp_path, names):
    orders = {tuple(index.sort_class_names(p)) for p in itertools.permutations(names)}
    assert len(orders) == 1
    order = orders.pop()
    if names[0] == "1":
        assert order == ("01", "1", "2", "10")  # by value, ties by text
    else:
        assert order == ("10", "9", "B", "a", "b")  # text, code-point order
    root = build(tmp_path / "data", names)
    assert tuple(index_dataset(root, tmp_path / "idx")["classes"]) == order


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")  # what Pillow makes of a 16-bit PNG
    pixels = np.asarray(open_image(path))
    assert pixels.shape == (64, 64, 3)
    assert np.array_equal(pixels[..., 0], (values >> 8).astype(np.uint8))
    assert (pixels == 255).mean() < 0.01  # not the almost-white image a plain convert("RGB") gives


@pytest.mark.parametrize("mode, values, expected", [
    ("I", np.array([[0, 70000], [35000, 140000]], dtype=np.int32), [[0, 127], [63, 255]]),  # by its range
    ("F", np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32), [[0, 127], [255, 63]]),  # 0..1 x 255
])
def test_wide_integer_and_float_images_use_their_range(tmp_path, mode, values, expected):
    path = tmp_path / "wide.tif"
    Image.fromarray(values, mode).save(path)
    assert np.array_equal(np.asarray(open_image(path))[..., 0], np.array(expected, dtype=np.uint8))


def test_exif_orientation_is_applied_everywhere(tmp_path):
    """A phone photo stored sideways: every stage sees it upright, as a viewer shows it."""
    upright = np.zeros((40, 20, 3), dtype=np.uint8)  # tall: 20 wide, 40 high
    upright[:10] = 255  # white band on top
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # stored lying on its side
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view"
    root = build(tmp_path / "data", ["a", "b"], suffix=".jpg")
    photo = root / "train" / "a" / "phone.jpg"
    stored.save(photo, exif=exif, quality=95)
    seen = np.asarray(open_image(photo))
    assert seen.shape == (40, 20, 3)
    assert seen[:8].mean() > 200 and seen[12:].mean() < 50
    frames = index_dataset(root, tmp_path / "idx")
    row = frames["train"][frames["train"]["path"] == str(photo)].iloc[0]
    assert (row["width"], row["height"]) == (20, 40)  # the index, hence the cache, use the same pixels
    cache.build_cache(tmp_path / "idx" / "train.csv", tmp_path / "c.npy", tmp_path / "c.csv", "m1.15", 16)
    cached = cache.CachedImages(tmp_path / "c.npy", tmp_path / "c.csv", tmp_path / "idx" / "train.csv")
    assert np.asarray(cached.image(frames["train"].index[frames["train"]["path"] == str(photo)][0])).shape[0] > 19


@pytest.mark.parametrize("suffix, mode", [(".webp", "RGB"), (".bmp", "RGB"), (".gif", "P"), (".tif", "RGB"),
                                          (".tiff", "CMYK"), (".png", "LA")])
def test_every_format_pillow_reads_is_accepted(tmp_path, suffix, mode):
    assert suffix in image_extensions()
    root = build(tmp_path / "data", ["x", "y"])
    image = Image.fromarray(class_image(1, np.random.default_rng(1))).convert(mode)
    image.save(root / "train" / "x" / f"other{suffix}")
    frames = index_dataset(root, tmp_path / "idx")
    assert (root / "train" / "x" / f"other{suffix}").as_posix() in set(frames["train"]["path"])
    assert open_image(root / "train" / "x" / f"other{suffix}").mode == "RGB"


def test_transparency_is_composited_over_white(tmp_path):
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)  # black, fully transparent
    Image.fromarray(pixels, "RGBA").save(tmp_path / "clear.png")
    assert (np.asarray(open_image(tmp_path / "clear.png")) == 255).all()


def test_junk_is_skipped_and_counted_other_files_are_named(tmp_path, caplog):
    root = build(tmp_path / "data", ["x", "y"])
    for junk in ("Thumbs.db", "desktop.ini", ".DS_Store", "._x_0.png"):
        (root / "train" / "x" / junk).write_bytes(b"junk")
    (root / "test" / "Thumbs.db").write_bytes(b"junk")
    with caplog.at_level(logging.WARNING, logger="imageclf"):
        frames = index_dataset(root, tmp_path / "idx")
    assert len(frames["train"]) == 6 and len(frames["test"]) == 2
    skipped = [r.getMessage() for r in caplog.records if "not data" in r.getMessage()]
    assert len(skipped) == 2 and "skipped 4 file(s)" in skipped[0] and "skipped 1 file(s)" in skipped[1]
    (root / "train" / "x" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt: not an image file"):
        index_dataset(root, tmp_path / "idx2")


def test_an_image_above_the_pixel_limit_is_named(tmp_path):
    root = build(tmp_path / "data", ["x", "y"])
    big = root / "train" / "y" / "huge.png"
    Image.new("RGB", (300, 200)).save(big)
    with pytest.raises(DataError) as error:
        index.run(root, tmp_path / "t.csv", tmp_path / "v.csv", tmp_path / "c.csv", max_pixels=50_000)
    assert str(big) in str(error.value) and "data.max_image_pixels" in str(error.value)
    index.run(root, tmp_path / "t.csv", tmp_path / "v.csv", tmp_path / "c.csv", max_pixels=60_000)  # raised: fine


def test_one_class_is_an_error(tmp_path):
    root = build(tmp_path / "data", ["only"])
    with pytest.raises(DataError, match="at least two"):
        index_dataset(root, tmp_path / "idx")


def test_a_train_class_without_val_images_is_a_warning(tmp_path, caplog):
    root = build(tmp_path / "data", ["a", "b", "c"])
    for path in (root / "val" / "c").iterdir():
        path.unlink()
    (root / "val" / "c").rmdir()
    with caplog.at_level(logging.WARNING, logger="imageclf"):
        index_dataset(root, tmp_path / "idx")
    assert any("have no val images" in r.getMessage() and "'c'" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_outputs_get_the_permissions_of_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_text(tmp_path / "shared.txt", "for the team")
        tables.write_classes(tmp_path / "classes.csv", ["a", "b"])
    finally:
        os.umask(old)
    for name in ("shared.txt", "classes.csv"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode


def test_training_never_sees_a_batch_of_one(tmp_path):
    """9 train images in batches of 2: the last batch would hold one image, on which BatchNorm
    fails in training mode. Training drops that batch only. (fp32: on a CPU with native bf16, auto
    picks bf16, whose rounding turns BatchNorm over two 1 x 1 maps into NaN.)"""
    root = build(tmp_path / "data", ["a", "b", "c"], per_split=(("train", 3), ("val", 1)))
    index_dataset(root, tmp_path / "idx")
    recipe = yaml.safe_load((REPO / "config.yaml").read_text())
    train_cfg = {"epochs": 1, "batch_size": 2, "image_size": 16, "precision": "fp32"}
    cfg = checked_config(C.deep_merge(recipe, tiny_overlay(root, data={"test_labels": None}, train=train_cfg)))
    write_json(tmp_path / "config.json", C.run_config(cfg, "full", 0))
    history = train.train(tmp_path / "config.json", index_files(tmp_path / "idx"), tmp_path / "run")
    assert len(history) == 1 and np.isfinite(history["train_loss"]).all()


def test_a_relative_root_that_does_not_exist_names_the_folder_it_was_resolved_against(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as error:
        index.run("my_data", tmp_path / "t.csv", tmp_path / "v.csv", tmp_path / "c.csv")
    assert f"folder 'my_data' (relative to {tmp_path}) does not exist" in str(error.value)


def test_warnings_reach_the_console_and_everything_the_log(tmp_path):
    """What a rule shows: the log file has every line, the console the warnings (a discarded
    resume state, skipped files) and errors."""
    import subprocess

    root = build(tmp_path / "data", ["x", "y"])
    (root / "train" / "x" / "Thumbs.db").write_bytes(b"junk")
    log = tmp_path / "index.log"
    result = subprocess.run(["imageclf", "index", "--root", str(root), "--train-out", str(tmp_path / "t.csv"),
                             "--val-out", str(tmp_path / "v.csv"), "--classes-out", str(tmp_path / "c.csv"),
                             "--log-file", str(log)], capture_output=True, text=True)
    assert result.returncode == 0
    assert "skipped 1 file(s) that are not data" in result.stderr and "indexed 2 classes" not in result.stderr
    assert "skipped 1 file(s)" in log.read_text() and "indexed 2 classes" in log.read_text()
