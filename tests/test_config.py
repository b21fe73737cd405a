"""Config: the schema names the bad key, variants are overlays, the demo overlay stays optional."""

import copy

import pytest
import yaml
from conftest import REPO, course_layout
from imageclf.checks import checked_config
from imageclf.core import config as C

RECIPE = yaml.safe_load((REPO / "config.yaml").read_text())


def user_config(root=None):
    cfg = copy.deepcopy(RECIPE)
    cfg["data"]["root"] = root or course_layout()
    return cfg


def test_defaults_are_the_reference_recipe():
    cfg = checked_config(user_config())
    assert cfg["model"] == {"arch": "resnet50", "weights": "IMAGENET1K_V2", "head": "mlp",
                            "mlp_hidden": 512, "dropout": 0.5, "max_params": 100_000_000}
    t = cfg["train"]
    assert (t["image_size"], t["epochs"], t["batch_size"], t["mixup_alpha"], t["label_smoothing"]) == (224, 100, 64, 0.2, 0.1)
    assert t["optimizer"] == {"name": "adamw", "lr": 0.0005, "weight_decay": 0.0005, "fused": True,
                              "backbone_lr_scale": 1.0}
    assert t["warmup_epochs"] == 0
    assert t["scheduler"] == {"name": "plateau", "mode": "min", "factor": 0.5, "patience": 3}
    assert list(cfg["variants"]) == ["full", "no_mlp", "no_mixup"]


def test_demo_overlay_applies_only_to_the_demo():
    demo = checked_config(copy.deepcopy(RECIPE))
    assert demo["model"]["weights"] == "none" and demo["train"]["epochs"] < 100
    assert demo["train"]["label_smoothing"] == 0.1  # untouched recipe values stay
    assert checked_config(user_config())["train"]["epochs"] == 100


def test_variants_are_overlays_over_the_recipe():
    cfg = checked_config(user_config())
    no_mlp = C.run_config(cfg, "no_mlp", 0)
    no_mixup = C.run_config(cfg, "no_mixup", 1)
    assert no_mlp["model"]["head"] == "linear" and no_mlp["train"]["mixup_alpha"] == 0.2
    assert no_mixup["model"]["head"] == "mlp" and no_mixup["train"]["mixup_alpha"] == 0
    assert no_mixup["seed"] == 1 and no_mixup["variant"] == "no_mixup"
    assert C.config_hash(no_mlp) != C.config_hash(C.run_config(cfg, "full", 0))


def test_a_number_written_0_or_0_0_gives_the_same_run():
    """Snakemake compares a run's params as text: 0 and 0.0 must not differ there."""
    as_int, as_float = user_config(), user_config()
    as_int["variants"]["no_mixup"] = {"train": {"mixup_alpha": 0}}
    as_float["variants"]["no_mixup"] = {"train": {"mixup_alpha": 0.0}}
    as_int["augment"]["rotation"]["degrees"] = 15
    as_float["augment"]["rotation"] = {"degrees": 15.0, "enabled": True}  # same keys, other order
    runs = [C.run_config(checked_config(cfg), "no_mixup", 0) for cfg in (as_int, as_float)]
    assert runs[0] == runs[1] and repr(runs[0]) == repr(runs[1])
    assert C.config_hash(runs[0]) == C.config_hash(runs[1])
    assert runs[0]["train"]["epochs"] == 100 and isinstance(runs[0]["train"]["epochs"], int)  # integers stay


@pytest.mark.parametrize("delete, named", [
    (lambda c: c["train"].pop("epochs"), "train.epochs: missing"),
    (lambda c: c.update(ablation={}), "ablation.reference: missing"),
    (lambda c: c["augment"]["rotation"].pop("degrees"), "augment.rotation.degrees: missing"),
    (lambda c: c["resources"]["train"].pop("mem_mb"), "resources.train.mem_mb: missing"),
])
def test_a_deleted_key_is_named_at_configuration_time(delete, named):
    cfg = user_config()
    delete(cfg)
    with pytest.raises(C.ConfigError) as error:
        checked_config(cfg)
    assert named in str(error.value)


def test_a_variant_may_leave_keys_out_but_not_misspell_them():
    cfg = user_config()
    cfg["variants"]["small"] = {"augment": {"rotation": {"enabled": False}}}  # no degrees: fine
    assert C.run_config(checked_config(cfg), "small", 0)["augment"]["rotation"]["degrees"] == 15
    cfg["variants"]["small"] = {"augment": {"rotaton": {"enabled": False}}}
    with pytest.raises(C.ConfigError, match="variants.small.augment: Additional properties"):
        checked_config(cfg)


