"""Never a stale model (issue 27): a model always matches its configuration, a failing data check
keeps the finished index, the log never claims an epoch a resume would not find, and changes to
the data set's folders are noticed."""

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import (
    REPO,
    index_dataset,
    index_files,
    make_dataset,
    planned_jobs,
    snakemake,
    start_snakemake,
    tiny_overlay,
    wait_for,
    write_overlay,
)
from imageclf.checks import checked_config
from imageclf.core import config as C
from imageclf.core import provenance
from imageclf.core.errors import DataError, WeightsError
from imageclf.core.io_utils import torch_save, write_json
from imageclf.data import datafiles, index
from imageclf.evaluation import ensemble, predict, submission
from imageclf.training import checkpoints, train
from PIL import Image


@pytest.fixture
def prepared(tmp_path):
    """A tiny data set, its index and one run's config.json (2 epochs)."""
    make_dataset(tmp_path / "data")
    index_dataset(tmp_path / "data", tmp_path / "index")
    cfg = checked_config(C.deep_merge(yaml.safe_load((REPO / "config.yaml").read_text()),
                                      tiny_overlay(tmp_path / "data")))
    run_config = tmp_path / "config.json"
    write_json(run_config, C.run_config(cfg, "full", 0))
    return tmp_path, run_config


def stale_model(tmp_path, run_config) -> Path:
    """A model.pt trained under another configuration: its meta names another config hash."""
    other = C.load_run_config(run_config)
    other["train"]["label_smoothing"] = 0.05
    path = tmp_path / "model.pt"
    torch_save({"model": {}, "meta": {"epoch": 1, "config_hash": C.config_hash(other)}}, path)
    return path


# -- a model always matches its configuration ------------------------------------------------

def test_predict_refuses_a_model_of_another_configuration(prepared):
    tmp, run_config = prepared
    model = stale_model(tmp, run_config)
    with pytest.raises(WeightsError) as error:
        predict.predict(run_config, model, tmp / "index" / "test.csv", tmp / "index" / "classes.csv",
                        tmp / "test_predictions.csv")
    message = str(error.value)
    stored = torch.load(model, weights_only=True)["meta"]["config_hash"]
    current = C.config_hash(C.load_run_config(run_config))
    assert "\n" not in message and stored in message and current in message  # one line, both hashes
    assert f"snakemake {model} --forcerun train" in message  # the command that fixes it
    assert not (tmp / "test_predictions.csv").exists()


def test_the_predict_command_says_it_in_one_line(prepared):
    tmp, run_config = prepared
    model = stale_model(tmp, run_config)
    result = subprocess.run(
        [sys.executable, "-m", "imageclf", "predict", "--run-config", str(run_config), "--model", str(model),
         "--index", str(tmp / "index" / "test.csv"), "--classes", str(tmp / "index" / "classes.csv"),
         "--out", str(tmp / "out.csv")], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if "config hash" in line]) == 1


def test_a_model_without_a_config_hash_is_refused_and_a_full_fit_names_its_rule(prepared):
    tmp, run_config = prepared
    folder = tmp / "full"
    folder.mkdir()
    torch_save({"model": {}, "meta": {"epoch": 1}}, folder / "model.pt")
    with pytest.raises(WeightsError, match=r"none \(no config_hash in its meta\).*--forcerun full_fit"):
        provenance.check_model_config(folder / "model.pt", run_config)


def test_submission_and_ensemble_refuse_a_stale_model(prepared, tmp_path):
    tmp, run_config = prepared
    model = stale_model(tmp, run_config)
    with pytest.raises(WeightsError, match="config hash"):
        submission.write_submission(tmp / "unused.csv", tmp / "index" / "test.csv", tmp / "index" / "classes.csv",
                                    tmp / "submission.csv", tmp / "submission.zip", models=[model],
                                    run_configs=[run_config])
    assert not (tmp / "submission.csv").exists()
    manifest = {"runs": [{"variant": "full", "seed": 0, "models": [{"model": str(model), "config": str(run_config)}]}]}
    with pytest.raises(WeightsError, match="config hash"):
        ensemble.check_member_models(manifest, {"name": "x3", "members": [{"variant": "full", "seed": 0}]})


def test_a_model_of_this_configuration_passes(prepared):
    tmp, run_config = prepared
    path = tmp / "model.pt"
    current = C.config_hash(C.load_run_config(run_config))
    torch_save({"model": {}, "meta": {"config_hash": current}}, path)
    assert provenance.check_model_config(path, run_config) == current


# -- nothing reported before it is safe --------------------------------------------------------

class StateAtEachEpochLine(logging.Handler):
    """At each epoch's log line, the epoch that the resume state on disk holds."""

    def __init__(self, state_path):
        super().__init__()
        self.state_path, self.seen = state_path, []

    def emit(self, record):
        match = re.match(r"epoch (\d+)/\d+  train_loss", record.getMessage())
        if match:
            saved = torch.load(self.state_path, weights_only=True)["epoch"] if self.state_path.is_file() else 0
            self.seen.append((int(match.group(1)), saved))


