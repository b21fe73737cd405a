"""Benchmark: is the model fed? Prints one table and writes results/bench/*.csv.

For each configured size it measures, on whatever device is present:
  (a) model training images/s on synthetic tensors (the ceiling),
  (b) the reference data path feeding the model: PIL decode of every JPEG, the seed's transforms
      on the full-size image, a plain DataLoader — the way the original code loaded data,
  (c) this workflow's data path feeding the model: decoded-image cache, same ops, same loader,
  (d) the same with `train.augment_on: device`: workers read cached squares, the chain runs
      batched on the training device,
and the ratios (c)/(a), (c)/(b) and (d)/(a); with bf16 or fp16, also (c) with an fp32 model and
the end-to-end speed-up over it; plus augmentation-only images/s on one core (both loader paths)
and batched on the device, inference images/s, and the wall time of an up-to-date `snakemake -n`.
(a)-(d) are measured --rounds times, interleaved; the table gives their medians, their spreads
and the median of the per-round ratios.

Not a test: numbers vary with the machine and its load. Run from the repository root: python -m benchmarks.bench --help
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from imageclf.checks import checked_config
from imageclf.core import tables
from imageclf.core.config import execution_settings, run_config
from imageclf.core.logs import setup_logging
from imageclf.data import cache, loaders
from imageclf.models import factory
from imageclf.training import engine
from imageclf.training.allocator import keep_freed_memory
from imageclf.training.train import make_optimizer, training_dataset
from PIL import Image
from torch import nn

from .synthetic import write_all

log = logging.getLogger("imageclf.bench")
REPO = Path(__file__).resolve().parents[1]


def synthetic_jpegs(folder: Path, count: int, size=(500, 375), seed=0, workers: int = 1) -> list[str]:
    """Photo-like JPEGs, the course's typical size (synthetic.py's pictures, random colours)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(folder / f"{i:05d}.jpg") for i in range(count)]
    write_all([(path, seed * 10_000_019 + i, *size, None) for i, path in enumerate(paths)], workers)
    return paths


def timed_steps(batches, step, warmup: int, device=None) -> float:
    """Images per second over the batches after `warmup` ones (loading time included). On a GPU the
    clock starts and stops with the GPU idle; in between the steps queue up as in training."""
    seen, start = 0, None
    for i, (images, targets, *seeds) in enumerate(batches):
        if i == warmup:
            if device is not None and device.type == "cuda":
                torch.cuda.synchronize(device)
            start, seen = time.perf_counter(), 0
        step(images, targets, *seeds)
        seen += images.shape[0]
    if start is None:
        raise ValueError("not enough batches: raise --images or lower --warmup")
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return seen / (time.perf_counter() - start)


