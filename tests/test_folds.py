"""Cross-validation folds and the carved validation split: stratified, decided by content alone,
duplicate-safe."""

import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import make_dataset
from imageclf.core import tables
from imageclf.core.errors import ConfigError, DataError
from imageclf.data import folds, index
from imageclf.evaluation import cross_validation


def labelled(classes=8, per_class=23, duplicates=0, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(classes):
        for i in range(per_class):
            rows.append({"path": f"train/{c}/img{c}_{i}.png", "label": str(c), "image_name": f"img{c}_{i}",
                         "width": 8, "height": 8, "sha256": f"{rng.integers(1 << 62):064x}"})
    frame = pd.DataFrame(rows)
    for i in range(duplicates):  # the same content again, under another path, in the same class
        copy = frame.iloc[i * 7].copy()
        copy["path"], copy["image_name"] = f"val/{copy['label']}/copy{i}.png", f"copy{i}"
        frame = pd.concat([frame, copy.to_frame().T], ignore_index=True)
    return frame


def classes_of(frame):
    return index.sort_class_names(frame["label"])


def test_folds_are_stratified_and_balanced():
    frame = labelled(classes=8, per_class=23)
    fold = folds.assign_folds(frame, classes_of(frame), 5, seed=0)
    per_class = pd.crosstab(frame["label"], fold)
    assert per_class.shape == (8, 5)
    assert (per_class.max(axis=1) - per_class.min(axis=1)).max() <= 1  # each class spread evenly
    sizes = fold.value_counts()
    assert sizes.max() - sizes.min() <= 1  # folds of equal size, within one image


def test_folds_depend_on_seed_and_content_not_paths_or_order():
    frame = labelled()
    classes = classes_of(frame)
    first = folds.assign_folds(frame, classes, 5, seed=0)
    shuffled = frame.sample(frac=1, random_state=3).assign(path=lambda f: "moved/" + f["path"])
    again = folds.assign_folds(shuffled, classes, 5, seed=0)
    assert dict(zip(frame["sha256"], first)) == dict(zip(shuffled["sha256"], again))
    other_seed = folds.assign_folds(frame, classes, 5, seed=1)
    assert (other_seed != first).mean() > 0.5


def test_images_with_the_same_content_share_a_fold():
    frame = labelled(duplicates=6)
    fold = folds.assign_folds(frame, classes_of(frame), 4, seed=0)
    assert frame.assign(fold=fold).groupby("sha256")["fold"].nunique().max() == 1
    held = folds.holdout(frame, classes_of(frame), 0.2, seed=0)
    assert frame.assign(held=held).groupby("sha256")["held"].nunique().max() == 1


def test_a_class_smaller_than_the_folds_is_spread_and_warned_about(caplog):
    frame = pd.concat([labelled(classes=3, per_class=10), labelled(classes=4, per_class=2, seed=1).iloc[6:]])
    fold = folds.assign_folds(frame, classes_of(frame), 5, seed=0)
    assert fold[frame["label"] == "3"].nunique() == 2
    assert "fewer distinct images than the 5 folds" in caplog.text and "'3' (2)" in caplog.text


def test_more_folds_than_distinct_images_is_an_error_naming_the_key():
    frame = labelled(classes=2, per_class=4, duplicates=2)  # 10 rows, 8 distinct images
    assert len(folds.assign_folds(frame, classes_of(frame), 8, seed=0).unique()) == 8
    with pytest.raises(ConfigError, match="cv.folds: 9 folds, but the labelled images .* only 8 distinct"):
        folds.assign_folds(frame, classes_of(frame), 9, seed=0)


def test_holdout_takes_the_fraction_of_each_class():
    frame = labelled(classes=4, per_class=20)
    held = folds.holdout(frame, classes_of(frame), 0.25, seed=0)
    assert held.groupby(frame["label"]).sum().tolist() == [5, 5, 5, 5]


def test_fold_index_files_hold_out_exactly_one_fold(tmp_path):
    frame = labelled(classes=4, per_class=10)
    train, val = frame.iloc[:30], frame.iloc[30:]
    tables.write_index(tmp_path / "train.csv", train)
    tables.write_index(tmp_path / "val.csv", val)
    tables.write_classes(tmp_path / "classes.csv", classes_of(frame))
    table = folds.run(tmp_path / "train.csv", tmp_path / "val.csv", tmp_path / "classes.csv", tmp_path / "folds.csv", 3, 0)
    assert len(table) == 40 and set(table["split"]) == {"train", "val"}
    seen = []
    for k in range(3):
        folds.split_fold(tmp_path / "folds.csv", k, tmp_path / f"f{k}_train.csv", tmp_path / f"f{k}_val.csv")
        fold_train, held = tables.read_index(tmp_path / f"f{k}_train.csv"), tables.read_index(tmp_path / f"f{k}_val.csv")
        assert not set(fold_train["path"]) & set(held["path"]) and len(fold_train) + len(held) == 40
        seen += held["path"].tolist()
    assert sorted(seen) == sorted(frame["path"])  # every labelled image held out exactly once
    folds.split_fold(tmp_path / "folds.csv", None, tmp_path / "all_train.csv", tmp_path / "all_val.csv")
    assert len(tables.read_index(tmp_path / "all_train.csv")) == 40 and tables.read_index(tmp_path / "all_val.csv").empty


def test_a_data_set_without_val_gets_a_carved_split_or_an_error_naming_the_key(tmp_path):
    make_dataset(tmp_path / "data", train_per_class=6, val_per_class=0)
    shutil.rmtree(tmp_path / "data" / "val", ignore_errors=True)
    with pytest.raises(DataError, match="set data.val_fraction"):
        index.build_index(tmp_path / "data")
    frames = index.build_index(tmp_path / "data", val_fraction=0.34, seed=0)
    assert len(frames["val"]) == 2 * len(frames["classes"]) and len(frames["train"]) == 4 * len(frames["classes"])
    assert not set(frames["train"]["sha256"]) & set(frames["val"]["sha256"])
    again = index.build_index(tmp_path / "data", val_fraction=0.34, seed=0)
    assert again["val"]["path"].tolist() == frames["val"]["path"].tolist()


def test_out_of_fold_predictions_cover_every_image_once_from_its_own_fold(tmp_path):
    frame = labelled(classes=3, per_class=6)
    classes = classes_of(frame)
    tables.write_folds(tmp_path / "folds.csv", frame.assign(split="train", fold=folds.assign_folds(frame, classes, 3, 0)))
    table = tables.read_folds(tmp_path / "folds.csv")
    rng = np.random.default_rng(0)
    paths = []
    for k in range(3):
        held = table[table["fold"] == k]
        probs = rng.dirichlet(np.ones(3), size=len(held))
        tables.write_predictions(tmp_path / f"f{k}.csv", tables.predictions_table(held["image_name"], held["label"], probs, classes))
        paths.append(tmp_path / f"f{k}.csv")
    oof = cross_validation.out_of_fold(tmp_path / "folds.csv", paths, tmp_path / "oof.csv")
    assert sorted(oof["image_name"]) == sorted(frame["image_name"]) and oof["image_name"].is_unique
    by_fold = {name: k for k in range(3) for name in tables.read_predictions(paths[k])["image_name"]}
    assert all(table.set_index("image_name").loc[name, "fold"] == k for name, k in by_fold.items())
    with pytest.raises(DataError, match="does not predict exactly the images of fold 1"):
        cross_validation.out_of_fold(tmp_path / "folds.csv", [paths[0], paths[2], paths[1]], tmp_path / "bad.csv")
