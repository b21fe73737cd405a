"""Logging of a stage: everything into the job's log file, warnings and errors also on the console.

A rule passes its `log:` file with --log-file. The console (the terminal that runs Snakemake, or a
cluster job's output) then shows only what needs a person's attention: a skipped file, a class
without validation images, a discarded resume state, the error that stopped the job.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys


def add_log_argument(parser: argparse.ArgumentParser) -> None:
    # not --log: torchrun would take that for an abbreviation of its own --log-dir
    parser.add_argument("--log-file", default=None,
                        help="log file (everything); warnings and errors also go to stderr")


def setup_logging(log_file: str | None = None, level: int = logging.INFO) -> logging.Logger:
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(formatter)
    handlers = [console]
    if log_file:
        console.setLevel(logging.WARNING)
        # torchrun's other processes add to the log that process 0 started
        mode = "w" if os.environ.get("RANK", "0") == "0" else "a"
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        to_file = logging.FileHandler(log_file, mode=mode)
        to_file.setFormatter(formatter)
        handlers.append(to_file)
    logging.basicConfig(level=level, handlers=handlers, force=True)
    logging.captureWarnings(True)
    logger = logging.getLogger("imageclf")
    log_gpu_slots(logger)
    return logger


def log_gpu_slots(logger: logging.Logger) -> None:
    """Name the GPUs that `imageclf gpus` gave this job (core/gpu_slots.py), once per job."""
    from .gpu_slots import HELD_ENV, SHARE_ENV, TAKEN_AT_ENV, WAITED_ENV

    held = os.environ.get(HELD_ENV)
    if not held or os.environ.get("RANK", "0") != "0":
        return
    taken = datetime.datetime.fromtimestamp(float(os.environ.get(TAKEN_AT_ENV) or 0))
    share = int(os.environ.get(SHARE_ENV) or 1)
    logger.info("GPU %s of this machine (CUDA_VISIBLE_DEVICES=%s), held since %s after waiting %s s for it%s",
                held, os.environ.get("CUDA_VISIBLE_DEVICES", ""), taken.isoformat(sep=" ", timespec="milliseconds"),
                os.environ.get(WAITED_ENV, "0"), f"; shared by up to {share} jobs" if share > 1 else "")
