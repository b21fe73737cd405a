"""What `train.precision: auto` picks on each kind of GPU, faked through torch.cuda's functions."""

import numpy as np
import pytest
import torch
from imageclf.core.errors import UserError
from imageclf.training import engine


def fake_gpu(monkeypatch, capability, count=1):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"fake sm_{capability[0]}{capability[1]}")
    # what torch says by default on 7.x too (emulated bf16): auto must not take it
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # setup_device sets it; restored after


@pytest.mark.parametrize("capability, expected", [
    ((9, 0), "bf16"),   # H100
    ((8, 0), "bf16"),   # A100
    ((8, 6), "bf16"),   # RTX 30xx
    ((7, 5), "fp16"),   # T4, RTX 20xx: bf16 only emulated
    ((7, 0), "fp16"),   # V100
    ((6, 1), "fp32"),   # P100-era GTX 10xx
])
def test_auto_precision_by_compute_capability(monkeypatch, capability, expected):
    fake_gpu(monkeypatch, capability)
    device, precision, channels_last = engine.setup_device(
        {"device": "auto", "precision": "auto", "channels_last": "auto"})
    assert device.type == "cuda" and precision == expected and channels_last


def test_explicit_bf16_on_emulating_gpu_is_kept_with_a_warning(monkeypatch, caplog):
    fake_gpu(monkeypatch, (7, 5))
    with caplog.at_level("WARNING"):
        assert engine.resolve_precision("bf16", torch.device("cuda", 0)) == "bf16"
    assert "emulated" in caplog.text and "7.5" in caplog.text


def test_device_and_precision_mistakes_are_user_errors(monkeypatch):
    with pytest.raises(UserError, match="train.precision: fp16 needs a CUDA device"):
        engine.resolve_precision("fp16", torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="train.device: 'cuda', but no CUDA device is visible"):
        engine.resolve_device("cuda")
    fake_gpu(monkeypatch, (8, 0), count=2)
    with pytest.raises(UserError, match="train.devices: process 2 needs GPU 2, but only 2 are visible"):
        engine.resolve_device("cuda", local_rank=2)


def test_fp16_trains_through_the_grad_scaler(monkeypatch):
    """The fp16 path (7.x GPUs) scales the loss, steps and updates through the scaler every step.
    On the CPU a GradScaler disables itself (passes through), so this checks the calls."""
    calls = []

    class Recording(torch.amp.GradScaler):
        def scale(self, outputs):
            calls.append("scale")
            return super().scale(outputs)

        def step(self, optimizer, *args, **kwargs):
            calls.append("step")
            return super().step(optimizer, *args, **kwargs)

        def update(self, new_scale=None):
            calls.append("update")
            return super().update(new_scale)

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    batches = [(torch.randn(4, 3, 4, 4), torch.randint(0, 3, (4,))) for _ in range(2)]
    with pytest.warns(UserWarning):  # "CUDA is not available. Disabling."
        scaler = Recording("cuda")
    stats = engine.train_one_epoch(
        model, batches, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.CrossEntropyLoss(),
        torch.device("cpu"), mixup_alpha=0.0, rng=np.random.default_rng(0),
        generator=torch.Generator().manual_seed(0), scaler=scaler,
    )
    assert calls == ["scale", "step", "update"] * 2 and np.isfinite(stats["train_loss"])


@pytest.mark.slow  # 8 s: two short trainings; the quick loop keeps the choice of precision
def test_a_fp16_run_trains_and_resumes_with_a_grad_scaler(tmp_path, monkeypatch):
    """Through train.train, as the train rule runs it: precision fp16 (what auto picks on 7.x)
    gets one GradScaler, and every optimizer step goes through it."""
    import yaml
    from conftest import REPO, index_dataset, index_files, make_dataset, tiny_overlay
    from imageclf.core import config as C
    from imageclf.core.io_utils import write_json
    from imageclf.training import train

    make_dataset(tmp_path / "data", train_per_class=2, val_per_class=1, test_per_class=1)
    index_dataset(tmp_path / "data", tmp_path / "index")
    cfg = C.effective_config(C.deep_merge(yaml.safe_load((REPO / "config.yaml").read_text()),
                                          tiny_overlay(tmp_path / "data", train={"epochs": 1})))
    write_json(tmp_path / "config.json", C.run_config(cfg, "full", 0))
    made = []

    class Recording(torch.amp.GradScaler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.steps = 0
            made.append(self)

        def step(self, optimizer, *args, **kwargs):
            self.steps += 1
            return super().step(optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.amp, "GradScaler", Recording)
    monkeypatch.setattr(engine, "setup_device", lambda *a, **k: (torch.device("cpu"), "fp16", False))
    with pytest.warns(UserWarning):  # the scaler disables itself without CUDA
        train.train(tmp_path / "config.json", index_files(tmp_path / "index"), tmp_path / "run")
    assert len(made) == 1 and made[0].steps == 3  # 24 images, batch 8
