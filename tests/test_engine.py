"""Mixup, label smoothing and the training step."""

import numpy as np
import pytest
import torch
from imageclf.core.errors import TrainingDiverged
from imageclf.training import engine
from sklearn.metrics import balanced_accuracy_score, f1_score
from torch import nn


def test_mixup_blends_inputs_and_pairs_targets():
    images = torch.arange(4 * 3 * 2 * 2, dtype=torch.float32).reshape(4, 3, 2, 2)
    targets = torch.tensor([0, 1, 2, 3])
    rng, gen = np.random.default_rng(5), torch.Generator().manual_seed(5)
    mixed, ya, yb, lam = engine.mixup_batch(images, targets, 0.2, rng, gen)
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(5))
    expected_lam = np.random.default_rng(5).beta(0.2, 0.2)
    assert lam == pytest.approx(expected_lam) and 0 <= lam <= 1
    assert torch.allclose(mixed, lam * images + (1 - lam) * images[perm])
    assert torch.equal(ya, targets) and torch.equal(yb, targets[perm])


def test_mixup_loss_is_the_lambda_weighted_sum():
    torch.manual_seed(0)
    logits = torch.randn(6, 5)
    ya, yb = torch.tensor([0, 1, 2, 3, 4, 0]), torch.tensor([4, 3, 2, 1, 0, 0])
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    loss = engine.mixup_loss(criterion, logits, ya, yb, 0.3)
    assert loss.item() == pytest.approx(0.3 * criterion(logits, ya).item() + 0.7 * criterion(logits, yb).item())


def test_label_smoothing_is_applied_in_training_loss():
    logits = torch.tensor([[10.0, 0.0, 0.0]])
    smoothed = nn.CrossEntropyLoss(label_smoothing=0.1)(logits, torch.tensor([0])).item()
    plain = nn.CrossEntropyLoss()(logits, torch.tensor([0])).item()
    assert smoothed > plain + 0.1


def tiny_loader(n=16):
    torch.manual_seed(0)
    x = torch.randn(n, 3, 8, 8)
    y = torch.randint(0, 3, (n,))
    return [(x[i : i + 8], y[i : i + 8]) for i in range(0, n, 8)]


@pytest.mark.parametrize("alpha", [0.0, 0.2])
def test_train_one_epoch_reduces_nothing_to_nan(alpha):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    stats = engine.train_one_epoch(
        model, tiny_loader(), optimizer, nn.CrossEntropyLoss(label_smoothing=0.1), torch.device("cpu"),
        mixup_alpha=alpha, rng=np.random.default_rng(0), generator=torch.Generator().manual_seed(0),
    )
    assert np.isfinite(stats["train_loss"]) and stats["train_images"] == 16


