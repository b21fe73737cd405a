"""The workflow end to end on tiny data, and Snakemake re-running only what is stale."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, add_test_image, make_dataset, planned_jobs, snakemake, start_snakemake, tiny_overlay, write_overlay
from imageclf.core import tables
from PIL import Image, ImageOps

pytestmark = pytest.mark.slow

COMPARED = ["epoch", "train_loss", "val_loss", "val_acc", "lr"]  # all but wall-clock columns
TRAIN_SIDE = {"run_config", "train", "select"}  # jobs that a test-only change must never schedule


@pytest.fixture(scope="module")
def finished(module_tmp):
    """One complete run of `snakemake all` (submission, ablation table, plots) on tiny data,
    two seeds per variant. Read-only: a test that changes data or results works on a copy
    (`copy_of`)."""
    base = module_tmp
    # spaces in the data set's path and in the working directory, as in many users' home folders
    make_dataset(base / "my data")
    # the data set given relative to the working directory, so a copy of `base` is a whole project
    overlay = tiny_overlay(Path("../my data"), seeds=[0, 1])
    # both seeds of full averaged; and full's seed 0 with test-time flips: the TTA row of the table
    overlay["ensembles"] = {"full_x2": {"variants": ["full"]},
                            "full_hflip": {"variants": ["full"], "seeds": [0], "tta": ["hflip"]}}
    configfile = write_overlay(base / "tiny.yaml", overlay)
    workdir = base / "work dir"
    result = snakemake(workdir, configfile, "all")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, configfile, base


def copy_of(finished, tmp_path):
    """A copy of the finished project (data, results, Snakemake's records; times kept, as cp -a
    keeps them) for a test that changes it."""
    _, _, base = finished
    copy = tmp_path / "project"
    shutil.copytree(base, copy, symlinks=True)
    return copy / "work dir", copy / "tiny.yaml", copy


def test_submission_matches_the_test_index(finished):
    workdir, _, _ = finished
    submission = pd.read_csv(workdir / "results/submission.csv", dtype=str)
    test_index = pd.read_csv(workdir / "results/index/test.csv", dtype=str)
    assert list(submission.columns) == ["image_name", "pred_label"]
    assert sorted(submission["image_name"]) == submission["image_name"].tolist()
    assert set(submission["image_name"]) == set(test_index["image_name"])
    assert set(submission["pred_label"]) <= {str(i) for i in range(12)}
    with zipfile.ZipFile(workdir / "results/submission.zip") as archive:
        assert archive.read("prediction.csv").decode() == (workdir / "results/submission.csv").read_text()


def test_every_stage_wrote_its_files(finished):
    workdir, _, _ = finished
    run = workdir / "results/train/full/seed0"
    history = pd.read_csv(run / "history.csv")
    assert list(history.columns) == ["epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds", "images_per_s",
                                     "val_balanced_acc", "val_macro_f1"]
    assert history["epoch"].tolist() == [1, 2]
    selection = yaml.safe_load((run / "selection.json").read_text())
    assert selection["metric"] == "val_acc" and selection["epoch"] in (1, 2) and "reason" in selection
    predictions = pd.read_csv(workdir / "results/predict/full/seed0/test.csv", dtype={"label": str})
    assert {"image_name", "label", "pred_label", "prob_0", "prob_11"} <= set(predictions.columns)
    assert predictions.filter(like="prob_").sum(axis=1).round(3).eq(1).all()
    log = (workdir / "logs/train/full/seed0.log").read_text()
    assert "epoch 2/2" in log and "ETA" in log and "img/s" in log


def test_ablation_table_and_plots(finished):
    workdir, _, _ = finished
    table = pd.read_csv(workdir / "results/ablation/table.csv")
    assert table["variant"].tolist() == ["full", "no_mlp", "no_mixup", "full_x2", "full_hflip"]
    assert table["kind"].tolist() == ["variant"] * 3 + ["ensemble"] * 2
    table = table[table["kind"] == "variant"]
    assert table["runs"].tolist() == [2, 2, 2]  # mean ± sd over the two seeds
    assert table["val_acc_sd"].notna().all() and table["test_acc_sd"].notna().all()
    runs = pd.read_csv(workdir / "results/ablation/runs.csv")
    assert sorted(zip(runs["variant"], runs["seed"])) == sorted(
        (v, s) for v in ("full", "no_mlp", "no_mixup") for s in (0, 1))
    params = dict(zip(table["variant"], table["parameters"]))
    assert params["no_mlp"] < params["full"] == params["no_mixup"]  # each variant is what it claims
    assert table["test_acc_mean"].between(0, 1).all() and table["val_acc_mean"].between(0, 1).all()
    assert {"val_acc_diff", "val_acc_ci_low", "test_p", "test_p_holm", "test_verdict",
            "test_macro_f1_ci_high"} <= set(table.columns)
    markdown = (workdir / "results/ablation/table.md").read_text()
    assert "no_mlp" in markdown and "Holm" in markdown and " ± " in markdown
    report = pd.read_csv(workdir / "results/ablation/classification_report_no_mlp.csv", dtype={"class": str})
    assert {"precision", "recall", "f1-score", "support"} <= set(report.columns)
    assert set(report["split"]) == {"val", "test"} and "11" in set(report["class"])
    for name in ("curves", "confusion_matrix", "worst_classes", "error_gallery"):
        assert (workdir / f"results/plots/{name}.png").read_bytes()[:4] == b"\x89PNG"
    worst = pd.read_csv(workdir / "results/plots/worst_classes.csv")
    assert len(worst) == 10 and worst["error_rate"].is_monotonic_decreasing


def test_ensembles_and_test_time_views_have_their_predictions(finished):
    workdir, _, _ = finished
    plain = tables.read_predictions(workdir / "results/predict/full/seed0/test.csv")
    flipped = tables.read_predictions(workdir / "results/predict/full/seed0/tta-hflip/test.csv")
    single = tables.read_predictions(workdir / "results/predict/ensemble/full_hflip/test.csv")
    pd.testing.assert_frame_equal(flipped, single)  # an ensemble of one run is that run
    probs = [c for c in plain.columns if c.startswith("prob_")]
    assert list(flipped.columns) == list(plain.columns) and not plain[probs].equals(flipped[probs])
    both = tables.read_predictions(workdir / "results/predict/ensemble/full_x2/val.csv")
    seeds = [tables.read_predictions(workdir / f"results/predict/full/seed{s}/val.csv") for s in (0, 1)]
    assert ((both[probs] - (seeds[0][probs] + seeds[1][probs]) / 2).abs() < 2e-6).all().all()


def test_nothing_reruns_after_a_full_run(finished):
    workdir, configfile, _ = finished
    result = snakemake(workdir, configfile, "all", "-n")
    assert result.returncode == 0
    assert planned_jobs(result.stdout) == {}, result.stdout[-2000:]


def test_changing_the_worker_count_retrains_nothing(finished):
    workdir, configfile, base = finished
    overlay = yaml.safe_load(configfile.read_text())
    overlay["train"]["num_workers"] = 3
    changed = write_overlay(base / "more_workers.yaml", overlay)
    result = snakemake(workdir, changed, "all", "-n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert planned_jobs(result.stdout) == {}, result.stdout[-2000:]


def test_changing_the_prediction_workers_reruns_nothing(finished, tmp_path):
    """predict.num_workers is execution-only, and the predictions do not depend on it."""
    workdir, configfile, base = finished
    overlay = yaml.safe_load(configfile.read_text())
    overlay["predict"] = {"num_workers": 0}
    changed = write_overlay(base / "no_predict_workers.yaml", overlay)
    result = snakemake(workdir, changed, "all", "-n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert planned_jobs(result.stdout) == {}, result.stdout[-2000:]
    run = workdir / "results/train/full/seed0"
    (cache,) = (workdir / "results/cache").glob("val_*.npy")  # as the predict rule runs it
    args = ["--run-config", run / "config.json", "--model", run / "model.pt", "--index",
            workdir / "results/index/val.csv", "--classes", workdir / "results/index/classes.csv",
            "--cache", cache, cache.with_suffix(".csv")]
    for workers in (0, 2):
        out = tmp_path / f"val_{workers}.csv"
        done = subprocess.run(["imageclf", "predict", *map(str, args), "--out", str(out), "--num-workers",
                               str(workers)], capture_output=True, text=True, cwd=workdir)
        assert done.returncode == 0, done.stderr[-2000:]
        assert out.read_bytes() == (workdir / "results/predict/full/seed0/val.csv").read_bytes()


def test_changing_predict_tta_reruns_only_the_runs_own_predictions(finished):
    """Not select (model.pt stays), not training, not the ensembles' own tta-<views>/ predictions."""
    workdir, configfile, base = finished
    overlay = yaml.safe_load(configfile.read_text())
    overlay["predict"] = {"tta": ["vflip"]}
    changed = write_overlay(base / "vflip.yaml", overlay)
    result = snakemake(workdir, changed, "all", "-n")
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = planned_jobs(result.stdout)
    assert jobs.get("predict") == 12, result.stdout[-3000:]  # 3 variants x 2 seeds x (val, test)
    assert not TRAIN_SIDE & set(jobs) and "predict_views" not in jobs, jobs


