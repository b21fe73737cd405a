"""The training levers of engine.train_one_epoch: CutMix, gradient accumulation, gradient clipping."""

import contextlib

import numpy as np
import pytest
import torch
from imageclf.core import config as C
from imageclf.core.errors import ConfigError
from imageclf.training import engine
from torch import nn


def streams(seed=3):
    return np.random.default_rng(seed), torch.Generator().manual_seed(seed)


def labelled_images(n=6, side=10):
    """Image i is filled with the value i + 1, so every pixel says which image it came from."""
    images = torch.arange(1, n + 1, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, side, side).clone()
    return images, torch.arange(n)


@pytest.mark.parametrize("seed", range(6))
def test_cutmix_label_weight_is_the_area_of_the_pasted_box(seed):
    images, targets = labelled_images()
    mixed, targets_a, targets_b, lam = engine.cutmix_batch(images, targets, 1.0, *streams(seed))
    assert torch.equal(targets_a, targets)
    for i in range(len(images)):
        own = (mixed[i] == i + 1).float().mean().item()
        partner = (mixed[i] == targets_b[i].item() + 1).float().mean().item()
        if targets_b[i] != i:  # the box holds the partner's pixels, the rest the image's own
            assert own == pytest.approx(lam) and partner == pytest.approx(1 - lam)
            assert own + partner == pytest.approx(1)
    assert 0 <= lam <= 1


def test_cutmix_box_is_clipped_to_the_image_and_the_weight_follows():
    class Corner:  # the box centre drawn at the top left corner
        def integers(self, high):
            return 0

    top, bottom, left, right = engine.cutmix_box(10, 10, 0.36, Corner())  # an unclipped box of 8 x 8
    assert (top, bottom, left, right) == (0, 4, 0, 4)  # clipped to its lower right quarter
    rng = Corner()
    rng.beta = lambda a, b: 0.36
    images, targets = labelled_images(2)
    mixed, _, targets_b, lam = engine.cutmix_batch(images, targets, 1.0, rng, torch.Generator().manual_seed(1))
    assert lam == pytest.approx(1 - 16 / 100)  # the clipped box's area, not the drawn 1 - 0.36


def test_cutmix_draws_are_deterministic_under_the_seed():
    images, targets = labelled_images()
    first = engine.cutmix_batch(images, targets, 1.0, *streams(7))
    again = engine.cutmix_batch(images, targets, 1.0, *streams(7))
    other = engine.cutmix_batch(images, targets, 1.0, *streams(8))
    assert torch.equal(first[0], again[0]) and first[3] == again[3] and torch.equal(first[2], again[2])
    assert not torch.equal(first[0], other[0])


def test_mixing_switch_picks_cutmix_or_mixup():
    images, targets = labelled_images()
    both = {"mixup_alpha": 0.4, "cutmix_alpha": 1.0}
    cutmixed = engine.mix_batch(images, targets, {**both, "mix_switch_prob": 1.0}, *streams())
    assert set(cutmixed[0].unique().tolist()) <= set(range(1, 7))  # whole pixels only: a box
    mixed = engine.mix_batch(images, targets, {**both, "mix_switch_prob": 0.0}, *streams())
    rng, generator = streams()
    rng.random()  # the switch's draw
    expected = engine.mixup_batch(images, targets, 0.4, rng, generator)
    assert torch.equal(mixed[0], expected[0]) and mixed[3] == expected[3]
    # CutMix off: exactly mixup's draws, as before CutMix existed (the recipe's runs are unchanged)
    alone = engine.mix_batch(images, targets, {"mixup_alpha": 0.4, "cutmix_alpha": 0.0, "mix_switch_prob": 0.5},
                             *streams())
    assert torch.equal(alone[0], engine.mixup_batch(images, targets, 0.4, *streams())[0])
    assert engine.mix_batch(images, targets, {"mixup_alpha": 0.0, "cutmix_alpha": 0.0}, *streams()) is None


