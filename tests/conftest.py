"""Shared fixtures: tiny folder-per-class data sets made on the fly, and a Snakemake runner."""

from __future__ import annotations

import colorsys
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    """A SLURM client whose controller is down (slurm.conf installed, slurmctld not running, as
    on a machine where .ci/slurm_local.sh has not started it) makes every Snakemake process wait
    9 s: snakemake-executor-plugin-slurm, loaded with the other plugins, asks `scontrol show
    config` when it is imported, and scontrol waits for the connection to time out. Every
    Snakemake of the tests, and every job a `run:` block or the cluster executor starts as a
    Snakemake of its own, paid it. With the controller down, an empty SLURM_CONF makes the SLURM
    commands fail at once instead: the same answer (no cluster; tests/test_slurm.py skips), no
    wait. A running controller is left as it is."""
    if shutil.which("scontrol") is None:
        return
    try:
        down = subprocess.run(["scontrol", "ping"], capture_output=True, timeout=30).returncode != 0
    except subprocess.TimeoutExpired:
        down = True
    if down:
        os.environ["SLURM_CONF"] = os.devnull


@pytest.fixture(autouse=True, scope="session")
def torch_hub_of_the_tests(tmp_path_factory):
    """A torch hub cache of the tests' own (empty: nothing is downloaded, and the user's cache is
    never read); the weights tests put files of their own making there."""
    home = tmp_path_factory.mktemp("torch_home")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    previous = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("TORCH_HOME", None)
    else:
        os.environ["TORCH_HOME"] = previous


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory):
    """A folder shared by one test module's tests (a finished run they read). It is removed when
    the module ends with no test failed, as pytest removes a passed test's tmp_path
    (`tmp_path_retention_policy` in pyproject.toml): a finished run is a few gigabytes."""
    failed_before = request.session.testsfailed
    folder = tmp_path_factory.mktemp(request.module.__name__.removeprefix("test_"))
    yield folder
    if request.session.testsfailed == failed_before:
        shutil.rmtree(folder, ignore_errors=True)


def course_layout() -> str:
    """A folder laid out like the course data set's train/ (100 class folders, as the config
    checks count them), made once per test session; the folders hold no images."""
    root = Path(os.environ["TORCH_HOME"]).parent / "course_layout"
    if not root.is_dir():
        for label in range(100):
            (root / "train" / f"{label:03d}").mkdir(parents=True)
    return str(root)


# 12 classes, so the numeric order ("2" < "10") differs from the string order ("10" < "2").
N_CLASSES = 12