def test_long_epochs_log_their_progress(caplog):
    """An epoch of the full recipe on a CPU is half an hour: the log says how it is going."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    loader = tiny_loader(32)  # 4 steps
    kwargs = dict(mixup_alpha=0.0, rng=np.random.default_rng(0), generator=torch.Generator().manual_seed(0))
    with caplog.at_level("INFO", logger="imageclf.engine"):
        engine.train_one_epoch(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                               torch.device("cpu"), progress_every_s=0.0, label="epoch 2/5", **kwargs)
    lines = [r.getMessage() for r in caplog.records if r.name == "imageclf.engine"]
    # every step but the last (the epoch's own line follows it), with its running loss and speed
    assert [line.split("  ")[:2] for line in lines] == [["epoch 2/5", f"step {k}/4"] for k in (1, 2, 3)]
    assert all("img/s" in line and "epoch ETA" in line and "train_loss" in line for line in lines)
    caplog.clear()
    with caplog.at_level("INFO", logger="imageclf.engine"):
        engine.train_one_epoch(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(),
                               torch.device("cpu"), **kwargs)  # short epochs: quiet
    assert not [r for r in caplog.records if r.name == "imageclf.engine"]


def test_train_loss_is_the_image_weighted_mean_of_the_step_losses():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    twin = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    twin.load_state_dict(model.state_dict())
    loader = tiny_loader(20)  # batches of 8, 8 and 4: a plain mean of the three would differ
    criterion = nn.CrossEntropyLoss()
    stats = engine.train_one_epoch(
        model, loader, torch.optim.SGD(model.parameters(), lr=0.5), criterion, torch.device("cpu"),
        mixup_alpha=0.0, rng=np.random.default_rng(0), generator=torch.Generator().manual_seed(0),
    )
    optimizer, total = torch.optim.SGD(twin.parameters(), lr=0.5), 0.0
    for images, targets in loader:
        loss = criterion(twin(images), targets)
        total += loss.item() * len(images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert stats["train_images"] == 20 and stats["train_loss"] == total / 20


def test_non_finite_loss_stops_before_the_weights_change():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    before = [p.detach().clone() for p in model.parameters()]
    images, targets = tiny_loader()[0]
    images[0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="training loss is nan; lower train.optimizer.lr$"):
        engine.train_one_epoch(
            model, [(images, targets)], torch.optim.SGD(model.parameters(), lr=0.5), nn.CrossEntropyLoss(),
            torch.device("cpu"), mixup_alpha=0.0, rng=np.random.default_rng(0),
            generator=torch.Generator().manual_seed(0),
        )
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))

def test_evaluate_uses_plain_cross_entropy_and_true_labels():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    loader = tiny_loader()
    result = engine.evaluate(model, loader, torch.device("cpu"))
    x = torch.cat([b[0] for b in loader])
    y = torch.cat([b[1] for b in loader])
    with torch.no_grad():
        logits = model(x)
    assert result["val_loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    assert result["val_acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    pred = logits.argmax(1).numpy()
    assert result["val_balanced_acc"] == pytest.approx(balanced_accuracy_score(y.numpy(), pred))
    assert result["val_macro_f1"] == pytest.approx(f1_score(y.numpy(), pred, average="macro"))


@pytest.mark.parametrize("precision, channels_last", [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)])
def test_precision_and_layout_options_train_a_step(precision, channels_last):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stats = engine.train_one_epoch(
        model, [(x, y)], optimizer, nn.CrossEntropyLoss(), torch.device("cpu"), mixup_alpha=0.2,
        rng=np.random.default_rng(0), generator=torch.Generator().manual_seed(0),
        precision=precision, channels_last=channels_last,
    )
    assert np.isfinite(stats["train_loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32
    result = engine.evaluate(model, [(x, y)], torch.device("cpu"), precision, channels_last)
    assert np.isfinite(result["val_loss"])


def test_auto_precision_choices():
    cpu = torch.device("cpu")
    expected = "bf16" if engine.cpu_has_native_bf16() else "fp32"
    assert engine.resolve_precision("auto", cpu) == expected
    assert engine.resolve_channels_last("auto", expected, cpu) == (expected == "bf16")
    assert engine.resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        engine.resolve_precision("fp16", cpu)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_fused_optimizer_is_the_same_update(name):
    """optimizer.fused only changes how the update runs: same parameters after a few steps."""
    from imageclf.training.train import make_optimizer

    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        # no BatchNorm: a bias right before it has a zero gradient up to rounding, which Adam's
        # first steps amplify into noise-sized updates
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
        initial = torch.cat([p.detach().flatten() for p in model.parameters()])
        optimizer = make_optimizer(model, {"name": name, "lr": 0.01, "weight_decay": 0.01, "fused": fused, "backbone_lr_scale": 1.0})
        assert bool(optimizer.defaults.get("fused")) == fused
        for _ in range(3):
            loss = model(torch.randn(8, 6)).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        assert not torch.allclose(results[-1], initial)
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_test_time_augmentation_averages_the_views():
    """A mirror-symmetric input gives the same probabilities with and without hflip; a model
    that sees left from right gets the mean of the image's and its mirror's probabilities."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    half = torch.randn(6, 3, 4, 2)
    symmetric = torch.cat([half, half.flip(-1)], dim=-1)
    loader = [(symmetric, torch.zeros(6, dtype=torch.long))]
    plain, _ = engine.predict_probabilities(model, loader, torch.device("cpu"))
    with_tta, _ = engine.predict_probabilities(model, loader, torch.device("cpu"), views=("hflip",))
    assert np.allclose(plain, with_tta, atol=1e-6)
    images = torch.randn(6, 3, 4, 4)
    loader = [(images, torch.zeros(6, dtype=torch.long))]
    tta, _ = engine.predict_probabilities(model, loader, torch.device("cpu"), views=("hflip", "vflip"))
    views = [images, images.flip(-1), images.flip(-2)]
    expected = torch.stack([torch.softmax(model(v), dim=1) for v in views]).mean(0).detach().numpy()
    assert np.allclose(tta, expected, atol=1e-6)
    unaugmented, _ = engine.predict_probabilities(model, loader, torch.device("cpu"))
    assert not np.allclose(tta, unaugmented, atol=1e-4)  # the views did change something