def test_switch_probability_sets_the_share_of_cutmix_batches():
    images, targets = labelled_images()
    rng, generator = streams()
    mixing = {"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "mix_switch_prob": 0.25}
    boxes = sum(set(engine.mix_batch(images, targets, mixing, rng, generator)[0].unique().tolist()) <= set(range(1, 7))
                for _ in range(400))
    assert 70 <= boxes <= 130  # 100 expected


def test_micro_batches_split_evenly_and_never_leave_one_image_alone():
    assert engine.micro_batches(8, 1) == [(0, 8)]
    assert engine.micro_batches(8, 2) == [(0, 4), (4, 8)]
    assert engine.micro_batches(12, 4) == [(0, 3), (3, 6), (6, 9), (9, 12)]
    assert engine.micro_batches(5, 2) == [(0, 3), (3, 5)]  # a short last batch
    assert engine.micro_batches(3, 2) == [(0, 3)]
    assert engine.micro_batches(7, 4) == [(0, 2), (2, 4), (4, 7)]


def no_batchnorm_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def one_epoch(model, loader, optimizer, **kwargs):
    return engine.train_one_epoch(model, loader, optimizer, nn.CrossEntropyLoss(label_smoothing=0.1),
                                  torch.device("cpu"), rng=np.random.default_rng(0),
                                  generator=torch.Generator().manual_seed(0), **kwargs)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("mixup_alpha", [0.0, 0.4])
def test_two_accumulated_micro_batches_of_4_make_the_step_of_one_batch_of_8(optimizer, mixup_alpha):
    torch.manual_seed(1)
    loader = [(torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))) for _ in range(3)]
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9),
            "adamw": lambda p: torch.optim.AdamW(p, lr=0.01)}[optimizer]
    whole, accumulated = no_batchnorm_model(), no_batchnorm_model()
    stats_whole = one_epoch(whole, loader, make(whole.parameters()), mixup_alpha=mixup_alpha)
    stats_accumulated = one_epoch(accumulated, loader, make(accumulated.parameters()), mixup_alpha=mixup_alpha,
                                  accumulate_steps=2)
    for a, b in zip(whole.parameters(), accumulated.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert stats_accumulated["train_images"] == 24
    assert stats_accumulated["train_loss"] == pytest.approx(stats_whole["train_loss"], rel=1e-6)
    assert not torch.equal(whole[0].weight, no_batchnorm_model()[0].weight)  # it did train


class CountingSync(nn.Module):
    """A stand-in for DistributedDataParallel: counts the micro-batches run under no_sync."""

    def __init__(self, module):
        super().__init__()
        self.module, self.unsynced, self.forwards = module, 0, 0

    def forward(self, images):
        self.forwards += 1
        return self.module(images)

    @contextlib.contextmanager
    def no_sync(self):
        self.unsynced += 1
        yield


def test_only_the_last_micro_batch_of_a_step_synchronises():
    net = CountingSync(no_batchnorm_model())
    loader = [(torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))) for _ in range(2)]
    steps = []
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    one_epoch(net, loader, optimizer, mixup_alpha=0.0, accumulate_steps=4, after_step=lambda: steps.append(1))
    assert net.forwards == 8 and net.unsynced == 6 and len(steps) == 2  # 2 steps of 4 micro-batches


class RecordingSGD(torch.optim.SGD):
    """SGD that records the gradients' total norm each time it steps."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self.norms = []

    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        return super().step(closure)


@pytest.mark.parametrize("with_scaler", [False, True])
def test_clipped_gradient_norm_is_respected(with_scaler):
    torch.manual_seed(2)
    loader = [(torch.randn(8, 3, 8, 8) * 5, torch.randint(0, 3, (8,))) for _ in range(3)]
    free, clipped = no_batchnorm_model(), no_batchnorm_model()
    free_sgd, clipped_sgd = RecordingSGD(free.parameters(), lr=0.1), RecordingSGD(clipped.parameters(), lr=0.1)
    one_epoch(free, loader, free_sgd, mixup_alpha=0.0)
    # a scaler on the CPU stands in for fp16's: the gradients arrive scaled 2**16 and must be unscaled first
    scaler = torch.amp.GradScaler("cpu") if with_scaler else None
    one_epoch(clipped, loader, clipped_sgd, mixup_alpha=0.0, clip_grad_norm=0.05, scaler=scaler)
    assert min(free_sgd.norms) > 0.05  # the limit binds: without clipping every step is above it
    assert clipped_sgd.norms == pytest.approx([0.05] * 3, rel=1e-4)


def test_batches_must_split_into_parts_of_two_or_more():
    train = {"batch_size": 64, "accumulate_steps": 4, "devices": 1}
    C.check_batches(train, "full")
    C.check_batches({**train, "accumulate_steps": 32}, "full")
    for steps, processes in [(3, 1), (64, 1), (32, 2)]:
        with pytest.raises(ConfigError, match=r"train.accumulate_steps \(variant 'full'\)"):
            C.check_batches({**train, "accumulate_steps": steps}, "full", processes)
    for batch, processes in [(1, 1), (6, 4), (64, 33)]:  # uneven, or fewer than 2 per device
        with pytest.raises(ConfigError, match=r"train.batch_size \(variant 'full'\): .* at least 2 per device"):
            C.check_batches({**train, "batch_size": batch, "accumulate_steps": 1}, "full", processes)


@pytest.mark.slow
def test_accumulation_and_clipping_under_two_processes(tmp_path):
    """torchrun, DDP on gloo: micro-batches under no_sync, the last one all-reducing, then clipping."""
    import pandas as pd
    from conftest import make_dataset, snakemake, tiny_overlay, write_overlay

    make_dataset(tmp_path / "data", train_per_class=10, val_per_class=2)
    overlay = tiny_overlay(tmp_path / "data", train={"epochs": 2, "devices": 2, "batch_size": 16,
                                                     "accumulate_steps": 2, "clip_grad_norm": 1.0,
                                                     "cutmix_alpha": 1.0})
    work = tmp_path / "work"
    result = snakemake(work, write_overlay(tmp_path / "ddp.yaml", overlay), "results/train/full/seed0/history.csv",
                       cores=2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "batch 16 on cpu x2" in (work / "logs/train/full/seed0.log").read_text()
    history = pd.read_csv(work / "results/train/full/seed0/history.csv")
    assert history["epoch"].tolist() == [1, 2] and history["train_loss"].notna().all()
