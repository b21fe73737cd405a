"""K-fold cross-validation through Snakemake: one job per fold, out-of-fold predictions of every
labelled image, fold-averaged test predictions, an ablation table on them, a full fit on every
labelled image, and a change that costs only what it touches."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import add_test_image, make_dataset, planned_jobs, snakemake, tiny_overlay, write_overlay
from imageclf.core import tables
from imageclf.training import full_fit

pytestmark = pytest.mark.slow

FOLDS = 2
TRAIN_SIDE = {"run_config", "folds", "fold_index", "train", "select", "index", "full_fit_index",
              "full_fit_config", "full_fit"}


@pytest.fixture(scope="module")
def finished(module_tmp):
    base = module_tmp
    make_dataset(base / "data", train_per_class=6, val_per_class=2)
    # the data set relative to the working directory, so that a copy of `base` is a whole project
    overlay = tiny_overlay(Path("../data"), seeds=[0], cv={"folds": FOLDS, "seed": 0, "full_fit": True},
                           ensembles={"full_x1": {"variants": ["full"]}})
    overlay["variants"] = {"full": {}, "no_mlp": None, "no_mixup": {"train": {"mixup_alpha": 0.0}}}
    configfile = write_overlay(base / "cv.yaml", overlay)
    workdir = base / "work"
    result = snakemake(workdir, configfile, "all")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, configfile, base


def test_each_fold_trains_its_own_model_on_the_other_folds(finished):
    workdir, _, _ = finished
    folds = tables.read_folds(workdir / "results/index/folds.csv")
    labelled = len(tables.read_index(workdir / "results/index/train.csv")) + len(
        tables.read_index(workdir / "results/index/val.csv"))
    assert len(folds) == labelled and sorted(folds["fold"].unique()) == list(range(FOLDS))
    for k in range(FOLDS):
        held = tables.read_index(workdir / f"results/index/fold{k}/val.csv")
        trained = tables.read_index(workdir / f"results/index/fold{k}/train.csv")
        assert set(held["path"]) == set(folds.loc[folds["fold"] == k, "path"])
        assert not set(held["path"]) & set(trained["path"])
        assert (workdir / f"results/train/full/seed0/fold{k}/model.pt").is_file()


def test_oof_covers_every_labelled_image_once_from_the_model_that_held_it_out(finished):
    workdir, _, _ = finished
    folds = tables.read_folds(workdir / "results/index/folds.csv")
    oof = tables.read_predictions(workdir / "results/predict/full/seed0/oof.csv")
    assert sorted(oof["image_name"]) == sorted(folds["image_name"]) and oof["image_name"].is_unique
    probs = tables.probability_columns(oof)
    fold_of = dict(zip(folds["image_name"], folds["fold"]))
    by_name = oof.set_index("image_name")
    for k in range(FOLDS):
        held = tables.read_predictions(workdir / f"results/predict/full/seed0/fold{k}/val.csv").set_index("image_name")
        assert all(fold_of[name] == k for name in held.index)
        assert np.array_equal(by_name.loc[held.index, probs].to_numpy(), held[probs].to_numpy())


def test_the_test_predictions_are_the_mean_of_the_fold_models(finished):
    workdir, _, _ = finished
    test = tables.read_predictions(workdir / "results/predict/full/seed0/test.csv")
    probs = tables.probability_columns(test)
    members = [tables.read_predictions(workdir / f"results/predict/full/seed0/fold{k}/test.csv") for k in range(FOLDS)]
    mean = np.mean([m[probs].to_numpy() for m in members], axis=0)
    assert np.allclose(test[probs].to_numpy(), mean, atol=1e-6)
    submission = tables.read_table(workdir / "results/submission.csv", tables.SUBMISSION, "submission")
    assert submission["pred_label"].tolist() == test["pred_label"].tolist()


def test_the_full_fit_trains_on_every_labelled_image_for_the_folds_median_epoch(finished):
    workdir, configfile, _ = finished
    folds = tables.read_folds(workdir / "results/index/folds.csv")
    trained_on = tables.read_index(workdir / "results/index/full/train.csv")
    assert sorted(trained_on["path"]) == sorted(folds["path"])
    run, fold_runs = workdir / "results/train/full/seed0", range(FOLDS)
    selected = [tables.read_selection(run / f"fold{k}/selection.json")["epoch"] for k in fold_runs]
    history = tables.read_history(run / "full/history.csv")
    assert history["epoch"].tolist() == list(range(1, full_fit.median_epoch(selected) + 1))
    assert history["val_acc"].isna().all()  # nothing held out, nothing evaluated
    fold_lrs = [tables.read_history(run / f"fold{k}/history.csv").set_index("epoch")["lr"] for k in fold_runs]
    assert history["lr"].tolist() == pytest.approx([np.median([lrs[e] for lrs in fold_lrs]) for e in history["epoch"]])
    full_test = tables.read_predictions(workdir / "results/predict/full/seed0/full/test.csv")
    assert (workdir / "results/predict/no_mixup/seed0/full/test.csv").is_file()  # every run has its full fit
    # cv.submit: full_fit submits it, and only the submission is redone (and again on the way back)
    fold_average = configfile.read_text()
    overlay = yaml.safe_load(fold_average)
    overlay["cv"]["submit"] = "full_fit"
    write_overlay(configfile, overlay)
    try:
        result = snakemake(workdir, configfile, "results/submission.csv")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert planned_jobs(result.stdout + result.stderr) == {"submission": 1}, result.stderr[-2000:]
        submission = tables.read_table(workdir / "results/submission.csv", tables.SUBMISSION, "submission")
        assert submission["pred_label"].tolist() == full_test["pred_label"].tolist()
    finally:
        configfile.write_text(fold_average)
        assert snakemake(workdir, configfile, "results/submission.csv").returncode == 0


def test_the_table_reads_the_out_of_fold_predictions(finished):
    workdir, _, _ = finished
    text = (workdir / "results/ablation/table.md").read_text()
    assert "oof acc %" in text and f"Cross-validation** ({FOLDS} folds)" in text and "full_x1" in text
    assert "full fit test acc %" in text and "**full fit test acc**" in text
    full_fit_runs = tables.read_table(workdir / "results/ablation/runs.csv", {"variant": "str", "full_fit_test_acc": "float"},
                                      "runs")
    full_fit_test = tables.read_predictions(workdir / "results/predict/full/seed0/full/test.csv")
    assert full_fit_runs.loc[full_fit_runs["variant"] == "full", "full_fit_test_acc"].iloc[0] == pytest.approx(
        tables.accuracy(full_fit_test))
    runs = tables.read_table(workdir / "results/ablation/runs.csv", {"variant": "str", "val_acc": "float"}, "runs")
    oof = tables.read_predictions(workdir / "results/predict/full/seed0/oof.csv")
    assert runs.loc[runs["variant"] == "full", "val_acc"].iloc[0] == pytest.approx(oof["correct"].astype(bool).mean())
    ensemble = tables.read_predictions(workdir / "results/predict/ensemble/full_x1/val.csv")
    assert len(ensemble) == len(oof)  # an ensemble has an out-of-fold row too


def test_nothing_reruns_and_a_test_only_change_trains_nothing(finished, tmp_path):
    _, _, base = finished
    copy = tmp_path / "project"
    shutil.copytree(base, copy, symlinks=True)
    workdir, configfile = copy / "work", copy / "cv.yaml"
    dry = snakemake(workdir, configfile, "-n", "all")
    assert dry.returncode == 0 and planned_jobs(dry.stdout) == {}, dry.stdout[-2000:]
    add_test_image(copy / "data")
    dry = snakemake(workdir, configfile, "-n", "all")
    jobs = planned_jobs(dry.stdout)
    assert dry.returncode == 0 and jobs.get("index_test") == 1, dry.stdout[-3000:]
    assert not TRAIN_SIDE & set(jobs), jobs
    assert "results/train/" not in "".join(line for line in dry.stdout.splitlines() if "output:" in line)
    configfile.write_text(configfile.read_text().replace(f"folds: {FOLDS}", "folds: 3"))
    jobs = planned_jobs(snakemake(workdir, configfile, "-n", "all").stdout)
    assert jobs.get("folds") == 1 and jobs.get("train") == 6 and jobs.get("full_fit") == 2, jobs
    assert "index" not in jobs, jobs