def watched(state_path, monkeypatch):
    """A StateAtEachEpochLine on the training log, which logs at INFO while the test runs."""
    watcher = StateAtEachEpochLine(state_path)
    logger = logging.getLogger("imageclf.train")
    monkeypatch.setattr(logger, "level", logging.INFO)  # undone after the test
    logger.setLevel(logging.INFO)  # and its cached answers cleared
    logger.addHandler(watcher)
    return watcher


def test_the_epoch_log_line_is_never_ahead_of_the_saved_state(prepared, monkeypatch):
    tmp, run_config = prepared
    watcher = watched(tmp / "run" / "resume" / "state.pt", monkeypatch)
    try:
        train.train(run_config, index_files(tmp / "index"), tmp / "run", threads=1)
    finally:
        logging.getLogger("imageclf.train").removeHandler(watcher)
    assert watcher.seen == [(1, 1), (2, 2)]  # each epoch's line once its state is on disk

    # killed while epoch 2's state is being saved: no line claims epoch 2, which a resume redoes
    real_save = checkpoints.torch_save

    def killed_at_epoch_two(obj, path):
        if str(path).endswith("state.pt") and obj["epoch"] == 2:
            raise KeyboardInterrupt("killed while saving epoch 2")
        real_save(obj, path)

    monkeypatch.setattr(checkpoints, "torch_save", killed_at_epoch_two)
    watcher = watched(tmp / "killed" / "resume" / "state.pt", monkeypatch)
    try:
        with pytest.raises(KeyboardInterrupt):
            train.train(run_config, index_files(tmp / "index"), tmp / "killed", threads=1)
    finally:
        logging.getLogger("imageclf.train").removeHandler(watcher)
    assert watcher.seen == [(1, 1)]
    assert torch.load(tmp / "killed" / "resume" / "state.pt", weights_only=True)["epoch"] == 1


# -- data changes noticed --------------------------------------------------------------------

def test_an_empty_folder_changes_the_data_digest_and_removing_it_restores_it(tmp_path):
    make_dataset(tmp_path / "data")
    stamp, record = tmp_path / "stamp", tmp_path / "record.tsv"

    def digest():
        return datafiles.update_data_stamp(tmp_path / "data", ("train", "val"), stamp, record)

    first = digest()
    empty = tmp_path / "data" / "train" / "new_class"
    empty.mkdir()
    assert digest() != first
    (empty / ".DS_Store").write_bytes(b"junk")  # still empty to the index
    assert digest() != first
    shutil.rmtree(empty)
    assert digest() == first


def tiny_image(path, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 10, 10)).save(path)


def test_images_too_small_are_a_warning_or_an_error_under_the_key(dataset, tmp_path, caplog):
    tiny_image(dataset / "train" / "3" / "pixel.png", (1, 1))
    tiny_image(dataset / "train" / "4" / "strip.png", (64, 7))
    out = tmp_path / "idx"
    with caplog.at_level("WARNING"):
        index.run(dataset, out / "train.csv", out / "val.csv", out / "classes.csv")
    assert "pixel.png: 1 x 1 pixels" in caplog.text and "strip.png: 64 x 7 pixels" in caplog.text
    assert "data.on_small_image" in caplog.text
    with pytest.raises(DataError, match=r"(?s)below 8 pixels on a side.*data.on_small_image.*pixel\.png"):
        index.run(dataset, out / "t.csv", out / "v.csv", out / "c.csv", on_small="error")
    assert not (out / "t.csv").exists()
    cfg = C.deep_merge(yaml.safe_load((REPO / "config.yaml").read_text()), {"data": {"on_small_image": "never"}})
    with pytest.raises(C.ConfigError, match="on_small_image"):
        C.validate(cfg)


def test_a_check_writes_its_marker_and_no_index(dataset, tmp_path):
    from imageclf import cli
    marker = tmp_path / "checked" / "labelled.json"
    cli.main(["index", "--root", str(dataset), "--check-out", str(marker)])
    assert marker.is_file() and not list(tmp_path.glob("*.csv"))
    with pytest.raises(SystemExit):  # without --check-out, the index files are required
        cli.main(["index", "--root", str(dataset), "--train-out", str(tmp_path / "t.csv")])


# -- the workflow: Snakemake end to end on tiny data --------------------------------------------

@pytest.fixture(scope="module")
def finished(module_tmp):
    """`snakemake results/submission.csv` on tiny data (one run, 2 epochs). Read-only: tests
    change a copy (`copy_of`)."""
    base = module_tmp
    make_dataset(base / "data")
    overlay = tiny_overlay(Path("../data"), variants={"full": {}, "no_mlp": None, "no_mixup": None})
    configfile = write_overlay(base / "tiny.yaml", overlay)
    result = snakemake(base / "work", configfile, "results/submission.csv")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return base