def class_image(label: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A learnable picture of class `label`: its own colour and a bright block in its own place."""
    r, g, b = colorsys.hsv_to_rgb(label / N_CLASSES, 0.8, 0.8)
    pixels = np.empty((size, size, 3))
    pixels[:] = (r * 255, g * 255, b * 255)
    quarter = size // 4
    row, col = divmod(label % 4, 2)
    pixels[row * 2 * quarter : row * 2 * quarter + quarter * 2, col * 2 * quarter : col * 2 * quarter + quarter * 2] = 255
    pixels += rng.normal(0, 12, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def save_image(pixels: np.ndarray, path: Path, mode: str) -> None:
    image = Image.fromarray(pixels, "RGB")
    if mode == "L":
        image = image.convert("L")
    elif mode == "RGBA":
        image = image.convert("RGBA")
    elif mode == "P":
        image = image.convert("P", palette=Image.ADAPTIVE)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=95) if path.suffix.lower() in {".jpg", ".jpeg"} else image.save(path)


def file_for(label: int, number: int) -> tuple[str, str]:
    """Mix formats and modes: grayscale/RGBA/palette PNG, upper-case .JPG, .jpeg, .jpg."""
    kinds = [(".png", "L"), (".png", "RGBA"), (".png", "P"), (".JPG", "RGB"), (".jpeg", "RGB")]
    return kinds[label % len(kinds)] if number % 2 == 0 else (".jpg", "RGB")


def make_dataset(root: Path, train_per_class=6, val_per_class=2, test_per_class=2, size=32, seed=0) -> Path:
    """Course layout under `root`; returns the test labels CSV (image_name,label)."""
    rng = np.random.default_rng(seed)
    rows = []
    number = 0
    for label in range(N_CLASSES):
        for split, count in (("train", train_per_class), ("val", val_per_class), ("test", test_per_class)):
            for _ in range(count):
                number += 1
                suffix, mode = file_for(label, number)
                name = f"img{number:04d}"
                if split == "test":
                    path = root / "test" / f"{name}{suffix}"
                    rows.append({"image_name": name, "label": str(label)})
                else:
                    path = root / split / str(label) / f"{name}{suffix}"
                save_image(class_image(label, rng, size), path, mode)
    labels = root / "test_labels.csv"
    pd.DataFrame(rows).to_csv(labels, index=False)
    return labels


def add_test_image(data_root: Path, name: str = "zz_new") -> Path:
    """A new test image (a copy of the first, with its label added to test_labels.csv)."""
    test_dir = data_root / "test"
    source = sorted(test_dir.iterdir())[0]
    added = test_dir / f"{name}{source.suffix}"
    shutil.copy(source, added)
    labels = pd.read_csv(data_root / "test_labels.csv", dtype=str)
    label = labels.loc[labels["image_name"] == source.stem, "label"].iloc[0]
    pd.concat([labels, pd.DataFrame({"image_name": [name], "label": [label]})]).to_csv(
        data_root / "test_labels.csv", index=False)
    return added


def index_dataset(root: Path, out_dir: Path, test_labels=None, on_leak: str = "warn") -> dict:
    """Both index stages, as the index and index_test rules run them, into out_dir/*.csv.
    Returns the train, val and test frames and the class names ("classes")."""
    from imageclf.data import index
    out = Path(out_dir)
    frames = index.run(root, out / "train.csv", out / "val.csv", out / "classes.csv", on_leak=on_leak)
    frames["test"] = index.run_test(root, out / "train.csv", out / "val.csv", out / "classes.csv",
                                    out / "test.csv", out / "summary.csv", out / "leaks.csv",
                                    test_labels=test_labels, on_leak=on_leak)
    return frames


def index_files(folder: Path) -> dict:
    """The index files a training run reads, as the train rule hands them over."""
    return {name: Path(folder) / f"{name}.csv" for name in ("train", "val", "classes")}


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "data"
    make_dataset(root)
    return root


def tiny_overlay(data_root: Path, **extra) -> dict:
    """Settings that make a run take seconds: 32 px, 2 epochs, resnet18, no pretrained weights."""
    overlay = {
        "data": {"root": str(data_root), "test_labels": str(data_root / "test_labels.csv")},
        "model": {"arch": "resnet18", "weights": "none"},
        # Classes differ by hue; hue jitter of 0.1 would blur 12 hues 0.083 apart.
        "augment": {"rand_augment": {"enabled": False}, "color_jitter": {"enabled": False}},
        "train": {"image_size": 32, "epochs": 2, "batch_size": 8, "num_workers": 0,
                  "optimizer": {"lr": 0.002}},
        "ablation": {"bootstrap_samples": 200},
        "resources": {"train": {"threads": 1}, "predict": {"threads": 1}, "index": {"threads": 1}},
    }
    for key, value in extra.items():
        overlay[key] = value if not isinstance(value, dict) else {**overlay.get(key, {}), **value}
    return overlay


def write_overlay(path: Path, overlay: dict) -> Path:
    path.write_text(yaml.safe_dump(overlay, sort_keys=False))
    return path


def snakemake_command(workdir: Path, configfile: Path, *args, cores: int = 2, repo: Path = REPO):
    """(command, environment) that run the repository's workflow in `workdir` with a config
    overlay. repo: another copy of the workflow (its Snakefile, profiles and package:
    tests/test_upgrade.py's next release)."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    if repo != REPO:  # its own imageclf package, before the installed one, for Snakemake and the jobs
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo / "workflow"), env.get("PYTHONPATH")]))
    command = [
        sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(configfile), "--cores", str(cores), *map(str, args),
    ]
    return command, env


def snakemake(workdir: Path, configfile: Path, *args, cores: int = 2, timeout: int = 600, repo: Path = REPO):
    """Run the workflow to the end (snakemake_command); its output captured."""
    command, env = snakemake_command(workdir, configfile, *args, cores=cores, repo=repo)
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def start_snakemake(workdir: Path, configfile: Path, *args, cores: int = 2) -> subprocess.Popen:
    """Start the workflow in the background, in a process group of its own (so a test can kill
    the whole group, jobs included), its output discarded."""
    command, env = snakemake_command(workdir, configfile, *args, cores=cores)
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def wait_for(path: Path, text: str, process: subprocess.Popen, timeout: float = 300) -> None:
    """Until `text` appears in the file at `path`; an AssertionError if `process` ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and text in path.read_text():
            return
        if process.poll() is not None:
            raise AssertionError(f"finished before '{text}' appeared")
        time.sleep(0.1)
    raise AssertionError(f"'{text}' never appeared in {path}")


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> job count from a dry run's 'Job stats' table."""
    match = re.search(r"Job stats:\n(.*?)\ntotal", output, re.S)
    if not match:
        return {}
    jobs = {}
    for line in match.group(1).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            jobs[parts[0]] = int(parts[1])
    return jobs
