"""What is checked before any job runs, beyond the configuration's own rules (core/config.py): the
files the configuration names, the data folder's classes, and each variant's model and weights.

A model is built on PyTorch's meta device to check it (models/architectures.py); what was found is kept
in a small cache, so an up-to-date dry run imports neither torch nor torchvision. Nothing here
opens a network connection: weights that must be downloaded are fetched by the `weights` rule on
the submitting machine (models/weights.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .core.config import RESOLVED, effective_config, is_demo, run_exclusion, variant_sections
from .core.errors import ConfigError, DataError, WeightsError, unknown_architecture
from .core.io_utils import write_text
from .data import datafiles, demo, exclude, index
from .models.architectures import facts
from .models.weights import fit_problems, is_local_file, state_dict_of

log = logging.getLogger("imageclf.checks")

WARNED: set[str] = set()  # configuration warnings already given in this process


def warn_once(message: str) -> None:
    """A configuration warning, once per process however many variants share the cause."""
    if message not in WARNED:
        WARNED.add(message)
        log.warning(message)


def described(path) -> str:
    """A path as the user wrote it, with the folder a relative one was resolved against."""
    return f"'{path}'" if Path(path).is_absolute() else f"'{path}' (relative to {Path.cwd()})"


def checked_config(user: dict, cache_dir: str | Path | None = None) -> dict:
    """The effective configuration of the user's (config.effective_config), checked against the
    files and models it names; adds, per variant (config.RESOLVED), the normalisation of
    `augment.normalize: weights` and the download address of named torchvision weights.

    cache_dir: where facts about architectures and weights files are kept between runs."""
    config = effective_config(user)
    labels = config["data"]["test_labels"]
    if labels and not is_demo(config) and not Path(labels).is_file():  # the demo's is made by a rule
        raise ConfigError(f"data.test_labels: file {described(labels)} does not exist")
    check_exclusion_files(config)
    num_classes = count_classes(config)
    cache = Path(cache_dir) if cache_dir else None
    resolved = {}
    for variant in config["variants"]:
        merged = variant_sections(config, variant)
        resolved[variant] = check_model(merged, variant, num_classes, cache)
    return {**config, RESOLVED: resolved}


def check_exclusion_files(config: dict) -> None:
    """Each data.exclude file exists, or is the label audit's, which the workflow makes."""
    for variant in config["variants"]:
        spec = run_exclusion(config, variant)
        if spec is None or Path(spec["file"]) == Path(exclude.AUDIT_ISSUES):
            continue
        key = "exclude" in ((config["variants"][variant] or {}).get("data") or {})
        where = f"variants.{variant}.data.exclude" if key else "data.exclude"
        if not Path(spec["file"]).is_file():
            raise ConfigError(f"{where}.file: file {described(spec['file'])} does not exist (a CSV with an `image` "
                              f"column, or {exclude.AUDIT_ISSUES}, which the audit stage writes)")
        try:  # its format and the columns its filters need, before any job
            exclude.listed_images(spec)
        except DataError as error:
            raise ConfigError(f"{where}: {error}") from None


def count_classes(config: dict) -> int:
    """The classes the index will find: class folders under data.root/train/, listed by the
    index's own rules (the demo's ten digits before its folder is made)."""
    root = Path(config["data"]["root"])
    if is_demo(config):
        return len(index.class_folders(root)) or demo.NUM_CLASSES
    try:
        index.require_root(root)
    except DataError as error:
        raise ConfigError(str(error)) from None
    classes = index.class_folders(root)
    if not classes:
        raise ConfigError(f"data.root: {root / 'train'} has no class folders (train/<label>/ with images)")
    return len(classes)


