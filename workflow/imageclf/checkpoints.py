"""Checkpoint keeping and the resume state of one training run.

Keeper: the best epoch by each selection metric (select.py's goals), kept in the state folder
while the run trains (so a killed run keeps them) and copied to the run's checkpoints/ at the end.

Resume state: everything a killed run needs to continue after its last finished epoch and end
bit-identical to an uninterrupted run (the random streams are derived from (seed, epoch), so
they need no saving). train.py writes it after every epoch; `load_resume_state` reads it back
only when it comes from the same run (its fingerprint: config, index, process count).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .io_utils import copy_file, torch_save
from .select import GOAL

log = logging.getLogger("imageclf.checkpoints")

# Checkpoints kept while training: the best epoch by each selection metric (select.py's goals).
KEPT = GOAL
STATE_FILE = "state.pt"


def improved(metric: str, value: float, best: float | None) -> bool:
    """Strict improvement: ties keep the earlier epoch (select.py breaks ties the same way)."""
    if best is None:
        return True
    return value > best if KEPT[metric] == "max" else value < best


class Keeper:
    """Keeps best_{metric}.pt in `folder`: the weights of the best epoch so far by each metric.

    best: the best value of each metric so far ({metric: None} for a new run; a resumed run
    passes the one its resume state holds)."""

    def __init__(self, folder, best: dict | None = None):
        self.folder = Path(folder)
        self.best: dict[str, float | None] = dict(best) if best else {metric: None for metric in KEPT}

    def path(self, metric: str) -> Path:
        return self.folder / f"best_{metric}.pt"

    def offer(self, row: dict, meta: dict, candidates) -> list[str]:
        """Save each candidate that beats the best so far; returns the metrics that improved.

        row: the epoch's history row; candidates: (weights, column suffix, module) in the order
        a tie should keep them, e.g. (("model", "", model), ("ema", "_ema", ema_module)): the
        trained weights first, so a tie keeps them over their EMA. A module of None is skipped."""
        improved_metrics = []
        for metric in KEPT:
            for weights, suffix, module in candidates:
                key = metric + suffix
                if module is not None and key in row and improved(metric, row[key], self.best[metric]):
                    self.best[metric] = row[key]
                    torch_save({"model": module.state_dict(), "meta": {**meta, "weights": weights}},
                               self.path(metric))
                    improved_metrics.append(metric)
        return improved_metrics

    def publish(self, folder) -> None:
        """Copy the kept checkpoints to `folder` (the run's checkpoints/, a Snakemake output)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for metric in KEPT:
            copy_file(self.path(metric), folder / f"best_{metric}.pt")


def resume_state(fingerprint: dict, epoch: int, model, optimizer, scheduler, scaler, ema, history: list,
                 best: dict) -> dict:
    """The state written after `epoch` (loaded with weights_only=True: tensors, numbers, strings).

    scheduler, scaler, ema: None when the run has none (stored as {})."""
    return {
        **fingerprint, "epoch": epoch, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "scaler": scaler.state_dict() if scaler is not None else {},
        "ema": ema.state_dict() if ema is not None else {},
        "history": history, "best": best,
    }


def load_resume_state(path: Path, expected: dict) -> dict | None:
    """The saved training state, or None (with a log line) when absent or from another config."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a torn or foreign file: start over rather than crash
        log.warning("discarding resume state %s: it cannot be read (%s); starting from epoch 1", path,
                    str(error).splitlines()[0] if str(error) else type(error).__name__)
        return None
    for key, value in expected.items():
        if state.get(key) != value:
            log.warning(
                "discarding resume state %s: its %s %s differs from this run's %s; starting from epoch 1",
                path, key, state.get(key), value,
            )
            return None
    return state


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
    return list(state["history"]), dict(state["best"]), int(state["epoch"]) + 1
