"""Measurement: what the batched augmentation chain (train.augment_on: device) costs the device per
batch, in units that carry from this CPU to a GPU. The figures of docs/performance.md.

On a GPU the chain is memory-bound: its time is about the bytes its kernels write and read, plus a
few microseconds for each kernel launched. So for the recipe's chain, on random uint8 squares of
the size the cache hands a GPU run, this counts per batch:
- the operators the device runs (each one kernel launch, or a few), and how many of them work on
  image-sized tensors (at least 1,000 values a sample) rather than on parameters;
- the bytes those write, in passes: multiples of one float32 batch of the input's size (the
  write of `images.float()`), for the chain in float32 (a CPU's) and, from the same count, in
  float16 (a GPU's: every floating-point output half as large);
- the device part's time on this CPU, in passes too: against one elementwise pass over the batch
  measured in the same run;
- the time of drawing and preparing the parameters on the CPU (BatchAugment.plan, which runs in
  the loader's workers), per batch.

Not a test. Run from the repository root:
    python -m benchmarks.augment_cost [--batches 64 256] [--size 224] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import torch
import yaml
from imageclf.data import cache
from imageclf.training import augment
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parent.parent
# No kernel: a new look at the same bytes (tests/test_augment.py counts launches without them too).
VIEWS = {"view", "_unsafe_view", "unsqueeze", "squeeze", "expand", "slice", "select", "unbind", "t", "permute",
         "alias", "as_strided", "split", "detach", "lift_fresh", "reshape"}


class Counted(TorchDispatchMode):
    """Counts the operators that run (views left out) and the bytes that image-sized ones write,
    floating-point outputs apart from the rest."""

    def __init__(self, image_values: int):
        super().__init__()
        self.image_values, self.ops, self.bytes = image_values, Counter(), Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        if name in VIEWS:
            return out
        outputs = [o for o in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(o, torch.Tensor)]
        values = max((o.numel() for o in outputs), default=0)
        if values >= self.image_values:
            self.ops["image"] += 1
            for o in outputs:
                self.bytes["float" if o.is_floating_point() else "other"] += o.numel() * o.element_size()
        else:
            self.ops["parameter"] += 1
        return out


def seconds(fn, rounds: int) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(augment_cfg: dict, size: int, side: int, batch: int, rounds: int) -> dict:
    augmenter = augment.BatchAugment(augment_cfg, size, dtype=torch.float32)
    images = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    seeds = torch.arange(batch, dtype=torch.int64) * 7919
    plan = augmenter.plan(seeds, side, side)
    counted = Counted(image_values=1000)
    with counted:
        augmenter.run(images, plan)
    one_pass_bytes = images.numel() * 4
    one_pass = seconds(lambda: images.float(), rounds)
    chain = seconds(lambda: augmenter.run(images, plan), rounds)
    return {"batch": batch, "side_px": side, "device_ops": sum(counted.ops.values()), "image_ops": counted.ops["image"],
            "parameter_ops": counted.ops["parameter"],
            "written_passes": round((counted.bytes["float"] + counted.bytes["other"]) / one_pass_bytes, 1),
            # the same kernels in float16, as a GPU runs them: half the bytes of every float output
            "written_passes_float16": round((counted.bytes["float"] / 2 + counted.bytes["other"]) / one_pass_bytes, 1),
            "cpu_time_passes": round(chain / one_pass, 1), "device_part_cpu_ms": round(chain * 1000, 1),
            "plan_cpu_ms": round(seconds(lambda: augmenter.plan(seeds, side, side), rounds) * 1000, 2)}


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--size", type=int, default=224, help="train.image_size")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (the best one counts)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "augment_cost.csv")
    args = parser.parse_args(argv)
    recipe = yaml.safe_load((REPO / "config.yaml").read_text())
    side = cache.batch_input_size(recipe["augment"], args.size, recipe["train"]["cache_margin"])
    torch.set_num_threads(1)  # one core's figures, comparable from run to run
    table = pd.DataFrame([measure(recipe["augment"], args.size, side, batch, args.rounds) for batch in args.batches])
    print(table.to_string(index=False))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    return table


if __name__ == "__main__":
    main()
