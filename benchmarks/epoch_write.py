"""Benchmark: what writing an epoch's checkpoints and resume state costs the training loop.

The recipe's model (ResNet50 + MLP head, AdamW with its moments filled, an EMA of the weights):
the seconds the loop waits at an epoch's end when the writing is in line (the previous code) and
with checkpoints.EpochWriter (a copy to host memory in line, the writing in a thread), each the
median of `--rounds` epochs, and their ratio. Not a test. Run from the repository root:
python -m benchmarks.epoch_write --help
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from imageclf.core import tables
from imageclf.core.io_utils import torch_save
from imageclf.models import factory
from imageclf.training import checkpoints

REPO = Path(__file__).resolve().parents[1]
ROW = ("val_acc", "val_loss", "val_balanced_acc", "val_macro_f1")


def recipe_state(device: torch.device):
    """The recipe's model, an AdamW that has taken a step, and an EMA of the weights."""
    model = factory.model_from_config({"arch": "resnet50", "weights": "none", "head": "mlp", "mlp_hidden": 512,
                                       "dropout": 0.5}, 100).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 64, 64, device=device)).sum().backward()
    optimizer.step()
    ema = torch.optim.swa_utils.AveragedModel(model)
    return model, optimizer, ema


def epoch_end(model, optimizer, ema, epoch: int):
    candidates = (("model", "", model.state_dict()), ("ema", "_ema", ema.module.state_dict()))
    state = checkpoints.resume_state({}, {}, epoch, model, optimizer, None, None, ema, [], {})
    # every epoch improves, and the EMA's loss beats the model's: the worst case, a checkpoint
    # written for each candidate (the model's for three metrics, linked; the EMA's for the loss)
    row = {name: 1.0 - epoch / 100 if name == "val_loss" else epoch / 100 for name in ROW}
    return {**row, "val_loss_ema": row["val_loss"] - 0.001}, candidates, state


def in_line(folder: Path, model, optimizer, ema, epoch: int) -> None:
    """The previous code: offer and save in the training thread."""
    keeper = checkpoints.Keeper(folder)
    row, candidates, state = epoch_end(model, optimizer, ema, epoch)
    keeper.offer(row, {"epoch": epoch}, candidates)
    torch_save({**state, "best": keeper.best}, folder / checkpoints.STATE_FILE)


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(REPO / "results/bench/epoch_write.csv"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    model, optimizer, ema = recipe_state(device)
    waits = {"in line": [], "EpochWriter": [], "EpochWriter, thread's seconds": []}
    with tempfile.TemporaryDirectory() as scratch:
        for epoch in range(1, args.rounds + 1):
            start = time.perf_counter()
            in_line(Path(scratch) / "in_line", model, optimizer, ema, epoch)
            waits["in line"].append(time.perf_counter() - start)

            writer = checkpoints.EpochWriter(checkpoints.Keeper(Path(scratch) / "writer"),
                                             Path(scratch) / "writer" / checkpoints.STATE_FILE)
            row, candidates, state = epoch_end(model, optimizer, ema, epoch)
            start = time.perf_counter()
            writer.write(row, {"epoch": epoch}, candidates, state)
            waits["EpochWriter"].append(time.perf_counter() - start)
            writer.wait()
            waits["EpochWriter, thread's seconds"].append(time.perf_counter() - start)
    base = statistics.median(waits["in line"])
    frame = pd.DataFrame([{"what": what, "device": str(device), "seconds": round(statistics.median(seconds), 4),
                           "ratio_to_in_line": round(statistics.median(seconds) / base, 3)}
                          for what, seconds in waits.items()])
    print(frame.to_string(index=False))
    tables.write_table(args.out, frame)
    return frame


if __name__ == "__main__":
    main()
