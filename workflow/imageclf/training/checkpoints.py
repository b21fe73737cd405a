"""Checkpoint keeping and the resume state of one training run.

Keeper: the best epoch by each selection metric (core/metrics.py's SELECTABLE), kept in the state folder
while the run trains (so a killed run keeps them) and copied to the run's checkpoints/ at the end.

Resume state: everything a killed run needs to continue after its last finished epoch and end
bit-identical to an uninterrupted run (the random streams are derived from (seed, epoch), so
they need no saving). training/train.py writes it after every epoch, through an EpochWriter (a
thread, while the next epoch trains); `load_resume_state` reads it back
only when it comes from the same run (its fingerprint: config, index, process count), or from
the same run with fewer epochs under a schedule that does not depend on them (an extension).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch

from ..core.io_utils import link_file, torch_save
from ..core.metrics import SELECTABLE

log = logging.getLogger("imageclf.checkpoints")

STATE_FILE = "state.pt"


def improved(metric: str, value: float, best: float | None) -> bool:
    """Strict improvement: ties keep the earlier epoch (evaluation/select.py breaks ties the same way)."""
    if best is None:
        return True
    return value > best if SELECTABLE[metric] == "max" else value < best


class Keeper:
    """Keeps best_{metric}.pt in `folder`: the weights of the best epoch so far by each metric.

    best: the best value of each metric so far ({metric: None} for a new run; a resumed run
    passes the one its resume state holds)."""

    def __init__(self, folder, best: dict | None = None):
        self.folder = Path(folder)
        self.best: dict[str, float | None] = {**{metric: None for metric in SELECTABLE}, **(best or {})}

    def path(self, metric: str) -> Path:
        return self.folder / f"best_{metric}.pt"

    def offer(self, row: dict, meta: dict, candidates) -> list[str]:
        """Save each candidate that beats the best so far; returns the metrics that improved.

        row: the epoch's history row; candidates: (weights, column suffix, state dict) in the
        order a tie should keep them, e.g. (("model", "", model's), ("ema", "_ema", its EMA's)):
        the trained weights first, so a tie keeps them over their EMA. A state of None is skipped."""
        improved_metrics, holds = [], {}  # holds: file -> the weights this epoch put in it
        for metric in SELECTABLE:
            for weights, suffix, state in candidates:
                key = metric + suffix
                if state is not None and key in row and improved(metric, row[key], self.best[metric]):
                    self.best[metric] = row[key]
                    path = self.path(metric)
                    same = next((kept for kept, held in holds.items() if held == weights and kept != path), None)
                    if same is not None:  # the same bytes (weights and meta) as a file saved this epoch
                        link_file(same, path)
                    else:
                        torch_save({"model": state, "meta": {**meta, "weights": weights}}, path)
                    holds[path] = weights
                    improved_metrics.append(metric)
        return improved_metrics

    def restamp(self, meta: dict) -> None:
        """Update the meta of the kept checkpoints (an extended run's config_hash is the new one)."""
        for metric in SELECTABLE:
            if self.path(metric).is_file():
                kept = torch.load(self.path(metric), map_location="cpu", weights_only=True)
                torch_save({**kept, "meta": {**kept["meta"], **meta}}, self.path(metric))

    def publish(self, folder) -> None:
        """The kept checkpoints into `folder` (the run's checkpoints/, a Snakemake output), as
        links where the file system allows (each about 100 MB at the recipe's size)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for metric in SELECTABLE:
            link_file(self.path(metric), folder / f"best_{metric}.pt")


def cpu_copy(obj):
    """`obj` (nested dicts, lists and tuples of tensors and plain values) with every tensor copied
    to the CPU: a snapshot that training, which changes its tensors in place, leaves alone. GPU
    tensors are copied without waiting one by one, then once for all. Views of the same memory
    (the model's weights in its checkpoint and in the resume state) are copied once."""
    on_gpu, copies = [], {}

    def copy(value):
        if isinstance(value, torch.Tensor):
            on_gpu.append(value.is_cuda)
            key = (value.device, value.data_ptr(), value.dtype, tuple(value.shape), value.stride())
            if key not in copies:
                copies[key] = value.detach().to("cpu", copy=True, non_blocking=value.is_cuda)
            return copies[key]
        if isinstance(value, dict):
            return {key: copy(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(copy(item) for item in value)
        return value

    snapshot = copy(obj)
    if any(on_gpu):
        torch.cuda.synchronize()
    return snapshot


class EpochWriter:
    """Writes each epoch's kept checkpoints, then its resume state, in a thread of its own while
    the next epoch trains. At the recipe's size (ResNet50, AdamW, EMA) that is about 400 MB an
    epoch, a second or so of a GPU kept waiting if written in line.

    write() copies the tensors to the CPU before it returns, and first waits for the previous
    epoch's writing, so one epoch is written at a time and in order. `announce` (the epoch's log
    line) runs once its resume state is on disk: the log never claims an epoch a resume would not
    find. Use it as a context manager: leaving it waits for the last epoch, also on an error, and
    an error of the writing thread is raised in the training one."""

    def __init__(self, keeper: Keeper, state_path):
        self.keeper, self.state_path = keeper, Path(state_path)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, row: dict, meta: dict, candidates, state: dict, announce=None) -> None:
        """row, meta, candidates: Keeper.offer's (no candidates: a full fit, which keeps no
        checkpoints); state: resume_state()'s, whose `best` is filled in after the offer."""
        self.wait()
        candidates, state = cpu_copy((list(candidates), state))

        def work():
            try:
                self.keeper.offer(row, meta, candidates)
                torch_save({**state, "best": dict(self.keeper.best)}, self.state_path)
                if announce is not None:
                    announce()
            except BaseException as error:  # raised in the training thread by wait()
                self._error = error

        self._thread = threading.Thread(target=work, name="epoch-writer")
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        try:
            self.wait()  # also on a training error: the last epoch still reaches the disk
        except BaseException as write_error:
            if error is None:
                raise
            log.error("writing the last epoch failed too: %s", write_error)  # the training error is raised


def resume_state(fingerprint: dict, config: dict, epoch: int, model, optimizer, scheduler, scaler, ema,
                 history: list, best: dict) -> dict:
    """The state written after `epoch` (loaded with weights_only=True: tensors, numbers, strings).

    config: the run config, kept so that a later run can tell what changed (extension).
    scheduler, scaler, ema: None when the run has none (stored as {})."""
    return {
        **fingerprint, "config": config, "epoch": epoch, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "scaler": scaler.state_dict() if scaler is not None else {},
        "ema": ema.state_dict() if ema is not None else {},
        "history": history, "best": best,
    }


# Schedules that never look at train.epochs: a run of N epochs is the first N of a longer one.
EPOCH_FREE_SCHEDULES = ("plateau", "none")


def changed_keys(old, new, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two run configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [key for name in sorted(set(old) | set(new))
                for key in changed_keys(old.get(name), new.get(name), f"{prefix}{name}.")]
    return [] if old == new else [prefix.rstrip(".")]


def extension(old: dict, new: dict) -> tuple[bool, str]:
    """(whether a run under `new` may continue from a state saved under `old`, and why (not)).

    It may when only train.epochs changed, upwards, and the schedule does not depend on it: then
    the first epochs of the longer run are exactly the shorter run's."""
    changed = changed_keys(old, new)
    if changed != ["train.epochs"]:
        return False, "changed: " + (", ".join(changed) or "the run config")
    before, after = old["train"]["epochs"], new["train"]["epochs"]
    if after < before:
        return False, f"train.epochs lowered from {before} to {after}: a shorter run retrains"
    schedule = new["train"]["scheduler"]["name"]
    if schedule not in EPOCH_FREE_SCHEDULES:
        return False, (f"train.epochs raised from {before} to {after}, but the {schedule} schedule "
                       "depends on the epoch count")
    return True, f"train.epochs raised from {before} to {after}"


def load_resume_state(path: Path, expected: dict, config: dict | None = None) -> dict | None:
    """The saved training state, or None (with a log line) when absent or from another run.

    expected: this run's fingerprint (config_hash, index_hash, world_size). config: this run's
    config; a state whose config differs only by fewer train.epochs, under a schedule that does
    not depend on them, is returned too: the run extends the finished one (see `extension`)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a torn or foreign file: start over rather than crash
        log.warning("discarding resume state %s: it cannot be read (%s); starting from epoch 1", path,
                    str(error).splitlines()[0] if str(error) else type(error).__name__)
        return None
    differs = [key for key, value in expected.items() if state.get(key) != value]
    if not differs:
        return state
    key, why = differs[0], ""
    if key == "config_hash" and config is not None and "config" in state:
        extends, why = extension(state["config"], config)
        if extends and differs == ["config_hash"]:
            log.info("extending %s: %s; continuing from %s after epoch %d", config.get("variant"), why, path,
                     state["epoch"])
            return state
        key, why = (differs[1], "") if extends else (key, f" ({why})")  # then the index or processes differ
    log.warning("discarding resume state %s: its %s %s differs from this run's %s%s; starting from epoch 1",
                path, key, state.get(key), expected[key], why)
    return None


def restore(state: dict, model, optimizer, scheduler, scaler, ema) -> tuple[list, dict, int]:
    """Load `state` into the run's parts; returns (history, best, the first epoch still to train)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    best = {**{metric: None for metric in SELECTABLE}, **state["best"]}  # older states lack newer metrics
    return list(state["history"]), best, int(state["epoch"]) + 1
