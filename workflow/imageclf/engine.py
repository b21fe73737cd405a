"""One training epoch, evaluation and batched inference."""

from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import stats

log = logging.getLogger("imageclf.engine")


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: where bf16 matmuls and convolutions run faster than fp32."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` becomes bf16 where the hardware has it natively, else fp32; fp16 needs CUDA."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("train.precision fp16 needs a CUDA device; use bf16 or auto on the CPU")
    return precision


def resolve_channels_last(channels_last, precision: str, device: torch.device) -> bool:
    """`auto`: channels_last on CUDA, and on the CPU together with bf16 (measured 2.3-3.6x there)."""
    if channels_last == "auto":
        return device.type == "cuda" or precision == "bf16"
    return bool(channels_last)


def use_fastest_kernels(device: torch.device) -> None:
    """On CUDA, let cuDNN time its convolution algorithms once per input shape and keep the fastest
    (torchvision's references do the same). The pick may vary between runs, so GPU results are
    not bit-reproducible; they are not anyway (atomic adds in some backward kernels). CPU: nothing."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but no CUDA device is visible")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup_device(train_cfg: dict, local_rank: int = 0, inference: bool = False):
    """(device, precision, channels_last) from a run's `train` settings, for training, prediction
    and the benchmarks alike. inference: a model trained in fp16 on a GPU still predicts on a CPU
    (`auto` then picks what this device has)."""
    device = resolve_device(train_cfg["device"], local_rank)
    use_fastest_kernels(device)
    requested = train_cfg["precision"]
    if inference and requested == "fp16" and device.type != "cuda":
        requested = "auto"
    precision = resolve_precision(requested, device)
    return device, precision, resolve_channels_last(train_cfg["channels_last"], precision, device)


def memory_format(channels_last: bool):
    return torch.channels_last if channels_last else torch.contiguous_format


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(images, device, channels_last: bool):
    return images.to(device, non_blocking=True, memory_format=memory_format(channels_last))


def mixup_batch(images, targets, alpha: float, rng: np.random.Generator, generator: torch.Generator):
    """Mixup (Zhang et al. 2018): one lambda ~ Beta(alpha, alpha) per batch, pairs by a permutation."""
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(images.shape[0], generator=generator).to(images.device)
    mixed = lam * images + (1.0 - lam) * images[perm]
    return mixed, targets, targets[perm], lam


def mixup_loss(criterion, outputs, targets_a, targets_b, lam: float):
    return lam * criterion(outputs, targets_a) + (1.0 - lam) * criterion(outputs, targets_b)


CHECK_EVERY_ON_GPU = 50  # steps between reads of the loss on a GPU (each one waits for the GPU)


def check_finite(total_loss: torch.Tensor) -> None:
    if not torch.isfinite(total_loss):
        raise FloatingPointError(f"training loss is {total_loss.item()}; lower train.optimizer.lr or use fp32")


def log_progress(label: str, step: int, steps: int, seen: int, seconds: float, total_loss: torch.Tensor,
                 world_size: int = 1) -> None:
    """One line of progress inside an epoch (an epoch of the full recipe on a CPU takes half an hour).
    The loss is this process's running mean; images/s counts every process, as the epoch line does."""
    rate = seen * world_size / max(seconds, 1e-9)
    left = (steps - step) * seconds / step if steps else 0.0
    log.info("%sstep %d/%s  train_loss %.4f  %.1f img/s  epoch ETA %dm%02ds", f"{label}  " if label else "",
             step, steps or "?", total_loss.item() / max(seen, 1), rate, left // 60, left % 60)


def train_one_epoch(model, loader, optimizer, criterion, device, *, mixup_alpha: float,
                    rng: np.random.Generator, generator: torch.Generator, precision: str = "fp32",
                    channels_last: bool = False, scaler=None, augment=None, progress_every_s: float = 60.0,
                    label: str = "", world_size: int = 1, after_step=None) -> dict:
    """Returns the mean training loss (against the mixed targets when mixup is on) and speed.

    augment: a batch_augment.BatchAugment when the loader yields uint8 batches plus their drawn
    parameters (train.augment_on: device); the chain then runs here, on `device`.
    progress_every_s: a progress line (running loss, images/s, the epoch's ETA) at most this often;
    on a GPU each one waits for the GPU once, so keep it at tens of seconds.
    """
    model.train()
    # The loss sum stays on the device (in float64, as a Python float would add it), so a GPU
    # step never waits for the GPU to finish the one before; the finiteness check reads it back
    # every step on the CPU, where that is free, and every CHECK_EVERY_ON_GPU steps elsewhere.
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    check_every = 1 if device.type == "cpu" else CHECK_EVERY_ON_GPU
    seen = 0
    steps = len(loader) if hasattr(loader, "__len__") else 0
    start = last_progress = time.perf_counter()
    for step, (images, targets, *drawn) in enumerate(loader, start=1):
        if augment is not None:
            images = augment.apply(images.to(device, non_blocking=True), drawn[0])
        images = to_device(images, device, channels_last)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, precision):
            if mixup_alpha > 0:
                images, targets_a, targets_b, lam = mixup_batch(images, targets, mixup_alpha, rng, generator)
                loss = mixup_loss(criterion, model(images), targets_a, targets_b, lam)
            else:
                loss = criterion(model(images), targets)
        total_loss += loss.detach().double() * images.shape[0]
        seen += images.shape[0]
        if step % check_every == 0:
            check_finite(total_loss)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if after_step is not None:  # e.g. the EMA of the weights
            after_step()
        now = time.perf_counter()
        if now - last_progress >= progress_every_s and (not steps or step < steps):
            log_progress(label, step, steps, seen, now - start, total_loss, world_size)
            last_progress = now
    check_finite(total_loss)
    seconds = time.perf_counter() - start
    return {"train_loss": total_loss.item() / max(seen, 1), "train_images": seen, "train_seconds": seconds}


