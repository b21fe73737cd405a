"""The GPU check: is the recipe's training fed on this GPU? One call, one CSV (bash benchmarks/gpu_check.sh).

All in one run, so that every ratio compares figures taken minutes apart on the same machine:
1. the model alone: ResNet50 + the MLP head, AdamW, label smoothing, random tensors already on the
   device, at batch 64 and 256; eagerly, and with the whole step captured as a CUDA graph;
2. the batched augmentation chain's device part alone (augment.BatchAugment, its plans drawn
   beforehand as the loader's workers draw them) at batch 64 and 256, the host synchronisations
   it makes (expected: none), and what a plan costs on the CPU; and the model fed by the chain
   as the train job feeds it (engine.DeviceBatches: the copy and the chain one batch ahead on a
   stream of their own) from batches made beforehand, without the DataLoader: its share of the
   model alone says how much of the chain's GPU time the step hides, apart from the workers;
3. the reference data path (the course's way: PIL decode, per-image transforms, a DataLoader);
4. the `train` job through the real workflow (index -> cache -> train, Snakemake) on a synthetic
   set in the course layout, once per data path (`augment_on`) at batch 64 and once on the
   device path at batch 256, each epoch's training images/s from its history.csv;
5. the share of the model alone (the faster of eager and a CUDA graph) that each data path
   reaches (steady epochs: all but the first),
   the first epoch against a steady one, and the jobs' fixed costs (cache, start-up).

Writes WORK/gpu_check.csv (what, batch, images_per_s, share_of_model_alone, detail) and prints it.
On a host without a GPU every GPU-only part is skipped, saying so, and the rest runs on the CPU at
sizes given on the command line (tests/test_bench.py runs it that way).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import torch
import yaml
from imageclf.checks import checked_config
from imageclf.core import tables
from imageclf.core.config import run_config
from imageclf.core.logs import setup_logging
from imageclf.data import loaders
from imageclf.models import factory
from imageclf.training import augment, engine
from imageclf.training.train import training_dataset
from torch import nn

from . import bench
from .synthetic import make_dataset

log = logging.getLogger("imageclf.gpu_check")
REPO = Path(__file__).resolve().parents[1]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def recipe(user: dict, root: Path, size: int, device: str) -> dict:
    """The recipe's run config (variant full, seed 0) at this size on this device, no weights."""
    effective = checked_config({**user, "data": {**user["data"], "root": str(root), "test_labels": None},
                                "model": {**user["model"], "weights": "none"}})
    cfg = run_config(effective, "full", 0)
    cfg["train"].update(image_size=size, device=device)
    return cfg


def model_alone(cfg: dict, batch: int, steps: int, graphed: bool, benchmark: bool | None = None,
                feed=None) -> tuple[float, float]:
    """Training images/s of the model alone on random tensors already on the device, after warm-up,
    and the seconds of its first three steps (cuDNN's trials of its algorithms among them).
    graphed: forward, backward and the optimizer step replayed as one CUDA graph. benchmark:
    torch.backends.cudnn.benchmark (None: the workflow's setting, engine.use_fastest_kernels).
    feed: an iterator of (images, targets) on the device (chain_feed), copied into the step's
    input before each step, as the graphed training step does."""
    device, precision, channels_last = engine.setup_device(cfg["train"])
    workflows = torch.backends.cudnn.benchmark
    if benchmark is not None:
        torch.backends.cudnn.benchmark = benchmark
    torch.manual_seed(0)
    model = factory.model_from_config(cfg["model"], 100, pretrained=False).to(
        device, memory_format=engine.memory_format(channels_last))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["train"]["optimizer"]["lr"], fused=device.type == "cuda",
                                  capturable=graphed)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg["train"]["label_smoothing"])
    size = cfg["train"]["image_size"]
    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=engine.memory_format(channels_last))
    targets = torch.randint(0, 100, (batch,), device=device)

    def step():
        optimizer.zero_grad(set_to_none=not graphed)
        with engine.autocast(device, precision):
            loss = criterion(model(images), targets)
        loss.backward()
        optimizer.step()

    side = torch.cuda.Stream(device) if graphed else None
    begin = time.perf_counter()
    if graphed:  # warm up on a side stream, then capture (torch.cuda.graphs' whole-network recipe)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        replay = graph.replay
    else:
        replay = step

    def run():
        if feed is not None:
            fed_images, fed_targets = next(feed)
            images.copy_(fed_images)
            targets.copy_(fed_targets)
        replay()

    if not graphed:
        for _ in range(3):
            run()
    synchronize(device)
    first = time.perf_counter() - begin
    for _ in range(5):
        run()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        run()
    synchronize(device)
    torch.backends.cudnn.benchmark = workflows
    return batch * steps / (time.perf_counter() - start), first


