"""The classifier: a torchvision ResNet backbone with an MLP or linear head."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision
from torch import nn

from .config import looks_like_path
from .errors import WeightsError

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
            f"it: {str(error).splitlines()[0]})"
        ) from error


def backbone_state_dict(weights: str) -> dict | None:
    """State dict for the backbone named by model.weights, or None for 'none'."""
    if weights.lower() == "none":
        return None
    if looks_like_path(weights):
        state = load_checkpoint_file(weights)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise WeightsError(f"{weights}: not a state dict (a mapping of names to tensors)")
        return state
    return None


def build_model(arch: str, num_classes: int, head: str = "mlp", weights: str = "none",
                mlp_hidden: int = 512, dropout: float = 0.5) -> nn.Module:
    """A torchvision ResNet with pretrained weights loaded, then its fc replaced by our head."""
    builder = getattr(torchvision.models, arch)
    model = builder(weights=None)
    if weights.lower() != "none":
        local = backbone_state_dict(weights)
        if local is None:  # a torchvision weights name, e.g. IMAGENET1K_V2
            try:
                enum = torchvision.models.get_model_weights(arch)[weights]
            except KeyError as error:
                raise WeightsError(
                    f"model.weights '{weights}' is neither a file nor a torchvision weights name "
                    f"for {arch} ({[w.name for w in torchvision.models.get_model_weights(arch)]})"
                ) from error
            log.info("loading %s weights %s (torch hub cache: %s)", arch, weights, torch.hub.get_dir())
            try:
                local = enum.get_state_dict(progress=False, check_hash=True, weights_only=True)
            except OSError as error:  # URLError included: no internet on this node
                folder = Path(torch.hub.get_dir()) / "checkpoints"
                raise WeightsError(
                    f"model.weights {weights}: cannot download {enum.url} ({error}); download "
                    f"{Path(enum.url).name} where there is internet and put it in {folder}/") from error
        backbone = {k: v for k, v in local.items() if not k.startswith("fc.")}
        try:
            missing, unexpected = model.load_state_dict(backbone, strict=False)
        except RuntimeError as error:  # tensors of the wrong shape
            raise WeightsError(f"model.weights '{weights}' does not fit {arch}: {first_detail(error)}") from error
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise WeightsError(
                f"model.weights '{weights}' does not fit {arch}: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}"
            )
    model.fc = build_head(model.fc.in_features, num_classes, head, mlp_hidden, dropout)
    return model


def model_from_config(model_cfg: dict, num_classes: int, pretrained: bool = True) -> nn.Module:
    return build_model(
        model_cfg["arch"], num_classes, head=model_cfg["head"],
        weights=model_cfg["weights"] if pretrained else "none",
        mlp_hidden=model_cfg["mlp_hidden"], dropout=model_cfg["dropout"],
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