def make_step(model, device, precision, channels_last, train_cfg: dict, augment=None):
    optimizer = make_optimizer(model, train_cfg["optimizer"])  # as training builds it (fused or not)
    criterion = nn.CrossEntropyLoss(label_smoothing=train_cfg["label_smoothing"])
    model.train()

    def step(images, targets, seeds=None):
        if augment is not None:
            images = augment(images.to(device, non_blocking=True), seeds)
        images = engine.to_device(images, device, channels_last)
        targets = targets.to(device, non_blocking=True)
        with engine.autocast(device, precision):
            loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def model_and_step(cfg: dict, device, precision: str, channels_last: bool):
    """The configured model (100 classes, no pretrained weights, seeded) and its training step."""
    torch.manual_seed(0)
    model = factory.model_from_config(cfg["model"], 100, pretrained=False).to(
        device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return model, make_step(model, device, precision, channels_last, cfg["train"])


def recipe_config(user: dict, root) -> dict:
    """The user's config with data.root off the demo (`root`, a folder that exists), so the
    recipe's model and sizes apply."""
    return {**user, "data": {**user["data"], "root": str(root), "test_labels": None}}


def augmentation_rate(dataset, count: int) -> float:
    torch.set_num_threads(1)
    start = time.perf_counter()
    for i in range(count):
        dataset[(i % len(dataset), i)]
    return count / (time.perf_counter() - start)


def batched_augmentation_rate(augmenter, squares, batch_size: int, device, rounds: int = 3) -> float:
    """Images/s of the chain's device part alone, uint8 batch already on the device, its plans
    drawn beforehand (as the loader's workers draw them)."""
    images = torch.stack([torch.from_numpy(np.array(squares.image(i % len(squares.shapes)))).permute(2, 0, 1)
                          for i in range(batch_size)]).to(device)
    side = augmenter.image_size + 1 if images.shape[-1] == augmenter.image_size else images.shape[-1]
    images = torch.nn.functional.interpolate(images.float(), size=(side, side)).to(torch.uint8)
    plans = [augmenter.plan(torch.arange(r * batch_size, (r + 1) * batch_size), side, side) for r in range(rounds + 1)]
    augmenter(images, plans[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for r in range(1, rounds + 1):
        augmenter(images, plans[r])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * rounds / (time.perf_counter() - start)


def measure_rounds(columns: dict, ratios: dict, rounds: int, threads: int) -> dict:
    """Every column once per round, the columns interleaved, so that a slow spell of this shared
    machine hits them alike. Each column: its median and its spread ((max - min) / median); each
    ratio: the median of the per-round ratios (numerator and denominator measured minutes apart,
    not a whole benchmark apart)."""
    runs = {name: [] for name in columns}
    for round_number in range(rounds):
        for name, measure in columns.items():
            torch.set_num_threads(threads)
            runs[name].append(measure())
            log.info("round %d/%d: %s %.1f", round_number + 1, rounds, name, runs[name][-1])
    out = {}
    for name, values in runs.items():
        out[name] = float(np.median(values))
        out[f"{name}_spread"] = (max(values) - min(values)) / out[name]
    for ratio, (numerator, denominator) in ratios.items():
        out[ratio] = float(np.median([n / d for n, d in zip(runs[numerator], runs[denominator])]))
    return out


def bench_size(cfg, paths, workdir: Path, batch_size, steps, warmup, workers, threads, rounds=1) -> dict:
    tcfg = cfg["train"]
    size = tcfg["image_size"]
    device, precision, channels_last = engine.setup_device(tcfg)
    model, step = model_and_step(cfg, device, precision, channels_last)
    n_batches = warmup + steps
    row = {"arch": cfg["model"]["arch"], "image_size": size, "batch_size": batch_size, "device": str(device),
           "precision": precision, "channels_last": channels_last, "workers": workers}

    synthetic = [(torch.randn(batch_size, 3, size, size), torch.randint(0, 100, (batch_size,)))] * n_batches

    # One class for every image, so the loss has targets; the data sets are training's own.
    frame = pd.DataFrame({"path": paths[: batch_size * n_batches], "label": "0"})
    loader_cfg = {**cfg, "train": {**tcfg, "augment_on": "loader"}}
    device_cfg = {**cfg, "train": {**tcfg, "augment_on": "device"}}
    sampler = loaders.SeededSampler(len(frame), seed=0)

    def loader_for(dataset, augmenter=None):
        return loaders.make_loader(dataset, batch_size, workers, sampler, pin_memory=device.type == "cuda",
                                collate_fn=augmenter.collate if augmenter else None)

    reference, _ = training_dataset(loader_cfg, frame, ["0"])
    index_csv = workdir / f"index_{size}.csv"
    widths, heights = zip(*(Image.open(p).size for p in frame["path"]))
    frame.assign(image_name="", width=widths, height=heights, sha256="").to_csv(index_csv, index=False)

    def built_cache(run_cfg: dict) -> cache.CachedImages:
        mode = cache.cache_mode(cfg["augment"], "train", tcfg["cache_margin"], run_cfg["train"]["augment_on"])
        pixels, meta = workdir / f"{mode}_{size}.npy", workdir / f"{mode}_{size}.csv"
        cache.build_cache(index_csv, pixels, meta, mode, size, threads)
        return cache.CachedImages(pixels, meta, index_csv)

    start = time.perf_counter()
    cached_images = built_cache(loader_cfg)
    row["cache_build_img_s"] = len(frame) / (time.perf_counter() - start)
    ours, _ = training_dataset(loader_cfg, frame, ["0"], cached_images)
    # (d): the chain batched on the device, the workers only read cached squares
    squares = built_cache(device_cfg)
    raw, augmenter = training_dataset(device_cfg, frame, ["0"], squares, device=device)
    device_step = make_step(model, device, precision, channels_last, tcfg, augment=augmenter)

    columns = {
        "a_model_img_s": lambda: timed_steps(synthetic, step, warmup, device),
        "b_reference_path_img_s": lambda: timed_steps(loader_for(reference), step, warmup, device),
        "c_our_path_img_s": lambda: timed_steps(loader_for(ours), step, warmup, device),
        "d_device_aug_path_img_s": lambda: timed_steps(loader_for(raw, augmenter), device_step, warmup, device),
    }
    ratios = {"c_over_a": ("c_our_path_img_s", "a_model_img_s"),
              "c_over_b": ("c_our_path_img_s", "b_reference_path_img_s"),
              "d_over_a": ("d_device_aug_path_img_s", "a_model_img_s")}
    if precision != "fp32":
        # The speed-up over fp32 end to end: (c) once more with an fp32 model (its own layout), in
        # the same rounds, so each round's ratio compares two runs a minute apart on this machine.
        fp32_layout = engine.resolve_channels_last(tcfg["channels_last"], "fp32", device)
        _, fp32_step = model_and_step(cfg, device, "fp32", fp32_layout)
        columns["c_fp32_img_s"] = lambda: timed_steps(loader_for(ours), fp32_step, warmup, device)
        ratios["c_over_fp32_c"] = ("c_our_path_img_s", "c_fp32_img_s")
    row.update(measure_rounds(columns, ratios, rounds, threads))

    count = min(len(frame), 200)
    row["aug_reference_img_s_per_core"] = augmentation_rate(reference, count)
    row["aug_ours_img_s_per_core"] = augmentation_rate(ours, count)
    torch.set_num_threads(threads)
    row["aug_batched_on_device_img_s"] = batched_augmentation_rate(augmenter, squares, batch_size, device)

    model.eval()
    x = engine.to_device(torch.randn(batch_size, 3, size, size), device, channels_last)
    with torch.inference_mode(), engine.autocast(device, precision):
        model(x)
        start = time.perf_counter()
        for _ in range(max(2, steps // 2)):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    row["inference_img_s"] = batch_size * max(2, steps // 2) / (time.perf_counter() - start)
    return row


def dry_run_seconds() -> dict:
    """Wall time of `snakemake -n` in the repository (up to date after a demo run)."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--quiet", "all"], cwd=REPO,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - start
    up_to_date = "Nothing to be done" in result.stdout + result.stderr
    return {"dry_run_seconds": seconds, "up_to_date": up_to_date, "returncode": result.returncode}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config.yaml"), help="config file (recipe + demo overlay)")
    parser.add_argument("--variant", default="full")
    parser.add_argument("--sizes", nargs="+", default=["demo", "224"],
                        help="'demo' (the demo overlay's model and size) and/or pixel sizes on the recipe's model")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--images", type=int, default=None, help="synthetic JPEGs (default: enough batches)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per measurement (default: 4 on a CPU, 50 on a GPU, where a step is short)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3,
                        help="measure (a)-(d) this many times, interleaved; report medians and spreads")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the config's)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the config's)")
    parser.add_argument("--precisions", nargs="+", default=["config"],
                        help="e.g. 'auto fp32': each size once per precision (channels_last follows as in auto)")
    parser.add_argument("--out-dir", default="results/bench")
    parser.add_argument("--no-dry-run", action="store_true", help="skip timing snakemake -n")
    args = parser.parse_args(argv)
    if args.steps is None:
        on_gpu = (args.device or "cuda") == "cuda" and torch.cuda.is_available()
        args.steps = 50 if on_gpu else 4
    setup_logging()
    keep_freed_memory()
    user = yaml.safe_load(Path(args.config).read_text())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for size in args.sizes:
            effective = checked_config(dict(user) if size == "demo" else recipe_config(user, tmp))
            cfg = run_config(effective, args.variant, 0)
            if size != "demo":
                cfg["train"]["image_size"] = int(size)
            if args.device:
                cfg["train"]["device"] = args.device
            batch = args.batch_size or cfg["train"]["batch_size"]
            configured = execution_settings(effective, args.variant)["num_workers"]
            workers = configured if args.workers is None else args.workers
            count = args.images or batch * (args.steps + args.warmup)
            paths = synthetic_jpegs(tmp / "jpegs", count, workers=args.threads) if not (tmp / "jpegs").exists() else sorted(
                str(p) for p in (tmp / "jpegs").glob("*.jpg"))
            if len(paths) < count:
                paths += synthetic_jpegs(tmp / "more", count - len(paths), seed=1, workers=args.threads)
            for precision in args.precisions:
                if precision != "config":
                    cfg["train"]["precision"], cfg["train"]["channels_last"] = precision, "auto"
                log.info("benchmarking %s at %d px, batch %d, %d workers, precision %s", cfg["model"]["arch"],
                         cfg["train"]["image_size"], batch, workers, cfg["train"]["precision"])
                rows.append(bench_size(cfg, paths, tmp, batch, args.steps, args.warmup, workers, args.threads,
                                       args.rounds))
    table = pd.DataFrame(rows)
    out = Path(args.out_dir)
    tables.write_table(out / "throughput.csv", table)
    pd.set_option("display.width", 200)
    print(table.round(2).T.to_string(header=False))
    if not args.no_dry_run:
        dry = pd.DataFrame([dry_run_seconds()])
        tables.write_table(out / "dry_run.csv", dry)
        print(dry.round(2).to_string(index=False))


if __name__ == "__main__":
    main()
