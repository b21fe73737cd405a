"""The model: exact parameter counts, weights loading, and checkpoints that refuse to lie."""

import os
import pickle

import pytest
import torch
import torchvision
from imageclf.models import factory
from imageclf.models.factory import WeightsError


def test_parameter_counts_match_the_report():
    mlp = factory.build_model("resnet50", 100, head="mlp")
    linear = factory.build_model("resnet50", 100, head="linear")
    assert factory.count_parameters(mlp) == 24_609_444
    assert factory.count_parameters(linear) == 23_712_932
    assert isinstance(linear.fc, torch.nn.Linear)
    layers = [type(m) for m in mlp.fc]
    assert layers == [torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.SiLU, torch.nn.Dropout, torch.nn.Linear]
    assert mlp.fc[3].p == 0.5 and mlp.fc[0].out_features == 512


def fake_imagenet_state(arch="resnet18"):
    torch.manual_seed(123)
    return getattr(torchvision.models, arch)(weights=None).state_dict()


def test_imagenet_weights_load_from_torch_hub_cache(tmp_path, monkeypatch):
    """IMAGENET1K_V2 goes through torchvision's weights API; here its file is placed in the cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    state = fake_imagenet_state("resnet50")
    torch.save(state, cache / os.path.basename(weights.url))
    model = factory.build_model("resnet50", 100, head="mlp", weights="IMAGENET1K_V2")
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.layer4[2].bn3.running_mean, state["layer4.2.bn3.running_mean"])
    assert model.fc[-1].out_features == 100


def test_unknown_weights_name_is_named():
    with pytest.raises(WeightsError, match="IMAGENET9K.*neither a file nor a torchvision weights name"):
        factory.build_model("resnet18", 10, weights="IMAGENET9K")


def test_local_weights_file_loads(tmp_path):
    state = fake_imagenet_state()
    path = tmp_path / "backbone.pth"
    torch.save(state, path)
    model = factory.build_model("resnet18", 12, head="linear", weights=str(path))
    assert torch.equal(model.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(WeightsError, match="nope.pth: file does not exist"):
        factory.build_model("resnet18", 12, weights=str(tmp_path / "nope.pth"))


def test_weights_for_another_architecture_are_refused(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(fake_imagenet_state("resnet50"), path)
    with pytest.raises(WeightsError, match="does not fit resnet18"):
        factory.build_model("resnet18", 12, weights=str(path))


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"conv1.weight": RunsCode()}, handle)
    with pytest.raises(WeightsError, match="weights_only=True refused"):
        factory.build_model("resnet18", 12, weights=str(path))


def test_not_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(WeightsError, match="not a state dict"):
        factory.build_model("resnet18", 12, weights=str(path))


def test_checkpoint_for_other_class_count_is_refused(tmp_path):
    model = factory.build_model("resnet18", 7, head="mlp")
    path = tmp_path / "model.pt"
    torch.save({"model": model.state_dict(), "meta": {"epoch": 1}}, path)
    cfg = {"arch": "resnet18", "head": "mlp", "weights": "none", "mlp_hidden": 512, "dropout": 0.5}
    with pytest.raises(WeightsError, match="model.pt: does not fit a resnet18 with a mlp head and 12 classes"):
        factory.load_trained_model(path, cfg, 12)
    loaded, meta = factory.load_trained_model(path, cfg, 7)
    assert meta == {"epoch": 1}
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(WeightsError, match="not a training checkpoint"):
        factory.load_trained_model(tmp_path / "bare.pt", cfg, 7)
