"""GPU slots on a workstation (imageclf/core/gpu_slots.py, `imageclf gpus K -- COMMAND`), on the CPU
with fake GPU ids: distinct GPUs for concurrent jobs, no more jobs than GPUs, a killed job's GPU
freed, a 2-GPU job holding two, two projects sharing one machine's GPUs. Each job here is a
subprocess holding its locks, as a rule's job does; the tests take a few seconds in all."""

import datetime
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_dataset, snakemake_command, tiny_overlay, write_overlay
from imageclf.core import gpu_slots
from imageclf.core.logs import setup_logging

# A job's command: waits for `release` (a file) or `hold` seconds, then records its GPUs and times.
JOB = """
import json, os, sys, time
record, hold, release = sys.argv[1], float(sys.argv[2]), sys.argv[3]
start = time.time()
open(record + ".started", "w").write(os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
while time.time() - start < hold and not os.path.exists(release):
    time.sleep(0.02)
with open(record, "w") as out:
    json.dump({"gpus": os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"), "start": start, "end": time.time(),
               "order": os.environ.get("CUDA_DEVICE_ORDER"), "held": os.environ.get("IMAGECLF_GPU_SLOTS")}, out)
"""


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A lock folder of the test's own, and the job script; returns a function that starts a job."""
    script = tmp_path / "job.py"
    script.write_text(JOB)
    locks = tmp_path / "locks"
    for name in (gpu_slots.IDS_ENV, gpu_slots.FAKE_ENV, "CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "CUDA_DEVICE_ORDER"):
        monkeypatch.delenv(name, raising=False)

    def start(name, gpus, hold=30.0, cwd=None, share=None, **env):
        record = tmp_path / f"{name}.json"
        environment = dict(os.environ, **{gpu_slots.LOCK_DIR_ENV: str(locks)}, **env)
        sharing = ["--share", str(share)] if share else []
        command = [sys.executable, "-m", "imageclf", "gpus", str(gpus), *sharing, "--", sys.executable, str(script),
                   str(record), str(hold), str(tmp_path / f"{name}.release")]
        process = subprocess.Popen(command, env=environment, cwd=cwd or tmp_path, stderr=subprocess.PIPE, text=True)
        process.record, process.release = record, tmp_path / f"{name}.release"
        return process

    return start


def started(process, timeout=15.0) -> str:
    """Wait until a job's command runs; its CUDA_VISIBLE_DEVICES."""
    flag = Path(str(process.record) + ".started")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if flag.exists() and flag.read_text():
            return flag.read_text()
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.02)
    raise AssertionError(f"{process.record.name} never started")


def still_waiting(process, seconds=0.6) -> bool:
    time.sleep(seconds)
    return process.poll() is None and not Path(str(process.record) + ".started").exists()


def finish(process, timeout=15.0) -> dict:
    process.release.touch()
    assert process.wait(timeout) == 0, process.stderr.read()
    return json.loads(process.record.read_text())


def test_concurrent_jobs_get_distinct_gpus_and_no_more_run_than_gpus(machine):
    jobs = [machine(f"job{i}", 1, hold=0.4, IMAGECLF_GPU_IDS="0,1") for i in range(5)]
    records = [finish(job, timeout=30) for job in jobs]
    assert {r["gpus"] for r in records} <= {"0", "1"}
    assert all(r["held"] == r["gpus"] for r in records)  # what the job's log names
    events = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records], key=lambda e: (e[0], e[1]))
    running, most = 0, 0
    for _, step in events:
        running += step
        most = max(most, running)
    assert most == 2  # both GPUs busy at once, never a third job
    for a in records:
        for b in records:
            if a is not b and a["start"] < b["end"] and b["start"] < a["end"]:
                assert a["gpus"] != b["gpus"], (a, b)