def check_model(merged: dict, variant: str, num_classes: int, cache: Path | None) -> dict:
    """Refuse, before any job runs, a model the recipe cannot train: an unknown architecture, a
    head it cannot take, an image size it rejects, more parameters than model.max_params, or
    weights it cannot use. Warn about known traps. Returns what the run needs resolved: the
    normalisation of augment.normalize 'weights' (else None) and the download address of named
    torchvision weights (else None)."""
    model, size = merged["model"], merged["train"]["image_size"]
    where = f"(variant '{variant}')"
    found = facts(model["arch"], model["head"], model["mlp_hidden"], num_classes, size,
                  cache / "architectures.json" if cache else None)
    if not found["known"]:
        raise ConfigError(f"{unknown_architecture(model['arch'], found['architectures'])} {where}")
    if found["head_error"]:
        raise ConfigError(f"model.head {where}: {found['head_error']}")
    if found["size_error"]:
        raise ConfigError(f"train.image_size {where}: {model['arch']} does not take {size} x {size} images "
                          f"({found['size_error']}); it was built for {found['built_size']} px")
    if found["parameters"] > model["max_params"]:
        raise ConfigError(f"model.max_params {where}: {model['arch']} with a {model['head']} head for "
                          f"{num_classes} classes has {found['parameters']:,} parameters, over the budget of "
                          f"{model['max_params']:,}")
    if size * 4 <= found["built_size"]:
        warn_once(f"train.image_size: {size} px is far below the {found['built_size']} px {model['arch']} was "
                  f"built for; its last feature map is about {max(1, size // 32)} x {max(1, size // 32)}. "
                  "Upsampling small images may help (README: Beyond the recipe).")
    if model["weights"].lower() == "none" and model["arch"].startswith("mobilenet_v3"):
        warn_once(f"model: {model['arch']} from scratch keeps torchvision's BatchNorm momentum of 0.01, so its "
                  "running statistics lag for many epochs: eval accuracy can sit at chance while the train "
                  "loss falls (README: Beyond the recipe).")
    check_weights(model["arch"], model["weights"], variant, found["weights"], cache)
    url = found["weights"].get(model["weights"]) if not is_local_file(model["weights"]) else None
    if merged["augment"]["normalize"] != "weights":
        return {"normalize": None, "weights_url": url}
    if url is None:
        raise ConfigError(f"augment.normalize {where}: 'weights' needs model.weights to be a torchvision "
                          f"weights name of {model['arch']} ({sorted(found['weights'])}), not '{model['weights']}'")
    return {"normalize": {"mean": found["mean"], "std": found["std"]}, "weights_url": url}


def check_weights(arch: str, weights: str, variant: str, names: dict, cache: Path | None) -> None:
    """Fail now, not after the index and other runs, on weights that cannot be used: a file that
    is not there or does not fit the architecture, a name the architecture lacks.

    names: the architecture's weights names and their download addresses. Whether a named file
    can be downloaded is the `weights` rule's to find out: reading the configuration never
    touches the network."""
    if weights.lower() == "none":
        return
    where = f"model.weights (variant '{variant}')"
    if is_local_file(weights):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"{where}: file {described(weights)} does not exist; give a path to a state "
                              "dict, a torchvision weights name such as IMAGENET1K_V2, or none")
        problems = local_file_problems(arch, path, cache)
        if problems:
            raise ConfigError(f"{where}: {path} does not fit {arch}: {'; '.join(problems)}")
        return
    if weights not in names:
        raise ConfigError(f"{where}: {arch} has no weights '{weights}'; its weights are {sorted(names)}, "
                          "or give a .pth file, or none")


def local_file_problems(arch: str, path: Path, cache: Path | None) -> list[str]:
    """Why a local weights file does not load into `arch` (empty when it does), remembered per
    file version in cache/weights.json so that a dry run does not load it again."""
    info = path.stat()
    key = "|".join([arch, str(path.resolve()), *map(str, datafiles.signature(info))])
    stored = {}
    if cache is not None:
        try:
            stored = json.loads((cache / "weights.json").read_text())
        except (OSError, ValueError):
            stored = {}
        if key in stored:
            return stored[key]
    problems = measure_fit(arch, path)
    if cache is not None:
        stored = {k: v for k, v in stored.items() if not k.startswith(f"{arch}|{path.resolve()}|")}
        stored[key] = problems
        write_text(cache / "weights.json", json.dumps(stored, indent=1, sort_keys=True) + "\n")
    return problems


def measure_fit(arch: str, path: Path) -> list[str]:
    import torch

    from .models import factory  # imports torch: only when the facts are not cached (no import cycle)

    try:
        state = state_dict_of(factory.load_checkpoint_file(path), str(path))
    except WeightsError as error:
        return [str(error).removeprefix(f"{path}: ")]
    with torch.device("meta"):
        model = factory.backbone(arch)
    classifier, _ = factory.final_classifier(model)
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    return fit_problems(state, expected, (classifier + ".", *factory.AUX_PREFIXES))
