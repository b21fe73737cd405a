"""One training epoch, evaluation and batched inference."""

from __future__ import annotations

import contextlib
import logging
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..core import metrics
from ..core.errors import ConfigError, TrainingDiverged

log = logging.getLogger("imageclf.engine")


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: where bf16 matmuls and convolutions run faster than fp32."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cuda_native_bf16(device: torch.device) -> bool:
    """Compute capability 8.0 or more (Ampere on): bf16 in the tensor cores. Not
    torch.cuda.is_bf16_supported(), whose default also says yes where bf16 is only emulated
    (7.x: V100, T4, RTX 20xx), which trains slower than fp16."""
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: on CUDA, bf16 at compute capability >= 8.0, fp16 (with a grad scaler) on 7.x, fp32
    below; on the CPU, bf16 where it computes bf16 natively, else fp32. fp16 needs CUDA."""
    if precision == "auto":
        if device.type == "cuda":
            major, _ = torch.cuda.get_device_capability(device)
            return "bf16" if cuda_native_bf16(device) else "fp16" if major >= 7 else "fp32"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision: fp16 needs a CUDA device; use bf16, fp32 or auto on the CPU")
    if precision == "bf16" and device.type == "cuda" and not cuda_native_bf16(device):
        log.warning("train.precision: bf16 is emulated on %s (compute capability %d.%d) and slower than "
                    "fp16 there; `auto` picks fp16", torch.cuda.get_device_name(device),
                    *torch.cuda.get_device_capability(device))
    return precision


def resolve_channels_last(channels_last, precision: str, device: torch.device) -> bool:
    """`auto`: channels_last on CUDA, and on the CPU together with bf16 (measured 2.3-3.6x there)."""
    if channels_last == "auto":
        return device.type == "cuda" or precision == "bf16"
    return bool(channels_last)


def use_fastest_kernels(device: torch.device) -> None:
    """cuDNN picks its convolution algorithms by its heuristics, not by timing trials
    (cudnn.benchmark, which torchvision's references switch on): on an H200 the trials gave the
    same steady speed at batch 64 and 256, and cost seconds for every new input shape (an
    epoch's last batch, validation's), all in the first epoch (docs/performance.md).
    IMAGECLF_CUDNN_BENCHMARK=1 switches the trials on. CPU: nothing."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = os.environ.get("IMAGECLF_CUDNN_BENCHMARK", "0") == "1"


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device: 'cuda', but no CUDA device is visible here; set "
                              "train.device: auto (or cpu), or run the job where a GPU is")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"train.devices: process {local_rank} needs GPU {local_rank}, but only "
                              f"{torch.cuda.device_count()} are visible; lower train.devices or request more GPUs")
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


def autocast(device: torch.device, precision: str, cache_enabled: bool = True):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache_enabled)


def to_device(images, device, channels_last: bool):
    return images.to(device, non_blocking=True, memory_format=memory_format(channels_last))


def resolve_augment_on(augment_on: str, device: torch.device) -> str:
    """`auto`: the batched chain on a GPU (docs/performance.md: it keeps a GPU fed where the
    workers cannot), per image in the DataLoader workers on a CPU (faster there)."""
    if augment_on == "auto":
        return "device" if device.type == "cuda" else "loader"
    return augment_on


