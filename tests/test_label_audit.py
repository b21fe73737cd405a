"""The label audit (confident learning on held-out predictions) and data.exclude, which trains a
variant without the images it lists."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import make_dataset
from imageclf.core import config as C
from imageclf.core import tables
from imageclf.core.errors import ConfigError, DataError
from imageclf.data import cache, exclude
from imageclf.report import audit
from PIL import Image

CLASSES = ["cat", "dog", "fox", "owl"]


def held_out(tmp_path, n_per_class=40, flipped=8, seed=0):
    """A val index, its predictions by a decent model, and `flipped` labels flipped on purpose
    (the model still sees the true class). Returns the files and the flipped images' paths."""
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for c, name in enumerate(CLASSES):
        for i in range(n_per_class):
            path = tmp_path / "data" / "val" / name / f"{name}{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), (60 * c, 100, 200 - 40 * c)).save(path)
            rows.append({"path": str(path), "label": name, "image_name": f"{name}{i}",
                         "width": 32, "height": 32, "sha256": f"{rng.integers(1 << 62):064x}"})
            truth.append(c)
    index = pd.DataFrame(rows)
    flip = rng.choice(len(index), flipped, replace=False)
    for i in flip:  # the given label becomes another class
        index.loc[i, "label"] = CLASSES[(truth[i] + 1 + rng.integers(3)) % 4]
    logits = rng.normal(0, 1.0, (len(index), 4))
    logits[np.arange(len(index)), truth] += 2.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    tables.write_index(tmp_path / "val.csv", index)
    tables.write_classes(tmp_path / "classes.csv", CLASSES)
    tables.write_predictions(tmp_path / "pred.csv", tables.predictions_table(index["image_name"], index["label"],
                                                                            probs, CLASSES))
    tables.write_selection(tmp_path / "selection.json", {"epoch": 3, "warnings": []})
    return index.loc[flip, "path"].tolist()


def test_labels_flipped_on_purpose_rank_near_the_top(tmp_path):
    flipped = held_out(tmp_path)
    table = audit.run([tmp_path / "pred.csv"], tmp_path / "val.csv", tmp_path / "classes.csv",
                      [tmp_path / "selection.json"], tmp_path / "issues.csv", tmp_path / "gallery.png", gallery=6)
    top = table.head(2 * len(flipped))["image"].tolist()
    assert sum(path in top for path in flipped) >= len(flipped) - 1
    assert table["rank"].tolist() == list(range(1, len(table) + 1)) and table["score"].is_monotonic_decreasing
    # confident learning flags few, and those it flags are the flipped ones (precision over recall)
    flagged = table.loc[table["flagged"].astype(bool), "image"].tolist()
    assert flagged and sum(path in flipped for path in flagged) >= 0.5 * len(flagged)
    written = tables.read_label_issues(tmp_path / "issues.csv")
    assert written["image"].tolist() == table["image"].tolist() and (tmp_path / "gallery.png").stat().st_size > 0


def test_a_flagged_run_is_refused_as_audit_source(tmp_path):
    held_out(tmp_path)
    tables.write_selection(tmp_path / "selection.json", {"epoch": 1, "warnings": ["val accuracy is no better than chance"]})
    with pytest.raises(DataError, match="select flagged this run"):
        audit.run([tmp_path / "pred.csv"], tmp_path / "val.csv", tmp_path / "classes.csv",
                  [tmp_path / "selection.json"], tmp_path / "issues.csv", tmp_path / "gallery.png")
    assert not (tmp_path / "issues.csv").exists()


def test_confident_learning_flags_only_confident_disagreements():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.5, 0.5]])
    given = np.array([0, 1, 1, 0])
    found = audit.confident_learning(probs, given)
    # thresholds: class 0 the mean of 0.9 and 0.5; class 1 of 0.8 and 0.3
    assert np.allclose(found["thresholds"], [0.7, 0.55])
    # the third reaches class 0's threshold: flagged; the last reaches none: not flagged
    assert found["flagged"].tolist() == [False, False, True, False]
    assert found["confident"].tolist() == [0, 1, 0, -1]
    assert np.allclose(found["score"], [-0.8, -0.6, 0.4, 0.0])


def issues_file(tmp_path, images, scores, flagged):
    frame = pd.DataFrame({"rank": range(1, len(images) + 1), "image": images, "image_name": images,
                          "given_label": "a", "suggested_label": "b", "score": scores, "flagged": flagged,
                          "self_confidence": 0.5})
    tables.write_label_issues(tmp_path / "issues.csv", frame)
    return str(tmp_path / "issues.csv")


def train_index(n=6):
    return pd.DataFrame({"path": [f"data/train/a/i{k}.png" for k in range(n)], "label": "a",
                         "image_name": [f"i{k}" for k in range(n)], "width": 8, "height": 8, "sha256": "0" * 64})


