"""The classifier: any torchvision classification backbone with an MLP or linear head."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision
from torch import nn

from ..core.errors import WeightsError, unknown_architecture
from .weights import fit_problems, hub_checkpoints, is_local_file, state_dict_of

log = logging.getLogger("imageclf.models")

__all__ = ["WeightsError", "build_model", "model_from_config", "load_trained_model", "count_parameters"]


def first_detail(error: Exception) -> str:
    """The first specific line of a long load_state_dict error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else (lines[0] if lines else type(error).__name__)


def build_head(in_features: int, num_classes: int, head: str, hidden: int, dropout: float):
    if head == "linear":
        return nn.Linear(in_features, num_classes)
    if head == "mlp":
        return nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
    raise ValueError(f"model.head must be 'mlp' or 'linear', not '{head}'")


def load_checkpoint_file(path: str | Path) -> dict:
    """torch.load with weights_only=True: a pickle that would run code is refused."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"{path}: file does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise WeightsError(
            f"{path}: not a loadable weights file (torch.load with weights_only=True refused "
            f"it: {(str(error).strip().splitlines() or [type(error).__name__])[0]})"
        ) from error


# Builders whose auxiliary classifiers would make training return a tuple: built without them.
NO_AUX_LOGITS = {"googlenet", "inception_v3"}
AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")


def architectures() -> list[str]:
    """Every classification model of torchvision's registry."""
    return torchvision.models.list_models(module=torchvision.models)


def backbone(arch: str) -> nn.Module:
    """The architecture as torchvision builds it, randomly initialised, with its own classifier."""
    if arch not in architectures():
        raise WeightsError(unknown_architecture(arch, architectures()))
    extra = {"aux_logits": False, "init_weights": True} if arch in NO_AUX_LOGITS else {}
    return torchvision.models.get_model(arch, weights=None, **extra)


def final_classifier(model: nn.Module) -> tuple[str, nn.Module]:
    """(dotted name, module) of the layer that maps features to ImageNet's classes: the last
    Linear of the network (fc, classifier[-1], heads.head, head, ...), or SqueezeNet's last
    1x1 convolution."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and name == "classifier.1"):
            if not name.startswith(tuple(p.rstrip(".") for p in AUX_PREFIXES)):
                last = (name, module)
    if last is None:
        raise WeightsError(f"{type(model).__name__}: no final Linear layer to replace with the head")
    return last


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def attach_head(model: nn.Module, num_classes: int, head: str, hidden: int, dropout: float) -> str:
    """Replace the final classifier by the configured head; returns its dotted name."""
    name, old = final_classifier(model)
    if isinstance(old, nn.Conv2d):  # SqueezeNet: 1x1 convolution over the last feature map
        replace_module(model, name, nn.Conv2d(old.in_channels, num_classes, kernel_size=1))
        if head != "linear":
            raise WeightsError("model.head 'mlp' needs a Linear classifier; squeezenet has a convolution: use linear")
        return name
    replace_module(model, name, build_head(old.in_features, num_classes, head, hidden, dropout))
    return name


def pretrained_state(arch: str, weights: str, weights_file: str | Path | None = None) -> dict | None:
    """The state dict named by model.weights (None for 'none'), read from a file, never downloaded.

    weights_file: the file the `weights` rule put in place for a torchvision weights name (by
    default the torch hub cache's copy); a local model.weights file is read where it is."""
    if weights.lower() == "none":
        return None
    if is_local_file(weights):
        return state_dict_of(load_checkpoint_file(weights), weights)
    try:
        enum = torchvision.models.get_model_weights(arch)[weights]
    except KeyError as error:
        raise WeightsError(
            f"model.weights '{weights}' is neither a file nor a torchvision weights name "
            f"for {arch} ({[w.name for w in torchvision.models.get_model_weights(arch)]})"
        ) from error
    path = Path(weights_file) if weights_file else hub_checkpoints() / Path(enum.url).name
    if not path.is_file():
        raise WeightsError(f"model.weights {weights}: {path} does not exist (the `weights` rule puts it there)")
    log.info("loading %s weights %s from %s", arch, weights, path)
    # torchvision's own loader, pointed at the file: it finds it and never downloads
    return enum.get_state_dict(model_dir=str(path.parent), file_name=path.name, progress=False, weights_only=True)


def build_model(arch: str, num_classes: int, head: str = "mlp", weights: str = "none",
                mlp_hidden: int = 512, dropout: float = 0.5, weights_file: str | Path | None = None) -> nn.Module:
    """A torchvision classification model with pretrained weights loaded (all but its final
    classifier), then that classifier replaced by our head."""
    model = backbone(arch)
    classifier, _ = final_classifier(model)
    state = pretrained_state(arch, weights, weights_file)
    if state is not None:
        skip = (classifier + ".", *AUX_PREFIXES)
        expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
        problems = fit_problems(state, expected, skip)
        if problems:
            raise WeightsError(f"model.weights '{weights}' does not fit {arch}: {'; '.join(problems)}")
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith(skip)}, strict=False)
    if arch in NO_AUX_LOGITS and state is not None and not is_local_file(weights):
        model.transform_input = True  # as torchvision sets it for its ImageNet weights of these models
    attach_head(model, num_classes, head, mlp_hidden, dropout)
    return model


def head_parameters(model: nn.Module) -> list:
    """The parameters of the head that replaced the final classifier (the rest is the backbone)."""
    name, _ = final_classifier_of_head(model)
    return list(model.get_submodule(name).parameters())


def final_classifier_of_head(model: nn.Module) -> tuple[str, nn.Module]:
    """Where attach_head put the head: the parent of the last Linear when that is our MLP."""
    name, module = final_classifier(model)
    parent_name = name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    # _BatchNorm: also after convert_sync_batchnorm, which makes it a SyncBatchNorm
    if isinstance(parent, nn.Sequential) and len(parent) == 5 and isinstance(parent[1], nn.modules.batchnorm._BatchNorm):
        return parent_name, parent
    return name, module


def model_from_config(model_cfg: dict, num_classes: int, pretrained: bool = True,
                      weights_file: str | Path | None = None) -> nn.Module:
    return build_model(
        model_cfg["arch"], num_classes, head=model_cfg["head"],
        weights=model_cfg["weights"] if pretrained else "none",
        mlp_hidden=model_cfg["mlp_hidden"], dropout=model_cfg["dropout"], weights_file=weights_file,
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_trained_model(checkpoint_path, model_cfg: dict, num_classes: int) -> tuple[nn.Module, dict]:
    """Rebuild the model from its config and load a checkpoint written by training."""
    checkpoint = load_checkpoint_file(checkpoint_path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise WeightsError(f"{checkpoint_path}: not a training checkpoint (no 'model' state dict)")
    model = model_from_config(model_cfg, num_classes, pretrained=False)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise WeightsError(
            f"{checkpoint_path}: does not fit a {model_cfg['arch']} with a {model_cfg['head']} head "
            f"and {num_classes} classes ({first_detail(error)})"
        ) from error
    return model, checkpoint.get("meta", {})
