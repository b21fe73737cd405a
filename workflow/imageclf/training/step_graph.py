"""The training step replayed as a CUDA graph on a GPU: forward, loss, backward, clipping and the
optimizer step in one launch.

At the recipe's batch of 64 an eager ResNet50 step on an H200 is bound by Python launching its
kernels, not by the GPU: the same step replayed as a graph trained 2.2x as many images per second
(docs/performance.md). The graph runs the same kernels on the same values, so it changes no result.

Used where the step is one fixed sequence of kernels: CUDA, one process (no DDP), no fp16 grad
scaler, no gradient accumulation. Each (batch shape, mixing kind) gets its own graph, captured on
its fourth occurrence (the eager steps before it set up cuDNN's choices and the optimizer's state),
and all are captured again when a learning rate changes (it is part of the optimizer's kernels).
A batch of another shape (an epoch's last) steps eagerly. A capture that fails leaves training
eager, with one warning. IMAGECLF_CUDA_GRAPHS=0 switches graphs off.
"""

from __future__ import annotations

import logging
import os

import torch

from . import engine

log = logging.getLogger("imageclf.step_graph")

EAGER_STEPS_BEFORE_CAPTURE = 3


def wanted(device: torch.device, world_size: int, scaler, accumulate_steps: int) -> bool:
    return (device.type == "cuda" and world_size == 1 and scaler is None and accumulate_steps == 1
            and os.environ.get("IMAGECLF_CUDA_GRAPHS", "1") != "0")


class StepGraphs:
    """Replays the training step for batches whose shape and mixing kind it has seen before."""

    def __init__(self, model, optimizer, criterion, precision: str, clip_grad_norm):
        self.model, self.optimizer, self.criterion = model, optimizer, criterion
        self.precision, self.clip_grad_norm = precision, clip_grad_norm
        self.graphs: dict[tuple, tuple] = {}
        self.seen: dict[tuple, int] = {}
        self.learning_rates = None
        self.pool = None
        self.failed = False

    def step(self, images, targets, mix) -> torch.Tensor | None:
        """The batch's loss (a device scalar) after a replayed step, or None: step eagerly instead.
        mix: engine.draw_mix's draws for the batch, or None."""
        if self.failed:
            return None
        rates = tuple(group["lr"] for group in self.optimizer.param_groups)
        if rates != self.learning_rates:  # a new rate is another optimizer kernel: capture again
            self.graphs, self.seen, self.learning_rates, self.pool = {}, {}, rates, None
        kind = None if mix is None else mix["kind"]
        key = (tuple(images.shape), kind)
        if key not in self.graphs:
            self.seen[key] = self.seen.get(key, 0) + 1
            if self.seen[key] <= EAGER_STEPS_BEFORE_CAPTURE:
                return None
            self.graphs[key] = self.capture(images, targets, kind)
            if self.graphs[key] is None:
                return None
        graph, static = self.graphs[key]
        static["images"].copy_(images)
        static["targets"].copy_(targets)
        if mix is not None:
            static["perm"].copy_(mix["perm"], non_blocking=True)
            static["lam"].fill_(mix["lam"])
            if kind == "cutmix":
                top, bottom, left, right = mix["box"]
                static["box"].zero_()[..., top:bottom, left:right] = True
        graph.replay()
        return static["loss"]

    def capture(self, images, targets, kind):
        device = images.device
        static = {"images": images.clone(), "targets": targets.clone(),
                  "perm": torch.arange(images.shape[0], device=device), "lam": torch.ones((), device=device),
                  "box": torch.zeros((1, 1, *images.shape[-2:]), dtype=torch.bool, device=device)}
        for group in self.optimizer.param_groups:
            if "capturable" in group:
                group["capturable"] = True  # a resumed state may carry the setting it was saved with
        try:
            self.optimizer.zero_grad(set_to_none=True)  # the graph's backward makes its own gradients
            graph = torch.cuda.CUDAGraph()
            # thread_local: the DataLoader's pinning thread keeps calling CUDA while we capture
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                with engine.autocast(device, self.precision, cache_enabled=False):  # no weight-cast cache in graphs
                    x, targets_a = static["images"], static["targets"]
                    if kind is None:
                        loss = self.criterion(self.model(x), targets_a)
                    else:
                        partner, targets_b = x[static["perm"]], targets_a[static["perm"]]
                        if kind == "mixup":
                            x = static["lam"] * x + (1.0 - static["lam"]) * partner
                        else:
                            x = torch.where(static["box"], partner, x)
                        outputs = self.model(x)
                        loss = static["lam"] * self.criterion(outputs, targets_a) + (
                            1.0 - static["lam"]) * self.criterion(outputs, targets_b)
                loss.backward()
                if self.clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
                self.optimizer.step()
                static["loss"] = loss.detach()
            self.pool = graph.pool()
            log.info("training step of %s batches (%s) captured as a CUDA graph", tuple(images.shape), kind or "no mixing")
            return graph, static
        except RuntimeError as error:
            self.failed = True
            log.warning("the training step runs eagerly: its CUDA graph capture failed (%s)", str(error).splitlines()[0])
            return None