def copy_of(finished, tmp_path):
    copy = tmp_path / "project"
    shutil.copytree(finished, copy, symlinks=True)
    return copy / "work", copy / "tiny.yaml", copy / "data"


def index_state(workdir):
    return {path.name: (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted((workdir / "results/index").glob("*.csv"))}


@pytest.mark.slow
def test_a_killed_retraining_under_a_changed_config_retrains_and_submits_the_new_model(finished, tmp_path):
    workdir, configfile, _ = copy_of(finished, tmp_path)
    run = workdir / "results/train/full/seed0"
    old_hash = torch.load(run / "model.pt", weights_only=True)["meta"]["config_hash"]
    overlay = yaml.safe_load(configfile.read_text())
    overlay["train"].update(epochs=6, label_smoothing=0.05)
    changed = write_overlay(configfile.parent / "changed.yaml", overlay)
    process = start_snakemake(workdir, changed, "results/submission.csv")
    try:
        wait_for(workdir / "logs/train/full/seed0.log", "epoch 1/6", process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # Snakemake and the training job, mid-run
        process.wait()
    assert not (run / "history.csv").exists() and (run / "model.pt").exists()  # the old model is left
    assert snakemake(workdir, changed, "--unlock").returncode == 0

    # both targets agree: the run trains again, and is selected again
    for target in ("results/submission.csv", "ablation_table"):
        dry = snakemake(workdir, changed, "-n", target)
        jobs = planned_jobs(dry.stdout)
        assert jobs.get("train") == 1 and jobs.get("select") == 1, (target, dry.stdout[-3000:])

    result = snakemake(workdir, changed, "results/submission.csv")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    new_hash = C.config_hash(C.load_run_config(run / "config.json"))
    assert new_hash != old_hash
    assert torch.load(run / "model.pt", weights_only=True)["meta"]["config_hash"] == new_hash
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    submitted = workdir / "results/submission.csv"
    assert submitted.stat().st_mtime_ns > (run / "model.pt").stat().st_mtime_ns
    predictions = pd.read_csv(workdir / "results/predict/full/seed0/test.csv", dtype=str)
    expected = predictions.sort_values("image_name")["pred_label"].tolist()
    assert pd.read_csv(submitted, dtype=str)["pred_label"].tolist() == expected


@pytest.mark.slow
def test_a_corrupt_image_added_then_removed_leaves_the_index_and_plans_nothing(finished, tmp_path):
    workdir, configfile, data = copy_of(finished, tmp_path)
    before = index_state(workdir)
    for broken in (data / "train" / "4" / "broken.jpg", data / "test" / "broken_test.jpg"):
        broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
        result = snakemake(workdir, configfile, "results/submission.csv")
        assert result.returncode != 0
        assert f"{broken.name}: not a readable image" in result.stderr
        assert "rule train" not in result.stdout + result.stderr
        assert index_state(workdir) == before  # every index file: same bytes, same time
        broken.unlink()
        dry = snakemake(workdir, configfile, "-n", "results/submission.csv")
        assert dry.returncode == 0 and planned_jobs(dry.stdout) == {}, dry.stdout[-3000:]
    # a class only in val/: the same
    only_val = data / "val" / "99"
    shutil.copytree(data / "val" / "3", only_val)
    result = snakemake(workdir, configfile, "results/submission.csv")
    assert result.returncode != 0 and "class '99' is in val but not in train" in result.stderr
    assert index_state(workdir) == before
    shutil.rmtree(only_val)
    assert planned_jobs(snakemake(workdir, configfile, "-n", "results/submission.csv").stdout) == {}


@pytest.mark.slow
def test_an_empty_class_folder_added_to_a_finished_run_is_noticed(finished, tmp_path):
    workdir, configfile, data = copy_of(finished, tmp_path)
    (data / "train" / "12").mkdir()
    dry = snakemake(workdir, configfile, "-n", "results/submission.csv")
    jobs = planned_jobs(dry.stdout)
    assert jobs.get("check_data") == 1 and jobs.get("index") == 1, dry.stdout[-3000:]
    result = snakemake(workdir, configfile, "results/submission.csv")
    assert result.returncode != 0 and "train/12: empty class folder" in result.stderr


@pytest.mark.slow
def test_too_many_folds_for_a_finished_index_stop_before_any_job(finished, tmp_path):
    """A cv.folds the labelled images cannot fill is refused before any job, so a folds job never
    fails on it (and never deletes a finished folds.csv)."""
    workdir, configfile, _ = copy_of(finished, tmp_path)
    overlay = yaml.safe_load(configfile.read_text())
    overlay["cv"] = {"folds": 1000}
    result = snakemake(workdir, write_overlay(configfile.parent / "folds.yaml", overlay), "-n", "results/submission.csv")
    assert result.returncode != 0
    assert "cv.folds: 1000 folds, but the labelled images (train/ and val/) hold only 96" in result.stdout + result.stderr
