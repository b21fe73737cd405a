"""Benchmark: training steps with glibc's default malloc against allocator.keep_freed_memory.

Each setting runs in its own fresh process (the allocator is set per process), on synthetic
tensors, with the recipe's model: images/s, minor page faults per step, peak memory, and the
ratio of the two. Not a test. Run from the repository root: python -m benchmarks.bench_malloc --help
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml
from imageclf.checks import checked_config
from imageclf.core import tables
from imageclf.core.config import run_config
from imageclf.core.logs import setup_logging
from imageclf.training import allocator, engine

REPO = Path(__file__).resolve().parents[1]


def measure(config_path: str, size: int, batch_size: int, precision: str, steps: int, warmup: int) -> dict:
    """In this process: timed training steps of the recipe's model at `size` on the CPU."""
    from .bench import model_and_step, recipe_config  # the bench's step, without data loading

    user = yaml.safe_load(Path(config_path).read_text())
    cfg = run_config(checked_config(recipe_config(user)), "full", 0)
    device = torch.device("cpu")
    channels_last = engine.resolve_channels_last("auto", precision, device)
    _, step = model_and_step(cfg, device, precision, channels_last)
    images, targets = torch.randn(batch_size, 3, size, size), torch.randint(0, 100, (batch_size,))
    for _ in range(warmup):
        step(images, targets)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = 0.0
    for _ in range(steps):
        start = time.perf_counter()
        step(images, targets)
        seconds += time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"img_s": batch_size * steps / seconds, "minor_faults_per_step": (usage.ru_minflt - faults) / steps,
            "peak_rss_mb": usage.ru_maxrss / 1024}


def run_child(malloc: str, args) -> dict:
    env = dict(os.environ)
    if malloc == "default":
        env[allocator.OPT_OUT] = "default"
    command = [sys.executable, "-m", "benchmarks.bench_malloc", "--child", "--config", args.config,
               "--size", str(args.size), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", str(args.threads), "--precisions", *args.precisions]
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config.yaml"))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out-dir", default="results/bench")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # one process, one allocator setting: print one JSON line
        kept = allocator.keep_freed_memory()
        torch.set_num_threads(args.threads)
        rows = {p: measure(args.config, args.size, args.batch_size, p, args.steps, args.warmup)
                for p in args.precisions}
        print(json.dumps({"kept": kept, "rows": rows}))
        return
    setup_logging()
    results = {malloc: run_child(malloc, args) for malloc in ("default", "keep_freed_memory")}
    rows = []
    for precision in args.precisions:
        base, kept = (results[m]["rows"][precision] for m in ("default", "keep_freed_memory"))
        rows.append({"size": args.size, "batch_size": args.batch_size, "precision": precision,
                     "applied": results["keep_freed_memory"]["kept"],
                     "default_img_s": base["img_s"], "kept_img_s": kept["img_s"],
                     "speedup": kept["img_s"] / base["img_s"],
                     "default_faults_per_step": base["minor_faults_per_step"],
                     "kept_faults_per_step": kept["minor_faults_per_step"],
                     "default_peak_rss_mb": base["peak_rss_mb"], "kept_peak_rss_mb": kept["peak_rss_mb"]})
    table = pd.DataFrame(rows)
    tables.write_table(Path(args.out_dir) / "malloc.csv", table)
    pd.set_option("display.width", 200)
    print(table.round(2).T.to_string(header=False))


if __name__ == "__main__":
    main()
