"""Train one run (one variant, one seed) and keep its best checkpoints.

Runs the same from a Snakemake rule, a shell, a cluster node, or under
`torchrun --nproc_per_node N` (DistributedDataParallel; only rank 0 writes files).

Crash-proof: after every epoch the full training state (model, optimizer, scheduler, history,
best checkpoints, epoch) is written atomically to `--state-dir`, which Snakemake never deletes.
A rerun with the same run config and index resumes after the last finished epoch, and because
every random stream is derived from (seed, epoch), it ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import os
import platform
import random
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..core import tables
from ..core.config import check_batches, load_run_config, run_config_hash
from ..core.errors import ConfigError, TrainingDiverged
from ..core.io_utils import file_sha256, torch_save
from ..core.logs import add_log_argument, setup_logging
from ..data import exclude
from ..data.cache import batch_input_size, open_cache
from ..data.loaders import ImageDataset, SeededSampler, epoch_seed, make_loader
from ..models import factory
from . import checkpoints, engine, presets, step_graph
from .allocator import keep_freed_memory
from .augment import BatchAugment

log = logging.getLogger("imageclf.train")

# What this stage writes, as a version: raised by a change that alters its outputs, and by nothing else
# (core/stages.py). Raising it reruns this stage and everything downstream, on every project.
# It covers the modules training runs: training/* (augment, checkpoints, engine, presets, step_graph), data/loaders, models/*.
RESULTS_VERSION = 1

HISTORY_COLUMNS = list(tables.HISTORY) + list(engine.CLASS_METRICS)
# with train.ema.enabled: the EMA weights' evaluation
EMA_COLUMNS = [f"{name}_ema" for name in ("val_loss", "val_acc", *engine.CLASS_METRICS)]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def package_versions() -> dict:
    import PIL
    import sklearn
    import torchvision

    return {
        "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "numpy": np.__version__,
        "pandas": pd.__version__, "pillow": PIL.__version__, "scikit-learn": sklearn.__version__,
    }


def training_dataset(cfg: dict, frame: pd.DataFrame, classes: list[str], cached_images=None, augment_on=None,
                     device=None):
    """The training data set and, where the augmentation runs on the device (augment_on, resolved
    from train.augment_on), the BatchAugment that finishes its batches there (in the dtype of
    `device`, or of the device its images come to when None); else None."""
    tcfg, size = cfg["train"], cfg["train"]["image_size"]
    if (augment_on or tcfg["augment_on"]) != "device":
        return ImageDataset(frame, classes, presets.train_transform(cfg["augment"], size), cached_images), None
    input_size = batch_input_size(cfg["augment"], size, tcfg["cache_margin"])
    dataset = ImageDataset(frame, classes, presets.batch_input_transform(input_size), cached_images,
                                pass_seed=True, square_size=input_size)
    return dataset, BatchAugment(cfg["augment"], size, BatchAugment.dtype_for(device) if device is not None else None)


def index_hash(*index_files) -> str:
    """Content hash of the index files a run reads: a changed data set never resumes."""
    parts = "".join(file_sha256(path) for path in index_files)
    return hashlib.sha256(parts.encode()).hexdigest()[:16]


SGD_MOMENTUM = 0.9  # train.optimizer.momentum, an optional key of sgd's (the recipe is AdamW)


def make_optimizer(model: nn.Module, cfg: dict):
    """AdamW or SGD; `fused` runs each update as one kernel (CPU and CUDA) instead of a loop.

    backbone_lr_scale: the backbone's learning rate relative to the head's, which
    takes `lr`. At 1 every parameter is in one group, as in the reference recipe."""
    common = {"lr": cfg["lr"], "weight_decay": cfg["weight_decay"], "fused": cfg["fused"] or None}
    on_gpu = next(model.parameters()).is_cuda
    scale = cfg["backbone_lr_scale"]
    if scale == 1.0:
        groups = [{"params": list(model.parameters())}]
    else:
        head = {id(p) for p in factory.head_parameters(model)}
        groups = [{"params": [p for p in model.parameters() if id(p) not in head], "lr": cfg["lr"] * scale},
                  {"params": [p for p in model.parameters() if id(p) in head]}]
    for group in groups:  # what warmup climbs to
        group["target_lr"] = group.get("lr", cfg["lr"])
    if cfg["name"] == "adamw":  # capturable: its step counter on the GPU, so a CUDA graph can replay it
        return torch.optim.AdamW(groups, **common, capturable=on_gpu)
    return torch.optim.SGD(groups, momentum=cfg.get("momentum", SGD_MOMENTUM), **common)


class Scalars:
    """Each epoch's scalars as TensorBoard event files (`tensorboard --logdir logs/tensorboard`
    compares runs while they train). Without the tensorboard package: one log line, nothing else."""

    def __init__(self, folder):
        self.writer = None
        if folder is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("TensorBoard curves are off: `pip install tensorboard` to watch runs live")
            return
        self.writer = SummaryWriter(log_dir=str(folder))

    def add(self, row: dict) -> None:
        if self.writer is None:
            return
        for name, value in row.items():
            if name != "epoch":
                self.writer.add_scalar(name, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def make_ema(model: nn.Module, cfg: dict):
    """An exponential moving average of the weights (and of BatchNorm's statistics), updated after
    every optimizer step, as torchvision's reference scripts keep one; None when switched off."""
    if not cfg["enabled"]:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg["decay"]), use_buffers=True)


