"""Pretrained weights as files of the workflow: fetched on the submitting machine, loaded from the
file whatever layout it was saved in, stamped by content."""

import os
import time
import urllib.error

import pytest
import torch
import torchvision
from imageclf.core.errors import WeightsError
from imageclf.data import datafiles
from imageclf.models import factory, weights

RESNET18_URL = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url  # .../resnet18-f37072fd.pth


def resnet18_state() -> dict:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


@pytest.mark.parametrize("layout", ["bare", "state_dict", "model", "module_prefix", "lightning"])
def test_common_checkpoint_layouts_give_the_bare_state_dict(layout):
    state = resnet18_state()
    saved = {
        "bare": state,
        "state_dict": {"state_dict": state, "epoch": torch.tensor(3)},
        "model": {"model": state, "optimizer": {}},
        "module_prefix": {f"module.{k}": v for k, v in state.items()},
        "lightning": {"state_dict": {f"model.{k}": v for k, v in state.items()}},
    }[layout]
    found = weights.state_dict_of(saved, "file.pth")
    assert list(found) == list(state) and all(torch.equal(found[k], state[k]) for k in state)


def test_what_is_not_a_state_dict_is_named():
    with pytest.raises(WeightsError, match="file.pth: not a state dict"):
        weights.state_dict_of({"epoch": 3}, "file.pth")


def test_fit_problems_name_the_mismatched_keys():
    expected = {k: tuple(v.shape) for k, v in resnet18_state().items()}
    other = torchvision.models.resnet34(weights=None).state_dict()
    problems = weights.fit_problems(other, expected, ("fc.",))
    assert problems and problems[0].startswith("unexpected") and "layer1.2." in problems[0]
    assert weights.fit_problems(resnet18_state(), expected, ("fc.",)) == []


def test_fetch_takes_the_hub_cache_copy_without_downloading(tmp_path, monkeypatch):
    hub = tmp_path / "home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(resnet18_state(), hub / "resnet18-f37072fd.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded"))
    out = tmp_path / "results" / "weights" / "resnet18-f37072fd.pth"
    weights.fetch(RESNET18_URL, out)
    assert out.read_bytes() == (hub / "resnet18-f37072fd.pth").read_bytes()
    assert os.stat(out).st_mtime == os.stat(hub / "resnet18-f37072fd.pth").st_mtime  # finished runs stay up to date


def test_fetch_downloads_into_the_hub_cache_or_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    folder = tmp_path / "home" / "hub" / "checkpoints"
    out = tmp_path / "results" / "weights" / "resnet18-f37072fd.pth"

    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError) as error:
        weights.fetch(RESNET18_URL, out)
    assert "resnet18-f37072fd.pth" in str(error.value) and str(folder) in str(error.value)
    assert not out.exists()

    def download(url, dst, hash_prefix=None, progress=True):
        assert hash_prefix == "f37072fd" and url == RESNET18_URL
        torch.save(resnet18_state(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    weights.fetch(RESNET18_URL, out)
    assert (folder / "resnet18-f37072fd.pth").is_file() and out.is_file()


def test_training_loads_named_weights_from_the_fetched_file_and_never_downloads(tmp_path, monkeypatch):
    path = tmp_path / "results" / "weights" / "resnet18-f37072fd.pth"  # the name torchvision's download has
    path.parent.mkdir(parents=True)
    state = resnet18_state()
    torch.save(state, path)
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded"))
    model = factory.build_model("resnet18", 7, head="linear", weights="IMAGENET1K_V1", weights_file=path)
    assert torch.equal(model.conv1.weight, state["conv1.weight"]) and model.fc.out_features == 7
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(WeightsError, match="resnet18-f37072fd.pth does not exist"):
        factory.build_model("resnet18", 7, weights="IMAGENET1K_V1")  # no file given, none in the hub cache


def test_a_local_file_is_stamped_by_content(tmp_path):
    path = tmp_path / "my weights.pth"
    path.write_bytes(b"first")
    stamp, record = tmp_path / "stamp", tmp_path / "record"
    first = datafiles.update_file_stamp(path, stamp, record)
    written = stamp.stat().st_mtime_ns
    time.sleep(0.01)
    os.utime(path)  # touch: same content
    assert datafiles.update_file_stamp(path, stamp, record) == first and stamp.stat().st_mtime_ns == written
    path.write_bytes(b"second")  # replaced: new content
    assert datafiles.update_file_stamp(path, stamp, record) != first and stamp.stat().st_mtime_ns != written
    assert weights.stamp_name(path) != weights.stamp_name(tmp_path / "other" / "my weights.pth")
