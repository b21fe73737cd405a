"""The augmentation chain is the reference chain, built from config."""

import pytest
import torch
import yaml
from conftest import REPO
from imageclf.training import presets
from PIL import Image
from torchvision.transforms import v2

RECIPE = yaml.safe_load((REPO / "config.yaml").read_text())


def test_reference_chain_order_and_parameters():
    chain = presets.train_transform(RECIPE["augment"], 224).transforms
    kinds = [type(t) for t in chain]
    assert kinds == [
        v2.RandomHorizontalFlip, v2.RandomVerticalFlip, v2.RandomRotation, v2.RandomAffine,
        v2.ColorJitter, v2.RandAugment, v2.Resize, v2.ToImage, v2.ToDtype, v2.RandomErasing, v2.Normalize,
    ]
    hflip, vflip, rotation, affine, jitter, randaug, resize, _, _, erasing, normalize = chain
    assert hflip.p == 0.5 and vflip.p == 0.2
    assert rotation.degrees == [-15.0, 15.0]
    assert affine.degrees == [0.0, 0.0] and affine.translate == (0.1, 0.1) and affine.scale == (0.9, 1.1)
    assert jitter.brightness == (0.8, 1.2) and jitter.contrast == (0.8, 1.2)
    assert jitter.saturation == (0.8, 1.2) and jitter.hue == (-0.1, 0.1)
    assert randaug.num_ops == 2 and randaug.magnitude == 10
    assert resize.size == [224, 224]
    assert erasing.p == 0.3 and erasing.scale == (0.02, 0.1) and erasing.ratio == (0.3, 3.3)
    assert erasing.value is None  # torchvision v2 stores value="random" as None
    assert normalize.mean == [0.485, 0.456, 0.406] and normalize.std == [0.229, 0.224, 0.225]


def test_switched_off_ops_are_left_out():
    augment = {**RECIPE["augment"], "vertical_flip": {"enabled": False, "p": 0.2},
               "rand_augment": {"enabled": False, "num_ops": 2, "magnitude": 10},
               "random_erasing": {**RECIPE["augment"]["random_erasing"], "enabled": False}}
    kinds = [type(t) for t in presets.train_transform(augment, 64).transforms]
    assert v2.RandomVerticalFlip not in kinds and v2.RandAugment not in kinds and v2.RandomErasing not in kinds
    assert v2.RandomHorizontalFlip in kinds


def test_eval_chain_is_resize_to_tensor_normalize():
    chain = presets.eval_transform(RECIPE["augment"], 96).transforms
    assert [type(t) for t in chain] == [v2.Resize, v2.ToImage, v2.ToDtype, v2.Normalize]
    image = Image.new("RGB", (500, 375), (255, 0, 0))
    out = presets.eval_transform(RECIPE["augment"], 96)(image)
    assert out.shape == (3, 96, 96) and out.dtype == torch.float32
    assert out[0].mean().item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-4)


def test_train_chain_output_shape_on_a_real_image():
    torch.manual_seed(0)
    out = presets.train_transform(RECIPE["augment"], 64)(Image.new("RGB", (120, 90), (10, 200, 30)))
    assert out.shape == (3, 64, 64) and torch.isfinite(out).all()


def test_the_chain_is_built_from_the_table_of_ops_in_the_schemas_order():
    from imageclf.core.config import augment_op_keys
    from imageclf.training.augment import OPS

    # one table of ops, and the schema's entries in the same order: before the resize, then after
    assert [op.key for op in OPS] == [*augment_op_keys(), *augment_op_keys(after_resize=True)]
    chain = [type(t).__name__ for t in presets.train_transform(RECIPE["augment"], 64).transforms]
    assert chain == ["RandomHorizontalFlip", "RandomVerticalFlip", "RandomRotation", "RandomAffine", "ColorJitter",
                     "RandAugment", "Resize", "ToImage", "ToDtype", "RandomErasing", "Normalize"]