def test_exclude_drops_exactly_the_listed_images(tmp_path):
    index = train_index()
    listed = ["data/train/a/i4.png", "data/train/a/i1.png", "data/val/a/v0.png", "data/train/a/i2.png"]
    path = issues_file(tmp_path, listed, [0.9, 0.5, 0.4, 0.1], [True, True, False, False])
    kept = exclude.kept_rows(index, {"file": path})
    assert index.loc[~kept, "path"].tolist() == ["data/train/a/i1.png", "data/train/a/i2.png", "data/train/a/i4.png"]
    top = exclude.kept_rows(index, {"file": path, "top_k": 2})
    assert index.loc[~top, "path"].tolist() == ["data/train/a/i1.png", "data/train/a/i4.png"]
    scored = exclude.kept_rows(index, {"file": path, "min_score": 0.6})
    assert index.loc[~scored, "path"].tolist() == ["data/train/a/i4.png"]
    flagged = exclude.kept_rows(index, {"file": path, "flagged": True})
    assert index.loc[~flagged, "path"].tolist() == ["data/train/a/i1.png", "data/train/a/i4.png"]
    assert exclude.kept_rows(index, None).all()


def test_a_list_of_paths_written_another_way_is_an_error_naming_the_file(tmp_path):
    path = issues_file(tmp_path, ["/elsewhere/i1.png"], [0.9], [True])
    with pytest.raises(DataError, match="issues.csv: data.exclude lists 1 image"):
        exclude.kept_rows(train_index(), {"file": path})
    plain = tmp_path / "plain.csv"
    plain.write_text("image\ndata/train/a/i3.png\n")  # a user's list: the image column alone
    assert (~exclude.kept_rows(train_index(), {"file": str(plain)})).sum() == 1
    with pytest.raises(DataError, match="no `flagged` column"):
        exclude.kept_rows(train_index(), {"file": str(plain), "flagged": True})


def test_the_cache_seen_through_kept_rows_gives_their_pixels(tmp_path):
    make_dataset(tmp_path / "data", train_per_class=2, val_per_class=1, test_per_class=1)
    from imageclf.data import index
    index.run(tmp_path / "data", tmp_path / "train.csv", tmp_path / "val.csv", tmp_path / "classes.csv")
    cache.build_cache(tmp_path / "train.csv", tmp_path / "px.npy", tmp_path / "meta.csv", "exact", 16)
    images = cache.open_cache((tmp_path / "px.npy", tmp_path / "meta.csv"), tmp_path / "train.csv")
    rows = np.array([1, 4, 5])
    view = images.subset(rows)
    assert all((view.array(i) == images.array(row)).all() for i, row in enumerate(rows))


def config_with(variants, **audit_keys):
    user = C.deep_merge(C.yaml.safe_load(open(C.SCHEMA_PATH.parents[3] / "config.yaml")),
                        {"variants": variants, "audit": audit_keys})
    return C.effective_config(user)


def test_exclude_is_a_variant_key_that_leaves_other_runs_as_they_were(tmp_path):
    spec = {"file": "results/audit/label_issues.csv", "flagged": True}
    plain = config_with({"full": {}})
    config = config_with({"full": {}, "cleaned": {"data": {"exclude": spec}}})
    assert C.run_config(config, "full", 0) == C.run_config(plain, "full", 0)
    cleaned = C.run_config(config, "cleaned", 0)
    assert cleaned["data"] == {"exclude": spec}
    assert {k: v for k, v in cleaned.items() if k not in ("data", "variant")} == \
        {k: v for k, v in C.run_config(config, "full", 0).items() if k != "variant"}
    assert json.dumps(cleaned)  # a run config is JSON


def test_the_audited_run_must_train_on_every_image_and_variants_change_only_exclude():
    spec = {"file": "results/audit/label_issues.csv"}
    with pytest.raises(ConfigError, match="audit.variant: 'cleaned' trains without"):
        config_with({"full": {}, "cleaned": {"data": {"exclude": spec}}}, variant="cleaned")
    mine = {"file": "config.yaml"}  # a list of the user's own: that run may be audited
    assert C.run_exclusion(config_with({"full": {}, "mine": {"data": {"exclude": mine}}}, variant="mine"), "mine")
    with pytest.raises(ConfigError, match="variants.odd.data: only `exclude`"):
        config_with({"full": {}, "odd": {"data": {"root": "elsewhere"}}})


