"""The SLURM profile (profiles/slurm) on a real SLURM cluster, through snakemake-executor-plugin-slurm.

Needs a running cluster with partitions cpu and gpu (one gpu GRES) and account my_lab:
.ci/slurm_local.sh starts one on this machine. Only threads and memory are lowered to the node's,
as the profile's comments tell users to."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, make_dataset, planned_jobs, tiny_overlay, write_overlay


def slurm_running() -> bool:
    if shutil.which("sinfo") is None:
        return False
    return subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not slurm_running(), reason="no SLURM cluster here (sinfo absent or failing); "
                       ".ci/slurm_local.sh starts a one-node one"),
]
pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install snakemake-executor-plugin-slurm")


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    """profiles/slurm with threads and mem_mb lowered to the node's, nothing else changed."""
    cpus, mem = subprocess.run(["sinfo", "-h", "-N", "-o", "%c %m"], capture_output=True, text=True,
                               check=True).stdout.split()[:2]
    cpus, mem = int(cpus), int(mem.rstrip("+"))
    settings = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    settings["set-threads"] = {rule: min(n, cpus) for rule, n in settings["set-threads"].items()}
    settings["default-resources"]["mem_mb"] = min(settings["default-resources"]["mem_mb"], mem)
    for resources in settings["set-resources"].values():
        if "mem_mb" in resources:
            resources["mem_mb"] = min(resources["mem_mb"], mem)
    folder = tmp_path_factory.mktemp("profile")
    (folder / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return folder


def start(workdir: Path, configfile: Path, profile: Path, *targets):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    # the plugin's first status check waits 40 s by default; 2 s keeps the test short
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(configfile), "--workflow-profile", str(profile),
               "--slurm-init-seconds-before-status-checks", "2", *targets]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def project(tmp_path, epochs):
    make_dataset(tmp_path / "data", train_per_class=3, val_per_class=2, test_per_class=1)
    overlay = tiny_overlay(tmp_path / "data", variants={"no_mlp": None, "no_mixup": None}, seeds=[0],
                           train={"epochs": epochs, "cache": False})  # fewer jobs: each starts a Snakemake
    return tmp_path / "work", write_overlay(tmp_path / "run.yaml", overlay)


def sacct_jobs(since: str) -> pd.DataFrame:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-S", since, "-o", "JobID,Partition,AllocTRES,State,Comment"],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    frame = pd.DataFrame(rows, columns=["job", "partition", "tres", "state", "comment"])
    frame["rule"] = frame["comment"].str.extract(r"^rule_([a-z_]+?)(?:_wildcards_.*)?$", expand=False)
    return frame


def training_process(workdir: Path):
    """The pid of this project's `imageclf train` process (found by its working folder)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            if b"train" in cmdline and b"--run-config" in cmdline and Path(os.readlink(entry / "cwd")) == workdir:
                return int(entry.name)
        except OSError:
            continue
    return None


def test_the_profile_runs_every_job_through_sbatch_and_a_killed_training_resumes(tmp_path, profile):
    workdir, configfile = project(tmp_path, epochs=3)
    workdir.mkdir()
    since = time.strftime("%Y-%m-%dT%H:%M:%S")

    def kill_after_the_first_epoch():  # as the kernel's OOM killer would
        state = workdir / "results/train/full/seed0/resume/state.pt"
        deadline = time.time() + 500
        while time.time() < deadline and not state.exists():
            time.sleep(0.1)
        pid = training_process(workdir)
        if pid:
            os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_after_the_first_epoch, daemon=True)
    killer.start()
    run = start(workdir, configfile, profile, "results/submission.csv")
    output, _ = run.communicate(timeout=900)
    assert run.returncode == 0, output[-4000:]
    jobs = sacct_jobs(since)
    planned = planned_jobs(output)
    local = {"run_config", "check_leaks"}  # localrules: run in the submitting Snakemake
    submitted = jobs["rule"].value_counts().to_dict()
    assert {rule: n for rule, n in planned.items() if rule not in local} == {
        rule: n - (rule == "train") for rule, n in submitted.items()}, (planned, jobs)
    train = jobs[jobs["rule"] == "train"]
    assert (train["partition"] == "gpu").all() and train["tres"].str.contains("gres/gpu=1").all(), train
    assert train["state"].tolist()[0] in {"FAILED", "OUT_OF_MEMORY"} and train["state"].tolist()[1] == "COMPLETED"
    assert (jobs.loc[jobs["rule"] != "train", "state"] == "COMPLETED").all(), jobs
    assert "resuming full from" in (workdir / "logs/train/full/seed0.log").read_text()
    history = pd.read_csv(workdir / "results/train/full/seed0/history.csv")
    assert history["epoch"].tolist() == [1, 2, 3]
    submission = pd.read_csv(workdir / "results/submission.csv", dtype=str)
    test_index = pd.read_csv(workdir / "results/index/test.csv", dtype=str)
    classes = pd.read_csv(workdir / "results/index/classes.csv", dtype=str)
    assert sorted(submission["image_name"]) == sorted(test_index["image_name"])
    assert set(submission["pred_label"]) <= set(classes.iloc[:, 0])


def test_a_job_cancelled_with_scancel_fails_instead_of_hanging(tmp_path, profile):
    """sacct says "CANCELLED by <uid>", which the plugin does not know; the profile's squeue says
    "CANCELLED". Each training job (and its retry) is cancelled: Snakemake must stop with an error."""
    workdir, configfile = project(tmp_path, epochs=200)
    run = start(workdir, configfile, profile, "results/train/full/seed0/history.csv")
    cancelled = set()
    deadline = time.time() + 600
    while run.poll() is None and time.time() < deadline:
        queue = subprocess.run(["squeue", "-h", "-o", "%i|%k|%T"], capture_output=True, text=True).stdout
        for line in queue.splitlines():
            job, comment, state = line.split("|")
            if comment.startswith("rule_train") and state == "RUNNING" and job not in cancelled:
                subprocess.run(["scancel", job], check=True)
                cancelled.add(job)
        time.sleep(1)
    if run.poll() is None:
        run.kill()
    output = run.communicate()[0]
    assert run.returncode not in (0, None) and time.time() < deadline, output[-3000:]
    assert len(cancelled) == 2, cancelled  # the job and the profile's one retry
    assert "SLURM status is: 'CANCELLED'" in output, output[-3000:]