def augment_alone(cfg: dict, batch: int, steps: int, dtype: torch.dtype | None = None) -> tuple[float, int, float]:
    """Images/s of the batched chain's device part alone (uint8 squares already on the device,
    their plans drawn beforehand and pinned, as the loader's workers hand them), the host
    synchronisations one batch makes (counted on CUDA only; -1 elsewhere), and the milliseconds
    one plan takes on this CPU (a worker's share of the chain). dtype: what the chain computes in
    (None: as training does, float16 on a GPU)."""
    device = engine.resolve_device(cfg["train"]["device"])
    size = cfg["train"]["image_size"]
    side = bench.cache.batch_input_size(cfg["augment"], size, cfg["train"]["cache_margin"])
    augmenter = augment.BatchAugment(cfg["augment"], size, dtype=dtype)
    images = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8, device=device)
    start = time.perf_counter()
    plans = [augmenter.plan(torch.arange(k * batch, (k + 1) * batch), side, side) for k in range(steps + 2)]
    plan_ms = (time.perf_counter() - start) * 1000 / len(plans)
    if device.type == "cuda":
        plans = [plan.pin_memory() for plan in plans]
    augmenter(images, plans[0])
    synchronize(device)
    syncs = -1
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            augmenter(images, plans[1])
        torch.cuda.set_sync_debug_mode("default")
        syncs = len(caught)
        for warning in caught:
            log.warning("host sync in the batched chain: %s", str(warning.message).splitlines()[0])
    start = time.perf_counter()
    for k in range(steps):
        augmenter(images, plans[k + 2])
    synchronize(device)
    return batch * steps / (time.perf_counter() - start), syncs, plan_ms


def chain_feed(cfg: dict, batch: int, count: int = 4):
    """Augmented batches on the device without end, made as the train job makes them
    (engine.DeviceBatches: copied from pinned memory and run through the batched chain one batch
    ahead, on a stream of their own) from `count` batches of random uint8 squares with their
    plans, made beforehand as the loader's workers make them, and handed over in turn."""
    device, _, channels_last = engine.setup_device(cfg["train"])
    size = cfg["train"]["image_size"]
    side = bench.cache.batch_input_size(cfg["augment"], size, cfg["train"]["cache_margin"])
    augmenter = augment.BatchAugment(cfg["augment"], size, augment.BatchAugment.dtype_for(device))
    batches = []
    for k in range(count):
        images = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8)
        targets = torch.randint(0, 100, (batch,))
        plan = augmenter.plan(torch.arange(k * batch, (k + 1) * batch), side, side)
        if device.type == "cuda":
            images, targets, plan = images.pin_memory(), targets.pin_memory(), plan.pin_memory()
        batches.append((images, targets, plan))
    return iter(engine.DeviceBatches(itertools.cycle(batches), device, channels_last, augmenter))


def fed_model(cfg: dict, batch: int, steps: int, graphed: bool) -> float:
    """model_alone's images/s with chain_feed feeding it (the feed made inside, so that a failure
    to make it is this part's, reported as its row)."""
    return model_alone(cfg, batch, steps, graphed, feed=chain_feed(cfg, batch))[0]


def determinism(cfg: dict, batch: int) -> str:
    """The same seeds give the same batch on this device; the parameter draws equal the CPU's."""
    device = engine.resolve_device(cfg["train"]["device"])
    size = cfg["train"]["image_size"]
    side = bench.cache.batch_input_size(cfg["augment"], size, cfg["train"]["cache_margin"])
    augmenter = augment.BatchAugment(cfg["augment"], size)
    images = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    seeds = torch.arange(1000, 1000 + batch)
    here = augmenter(images.to(device), seeds)
    same = torch.equal(here, augmenter(images.to(device), seeds))
    draws = torch.equal(augment.uniforms(seeds.to(device), augmenter.draws).cpu(),
                        augment.uniforms(seeds, augmenter.draws))
    # on a GPU the chain computes in float16: how near its batch is to the CPU's float32 one
    steps = (here.cpu() - augmenter(images, seeds)).abs() * 0.225 * 255
    return (f"same seeds, same batch: {same}; parameter draws on {device.type} equal the CPU's: {draws}; "
            f"{augmenter.compute_dtype(device)} here: {(steps <= 1).float().mean():.3f} of the values within one "
            "uint8 step of the CPU's float32 batch")


