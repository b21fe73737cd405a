"""Any torchvision backbone: the head replaces its classifier, weights load, the parameter budget
and the image size are checked before any job runs (issue: Beyond the report's 92 %)."""

import copy
import logging

import pytest
import torch
import torchvision
import yaml
from conftest import REPO, course_layout
from imageclf import checks
from imageclf.checks import checked_config
from imageclf.core import config as C
from imageclf.models import factory
from imageclf.training.train import make_optimizer
from torch import nn

RECIPE = yaml.safe_load((REPO / "config.yaml").read_text())
FAMILIES = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf", "convnext_tiny"]


def user_config(**model):
    cfg = copy.deepcopy(RECIPE)
    cfg["data"]["root"] = course_layout()
    cfg["model"].update(model)
    return cfg


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("weights", ["none", "local"])
def test_each_family_gets_the_head_loads_weights_and_trains_a_step(arch, weights, tmp_path):
    original = torchvision.models.get_model(arch, weights=None)
    old_name, old = factory.final_classifier(original)
    if weights == "local":
        torch.manual_seed(7)
        reference = torchvision.models.get_model(arch, weights=None)
        torch.save(reference.state_dict(), tmp_path / "weights.pth")
        weights = str(tmp_path / "weights.pth")
    model = factory.build_model(arch, 12, head="mlp", weights=weights, mlp_hidden=64)
    name, head = factory.final_classifier_of_head(model)
    assert isinstance(head, nn.Sequential) and head[0].in_features == old.in_features and head[-1].out_features == 12
    expected = (factory.count_parameters(original) - sum(p.numel() for p in old.parameters())
                + sum(p.numel() for p in head.parameters()))
    assert factory.count_parameters(model) == expected
    if weights != "none":  # every backbone tensor is the file's
        state = reference.state_dict()
        for key, value in model.state_dict().items():
            if not key.startswith(name + "."):
                assert torch.equal(value, state[key]), key
    model.train()
    optimizer = make_optimizer(model, {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0, "fused": False, "backbone_lr_scale": 1.0})
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_the_reference_model_keeps_its_parameter_count():
    assert factory.count_parameters(factory.build_model("resnet50", 100, head="mlp")) == 24_609_444


def test_any_registry_name_is_accepted_and_others_are_named():
    checked_config(user_config(arch="convnext_tiny", weights="none"))
    with pytest.raises(C.ConfigError, match="'resnet51' is not a torchvision classification model"):
        checked_config(user_config(arch="resnet51", weights="none"))


def test_a_model_over_the_budget_is_refused_with_its_count():
    with pytest.raises(C.ConfigError, match=r"vgg16 .* has 136,410,532 parameters, over the budget of 100,000,000"):
        checked_config(user_config(arch="vgg16", weights="none"))
    cfg = user_config(arch="resnet50", weights="none", max_params=20_000_000)
    with pytest.raises(C.ConfigError, match="24,609,444 parameters"):
        checked_config(cfg)
    # the budget is a check, not part of a run: raising it retrains nothing
    low, high = user_config(max_params=30_000_000), user_config(max_params=90_000_000)
    assert C.run_config(checked_config(low), "full", 0) == C.run_config(checked_config(high), "full", 0)


def test_an_image_size_the_architecture_cannot_take_is_refused():
    cfg = user_config(arch="vit_b_16", weights="none")
    cfg["train"]["image_size"] = 192
    with pytest.raises(C.ConfigError, match="vit_b_16 does not take 192 x 192 images"):
        checked_config(cfg)
    cfg["train"]["image_size"] = 224
    checked_config(cfg)


def test_small_images_and_known_traps_are_warned_about(caplog):
    cfg = user_config(arch="mobilenet_v3_small", weights="none")
    cfg["train"]["image_size"] = 48
    checks.WARNED.clear()  # said once per process: this test wants to hear it
    with caplog.at_level(logging.WARNING, logger="imageclf"):
        checked_config(cfg)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "48 px is far below the 224 px" in messages and "last feature map is about 1 x 1" in messages
    assert "BatchNorm momentum of 0.01" in messages
    assert messages.count("BatchNorm momentum") == 1  # once, not once per variant


def test_normalize_can_take_the_weights_own_statistics():
    cfg = user_config(arch="resnet50", weights="DEFAULT")
    cfg["augment"]["normalize"] = "weights"
    run = C.run_config(checked_config(cfg), "full", 0)
    assert run["augment"]["normalize"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    cfg["model"]["weights"] = "none"
    with pytest.raises(C.ConfigError, match="'weights' needs model.weights to be a torchvision weights name"):
        checked_config(cfg)


def test_facts_are_cached_between_runs(tmp_path):
    cfg = user_config(arch="regnet_x_400mf", weights="none")
    checked_config(cfg, cache_dir=tmp_path)
    cached = (tmp_path / "architectures.json").read_text()
    assert "regnet_x_400mf" in cached
    checked_config(cfg, cache_dir=tmp_path)
    assert (tmp_path / "architectures.json").read_text() == cached


def test_warmup_and_backbone_scale_set_the_learning_rates():
    from imageclf.training.train import warm_up

    model = factory.build_model("resnet18", 10, head="mlp", mlp_hidden=32)
    cfg = {"name": "adamw", "lr": 0.01, "weight_decay": 0.0, "fused": False, "backbone_lr_scale": 0.1}
    optimizer = make_optimizer(model, cfg)
    backbone, head = optimizer.param_groups
    assert {id(p) for p in head["params"]} == {id(p) for p in factory.head_parameters(model)}
    assert len(backbone["params"]) + len(head["params"]) == len(list(model.parameters()))
    seen = []
    for epoch in (1, 2, 3, 4):
        warm_up(optimizer, epoch, warmup_epochs=3)
        seen.append([group["lr"] for group in optimizer.param_groups])
    assert seen[:3] == [pytest.approx([0.001 * e / 3, 0.01 * e / 3]) for e in (1, 2, 3)]
    assert seen[3] == seen[2]  # after the warmup the scheduler alone moves it
    # the defaults leave the reference recipe as it was: one group, no warmup
    plain = make_optimizer(model, {**cfg, "backbone_lr_scale": 1.0})
    assert len(plain.param_groups) == 1 and plain.param_groups[0]["lr"] == 0.01
    warm_up(plain, 1, warmup_epochs=0)
    assert plain.param_groups[0]["lr"] == 0.01


def test_the_head_is_found_after_sync_batchnorm_conversion():
    model = factory.build_model("resnet18", 10, head="mlp", mlp_hidden=32)
    before = {id(p) for p in factory.head_parameters(model)}
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    after = {id(p) for p in factory.head_parameters(converted)}
    assert len(after) == len(before) == 6  # both Linear layers and the BatchNorm: weight and bias each