@pytest.mark.parametrize("batch_size, devices", [(1, 1), (4, 4)])
def test_batches_of_one_image_are_refused(batch_size, devices):
    cfg = user_config()
    cfg["train"]["batch_size"] = batch_size
    cfg["train"]["devices"] = devices
    with pytest.raises(C.ConfigError, match="train.batch_size"):
        checked_config(cfg)


def test_a_weights_name_the_architecture_lacks_lists_its_names():
    cfg = user_config()
    cfg["variants"]["v2"] = {"model": {"arch": "resnet18", "weights": "IMAGENET1K_V2"}}
    with pytest.raises(C.ConfigError, match=r"resnet18 has no weights 'IMAGENET1K_V2'.*IMAGENET1K_V1"):
        checked_config(cfg)


def test_reading_the_configuration_never_touches_the_network(tmp_path, monkeypatch):
    """Offline and without the weights file, the configuration still reads (the weights rule
    fetches the file, on the submitting machine), and no connection is opened."""
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("the configuration opened a network connection")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    cfg = checked_config(user_config())
    assert cfg[C.RESOLVED]["full"]["weights_url"].endswith("/resnet50-11ad3fa6.pth")


def test_numbers_given_as_text_are_taken_as_the_schema_type():
    """Snakemake's --config 'train={epochs: 2}' hands the 2 over as text."""
    cfg = user_config()
    cfg["train"].update(epochs="2", mixup_alpha="0.5", label_smoothing="0")
    cfg["train"]["ema"]["enabled"] = "true"
    cfg["seeds"] = ["0", "1"]
    effective = C.effective_config(cfg)
    assert effective["train"]["epochs"] == 2 and effective["train"]["mixup_alpha"] == 0.5
    assert effective["train"]["ema"]["enabled"] is True and effective["seeds"] == [0, 1]
    assert C.run_config(effective, "full", 0)["train"]["label_smoothing"] == 0.0
    cfg["train"]["epochs"] = "two"
    with pytest.raises(C.ConfigError, match="train.epochs: 'two' is not of type 'integer'"):
        C.effective_config(cfg)


def test_relative_paths_are_reported_with_their_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = user_config()
    cfg["data"]["test_labels"] = "labels/test.csv"
    with pytest.raises(C.ConfigError, match=f"'labels/test.csv' \\(relative to {tmp_path}\\) does not exist"):
        checked_config(cfg)



def test_worker_count_is_an_execution_setting_not_part_of_the_run():
    cfg = user_config()
    cfg["variants"]["no_mixup"] = {"train": {"mixup_alpha": 0, "num_workers": 6}}
    cfg = checked_config(cfg)
    assert "num_workers" not in C.run_config(cfg, "full", 0)["train"]
    assert C.execution_settings(cfg, "full") == {"num_workers": 2}
    assert C.execution_settings(cfg, "no_mixup") == {"num_workers": 6}  # a variant may set its own
    more = copy.deepcopy(cfg)
    more["train"]["num_workers"] = 12
    assert C.config_hash(C.run_config(more, "full", 0)) == C.config_hash(C.run_config(cfg, "full", 0))

@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda c: c["train"].update(lr=0.1), "train: Additional properties are not allowed ('lr' was unexpected)"),
        (lambda c: c["train"].update(epochs="ten"), "train.epochs: 'ten' is not of type 'integer'"),
        (lambda c: c["model"].update(head="mlp3"), "model.head: 'mlp3' is not one of"),
        (lambda c: c.update(seed=[0]), "(top level): Additional properties are not allowed ('seed' was unexpected)"),
        (lambda c: c["variants"].update(bad={"train": {"mixup": 0}}), "variants.bad.train: Additional properties"),
        (lambda c: c["augment"]["rotation"].update(degrees=-3), "augment.rotation.degrees: -3 is less than the minimum"),
    ],
)
def test_schema_names_the_bad_key(edit, named):
    cfg = user_config()
    edit(cfg)
    with pytest.raises(C.ConfigError) as error:
        checked_config(cfg)
    assert named in str(error.value)