def reference_path(cfg: dict, paths: list[str], batch: int, steps: int, workers: int) -> float:
    """bench's (b): the course's way of loading (PIL, per-image transforms), feeding the model."""
    device, precision, channels_last = engine.setup_device(cfg["train"])
    _, step = bench.model_and_step(cfg, device, precision, channels_last)
    frame = pd.DataFrame({"path": paths[: batch * (steps + 2)], "label": "0"})
    reference, _ = training_dataset({**cfg, "train": {**cfg["train"], "augment_on": "loader"}}, frame, ["0"])
    loader = loaders.make_loader(reference, batch, workers, loaders.SeededSampler(len(frame), seed=0),
                              pin_memory=device.type == "cuda")
    return bench.timed_steps(loader, step, warmup=2, device=device)


def train_jobs(work: Path, root: Path, runs: dict[str, dict], cores: int) -> dict[str, dict]:
    """The workflow's train jobs (after one index and one cache, which they share) through Snakemake,
    one variant per entry of `runs` (its train settings); returns each one's history, run.json and
    fixed cost (its job's seconds, from Snakemake's benchmark file, less its epochs'), and the
    seconds of every job."""
    folder = work / "workflow"
    folder.mkdir(parents=True, exist_ok=True)
    variants = {"full": None, "no_mlp": None, "no_mixup": None, **{name: {"train": train} for name, train in runs.items()}}
    first = next(iter(runs))
    config = {"data": {"root": str(root), "test_labels": None}, "model": {"weights": "none"}, "seeds": [0],
              "variants": variants, "ablation": {"reference": first}, "submission": {"variant": first},
              "resources": {"index": {"threads": cores}, "train": {"threads": cores}}}
    (folder / "check.yaml").write_text(yaml.safe_dump(config))
    targets = [f"results/train/{name}/seed0/history.csv" for name in runs]
    command = [sys.executable, "-m", "snakemake", *targets, "-s", str(REPO / "Snakefile"), "--directory", str(folder),
               "--cores", str(cores), "--configfile", str(folder / "check.yaml"), "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        logs = "".join(path.read_text()[-2000:] for path in (folder / "logs" / "train").rglob("*.log"))
        raise RuntimeError(f"snakemake failed\n{result.stderr[-3000:]}\n{logs}")
    seconds = {tsv.relative_to(folder / "logs" / "benchmarks").as_posix(): float(pd.read_csv(tsv, sep="\t")["s"].iloc[0])
               for tsv in (folder / "logs" / "benchmarks").rglob("*.tsv")}
    jobs = {}
    for name in runs:
        out = folder / "results" / "train" / name / "seed0"
        history = tables.read_history(out / "history.csv")
        train_seconds = next(s for key, s in seconds.items() if key.startswith(f"train/{name}/"))
        jobs[name] = {"history": history, "run": tables.read_run(out / "run.json"), "seconds": seconds,
                      "fixed_seconds": train_seconds - history["seconds"].sum()}
    return jobs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="scratch folder (the synthetic JPEGs, the workflow runs)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--train-images", type=int, default=12000)
    parser.add_argument("--val-images", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60, help="timed steps of the model alone and the chain alone")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: cores - 2)")
    parser.add_argument("--paths", nargs="+", default=["auto", "loader"], help="train.augment_on values to run")
    parser.add_argument("--out", default=None, help="CSV (default: WORK/gpu_check.csv)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["graphs", "augment", "reference"],
                        help="leave out: the model alone as a CUDA graph, the chain alone, the reference data path")
    args = parser.parse_args(argv)
    setup_logging()
    work = Path(args.work).resolve()
    workers = args.workers if args.workers is not None else max(1, args.cores - 2)
    cuda = args.device == "cuda"
    log.info("torch %s, device %s%s, %d cores", torch.__version__, args.device,
             f" ({torch.cuda.get_device_name(0)})" if cuda else "", args.cores)
    if not cuda:
        log.info("no GPU: the CUDA graph and the host-sync count are skipped; the figures are the CPU's")
    root = work / "data"
    if not (root / "train").is_dir():
        make_dataset(root, train=args.train_images, val=args.val_images, test=20, workers=args.cores)
    user = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg = recipe(user, root, args.size, args.device)
    rows = []

    def add(what, batch, rate, reference=None, detail=""):
        share = rate / reference if reference else float("nan")
        rows.append({"what": what, "batch": batch, "images_per_s": round(rate, 1), "share_of_model_alone": round(share, 3),
                     "detail": detail})
        log.info("%s, batch %s: %.1f images/s%s %s", what, batch, rate, f" ({share:.2f} of the model alone)" if reference else "",
                 detail)

    def guarded(measure, *args, **kwargs):
        """A part that fails is reported as a row and the check goes on (one call must say all it can)."""
        try:
            return measure(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - reported, not hidden
            log.exception("%s failed", measure.__name__)
            rows.append({"what": f"{measure.__name__} failed", "batch": "", "images_per_s": float("nan"),
                         "share_of_model_alone": float("nan"), "detail": f"{type(error).__name__}: {error}"[:300]})
            return None

    # the eager model alone; the fastest model alone (eager or a CUDA graph); the CUDA graph with
    # the workflow's cuDNN setting (no trials), as the train job runs it
    alone, best, plain = {}, {}, {}
    for batch in args.batches:
        alone[batch], first = model_alone(cfg, batch, args.steps, graphed=False)
        best[batch] = alone[batch]
        add("model alone, eager", batch, alone[batch], alone[batch], f"first 3 steps {first:.1f} s")
        for benchmark in (True, False) if cuda and "graphs" not in args.skip else ():
            graphed = guarded(model_alone, cfg, batch, args.steps, graphed=True, benchmark=benchmark)
            if graphed:
                add(f"model alone, CUDA graph of the whole step, cudnn.benchmark {'on' if benchmark else 'off'}", batch,
                    graphed[0], alone[batch], f"first 3 steps and the capture {graphed[1]:.1f} s")
                best[batch] = max(best[batch], graphed[0])
                if not benchmark:
                    plain[batch] = graphed[0]
        chain = {}  # the chain alone as training runs it (float16 on a GPU), and in float32 there
        for dtype in () if "augment" in args.skip else (None, torch.float32) if cuda else (None,):
            measured = guarded(augment_alone, cfg, batch, args.steps, dtype)
            if measured:
                rate, syncs, plan_ms = measured
                chain[dtype] = rate
                add(f"batched augmentation alone (its device part; plans drawn beforehand){', float32' if dtype else ''}",
                    batch, rate, None, f"host syncs per batch: {syncs if syncs >= 0 else 'not counted (CPU)'}; "
                    f"a plan takes {plan_ms:.1f} ms on one core of this CPU (in the loader's workers)")
        if None in chain:  # the step fed by the chain as the train job runs both, no workers
            graphed = cuda and "graphs" not in args.skip
            fed = guarded(fed_model, cfg, batch, args.steps, graphed)
            if fed:
                # against the same step unfed (the workflow's cuDNN setting): the chain's time per
                # image that the fed step added, as a share of the chain's own time
                same = plain.get(batch, alone[batch])
                added = max(0.0, 1 / fed - 1 / same) * chain[None]
                add(f"model fed by the batched chain on its own stream (no DataLoader), "
                    f"{'CUDA graph of the step' if graphed else 'eager'}", batch, fed, best[batch],
                    f"{fed / same:.2f} of the same step unfed; the step hides {100 * max(0.0, 1 - added):.0f} % of "
                    "the chain's device time (0 %: the chain's time adds to the step's)")
    add("determinism of the batched chain", args.batches[0], float("nan"), None, guarded(determinism, cfg, args.batches[0]))
    paths = sorted(str(p) for p in (root / "train").rglob("*.jpg"))
    small = args.batches[0]
    reference = None if "reference" in args.skip else guarded(reference_path, cfg, paths, small, max(4, args.steps // 3),
                                                                   workers)
    if reference:
        add("reference data path (PIL per image, course order) + model", small, reference, best[small])

    runs = {f"{where}_b{small}": {"augment_on": where, "batch_size": small} for where in args.paths}
    if len(args.batches) > 1:
        runs[f"auto_b{args.batches[-1]}"] = {"augment_on": "auto", "batch_size": args.batches[-1]}
    for train in runs.values():
        train.update(epochs=args.epochs, image_size=args.size, device=args.device, num_workers=workers)
    jobs = train_jobs(work, root, runs, args.cores)
    cache_s = "; ".join(f"{key} {s:.1f} s" for key, s in sorted(next(iter(jobs.values()))["seconds"].items())
                        if key.startswith(("cache", "index")))
    add("index and cache of the synthetic set", "", float("nan"), None, cache_s)
    for name, job in jobs.items():
        history, run, batch = job["history"], job["run"], runs[name]["batch_size"]
        rates = history["images_per_s"]
        steady = rates.iloc[1:].median() if len(rates) > 1 else rates.iloc[0]
        add(f"train job, augment_on {runs[name]['augment_on']} ({run['augment_on']}), steady epochs", batch, steady,
            best.get(batch), f"epochs: {', '.join(f'{r:.0f}' for r in rates)} images/s; the first epoch "
            f"{steady / rates.iloc[0]:.2f}x as long as a steady one; the job's fixed cost {job['fixed_seconds']:.1f} s; "
            f"{run['precision']}")
    table = pd.DataFrame(rows)
    out = Path(args.out) if args.out else work / "gpu_check.csv"
    tables.write_table(out, table)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_colwidth", 200)
    print(table.to_string(index=False))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