@pytest.mark.slow
def test_a_cleaned_variant_trains_without_the_audit_suspects_and_is_judged_on_every_image(tmp_path):
    """Under cross-validation: labels flipped on purpose, a resized copy of a training image in
    val/; the audit, a `cleaned` variant without its 5 most suspect images, the table; then a
    test-only change, which trains nothing and moves no fold."""
    from conftest import add_test_image, planned_jobs, snakemake, tiny_overlay, write_overlay

    root = tmp_path / "data"
    make_dataset(root, train_per_class=6, val_per_class=2)
    flipped = []
    for label, other in (("1", "7"), ("4", "10"), ("9", "2")):  # a training image moved to another class
        source = sorted((root / "train" / label).iterdir())[0]
        target = root / "train" / other / f"flipped_{source.name}"
        source.rename(target)
        flipped.append(target)
    original = sorted((root / "train" / "5").iterdir())[1]
    copy = root / "val" / "5" / "resized_copy.png"
    image = Image.open(original).convert("RGB")
    image.resize((image.width * 3 // 4, image.height * 3 // 4)).save(copy)
    overlay = tiny_overlay(root, seeds=[0], cv={"folds": 2, "seed": 0, "full_fit": False})
    # a model that learns the colours within the folds' 48 images: the audit reads its probabilities
    overlay["train"].update({"epochs": 8, "mixup_alpha": 0.0, "label_smoothing": 0.0})
    overlay["variants"] = {"full": {}, "no_mlp": None, "no_mixup": None,
                           "cleaned": {"data": {"exclude": {"file": exclude.AUDIT_ISSUES, "top_k": 5}}}}
    configfile = write_overlay(tmp_path / "cv.yaml", overlay)
    work = tmp_path / "work"
    done = snakemake(work, configfile, "ablation_table", exclude.AUDIT_ISSUES)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    folds_table = tables.read_folds(work / "results/index/folds.csv")
    fold_of = dict(zip(folds_table["path"], folds_table["fold"]))
    assert fold_of[str(copy)] == fold_of[str(original)]  # the near-duplicate pair in one fold
    issues = tables.read_label_issues(work / exclude.AUDIT_ISSUES)
    assert len(issues) == len(folds_table)  # every labelled image is audited
    suspects = issues.head(5)["image"].tolist()
    assert sum(str(path) in issues.head(15)["image"].tolist() for path in flipped) >= 2
    left_out = []
    for fold in (0, 1):
        train_index = tables.read_index(work / f"results/index/fold{fold}/train.csv")
        log = (work / f"logs/train/cleaned/seed0/fold{fold}.log").read_text()
        expected = sorted(set(suspects) & set(train_index["path"]))
        assert f"leaving out {len(expected)} of {len(train_index)} training images" in log
        left_out += expected
    assert sorted(left_out) == sorted(suspects)  # exactly the listed images, each once
    full_oof = tables.read_predictions(work / "results/predict/full/seed0/oof.csv")
    cleaned_oof = tables.read_predictions(work / "results/predict/cleaned/seed0/oof.csv")
    assert cleaned_oof[["image_name", "label"]].equals(full_oof[["image_name", "label"]])  # the same images
    table = tables.read_table(work / "results/ablation/table.csv", {"variant": "str"}, "table", required=("variant",))
    assert "cleaned" in table["variant"].tolist()

    folds_before = (work / "results/index/folds.csv").read_bytes()
    add_test_image(root)
    dry = snakemake(work, configfile, "ablation_table", exclude.AUDIT_ISSUES, "-n")
    planned = planned_jobs(dry.stdout)
    assert not {"train", "folds", "fold_index", "audit", "run_config"} & set(planned), planned
    done = snakemake(work, configfile, "ablation_table", exclude.AUDIT_ISSUES)
    assert done.returncode == 0 and (work / "results/index/folds.csv").read_bytes() == folds_before


def test_a_missing_or_unreadable_exclusion_list_stops_before_any_job(tmp_path):
    from conftest import make_dataset as make
    from imageclf.checks import checked_config

    make(tmp_path / "data", train_per_class=1, val_per_class=1, test_per_class=1)
    base = C.yaml.safe_load(open(C.SCHEMA_PATH.parents[3] / "config.yaml"))

    def check(spec):
        user = C.deep_merge(base, {"data": {"root": str(tmp_path / "data")},
                                   "variants": {"full": {}, "cleaned": {"data": {"exclude": spec}}}})
        return checked_config(user)

    with pytest.raises(ConfigError, match="variants.cleaned.data.exclude.file: file .*nowhere.csv.* does not exist"):
        check({"file": str(tmp_path / "nowhere.csv")})
    (tmp_path / "paths.csv").write_text("path\na.png\n")
    with pytest.raises(ConfigError, match="variants.cleaned.data.exclude: .*paths.csv.*lacks column"):
        check({"file": str(tmp_path / "paths.csv")})
    (tmp_path / "images.csv").write_text("image\na.png\n")
    with pytest.raises(ConfigError, match="no `score` column"):
        check({"file": str(tmp_path / "images.csv"), "min_score": 0.5})
    assert check({"file": exclude.AUDIT_ISSUES})  # made by the workflow: not there yet, and fine


def test_a_variant_given_as_text_reads_as_the_schema_types():
    """--config hands nested values over as text ('0.5', '5'); a variant's overlay is read as the
    sections are."""
    spec = {"file": exclude.AUDIT_ISSUES, "min_score": "0.5", "top_k": "5"}
    config = config_with({"full": {}, "cleaned": {"data": {"exclude": spec}, "train": {"epochs": "3"}}})
    assert C.run_exclusion(config, "cleaned") == {"file": exclude.AUDIT_ISSUES, "min_score": 0.5, "top_k": 5}
    assert C.run_config(config, "cleaned", 0)["train"]["epochs"] == 3