def test_a_sigkilled_job_frees_its_gpu(machine):
    holder = machine("holder", 1, IMAGECLF_GPU_IDS="0")
    assert started(holder) == "0"
    waiter = machine("waiter", 1, IMAGECLF_GPU_IDS="0")
    assert still_waiting(waiter)
    assert "waiting for 1 free GPU(s) of 0" in waiter.stderr.readline()  # said on the console
    os.kill(holder.pid, signal.SIGKILL)  # the command replaced `imageclf gpus`: its pid holds the lock
    holder.wait(5)
    assert started(waiter, timeout=5) == "0"
    assert finish(waiter)["gpus"] == "0"


def test_a_two_gpu_job_holds_two_slots(machine):
    pair = machine("pair", 2, IMAGECLF_GPU_IDS="0,1,2")
    assert started(pair) == "0,1"
    single = machine("single", 1, IMAGECLF_GPU_IDS="0,1,2")
    assert started(single) == "2"  # the one GPU left
    second_pair = machine("second_pair", 2, IMAGECLF_GPU_IDS="0,1,2")
    assert still_waiting(second_pair)  # one GPU is free, two are needed: it takes none
    finish(single)
    assert still_waiting(second_pair)
    finish(pair)
    assert sorted(finish(second_pair)["gpus"].split(",")) in (["0", "1"], ["0", "2"], ["1", "2"])


def test_two_projects_on_one_machine_never_share_a_gpu(machine, tmp_path):
    """Two Snakemake processes (two projects, two folders) hand out GPUs from the same locks."""
    (tmp_path / "project_a").mkdir()
    (tmp_path / "project_b").mkdir()
    a = machine("a", 1, cwd=tmp_path / "project_a", IMAGECLF_GPU_IDS="0,2")
    taken = started(a)
    b = machine("b", 1, cwd=tmp_path / "project_b", IMAGECLF_GPU_IDS="0,2")
    assert started(b) == ({"0", "2"} - {taken}).pop()
    c = machine("c", 1, cwd=tmp_path / "project_b", IMAGECLF_GPU_IDS="0,2")
    assert still_waiting(c)
    finish(a)
    assert finish(c)["gpus"] == taken
    finish(b)


def test_with_gpu_share_two_jobs_share_a_gpu_and_a_whole_gpu_job_waits_for_both(machine):
    first = machine("first", 1, share=2, IMAGECLF_GPU_IDS="0,1")
    assert started(first) == "0"
    second = machine("second", 1, share=2, IMAGECLF_GPU_IDS="0,1")
    assert started(second) == "0"  # shared jobs fill one GPU before they start on the next
    whole = machine("whole", 1, IMAGECLF_GPU_IDS="0,1")
    assert started(whole) == "1"  # which stays whole
    third = machine("third", 1, share=2, IMAGECLF_GPU_IDS="0,1")
    assert still_waiting(third)  # two to a GPU
    whole_too = machine("whole_too", 1, IMAGECLF_GPU_IDS="0,1")
    finish(first)
    assert started(third) == "0"  # the seat it left
    assert still_waiting(whole_too)  # GPU 0 is still shared, GPU 1 taken
    finish(second)
    finish(third)
    assert started(whole_too) == "0"
    finish(whole)
    assert finish(whole_too)["gpus"] == "0"


def test_ids_from_the_driver_are_in_its_order(machine):
    """Ids found by nvidia-smi are the driver's (PCI bus) numbers: CUDA is told to count the same way."""
    record = finish(machine("job", 1, IMAGECLF_GPU_IDS="3"))
    assert record["gpus"] == "3" and record["order"] == "PCI_BUS_ID"
    record = finish(machine("job2", 1, IMAGECLF_GPU_IDS="1", CUDA_DEVICE_ORDER="FASTEST_FIRST"))
    assert record["order"] == "FASTEST_FIRST"  # the user's choice stays


