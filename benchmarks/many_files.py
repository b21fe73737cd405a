"""How long does an up-to-date dry run take on a data set of many files?

Writes a synthetic data set of tiny PNGs (default 200,000: 100 classes x (1,900 train + 100 val)
and 10,000 test... scaled by --files), indexes it once through the workflow, then times
`snakemake -n` of the index outputs:
  first      the dry run right after the index: the files are stat-ed, their record is read
  up_to_date a dry run with nothing changed (the case every run meets)
  touched    after `touch` of every file (metadata changed, contents not): each file is read
             again once to see that its bytes are unchanged; nothing is scheduled
  after      the dry run after that, up to date again
and, as the baseline of the same run, the time of a dry run on a data set of 1 % of the files.
The time that depends on the data set is the scan of its files (data/datafiles.py); the rest of the
DAG (training, prediction, tables) does not depend on the file count.

Not a test: the figures depend on the machine, its file system and its page cache.
Run from the repository root: python -m benchmarks.many_files --help
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TARGETS = ["results/index/train.csv", "results/index/test.csv"]


def write_files(root: Path, files: int, classes: int = 100, seed: int = 0) -> int:
    """Tiny distinct PNGs in the course layout: 95 % train, 5 % val (per class), 5 % test."""
    rng = np.random.default_rng(seed)
    test = files // 20
    per_class = (files - test) // classes
    val = max(1, per_class // 20)
    count = 0

    def save(path: Path):
        nonlocal count
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
        count += 1

    for label in range(classes):
        for split, n in (("train", per_class - val), ("val", val)):
            folder = root / split / f"class{label:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                save(folder / f"{i:06d}.png")
    (root / "test").mkdir(parents=True, exist_ok=True)
    for i in range(test):
        save(root / "test" / f"t{i:07d}.png")
    return count


def snakemake(workdir: Path, configfile: Path, *args) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                             str(workdir), "--configfile", str(configfile), "--cores", "2", *args, *TARGETS],
                            capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(result.stdout[-2000:] + result.stderr[-2000:])
    return seconds, result.stdout + result.stderr


def project(base: Path, files: int) -> tuple[Path, Path, int]:
    data, workdir = base / "data", base / "work"
    count = write_files(data, files) if not data.exists() else sum(1 for _ in data.rglob("*.png"))
    configfile = base / "config.yaml"
    configfile.write_text(yaml.safe_dump({"data": {"root": str(data), "test_labels": None},
                                          "model": {"weights": "none"}}))
    return workdir, configfile, count


def measure(base: Path, files: int) -> dict:
    workdir, configfile, count = project(base, files)
    start = time.perf_counter()
    snakemake(workdir, configfile)  # the index jobs themselves
    row = {"files": count, "index_jobs_s": time.perf_counter() - start}
    for name in ("first", "up_to_date"):
        row[f"{name}_s"], out = snakemake(workdir, configfile, "-n")
        assert "Nothing to be done" in out, out[-1000:]
    now = time.time()
    for path in (base / "data").rglob("*.png"):
        os.utime(path, (now, now))
    for name in ("touched", "after"):
        row[f"{name}_s"], out = snakemake(workdir, configfile, "-n")
        assert "Nothing to be done" in out, out[-1000:]
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--dir", default="results/many_files", help="where the data sets go (kept)")
    args = parser.parse_args(argv)
    base = Path(args.dir).resolve()
    rows = [measure(base / f"n{max(args.files // 100, 200)}", max(args.files // 100, 200)),
            measure(base / f"n{args.files}", args.files)]
    table = pd.DataFrame(rows)
    table["up_to_date_over_baseline"] = table["up_to_date_s"] / table["up_to_date_s"].iloc[0]
    print(table.round(2).to_string(index=False))
    table.to_csv(base / "dry_run.csv", index=False)


if __name__ == "__main__":
    main()