class DeviceBatches:
    """The loader's batches on the device, ready for the step: copied (from pinned memory) and,
    with an augment.BatchAugment, augmented there. On a GPU this runs one batch ahead on a
    stream of its own, so the copy and the augmentation of batch i + 1 overlap the step of batch
    i; the step's stream waits for it only when it takes the batch."""

    def __init__(self, loader, device: torch.device, channels_last: bool, augment=None):
        self.loader, self.device, self.channels_last, self.augment = loader, device, channels_last, augment

    def __len__(self) -> int:
        return len(self.loader)

    def prepare(self, images, targets, *rest):
        images = images.to(self.device, non_blocking=True)
        if self.augment is not None:
            images = self.augment(images, rest[0])  # rest: the samples' seeds
        return images.contiguous(memory_format=memory_format(self.channels_last)), targets.to(self.device, non_blocking=True)

    def __iter__(self):
        if self.device.type != "cuda":
            yield from (self.prepare(*batch) for batch in self.loader)
            return
        side, main = torch.cuda.Stream(self.device), torch.cuda.current_stream(self.device)
        batches = iter(self.loader)

        def ahead():
            batch = next(batches, None)
            if batch is None:
                return None
            with torch.cuda.stream(side):
                return self.prepare(*batch)

        ready = ahead()
        while ready is not None:
            main.wait_stream(side)
            for tensor in ready:  # made on the side stream, used on the main one
                tensor.record_stream(main)
            current, ready = ready, ahead()
            yield current


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of CutMix's box: sides sqrt(1 - lam) of the image's, its centre
    uniform over the image, clipped to the image (so a box near an edge is smaller)."""
    ratio = float(np.sqrt(1.0 - lam))
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, bottom, left, right


def draw_mix(size: int, height: int, width: int, mixing: dict, rng: np.random.Generator,
             generator: torch.Generator) -> dict | None:
    """The batch's mixing draws as `mixing` says ({"mixup_alpha", "cutmix_alpha", "mix_switch_prob"}),
    or None when both are off: {"kind": "mixup" or "cutmix", "lam", "perm" (CPU), "box" (CutMix's)}.
    With both on, CutMix with probability mix_switch_prob, else mixup. Mixup (Zhang et al. 2018):
    one lambda ~ Beta(alpha, alpha) per batch, partners by a permutation. CutMix (Yun et al. 2019):
    the same draws, then a box that each image takes from its partner; its lambda is then the
    weight of the image's own label, 1 minus the box's area after clipping. Each draw comes from
    `rng` and `generator` (seeded per epoch), so a resumed run repeats them; with CutMix off the
    draws are mixup's alone, as before CutMix existed."""
    mixup_alpha, cutmix_alpha = mixing.get("mixup_alpha", 0.0), mixing.get("cutmix_alpha", 0.0)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = float(rng.random()) < mixing["mix_switch_prob"]
    else:
        use_cutmix = cutmix_alpha > 0
    if not use_cutmix and mixup_alpha <= 0:
        return None
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(size, generator=generator)
    if not use_cutmix:
        return {"kind": "mixup", "lam": lam, "perm": perm}
    top, bottom, left, right = cutmix_box(height, width, lam, rng)
    lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    return {"kind": "cutmix", "lam": lam, "perm": perm, "box": (top, bottom, left, right)}


def apply_mix(images, targets, mix: dict):
    """(mixed images, targets, partners' targets, lambda) for draw_mix's draws."""
    perm = mix["perm"].to(images.device, non_blocking=True)
    if mix["kind"] == "mixup":
        mixed = mix["lam"] * images + (1.0 - mix["lam"]) * images[perm]
    else:
        top, bottom, left, right = mix["box"]
        mixed = images.clone()
        mixed[..., top:bottom, left:right] = images[..., top:bottom, left:right][perm]  # copies the box only
    return mixed, targets, targets[perm], mix["lam"]


def mix_batch(images, targets, mixing: dict, rng: np.random.Generator, generator: torch.Generator):
    """The batch mixed as `mixing` says (draw_mix, then apply_mix), or None when both are off."""
    mix = draw_mix(images.shape[0], *images.shape[-2:], mixing, rng, generator)
    return None if mix is None else apply_mix(images, targets, mix)


def mixup_batch(images, targets, alpha: float, rng: np.random.Generator, generator: torch.Generator):
    return mix_batch(images, targets, {"mixup_alpha": alpha}, rng, generator)


def cutmix_batch(images, targets, alpha: float, rng: np.random.Generator, generator: torch.Generator):
    return mix_batch(images, targets, {"cutmix_alpha": alpha}, rng, generator)


def mixup_loss(criterion, outputs, targets_a, targets_b, lam: float):
    return lam * criterion(outputs, targets_a) + (1.0 - lam) * criterion(outputs, targets_b)


def micro_batches(size: int, steps: int) -> list[tuple[int, int]]:
    """(start, stop) of each micro-batch of a batch of `size` split `steps` ways (train.accumulate_steps).

    A full batch splits into `steps` equal parts (the configuration check makes each at least 2
    images). A short last batch splits into parts of ceil(size / steps), at least 2, and a lone
    image left at its end joins the part before it: BatchNorm in training mode needs two images."""
    if steps == 1:
        return [(0, size)]
    micro = max(-(-size // steps), 2)
    bounds = [(start, min(start + micro, size)) for start in range(0, size, micro)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], size)]
    return bounds


CHECK_EVERY_ON_GPU = 50  # steps between reads of the loss on a GPU (each one waits for the GPU)


def check_finite(total_loss: torch.Tensor, precision: str = "fp32") -> None:
    """Stop before a non-finite loss reaches the weights (training/train.py adds what the run kept)."""
    if not torch.isfinite(total_loss):
        fix = "lower train.optimizer.lr"
        if precision != "fp32":  # fp16's range (or bf16's rounding) may be the cause only then
            fix += f", or set train.precision: fp32 (this run: {precision})"
        raise TrainingDiverged(f"training loss is {total_loss.item()}; {fix}")


def log_progress(label: str, step: int, steps: int, seen: int, seconds: float, total_loss: torch.Tensor,
                 world_size: int = 1) -> None:
    """One line of progress inside an epoch (an epoch of the full recipe on a CPU takes half an hour).
    The loss is this process's running mean; images/s counts every process, as the epoch line does."""
    rate = seen * world_size / max(seconds, 1e-9)
    left = (steps - step) * seconds / step if steps else 0.0
    log.info("%sstep %d/%s  train_loss %.4f  %.1f img/s  epoch ETA %dm%02ds", f"{label}  " if label else "",
             step, steps or "?", total_loss.item() / max(seen, 1), rate, left // 60, left % 60)


def eager_step(model, optimizer, criterion, images, targets, mix, total_loss, *, device, precision, scaler,
               accumulate_steps: int, clip_grad_norm, check: bool) -> None:
    """One optimizer step on the batch, op by op; the batch's loss sum is added to total_loss.
    check: stop before a non-finite loss reaches the weights (check_finite)."""
    if mix is not None:
        images, targets_a, targets_b, lam = apply_mix(images, targets, mix)
    size = images.shape[0]
    optimizer.zero_grad(set_to_none=True)
    parts = micro_batches(size, accumulate_steps)
    for index, (first, stop) in enumerate(parts):
        whole = len(parts) == 1  # the whole batch: no slicing, no loss weighting
        part = slice(first, stop)
        # DDP all-reduces the gradients in the backward of the last micro-batch only
        syncs = index == len(parts) - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if syncs else model.no_sync():
            with autocast(device, precision):
                outputs = model(images if whole else images[part])
                if mix is not None:
                    loss = mixup_loss(criterion, outputs, targets_a if whole else targets_a[part],
                                      targets_b if whole else targets_b[part], lam)
                else:
                    loss = criterion(outputs, targets if whole else targets[part])
            total_loss += loss.detach().double() * (stop - first)
            if not whole:
                loss = loss * ((stop - first) / size)
            (scaler.scale(loss) if scaler is not None else loss).backward()
    if check:
        check_finite(total_loss, precision)
    if clip_grad_norm is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def train_one_epoch(model, loader, optimizer, criterion, device, *, mixup_alpha: float,
                    rng: np.random.Generator, generator: torch.Generator, precision: str = "fp32",
                    channels_last: bool = False, scaler=None, augment=None, progress_every_s: float = 60.0,
                    label: str = "", world_size: int = 1, after_step=None, cutmix_alpha: float = 0.0,
                    mix_switch_prob: float = 0.5, accumulate_steps: int = 1, clip_grad_norm: float | None = None,
                    graphs=None) -> dict:
    """Returns the mean training loss (against the mixed targets when mixup or CutMix is on) and speed.

    augment: an augment.BatchAugment when the loader yields uint8 batches plus their samples'
    seeds (train.augment_on: device); the chain then runs on `device`, a batch ahead (DeviceBatches).
    progress_every_s: a progress line (running loss, images/s, the epoch's ETA) at most this often;
    on a GPU each one waits for the GPU once, so keep it at tens of seconds.
    accumulate_steps: each loader batch runs as this many micro-batches (forward and backward),
    then the optimizer steps once, so the update is the whole batch's (each micro-batch's loss
    weighted by its share of the images). Mixing is drawn for the whole batch first, so the draws
    do not depend on the split. Under DDP only the last micro-batch all-reduces the gradients.
    clip_grad_norm: the gradients' total norm is clipped to this before each step (after
    unscaling under fp16); None: no clipping.
    after_step: called after each optimizer step (e.g. the EMA of the weights).
    graphs: a step_graph.StepGraphs, which replays the step where it can (a GPU); None: every step eager.
    """
    model.train()
    mixing = {"mixup_alpha": mixup_alpha, "cutmix_alpha": cutmix_alpha, "mix_switch_prob": mix_switch_prob}
    # The loss sum stays on the device (in float64, as a Python float would add it), so a GPU
    # step never waits for the GPU to finish the one before; the finiteness check reads it back
    # every step on the CPU, where that is free, and every CHECK_EVERY_ON_GPU steps elsewhere.
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    check_every = 1 if device.type == "cpu" else CHECK_EVERY_ON_GPU
    seen = 0
    steps = len(loader) if hasattr(loader, "__len__") else 0
    start = last_progress = time.perf_counter()
    batches = DeviceBatches(loader, device, channels_last, augment)
    for step, (images, targets) in enumerate(batches, start=1):
        size = images.shape[0]
        mix = draw_mix(size, *images.shape[-2:], mixing, rng, generator)
        replayed = graphs.step(images, targets, mix) if graphs is not None else None
        if replayed is not None:  # the whole step, replayed as a CUDA graph (training/step_graph.py)
            total_loss += replayed.double() * size
        else:
            eager_step(model, optimizer, criterion, images, targets, mix, total_loss, device=device, precision=precision,
                       scaler=scaler, accumulate_steps=accumulate_steps, clip_grad_norm=clip_grad_norm,
                       check=step % check_every == 0)
        seen += size
        if replayed is not None and step % check_every == 0:
            check_finite(total_loss, precision)
        if after_step is not None:  # e.g. the EMA of the weights
            after_step()
        now = time.perf_counter()
        if now - last_progress >= progress_every_s and (not steps or step < steps):
            log_progress(label, step, steps, seen, now - start, total_loss, world_size)
            last_progress = now
    check_finite(total_loss, precision)
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


# Per-epoch metrics beyond val_loss and val_acc (history.csv columns): the table's other metrics.
CLASS_METRICS = {f"val_{name}": name for name in metrics.SECONDARY}


def evaluate(model, loader, device, precision: str = "fp32", channels_last: bool = False) -> dict:
    """Plain cross-entropy (no smoothing), accuracy, balanced accuracy and macro-F1 on a labelled
    split (the last two as the ablation table computes them: metrics.score)."""
    probs, targets = predict_probabilities(model, loader, device, precision, channels_last)
    log_probs = torch.log(torch.from_numpy(probs).clamp_min(1e-12))
    loss = F.nll_loss(log_probs, torch.from_numpy(targets).long()).item()
    acc = float((probs.argmax(1) == targets).mean())
    scores = metrics.score(targets, probs.argmax(1), probs.shape[1])
    return {"val_loss": loss, "val_acc": acc, **{name: scores[key] for name, key in CLASS_METRICS.items()}}