def warm_up(optimizer, epoch: int, warmup_epochs: int) -> None:
    """Linear warmup: in epoch e <= warmup_epochs each group trains at e / warmup_epochs of its
    learning rate; the configured scheduler takes over after that."""
    if epoch <= warmup_epochs:
        for group in optimizer.param_groups:
            group["lr"] = group["target_lr"] * epoch / warmup_epochs


def make_scheduler(optimizer, cfg: dict, epochs: int):
    if cfg["name"] == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=cfg["mode"], factor=cfg["factor"], patience=cfg["patience"]
        )
    if cfg["name"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    return None


def step_scheduler(scheduler, val_loss: float) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    elif scheduler is not None:
        scheduler.step()


class Distributed:
    """Rank and world size from torchrun's environment; a no-op for a single process."""

    def __init__(self, train_cfg: dict):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device, self.precision, self.channels_last = engine.setup_device(train_cfg, self.local_rank)
        if self.world_size > 1:
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            torch.distributed.init_process_group(backend=backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.world_size > 1:
            torch.distributed.destroy_process_group()


class Loaders(NamedTuple):
    train: object
    val: object
    sampler: SeededSampler
    augment: object  # a BatchAugment (training/augment.py) with train.augment_on: device, else None
    train_images: int
    val_images: int


def make_loaders(cfg: dict, index: dict, classes: list[str], dist: Distributed, num_workers: int,
                 train_cache=None, val_cache=None) -> Loaders:
    """The run's training and validation loaders; each process gets its share of the batch."""
    tcfg, seed = cfg["train"], int(cfg["seed"])
    size = tcfg["image_size"]
    train_frame, cached = tables.read_index(index["train"]), open_cache(train_cache, index["train"])
    kept = exclude.kept_rows(train_frame, cfg.get("data", {}).get("exclude"), index["train"])
    if not kept.all():  # data.exclude: the images the run leaves out, and their cached pixels
        train_frame = train_frame[kept].reset_index(drop=True)
        cached = cached.subset(np.flatnonzero(kept.to_numpy())) if cached is not None else None
    train_set, augment = training_dataset(cfg, train_frame, classes, cached,
                                          engine.resolve_augment_on(tcfg["augment_on"], dist.device), dist.device)
    check_batches(tcfg, str(cfg["variant"]), dist.world_size)
    per_rank_batch = tcfg["batch_size"] // dist.world_size
    sampler = SeededSampler(len(train_set), seed, shuffle=True, rank=dist.rank, world_size=dist.world_size)
    pin = dist.device.type == "cuda"
    # A last batch of one image breaks BatchNorm (in training mode it needs two values per
    # channel); drop that batch only then, so every other image of the epoch is still seen.
    drop_last = len(sampler) % per_rank_batch == 1
    train_loader = make_loader(train_set, per_rank_batch, num_workers, sampler, drop_last, pin,
                                    augment.collate if augment else None)
    val_loader, val_images = None, 0  # a full fit holds nothing out
    if index.get("val"):
        val_set = ImageDataset(tables.read_index(index["val"]), classes,
                                    presets.eval_transform(cfg["augment"], size), open_cache(val_cache, index["val"]))
        val_loader, val_images = make_loader(val_set, tcfg["batch_size"], num_workers, pin_memory=pin), len(val_set)
    return Loaders(train_loader, val_loader, sampler, augment, len(train_set), val_images)


def epoch_row(epoch: int, stats: dict, lr: float, seconds: float, world_size: int) -> dict:
    """One row of history.csv (tables.HISTORY and engine.CLASS_METRICS, plus EMA_COLUMNS with train.ema)."""
    return {
        "epoch": epoch, "train_loss": stats["train_loss"], "val_loss": stats["val_loss"],
        "val_acc": stats["val_acc"], "lr": lr, "seconds": round(seconds, 3),
        "images_per_s": round(stats["train_images"] * world_size / max(stats["train_seconds"], 1e-9), 2),
        **{name: stats[name] for name in [*engine.CLASS_METRICS, *EMA_COLUMNS] if name in stats},
    }


def announce_epoch(scalars: Scalars, row: dict, history: list[dict], epochs: int) -> None:
    """The epoch's TensorBoard scalars and console line, once it is safe on disk."""
    scalars.add({name: value for name, value in row.items() if name != "seconds"})
    log_epoch(row, history, epochs)


def log_epoch(row: dict, history: list[dict], epochs: int) -> None:
    """The epoch's console line (with an ETA from the last five epochs), and the EMA's."""
    epoch = row["epoch"]
    mean_epoch = sum(r["seconds"] for r in history[-5:]) / len(history[-5:])
    eta = mean_epoch * (epochs - epoch)
    val = "" if np.isnan(row["val_loss"]) else f"  val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.4f}"
    log.info(
        "epoch %d/%d  train_loss %.4f%s  lr %.2e  %.1f img/s  %.1fs  ETA %dm%02ds",
        epoch, epochs, row["train_loss"], val, row["lr"], row["images_per_s"], row["seconds"], eta // 60, eta % 60,
    )
    if "val_loss_ema" in row:
        log.info("epoch %d/%d  EMA of the weights: val_loss %.4f  val_acc %.4f", epoch, epochs,
                 row["val_loss_ema"], row["val_acc_ema"])


def checkpoint_meta(cfg: dict, classes: list[str], fingerprint: dict, epoch: int) -> dict:
    """What a saved model says of itself (select checks its epoch, predict its classes)."""
    return {"variant": cfg["variant"], "seed": int(cfg["seed"]), "epoch": epoch, "classes": classes,
            "config_hash": fingerprint["config_hash"]}


def set_learning_rate(optimizer, factor: float) -> None:
    """Every group at `factor` times its own learning rate (a full fit's replayed schedule)."""
    for group in optimizer.param_groups:
        group["lr"] = group["target_lr"] * factor


def train(run_config_path, index: dict, out_dir, state_dir=None, threads: int = 1,
          train_cache=None, val_cache=None, num_workers: int = 0, tensorboard_dir=None,
          weights_file=None, model_out=None) -> pd.DataFrame:
    """Train one run; write history.csv, checkpoints/best_{val_acc,val_loss}.pt and run.json.

    A full fit (a run config with `full_fit`, from training/full_fit.py) has no val index: it follows its
    plan's learning rates, evaluates nothing and writes its last epoch's weights to `model_out`
    (the run's model.pt) instead of best checkpoints.

    index: {"train": train.csv, "val": val.csv or None, "classes": classes.csv} of the index stage.
    num_workers: DataLoader worker processes (train.num_workers, which is not part of the run
    config: it changes the speed, never the results).
    tensorboard_dir: where each epoch's scalars go as TensorBoard event files (None: nowhere).
    weights_file: the file of torchvision weights named by model.weights (the weights rule's)."""
    cfg = load_run_config(run_config_path)
    tcfg, out_dir, plan = cfg["train"], Path(out_dir), cfg.get("full_fit")
    if plan is not None and (index.get("val") or model_out is None):
        raise ConfigError(f"{run_config_path}: a full fit (its run config has full_fit) takes --model-out and "
                          "no --val-index")
    if plan is None and not index.get("val"):
        raise ConfigError(f"{run_config_path}: a run without full_fit in its run config needs --val-index")
    state_dir = Path(state_dir) if state_dir else out_dir / "resume"
    dist = Distributed(tcfg)
    if not dist.is_main:  # one progress log, not one per process
        logging.getLogger("imageclf").setLevel(logging.WARNING)
    torch.set_num_threads(max(1, threads // dist.world_size))
    device, seed, epochs = dist.device, int(cfg["seed"]), tcfg["epochs"]
    classes = tables.read_classes(index["classes"])
    loaders = make_loaders(cfg, index, classes, dist, num_workers, train_cache, val_cache)
    augment_on = "device" if loaders.augment is not None else "loader"  # what make_loaders resolved

    # The recipe's parts, built in the same order from the same seed in every run.
    seed_everything(seed)
    model = factory.model_from_config(cfg["model"], len(classes), weights_file=weights_file)
    n_params = factory.count_parameters(model)
    if tcfg["sync_batchnorm"] and dist.world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    precision, channels_last = dist.precision, dist.channels_last
    model = model.to(device, memory_format=engine.memory_format(channels_last))
    optimizer = make_optimizer(model, tcfg["optimizer"])
    warmup = tcfg["warmup_epochs"]
    scheduler = make_scheduler(optimizer, tcfg["scheduler"], epochs - warmup)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    criterion = nn.CrossEntropyLoss(label_smoothing=tcfg["label_smoothing"])
    ema = make_ema(model, tcfg["ema"])

    # Resume after the last finished epoch of the same run, if one was interrupted, or extend
    # the same run finished with fewer epochs (checkpoints.extension says when that is exact).
    fingerprint = {"config_hash": run_config_hash(run_config_path),
                   "index_hash": index_hash(*filter(None, (index["train"], index.get("val"), index["classes"]))),
                   "world_size": dist.world_size}
    if cfg.get("data", {}).get("exclude"):  # what it leaves out (the list's content may change)
        fingerprint["excluded"] = exclude.exclusion_digest(exclude.listed_images(cfg["data"]["exclude"]))
    state_path = state_dir / checkpoints.STATE_FILE
    keeper = checkpoints.Keeper(state_dir)
    history: list[dict] = []
    start_epoch = 1
    state = checkpoints.load_resume_state(state_path, fingerprint, cfg)
    if state is not None:
        history, keeper.best, start_epoch = checkpoints.restore(state, model, optimizer, scheduler, scaler, ema)
        if state["config_hash"] == fingerprint["config_hash"]:
            log.info("resuming %s from %s after epoch %d", cfg["variant"], state_path, state["epoch"])
        elif dist.is_main:  # an extension: the kept checkpoints now belong to this config
            keeper.restamp({"config_hash": fingerprint["config_hash"]})

    graphs = None
    if step_graph.wanted(device, dist.world_size, scaler, tcfg["accumulate_steps"]):
        graphs = step_graph.StepGraphs(model, optimizer, criterion, precision, tcfg["clip_grad_norm"])
    scalars = Scalars(tensorboard_dir if dist.is_main else None)
    net = model
    if dist.world_size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    log.info(
        "run %s seed %d: %s (%s head, %d parameters), %d classes, %d train / %d val images, "
        "%d epochs, batch %d on %s x%d, %s%s, augment_on %s, %d DataLoader workers",
        cfg["variant"], seed, cfg["model"]["arch"], cfg["model"]["head"], n_params, len(classes),
        loaders.train_images, loaders.val_images, epochs, tcfg["batch_size"], device, dist.world_size,
        precision, ", channels_last" if channels_last else "", augment_on, num_workers,
    )
    with checkpoints.EpochWriter(keeper, state_path) as writer:
        for epoch in range(start_epoch, epochs + 1):
            # every random stream of the epoch derives from (seed, epoch): a resumed run repeats it
            seed_everything(epoch_seed(seed, epoch, stream=2))
            loaders.sampler.set_epoch(epoch)
            rng = np.random.default_rng(epoch_seed(seed, epoch, stream=3))
            generator = torch.Generator().manual_seed(epoch_seed(seed, epoch, stream=4))
            epoch_start = time.perf_counter()
            if plan is not None:
                set_learning_rate(optimizer, plan["lr_factors"][epoch - 1])
            else:
                warm_up(optimizer, epoch, warmup)
            lr = optimizer.param_groups[-1]["lr"]  # the head's
            stats = engine.train_one_epoch(
                net, loaders.train, optimizer, criterion, device, mixup_alpha=tcfg["mixup_alpha"], rng=rng,
                generator=generator, precision=precision, channels_last=channels_last, scaler=scaler,
                augment=loaders.augment, label=f"epoch {epoch}/{epochs}", world_size=dist.world_size,
                after_step=(lambda: ema.update_parameters(model)) if ema is not None else None,
                cutmix_alpha=tcfg["cutmix_alpha"], mix_switch_prob=tcfg["mix_switch_prob"],
                accumulate_steps=tcfg["accumulate_steps"], clip_grad_norm=tcfg["clip_grad_norm"], graphs=graphs,
            )
            if loaders.val is None:
                stats.update(val_loss=float("nan"), val_acc=float("nan"))
            else:
                stats.update(engine.evaluate(model, loaders.val, device, precision, channels_last))
                if ema is not None:
                    ema_stats = engine.evaluate(ema.module, loaders.val, device, precision, channels_last)
                    stats.update({f"{name}_ema": value for name, value in ema_stats.items()})
            if epoch > warmup and plan is None:
                step_scheduler(scheduler, stats["val_loss"])
            row = epoch_row(epoch, stats, lr, time.perf_counter() - epoch_start, dist.world_size)
            history.append(row)
            # announced only once a resume would find it: the log never claims an epoch that is lost
            announce = functools.partial(announce_epoch, scalars, row, list(history), epochs)
            if dist.is_main:  # the best epochs, then the state to resume after this one, written as the next trains
                meta = {**checkpoint_meta(cfg, classes, fingerprint, epoch), "val_acc": row["val_acc"], "val_loss": row["val_loss"]}
                candidates = () if plan is not None else (
                    ("model", "", model.state_dict()), ("ema", "_ema", ema.module.state_dict() if ema is not None else None))
                state = checkpoints.resume_state(fingerprint, cfg, epoch, model, optimizer, scheduler, scaler, ema,
                                                 history, keeper.best)
                writer.write(row, meta, candidates, state, announce)
            else:
                announce()
            dist.barrier()

    scalars.close()
    frame = pd.DataFrame(history, columns=HISTORY_COLUMNS + (EMA_COLUMNS if ema is not None else []))
    if dist.is_main:
        if plan is None:
            keeper.publish(out_dir / "checkpoints")
        else:  # the full fit's model: its last epoch's weights, or their EMA as its plan says
            final = ema.module if plan["weights"] == "ema" and ema is not None else model
            meta = {**checkpoint_meta(cfg, classes, fingerprint, epochs), "weights": plan["weights"]}
            torch_save({"model": final.state_dict(), "meta": meta}, model_out)
        tables.write_run(out_dir / "run.json", {
            "variant": cfg["variant"], "seed": seed, "config": cfg, **fingerprint,
            "parameters": n_params, "classes": classes, "device": str(device),
            "precision": precision, "channels_last": channels_last,
            "augment_on": augment_on,
            "train_minutes": round(frame["seconds"].sum() / 60, 3), "versions": package_versions(),
        })
        tables.write_history(out_dir / "history.csv", frame)
        log.info("wrote %s", out_dir / "history.csv")
    dist.close()
    return frame


def what_diverged_kept(run_config_path, state_dir: Path) -> str:
    """After a non-finite loss: which epoch diverged and what the run kept (the resume state and
    best checkpoints of this run config's finished epochs), in words for one error line."""
    cfg = load_run_config(run_config_path)
    state_path = state_dir / checkpoints.STATE_FILE
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True) if state_path.is_file() else {}
    except Exception:  # a torn file: nothing usable was kept
        state = {}
    where = f"run {cfg['variant']} seed {cfg['seed']}, lr {cfg['train']['optimizer']['lr']:g}"
    if state.get("config_hash") != run_config_hash(run_config_path) or not state.get("epoch"):
        return f"{where}: diverged in epoch 1, so no checkpoint or resume state was kept"
    best = ", ".join(f"{metric} {value:.4f}" for metric, value in state["best"].items() if value is not None)
    return (f"{where}: diverged in epoch {state['epoch'] + 1}; kept in {state_dir}: the resume state after "
            f"epoch {state['epoch']} and the best checkpoints so far ({best}), which a changed train config "
            "discards; nothing was written to the run's results")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="imageclf train", description=__doc__.splitlines()[0])
    parser.add_argument("--run-config", required=True, help="JSON written by the run_config rule")
    parser.add_argument("--train-index", required=True)
    parser.add_argument("--val-index", default=None, help="none for a full fit (its run config has full_fit)")
    parser.add_argument("--classes", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--state-dir", default=None, help="resume state (default: OUT_DIR/resume)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--train-cache", nargs=2, metavar=("PIXELS", "META"), help="decoded-image cache")
    parser.add_argument("--val-cache", nargs=2, metavar=("PIXELS", "META"))
    parser.add_argument("--tensorboard-dir", default=None, help="TensorBoard event files of each epoch's scalars")
    parser.add_argument("--weights-file", default=None,
                        help="torchvision weights named by model.weights, put in place by the weights rule")
    parser.add_argument("--model-out", default=None, help="a full fit's model.pt: its last epoch's weights")
    add_log_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_file)
    keep_freed_memory()
    index = {"train": args.train_index, "val": args.val_index, "classes": args.classes}
    try:
        train(args.run_config, index, args.out_dir, args.state_dir, args.threads, args.train_cache,
              args.val_cache, args.num_workers, args.tensorboard_dir, args.weights_file, args.model_out)
    except TrainingDiverged as error:
        state_dir = Path(args.state_dir) if args.state_dir else Path(args.out_dir) / "resume"
        raise TrainingDiverged(f"{error} ({what_diverged_kept(args.run_config, state_dir)})") from None
