"""The index: labels from folder names, format handling, and every bad-data case named."""

import shutil
import unicodedata

import pandas as pd
import pytest
from conftest import N_CLASSES, index_dataset, make_dataset
from imageclf.core.errors import DataError
from imageclf.data.images import open_image
from imageclf.data.loaders import ImageDataset
from PIL import Image


def test_classes_sorted_numerically_and_labels_are_folder_names(dataset, tmp_path):
    frames = index_dataset(dataset, tmp_path / "idx", test_labels=dataset / "test_labels.csv")
    names = frames["classes"]
    assert names == [str(i) for i in range(N_CLASSES)]  # "2" before "10", unlike a string sort
    assert sorted(names) != names
    train = pd.read_csv(tmp_path / "idx" / "train.csv", dtype=str)
    for _, row in train.iterrows():
        assert row["path"].split("/")[-2] == row["label"]
    # the dataset maps every folder name to the class index of the same number
    dataset_ = ImageDataset(train, names, transform=lambda image: image)
    assert [int(name) for name in train["label"]] == dataset_.targets


def test_index_columns_and_test_split(dataset, tmp_path):
    frames = index_dataset(dataset, tmp_path / "idx", test_labels=dataset / "test_labels.csv")
    test = pd.read_csv(tmp_path / "idx" / "test.csv", dtype=str, keep_default_na=False)
    assert list(test.columns) == ["path", "label", "image_name", "width", "height", "sha256"]
    assert (test["label"] == "").all()
    assert len(test) == len(frames["test"]) == 2 * N_CLASSES
    assert test["image_name"].str.startswith("img").all()
    assert not test["image_name"].str.contains(r"\.").any()  # name without extension
    summary = pd.read_csv(tmp_path / "idx" / "summary.csv")
    assert summary["train"].tolist() == [6] * N_CLASSES and summary["test"].tolist() == [2] * N_CLASSES


def test_all_formats_load_as_rgb(dataset):
    suffixes = {p.suffix for p in dataset.rglob("*.*") if p.suffix != ".csv"}
    assert {".png", ".JPG", ".jpeg", ".jpg"} <= suffixes
    modes = set()
    for path in dataset.rglob("*.png"):
        with Image.open(path) as image:
            modes.add(image.mode)
        assert open_image(str(path)).mode == "RGB"
    assert {"L", "RGBA", "P"} <= modes


def first_train_image(root, suffix=".jpg"):
    return next(p for p in sorted((root / "train").rglob(f"*{suffix}")))


@pytest.mark.parametrize(
    "breakage, culprit",
    [
        ("corrupt_jpeg", "not a readable image"),
        ("truncated_png", "not a readable image"),
        ("non_image", "not an image file"),
        ("empty_class", "empty class folder"),
        ("missing_val", "missing split folder"),
        ("missing_test", "missing split folder"),
        ("val_class_not_in_train", "is in val but not in train"),
        ("duplicate_test_names", "must be unique"),
        ("file_in_split_root", "images belong in"),
    ],
)
def test_bad_data_is_named_before_training(dataset, tmp_path, breakage, culprit):
    if breakage == "corrupt_jpeg":
        bad = first_train_image(dataset)
        bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    elif breakage == "truncated_png":
        bad = first_train_image(dataset, ".png")
        bad.write_bytes(bad.read_bytes()[:-200])
    elif breakage == "non_image":
        bad = dataset / "train" / "3" / "notes.txt"
        bad.write_text("hello")
    elif breakage == "empty_class":
        bad = dataset / "train" / "99"
        bad.mkdir()
    elif breakage == "missing_val":
        shutil.rmtree(dataset / "val")
        bad = dataset / "val"
    elif breakage == "missing_test":
        shutil.rmtree(dataset / "test")
        bad = dataset / "test"
    elif breakage == "val_class_not_in_train":
        bad = dataset / "val" / "77"
        shutil.copytree(dataset / "val" / "5", bad)
    elif breakage == "duplicate_test_names":
        original = next((dataset / "test").glob("*.jpg"))
        bad = original.with_suffix(".png")
        Image.open(original).save(bad)
    elif breakage == "file_in_split_root":
        bad = dataset / "train" / "stray.jpg"
        shutil.copy(first_train_image(dataset), bad)
    out = tmp_path / "idx"
    with pytest.raises(DataError) as error:
        index_dataset(dataset, out)
    assert str(bad) in str(error.value)
    assert culprit in str(error.value)
    assert str(error.value).count(culprit) == 1  # said once, not once per image of a folder
    assert not (out / "train.csv").exists() or breakage in ("missing_test", "duplicate_test_names")
    assert not (out / "test.csv").exists()  # nothing half-written


def test_missing_root_is_named(tmp_path):
    with pytest.raises(DataError, match="data.root: folder '.*nowhere' does not exist"):
        index_dataset(tmp_path / "nowhere", tmp_path / "idx")


def test_test_labels_are_checked(dataset, tmp_path):
    labels = pd.read_csv(dataset / "test_labels.csv", dtype=str)
    bad = tmp_path / "labels.csv"
    labels.iloc[1:].to_csv(bad, index=False)
    with pytest.raises(DataError, match="no label for test image"):
        index_dataset(dataset, tmp_path / "idx", test_labels=bad)


def test_leaks_across_splits_are_reported(dataset, tmp_path):
    leaked = first_train_image(dataset)
    copy = dataset / "test" / "leaked.jpg"
    shutil.copy(leaked, copy)
    frames = index_dataset(dataset, tmp_path / "warn", on_leak="warn")
    leaks = pd.read_csv(tmp_path / "warn" / "leaks.csv")
    assert len(leaks) == 1 and {leaks.loc[0, "path_a"], leaks.loc[0, "path_b"]} == {str(leaked), str(copy)}
    assert len(frames["test"]) == 2 * N_CLASSES + 1
    with pytest.raises(DataError, match="identical content across splits.*on_leak"):
        index_dataset(dataset, tmp_path / "error", on_leak="error")


def test_clean_data_reports_no_leaks(tmp_path):
    make_dataset(tmp_path / "d")
    index_dataset(tmp_path / "d", tmp_path / "idx", on_leak="error")
    assert len(pd.read_csv(tmp_path / "idx" / "leaks.csv")) == 0


def test_a_val_class_spelled_with_other_unicode_code_points_is_named_with_its_train_twin(dataset, tmp_path):
    """macOS writes folder names decomposed (NFD), most other systems composed (NFC): 'café'
    copied from one to the other looks the same and is another class name."""
    composed, decomposed = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    shutil.move(dataset / "train" / "5", dataset / "train" / composed)
    shutil.move(dataset / "val" / "5", dataset / "val" / decomposed)
    with pytest.raises(DataError, match=f"class '{decomposed}' is in val but not in train .*train's '{composed}' "
                                        "looks the same but is spelled with other Unicode code points"):
        index_dataset(dataset, tmp_path / "idx")