@pytest.mark.parametrize("gpus, env", [
    (1, {}),  # no list exported: not a local Snakemake's job (another scheduler's, or by hand)
    (1, {"IMAGECLF_GPU_IDS": ""}),  # resources.gpu_ids: [] or a machine without GPUs
    (1, {"IMAGECLF_FAKE_GPUS": "2"}),  # fake GPUs are the Snakefile's to find, never a job's
    (0, {"IMAGECLF_GPU_IDS": "0,1"}),  # a job that asks for none
    (1, {"IMAGECLF_GPU_IDS": "0,1", "SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "7"}),  # SLURM's choice stays
])
def test_the_command_runs_as_it_is_without_gpus_to_hand_out(machine, gpus, env):
    record = finish(machine("job", gpus, **env))
    assert record["gpus"] == env.get("CUDA_VISIBLE_DEVICES", "<unset>") and record["held"] is None


def test_a_job_that_needs_more_gpus_than_there_are_says_so(machine):
    job = machine("job", 3, IMAGECLF_GPU_IDS="0,1")
    assert job.wait(15) != 0
    assert "needs 3 GPUs, but this machine has 2" in job.stderr.read()
    job = machine("job", 1, share=5, IMAGECLF_GPU_IDS="0,1")
    assert job.wait(15) != 0
    assert "a GPU is shared by 1, 2, 3, 4 or 6 jobs" in job.stderr.read()


def test_fake_and_detected_ids(monkeypatch):
    monkeypatch.setenv(gpu_slots.FAKE_ENV, "4")
    assert gpu_slots.machine_gpus() == ["0", "1", "2", "3"]
    monkeypatch.setenv(gpu_slots.FAKE_ENV, "0,2,3")
    assert gpu_slots.machine_gpus() == ["0", "2", "3"]
    monkeypatch.delenv(gpu_slots.FAKE_ENV)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert gpu_slots.detected_gpus() == ["1", "3"]
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert gpu_slots.detected_gpus() == []


def test_the_jobs_log_names_its_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv(gpu_slots.HELD_ENV, "2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    monkeypatch.setenv(gpu_slots.TAKEN_AT_ENV, "1700000000.25")
    monkeypatch.setenv(gpu_slots.WAITED_ENV, "3.5")
    log = tmp_path / "stage.log"
    setup_logging(str(log))
    logging.shutdown()
    text = log.read_text()
    assert "GPU 2 of this machine (CUDA_VISIBLE_DEVICES=2)" in text and "after waiting 3.5 s" in text
    assert "shared" not in text
    monkeypatch.setenv(gpu_slots.SHARE_ENV, "2")
    setup_logging(str(log))
    logging.shutdown()
    assert "; shared by up to 2 jobs" in log.read_text()


# ---- the workflow on a workstation with two (fake) GPUs ---------------------------------------------------------

GPU_LINE = re.compile(r"GPU (\S+) of this machine \(CUDA_VISIBLE_DEVICES=\S*\), held since (\S+ \S+) after waiting (\S+) s")


def gpu_jobs(workdir: Path) -> list[dict]:
    """Each train and predict job's GPU, from its log: taken at `start`, held past `end` (the log's last write)."""
    jobs = []
    for log in sorted((workdir / "logs").glob("*/*/*.log")):
        if log.parts[-3] not in ("train", "predict"):
            continue
        match = GPU_LINE.search(log.read_text())
        assert match, f"{log} names no GPU"
        jobs.append({"log": str(log), "gpu": match[1], "start": datetime.datetime.fromisoformat(match[2]).timestamp(),
                     "end": log.stat().st_mtime, "waited": float(match[3])})
    return jobs


def most_at_once(jobs: list[dict]) -> int:
    events = sorted([(j["start"], 1) for j in jobs] + [(j["end"], -1) for j in jobs], key=lambda e: (e[0], e[1]))
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def assert_no_gpu_twice(jobs: list[dict]) -> None:
    for a in jobs:
        for b in jobs:
            if a is not b and a["gpu"] == b["gpu"]:
                assert a["end"] <= b["start"] or b["end"] <= a["start"], (a, b)


@pytest.mark.slow
def test_a_workstation_runs_one_job_per_gpu_and_two_projects_share_its_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv(gpu_slots.FAKE_ENV, "2")  # what Snakemake takes for this machine's GPUs
    monkeypatch.setenv(gpu_slots.LOCK_DIR_ENV, str(tmp_path / "locks"))
    for name in (gpu_slots.IDS_ENV, "CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    make_dataset(tmp_path / "data", train_per_class=3, val_per_class=2, test_per_class=1)

    def project(name, variants):
        overlay = tiny_overlay(tmp_path / "data", seeds=[0], train={"epochs": 1, "cache": False},
                               variants={v: ({} if v in variants else None) for v in ("full", "no_mlp", "no_mixup")})
        return tmp_path / name, write_overlay(tmp_path / f"{name}.yaml", overlay)

    def start(workdir, configfile, targets, cores):
        command, env = snakemake_command(workdir, configfile, *targets, cores=cores)
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # One project: 3 trainings and 3 predictions, cores for 6 jobs at once, 2 GPUs.
    a_dir, a_config = project("a", ("full", "no_mlp", "no_mixup"))
    a = start(a_dir, a_config, [f"results/predict/{v}/seed0/val.csv" for v in ("full", "no_mlp", "no_mixup")], cores=6)
    output = a.communicate(timeout=900)[0]
    assert a.returncode == 0, output[-3000:]
    jobs = gpu_jobs(a_dir)
    assert len(jobs) == 6 and {j["gpu"] for j in jobs} == {"0", "1"}
    assert_no_gpu_twice(jobs)
    assert most_at_once(jobs) == 2
    # Snakemake itself started no more GPU jobs than GPUs: none had to wait for one
    assert all(j["waited"] == 0 for j in jobs) and "waiting for" not in output

    # Two projects at once, in two folders: the test predictions of the first, a training of the second.
    b_dir, b_config = project("b", ("full",))
    a = start(a_dir, a_config, [f"results/predict/{v}/seed0/test.csv" for v in ("full", "no_mlp", "no_mixup")], cores=6)
    b = start(b_dir, b_config, ["results/predict/full/seed0/val.csv"], cores=4)
    for process in (a, b):
        output = process.communicate(timeout=900)[0]
        assert process.returncode == 0, output[-3000:]
    both = [j for j in gpu_jobs(a_dir) if j["log"].endswith("_test.log")] + gpu_jobs(b_dir)
    assert len(both) == 5
    assert_no_gpu_twice(both)
    assert most_at_once(both) <= 2


def planned_train(workdir: Path, overlay: dict, *args, name: str = "", **env) -> dict:
    """The first train job of a dry run of the demo: its resources and its command. name: the
    overlay's (several dry runs may share one folder, and so its cache of the model's facts)."""
    configfile = write_overlay(workdir.parent / f"{name or workdir.name}.yaml", overlay)
    command, environment = snakemake_command(workdir, configfile, "-n", "-p", "results/train/full/seed0/history.csv",
                                             *args, cores=32)
    result = subprocess.run(command, env={**environment, **env}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    block = result.stdout[result.stdout.index("rule train:"):]
    resources = dict(re.findall(r"(\w+)=(\d+)", re.search(r"resources: (.*)", block)[1]))
    return {**{k: int(v) for k, v in resources.items()}, "command": re.search(r"Shell command: (.*)", block)[1]}


@pytest.mark.slow
def test_gpus_are_handed_out_only_by_a_local_snakemake_with_gpus(tmp_path, monkeypatch):
    for name in (gpu_slots.IDS_ENV, gpu_slots.FAKE_ENV, "CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    four = {gpu_slots.FAKE_ENV: "4"}
    # Dry runs build nothing: they share one project folder, whose cache of the model's facts (its
    # parameter count, measured by building resnet50 once) spares each of them that second or two.
    project = tmp_path / "project"
    job = planned_train(project, {}, name="gpus", **four)
    assert (job["gpu"], job["gpu_seats"]) == (1, 12) and job["command"].startswith("imageclf gpus 1 --share 1 -- imageclf train")
    job = planned_train(project, {"train": {"devices": 2}}, name="ddp", **four)
    assert (job["gpu"], job["gpu_seats"]) == (2, 24) and "imageclf gpus 2 --share 1 -- torchrun" in job["command"]
    job = planned_train(project, {"resources": {"train": {"gpu_share": 2}}}, name="shared", **four)
    assert (job["gpu"], job["gpu_share"], job["gpu_seats"]) == (1, 2, 6)
    job = planned_train(project, {"train": {"device": "cpu"}}, name="cpu_runs", **four)
    assert (job["gpu"], job["gpu_seats"]) == (0, 0)
    # nothing to hand out: no GPU here, gpu_ids: [], inside a SLURM job
    for name, overlay, env in [("none", {}, {}), ("off", {"resources": {"gpu_ids": []}}, four),
                               ("slurm_job", {}, {**four, "SLURM_JOB_ID": "42"})]:
        job = planned_train(project, overlay, name=name, **env)
        assert (job["gpu"], job["gpu_share"], job["gpu_seats"]) == (0, 1, 0), name  # the config's, as before
        assert job["command"].startswith("imageclf gpus 0 --share 1 -- imageclf train")


@pytest.mark.slow
def test_a_cluster_executor_keeps_the_configs_gpus_on_a_machine_with_gpus(tmp_path, monkeypatch):
    """A cluster's jobs ask the scheduler for the config's `gpu` (a dry run would not tell: it runs
    under Snakemake's dry-run executor), and their `imageclf gpus` hands out nothing."""
    for name in (gpu_slots.IDS_ENV, "CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(gpu_slots.FAKE_ENV, "4")  # the submitting machine's GPUs
    monkeypatch.setenv(gpu_slots.LOCK_DIR_ENV, str(tmp_path / "locks"))
    make_dataset(tmp_path / "data", train_per_class=3, val_per_class=2, test_per_class=1)
    overlay = tiny_overlay(tmp_path / "data", seeds=[0], train={"epochs": 1, "cache": False},
                           variants={"full": {}, "no_mlp": None, "no_mixup": None})
    overlay["resources"]["train"]["gpu"] = 1
    configfile = write_overlay(tmp_path / "cluster.yaml", overlay)
    record = tmp_path / "asked.txt"
    submit = tmp_path / "submit.sh"
    submit.write_text(f'echo "$1 $2 $3 $4" >> {record}\nshift 4\nexec {sys.executable} '
                      f'{Path(__file__).parent / "cluster_submit.py"} --record {tmp_path / "jobs.jsonl"} --rule r '
                      '--threads 1 --mem-mb 1 --runtime 1 --gpu 0 "$@"\n')
    command, env = snakemake_command(tmp_path / "work", configfile, "results/train/full/seed0/history.csv",
                                     "--executor", "cluster-generic", "--jobs", "2", "--latency-wait", "30",
                                     # a finished job is noticed at the next status check (10 s apart by default)
                                     "--seconds-between-status-checks", "1",
                                     "--default-resources", "gpu=0", "gpu_seats=0", "gpu_share=1",
                                     "--cluster-generic-submit-cmd",
                                     f"bash {submit} {{rule}} {{resources.gpu}} {{resources.gpu_seats}} {{resources.gpu_share}}")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    asked = {line.split()[0]: line.split()[1:] for line in record.read_text().splitlines()}
    assert asked["train"] == ["1", "0", "1"]  # gpu: the config's; no seats, no sharing
    assert "of this machine" not in (tmp_path / "work/logs/train/full/seed0.log").read_text()  # nothing handed out