def test_null_removes_a_variant():
    cfg = user_config()
    cfg["variants"]["no_mixup"] = None
    assert list(checked_config(cfg)["variants"]) == ["full", "no_mlp"]


def test_submission_must_name_a_trained_run():
    cfg = user_config()
    cfg["submission"]["variant"] = "nope"
    with pytest.raises(C.ConfigError, match="submission.variant 'nope'"):
        checked_config(cfg)
    cfg = user_config()
    cfg["submission"]["seed"] = 7
    with pytest.raises(C.ConfigError, match="submission.seed 7 is not in seeds"):
        checked_config(cfg)


def resnet18_state_file(path):
    import torch
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return str(path)


def test_missing_or_unfitting_weights_file_fails_at_config_time(tmp_path):
    cfg = user_config()
    cfg["variants"]["local"] = {"model": {"arch": "resnet18", "weights": str(tmp_path / "missing.pth")}}
    with pytest.raises(C.ConfigError, match=r"model.weights \(variant 'local'\): file '.*missing.pth' does not exist"):
        checked_config(cfg)
    (tmp_path / "missing.pth").write_bytes(b"")
    with pytest.raises(C.ConfigError, match=r"missing.pth does not fit resnet18: not a loadable weights file"):
        checked_config(cfg)
    resnet18_state_file(tmp_path / "missing.pth")
    checked_config(cfg)


def test_home_folder_in_paths_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    resnet18_state_file(tmp_path / "weights.pth")
    (tmp_path / "course" / "train" / "a").mkdir(parents=True)
    (tmp_path / "course" / "test_labels.csv").write_text("image_name,label\n")
    cfg = user_config(root="~/course")
    cfg["data"]["test_labels"] = "~/course/test_labels.csv"
    cfg["model"].update(arch="resnet18", weights="~/weights.pth")  # checked at config time: found
    out = checked_config(cfg)
    assert out["data"]["root"] == str(tmp_path / "course")
    assert out["data"]["test_labels"] == str(tmp_path / "course" / "test_labels.csv")
    assert checked_config(user_config())["data"]["test_labels"] is None  # no labels stays no labels


def test_ensembles_are_checked_and_take_their_defaults():
    cfg = user_config()
    cfg["seeds"] = [0, 1]
    cfg["predict"]["tta"] = ["vflip"]
    cfg["ensembles"] = {"both": {"variants": ["full", "no_mlp"]}, "flip": {"variants": ["full"], "tta": []}}
    out = checked_config(cfg)["ensembles"]
    assert out["both"] == {"variants": ["full", "no_mlp"], "seeds": [0, 1], "tta": ["vflip"]}
    assert out["flip"]["tta"] == []
    cfg["ensembles"] = {"bad": {"variants": ["nope"]}}
    with pytest.raises(C.ConfigError, match=r"ensembles.bad.variants: \['nope'\] are not variants"):
        checked_config(cfg)
    cfg["ensembles"] = {}
    cfg["submission"]["ensemble"] = "missing"
    with pytest.raises(C.ConfigError, match="submission.ensemble 'missing'"):
        checked_config(cfg)


def test_cross_validation_settings_are_checked():
    cfg = user_config()
    cfg["cv"] = {"folds": 1, "seed": 0, "full_fit": False, "submit": "fold_average"}
    with pytest.raises(C.ConfigError, match="cv.folds: 1 fold holds nothing out"):
        C.effective_config(cfg)
    cfg["cv"] = {"folds": 0, "seed": 0, "full_fit": True, "submit": "fold_average"}
    with pytest.raises(C.ConfigError, match=r"cv.full_fit: needs cv.folds >= 2"):
        C.effective_config(cfg)
    cfg["cv"] = {"folds": 5, "seed": 0, "full_fit": False, "submit": "full_fit"}
    with pytest.raises(C.ConfigError, match="cv.submit: full_fit needs cv.full_fit: true"):
        C.effective_config(cfg)
    cfg["cv"]["full_fit"] = True
    cfg["ensembles"] = {"pair": {"variants": ["full", "no_mlp"]}}
    cfg["submission"]["ensemble"] = "pair"
    with pytest.raises(C.ConfigError, match="cv.submit: full_fit submits one run's full fit, but submission.ensemble"):
        C.effective_config(cfg)
    cfg["submission"]["ensemble"] = None
    assert C.effective_config(cfg)["cv"] == {"folds": 5, "seed": 0, "full_fit": True, "submit": "full_fit"}