def test_an_edit_that_keeps_the_meaning_reruns_nothing(finished):
    """0.0 where config.yaml has 0 (Snakemake compares a run's params as text)."""
    workdir, configfile, base = finished
    overlay = yaml.safe_load(configfile.read_text())
    overlay["variants"] = {"full": {}, "no_mlp": {"model": {"head": "linear"}},
                           "no_mixup": {"train": {"mixup_alpha": 0.0}}}
    overlay["augment"]["rotation"] = {"degrees": 15.0}
    # checks that decide whether the index fails, never what it writes (data.on_leak reruns its
    # check alone: test_on_leak_error_stops_every_run_and_keeps_every_file)
    overlay["data"].update(max_image_pixels=200_000_000)
    overlay["model"]["max_params"] = 90_000_000
    changed = write_overlay(base / "same_meaning.yaml", overlay)
    result = snakemake(workdir, changed, "all", "-n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert planned_jobs(result.stdout) == {}, result.stdout[-2000:]


def test_changing_one_variant_reruns_only_that_variant(finished):
    workdir, configfile, base = finished
    overlay = yaml.safe_load(configfile.read_text())
    overlay["variants"] = {"full": {}, "no_mlp": {"model": {"head": "linear"}},
                           "no_mixup": {"train": {"mixup_alpha": 0, "label_smoothing": 0.05}}}
    changed = write_overlay(base / "changed.yaml", overlay)
    result = snakemake(workdir, changed, "all", "-n")
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = planned_jobs(result.stdout)
    assert jobs == {"run_config": 2, "train": 2, "select": 2, "predict": 4, "ablation": 1,
                    "plots": 1, "all": 1}, result.stdout[-3000:]
    # rewritten: the changed variant's run configs alone (the ablation reads every run's config.json)
    outputs = "".join(line for line in result.stdout.splitlines() if line.strip().startswith("output:"))
    assert "results/train/no_mixup/seed0/config.json" in outputs
    assert "results/train/no_mixup/seed1/config.json" in outputs
    assert "results/train/full/seed0/config.json" not in outputs


def test_a_copied_project_is_up_to_date(finished, tmp_path):
    """Every file's change time and inode differ in a copy: its contents are read again, found
    unchanged, and nothing reruns."""
    workdir, configfile, _ = copy_of(finished, tmp_path)
    result = snakemake(workdir, configfile, "all", "-n")
    assert result.returncode == 0 and planned_jobs(result.stdout) == {}, result.stdout[-3000:]


def test_changing_train_data_reruns_from_the_index(finished, tmp_path):
    workdir, configfile, base = copy_of(finished, tmp_path)
    extra = base / "my data" / "train" / "3" / "extra.png"
    source = next((base / "my data" / "train" / "3").glob("*.jpg"))
    extra.write_bytes(source.read_bytes())
    result = snakemake(workdir, configfile, "all", "-n")
    jobs = planned_jobs(result.stdout)
    assert jobs.get("index") == 1 and jobs.get("train") == 6 and jobs.get("submission") == 1, result.stdout[-3000:]
    extra.unlink()  # back as it was: the contents match the index again, nothing to do
    assert planned_jobs(snakemake(workdir, configfile, "all", "-n").stdout) == {}


def test_a_new_test_image_reruns_only_the_test_side(finished, tmp_path):
    workdir, configfile, base = copy_of(finished, tmp_path)
    add_test_image(base / "my data")
    dry = snakemake(workdir, configfile, "all", "-n")
    jobs = planned_jobs(dry.stdout)
    assert jobs.get("index_test") == 1 and jobs.get("submission") == 1, dry.stdout[-3000:]
    assert not TRAIN_SIDE & set(jobs) and "index" not in jobs, jobs
    outputs = "".join(line for line in dry.stdout.splitlines() if line.strip().startswith("output:"))
    assert "results/train/" not in outputs and "results/cache/train" not in outputs
    assert "results/predict/full/seed0/test.csv" in outputs
    assert "results/predict/full/seed0/val.csv" not in outputs  # val predictions stay
    trained = {path: path.stat().st_mtime_ns for path in (workdir / "results/train").rglob("*") if path.is_file()}
    result = snakemake(workdir, configfile, "all")
    assert result.returncode == 0, result.stderr[-3000:]
    submission = tables.read_table(workdir / "results/submission.csv", tables.SUBMISSION, "submission")
    assert "zz_new" in set(submission["image_name"])
    assert trained == {path: path.stat().st_mtime_ns for path in (workdir / "results/train").rglob("*")
                       if path.is_file()}


def plant_in_test(data: Path, source: Path, name: str, mirrored: bool = False) -> None:
    """A copy of a training image in test/ (mirrored: a near-duplicate), with its label."""
    image = Image.open(source)
    (ImageOps.mirror(image) if mirrored else image).save(data / "test" / f"{name}.png")
    labels = pd.read_csv(data / "test_labels.csv", dtype=str)
    pd.concat([labels, pd.DataFrame({"image_name": [name], "label": [source.parent.name]})]).to_csv(
        data / "test_labels.csv", index=False)


def test_on_leak_error_stops_every_run_and_keeps_every_file(finished, tmp_path):
    """A train image copied into test/, then data.on_leak: error: every run stops before any job
    (a dry run too), again and again, and the leak list, the submission and every model stay as
    they were; back to warn, nothing reruns. Then a mirrored copy under
    data.near_duplicates.on_leak: error: the run that lists it stops at the check, and so does
    every run after it."""
    workdir, configfile, base = copy_of(finished, tmp_path)
    data, trained = base / "my data", sorted((base / "my data" / "train" / "3").iterdir())
    shutil.copy(trained[0], data / "test" / f"zz_leak{trained[0].suffix}")
    labels = pd.read_csv(data / "test_labels.csv", dtype=str)
    pd.concat([labels, pd.DataFrame({"image_name": ["zz_leak"], "label": ["3"]})]).to_csv(
        data / "test_labels.csv", index=False)
    result = snakemake(workdir, configfile, "results/submission.csv")  # data.on_leak: warn
    assert result.returncode == 0, result.stderr[-3000:]
    leaks = tables.read_leaks(workdir / "results/index/leaks.csv")
    assert (leaks["kind"] == "identical").any() and "zz_leak" in "".join(leaks["path_b"])
    overlay = yaml.safe_load(configfile.read_text())
    overlay["data"]["on_leak"] = "error"
    strict = write_overlay(base / "strict.yaml", overlay)

    def results():
        return {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in (workdir / "results").rglob("*")
                if path.is_file()}

    kept = results()
    for args in (["-n"], [], [], ["ablation_table"]):
        result = snakemake(workdir, strict, "results/submission.csv", *args)
        said = result.stdout + result.stderr
        assert result.returncode != 0 and "zz_leak" in said and "data.on_leak is 'error'" in said \
            and "listed in results/index/leaks.csv" in said, said[-3000:]
    assert results() == kept
    assert snakemake(workdir, strict, "--unlock").returncode == 0  # maintenance is let through
    # no job ran under 'error': back to warn, whose check passed, nothing is planned; the same
    # policy spelled out checks again, and that alone
    assert planned_jobs(snakemake(workdir, configfile, "results/submission.csv", "-n").stdout) == {}
    spelled = yaml.safe_load(configfile.read_text())
    spelled["data"]["near_duplicates"] = {**spelled["data"].get("near_duplicates", {}), "on_leak": "warn"}
    spelled_out = write_overlay(base / "spelled.yaml", spelled)
    assert planned_jobs(snakemake(workdir, spelled_out, "results/submission.csv", "-n").stdout) == {"check_leaks": 1}

    overlay["data"] = {**overlay["data"], "on_leak": "warn", "near_duplicates": {"distance": 8, "on_leak": "error"}}
    near_strict = write_overlay(base / "near_strict.yaml", overlay)
    plant_in_test(data, trained[1], "zz_mirrored", mirrored=True)
    for attempt in range(2):  # the run that lists it (at its check job), then the next (before any job)
        result = snakemake(workdir, near_strict, "results/submission.csv")
        said = result.stdout + result.stderr
        assert result.returncode != 0 and "zz_mirrored" in said and "data.near_duplicates.on_leak is 'error'" in said, \
            said[-3000:]
        assert ("Error in rule check_leaks" in said) == (attempt == 0), said[-3000:]
    assert "zz_mirrored" in "".join(tables.read_leaks(workdir / "results/index/leaks.csv")["path_b"])
    assert not (workdir / "results/index/checked/leaks.json").exists()
    # back to warn after that failed check: the check and the submission it held back; no training
    jobs = planned_jobs(snakemake(workdir, configfile, "results/submission.csv", "-n").stdout)
    assert jobs.get("check_leaks") == 1 and jobs.get("submission") == 1 and not TRAIN_SIDE & set(jobs), jobs


def test_an_image_replaced_with_its_old_mtime_is_noticed(finished, tmp_path):
    """cp -p, rsync -a and tar x keep the old modification time; the content change still counts."""
    workdir, configfile, base = copy_of(finished, tmp_path)
    test_dir = base / "my data" / "test"
    images = sorted(test_dir.glob("*.jpg"))
    victim, other = images[0], next(p for p in images[1:] if p.suffix == images[0].suffix)
    before = tables.read_predictions(workdir / "results/predict/full/seed0/test.csv").set_index("image_name")
    times = victim.stat()
    shutil.copyfile(other, victim)
    os.utime(victim, ns=(times.st_atime_ns, times.st_mtime_ns))  # as cp -p leaves it
    dry = snakemake(workdir, configfile, "all", "-n")
    jobs = planned_jobs(dry.stdout)
    assert jobs.get("index_test") == 1 and not TRAIN_SIDE & set(jobs), dry.stdout[-3000:]
    # the one prediction compared below (`all` would redo every run's, the ensembles', the table)
    predicted = "results/predict/full/seed0/test.csv"
    assert snakemake(workdir, configfile, predicted).returncode == 0
    after = tables.read_predictions(workdir / predicted).set_index("image_name")
    probs = [c for c in after.columns if c.startswith("prob_")]
    expected = after.loc[other.stem, probs].to_numpy()
    assert (after.loc[victim.stem, probs].to_numpy() == expected).all()  # now the other image's prediction
    assert not (before.loc[victim.stem, probs].to_numpy() == expected).all()


def test_results_are_readable_under_the_umask(finished):
    workdir, _, _ = finished
    umask = os.umask(0)
    os.umask(umask)
    for path in ("results/submission.csv", "results/ablation/table.md", "results/plots/curves.png",
                 "results/train/full/seed0/model.pt", "results/index/classes.csv"):
        assert stat.S_IMODE((workdir / path).stat().st_mode) == 0o666 & ~umask, path


def test_rule_graph_draws(finished):
    workdir, configfile, _ = finished
    result = snakemake(workdir, configfile, "all", "--rulegraph")
    assert result.returncode == 0
    for rule in ("index", "index_test", "train", "select", "predict", "submission", "ablation", "plots"):
        assert f'label = "{rule}"' in result.stdout


def test_bad_config_key_stops_before_any_job(finished):
    workdir, _, base = finished
    before = (workdir / "results/submission.csv").read_bytes()
    bad = write_overlay(base / "bad.yaml", {"train": {"epoch": 3}})
    result = snakemake(workdir, bad, "all")
    assert result.returncode != 0
    assert "train: Additional properties are not allowed ('epoch' was unexpected)" in result.stdout + result.stderr
    assert (workdir / "results/submission.csv").read_bytes() == before


def test_report_names_every_plot_and_table(finished):
    workdir, configfile, _ = finished
    result = snakemake(workdir, configfile, "--report", "results/report.html")
    assert result.returncode == 0, result.stderr[-2000:]
    html = (workdir / "results/report.html").read_text()
    for name in ("curves.png", "confusion_matrix.png", "worst_classes.png", "error_gallery.png",
                 "table.csv", "runs.csv", "summary.csv", "leaks.csv", "classification_report_full.csv"):
        assert name in html, name
    for run in ("full/seed0/config.json", "no_mixup/seed1/config.json"):
        assert run in html, run


def test_cluster_executor_runs_each_job_as_its_own_submission(finished):
    """cluster-generic with a stand-in for sbatch; results must equal the local run's."""
    workdir, configfile, base = finished
    overlay = yaml.safe_load(configfile.read_text())
    overlay["seeds"] = [0]
    # one run is enough to see every kind of job submitted (each one a Snakemake process of its own)
    overlay["variants"] = {"full": {}, "no_mlp": None, "no_mixup": None}
    overlay["ensembles"] = {"full_x2": None, "full_hflip": None}
    overlay["resources"].update(train={"threads": 1, "gpu": 1}, predict={"threads": 1, "gpu": 1})
    cluster_config = write_overlay(base / "cluster.yaml", overlay)
    record = base / "submissions.jsonl"
    submit = (f"{sys.executable} {REPO / 'tests' / 'cluster_submit.py'} --record {record} --rule {{rule}} "
              "--threads {threads} --mem-mb {resources.mem_mb} --runtime {resources.runtime} --gpu {resources.gpu}")
    cluster_dir = base / "cluster"
    result = snakemake(cluster_dir, cluster_config, "all", "--executor", "cluster-generic",
                       "--cluster-generic-submit-cmd", submit, "--jobs", "2", "--default-resources", "gpu=0", "runtime=10",
                       "--latency-wait", "30",
                       # each finished job is noticed at the next round of status checks (10 s apart by default)
                       "--seconds-between-status-checks", "1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = [json.loads(line) for line in record.read_text().splitlines()]
    by_rule = {}
    for job in jobs:
        by_rule.setdefault(job["rule"], []).append(job)
    assert len(by_rule["train"]) == 1 and len(by_rule["predict"]) == 2 and len(by_rule["index"]) == 1
    assert len({job["job_id"] for job in jobs}) == len(jobs)  # every job its own process
    assert len({job["jobscript"] for job in jobs}) == len(jobs)
    assert all(job["gpu"] == 1 for job in by_rule["train"] + by_rule["predict"])
    assert all(job["gpu"] == 0 for job in by_rule["index"] + by_rule["select"])
    assert by_rule["train"][0]["mem_mb"] == 16000 and by_rule["train"][0]["runtime"] == 1440
    # Same runs as the local workflow's seed 0: identical histories and predictions.
    for variant in ("full",):
        local = pd.read_csv(workdir / f"results/train/{variant}/seed0/history.csv")[COMPARED]
        remote = pd.read_csv(cluster_dir / f"results/train/{variant}/seed0/history.csv")[COMPARED]
        pd.testing.assert_frame_equal(local, remote, check_exact=True)
        local_pred = pd.read_csv(workdir / f"results/predict/{variant}/seed0/test.csv")
        remote_pred = pd.read_csv(cluster_dir / f"results/predict/{variant}/seed0/test.csv")
        pd.testing.assert_frame_equal(local_pred, remote_pred)
    assert (cluster_dir / "results/submission.csv").read_text() == (workdir / "results/submission.csv").read_text()


def test_bad_image_stops_the_index_and_keeps_finished_results(finished, tmp_path):
    workdir, configfile, base = copy_of(finished, tmp_path)
    kept = {path: path.read_bytes() for path in [
        workdir / "results/submission.csv", workdir / "results/train/full/seed0/model.pt",
        workdir / "results/ablation/table.csv"]}
    broken = base / "my data" / "train" / "4" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    result = snakemake(workdir, configfile, "all")
    assert result.returncode != 0
    assert "broken.jpg: not a readable image" in result.stderr  # on the console, not only in the log
    assert "rule train" not in result.stdout + result.stderr  # stopped before any training
    for path, content in kept.items():
        assert path.read_bytes() == content


def training_log_started(workdir, epochs: int) -> bool:
    """The slow run's training job has logged its start (so its config.json is rewritten)."""
    log = workdir / "logs" / "train" / "full" / "seed0.log"
    return log.is_file() and f"{epochs} epochs" in log.read_text()


def test_second_invocation_is_refused_while_one_runs(finished, tmp_path):
    workdir, configfile, base = copy_of(finished, tmp_path)
    lock_dir = workdir / ".snakemake" / "locks"
    overlay = yaml.safe_load(configfile.read_text())
    overlay["train"]["epochs"] = epochs = 30  # long enough to still be running
    slow = write_overlay(base / "slow.yaml", overlay)
    first = start_snakemake(workdir, slow, "results/train/full/seed0/history.csv", cores=1)
    try:
        deadline = time.time() + 120
        # Wait for the lock and for the slow run to be training: before that it rewrites the run's
        # config.json and removes its old outputs, and a second Snakemake building its DAG at that
        # moment may fail on the vanished file instead of on the lock.
        while not (lock_dir.exists() and any(lock_dir.iterdir()) and training_log_started(workdir, epochs)):
            assert time.time() < deadline and first.poll() is None, "first run never started training"
            time.sleep(0.2)
        second = snakemake(workdir, configfile, "all")
        assert second.returncode != 0
        assert "Directory cannot be locked" in second.stdout + second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert snakemake(workdir, configfile, "--unlock").returncode == 0