# Test-time augmentation views (predict.tta): each a function of an (N, C, H, W) batch.
TTA_VIEWS = {"hflip": lambda images: images.flip(-1), "vflip": lambda images: images.flip(-2)}


@torch.inference_mode()
def predict_probabilities(model, loader, device, precision: str = "fp32", channels_last: bool = False,
                          views=()):
    """Softmax probabilities (float32 numpy) and targets for every item of `loader`, in order.

    views: test-time augmentation (TTA_VIEWS names): the probabilities are averaged over the
    image itself and each view of it."""
    model.eval()
    probs, targets = [], []
    for images, batch_targets in loader:
        images = to_device(images, device, channels_last)
        batch = None
        for view in (None, *views):
            with autocast(device, precision):
                logits = model(images if view is None else TTA_VIEWS[view](images))
            p = torch.softmax(logits.float(), dim=1)
            batch = p if batch is None else batch + p
        probs.append((batch / (1 + len(views))).cpu())
        targets.append(torch.as_tensor(batch_targets))
    return torch.cat(probs).numpy(), torch.cat(targets).numpy()


# Per-epoch metrics beyond val_loss and val_acc: history.csv columns that select.metric may pick.
CLASS_METRICS = {"val_balanced_acc": "balanced_acc", "val_macro_f1": "macro_f1"}


def evaluate(model, loader, device, precision: str = "fp32", channels_last: bool = False) -> dict:
    """Plain cross-entropy (no smoothing), accuracy, balanced accuracy and macro-F1 on a labelled
    split (the last two as the ablation table computes them: stats.score)."""
    probs, targets = predict_probabilities(model, loader, device, precision, channels_last)
    log_probs = torch.log(torch.from_numpy(probs).clamp_min(1e-12))
    loss = F.nll_loss(log_probs, torch.from_numpy(targets).long()).item()
    acc = float((probs.argmax(1) == targets).mean())
    scores = stats.score(targets, probs.argmax(1), probs.shape[1])
    return {"val_loss": loss, "val_acc": acc, **{name: scores[key] for name, key in CLASS_METRICS.items()}}
