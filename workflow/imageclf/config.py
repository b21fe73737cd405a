"""Configuration: validation against the JSON schema, demo overlay, per-variant run configs."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
from pathlib import Path

import jsonschema
import yaml

from .errors import ConfigError

log = logging.getLogger("imageclf.config")

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"

# The parts of the configuration that decide what a training run does (and nothing else),
# so a change elsewhere (say, the submission choice) does not retrain anything.
RUN_SECTIONS = ("model", "augment", "train")
# Settings that change how fast a run goes but never its results (the augmented data do not depend
# on the number of DataLoader workers: tests/test_resume.py), kept out of the run config so that
# changing them, say on moving to a bigger machine, retrains nothing. The train job gets them as
# arguments (execution_settings).
EXECUTION_ONLY = {"train": ("num_workers",)}
# Added by effective_config: per variant, the normalisation of `augment.normalize: weights`.
RESOLVED = "resolved_normalize"
# Checked before any job runs, never part of a run: raising the budget retrains nothing.
CHECK_ONLY = {"model": ("max_params",)}
# The augmentation ops that run before Resize, in the reference order (presets.py builds them).
PRE_RESIZE_OP_KEYS = ("horizontal_flip", "vertical_flip", "rotation", "affine", "color_jitter", "rand_augment")


def op_enabled(augment: dict, key: str) -> bool:
    """Whether augmentation op `key` is switched on (absent means off)."""
    return bool(augment.get(key, {}).get("enabled", False))


def deep_merge(base: dict, overlay: dict) -> dict:
    """Return `base` with `overlay` merged in: nested dicts merge, everything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in (overlay or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    with open(SCHEMA_PATH) as handle:
        return yaml.safe_load(handle)


def without_required(node):
    """The schema with every `required` list dropped: what an overlay (a variant, the demo's) is
    checked against, since it names only the keys it changes."""
    if isinstance(node, dict):
        return {key: without_required(value) for key, value in node.items() if key != "required"}
    if isinstance(node, list):
        return [without_required(value) for value in node]
    return node


@functools.lru_cache(maxsize=2)
def schema_validator(partial: bool = False) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(without_required(schema()) if partial else schema())


def dotted(path, prefix: str = "") -> str:
    return ".".join([prefix, *map(str, path)] if prefix else map(str, path))


def validate(config: dict, where: str = "config", partial: bool = False, prefix: str = "") -> None:
    """Raise ConfigError naming the offending key (as a dotted path) and what is wrong.

    partial: an overlay, which may leave keys out. prefix: where the overlay sits (variants.no_mlp)."""
    errors = sorted(schema_validator(partial).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for error in errors:
            if error.validator == "required":
                missing = [name for name in error.validator_value if name not in error.instance]
                for name in missing:
                    lines.append(f"  {dotted([*error.absolute_path, name], prefix)}: missing (a required key; "
                                 "config.yaml in the repository has every key with its default)")
                continue
            key = dotted(error.absolute_path, prefix) or "(top level)"
            lines.append(f"  {key}: {error.message}")
        if any(error.validator == "type" and isinstance(error.instance, str) and len(error.absolute_path) > 1
               for error in errors):
            # Snakemake parses a --config value with YAML's base loader: inside a dict, 2 stays '2'.
            lines.append("  (a number or true/false in quotes: values inside a --config KEY='{...}' dict "
                         "arrive as text; put them in a --configfile YAML instead)")
        raise ConfigError(f"invalid {where}:\n" + "\n".join(lines))


def is_demo(config: dict) -> bool:
    demo = config.get("demo") or {}
    root = demo.get("root")
    return bool(root) and Path(config["data"]["root"]) == Path(root)


def effective_config(config: dict, cache_dir: str | Path | None = None) -> dict:
    """Validate the user's config, apply the demo overlay when data.root is the demo, and check
    what can be checked before any job runs (variants, models, weights, files named in the config).

    cache_dir: where facts about architectures are kept between runs (architectures.py)."""
    validate(config)
    # `~/course_data` as a shell would read it (Snakemake hands config values over as they are)
    data = config["data"]
    config = {**config, "data": {**data, "root": os.path.expanduser(data["root"]),
                                 "test_labels": data["test_labels"] and os.path.expanduser(data["test_labels"])}}
    if is_demo(config):
        overlay = config["demo"].get("overlay") or {}
        validate(overlay, partial=True, prefix="demo.overlay")
        config = deep_merge(config, overlay)
        validate(config, where="config after the demo overlay")
    # `variants: {name: null}` in an overlay drops that variant (overlays can only add keys).
    config = {**config, "variants": {k: v for k, v in config["variants"].items() if v is not None}}
    for name, overlay in config["variants"].items():
        validate(overlay, where=f"variant '{name}'", partial=True, prefix=f"variants.{name}")
    config = canonical(config, schema(), sort_keys=False)  # the user's order of variants stays
    if not config["variants"]:
        raise ConfigError("variants: every variant was removed; keep at least one")
    if config["submission"]["variant"] not in config["variants"]:
        raise ConfigError(
            f"submission.variant '{config['submission']['variant']}' is not one of the "
            f"variants {sorted(config['variants'])}"
        )
    if config["submission"]["seed"] not in config["seeds"]:
        raise ConfigError(
            f"submission.seed {config['submission']['seed']} is not in seeds {config['seeds']}"
        )
    if config["ablation"]["reference"] not in config["variants"]:
        raise ConfigError(
            f"ablation.reference '{config['ablation']['reference']}' is not one of the "
            f"variants {sorted(config['variants'])}"
        )
    config = {**config, "ensembles": {
        name: {"variants": spec["variants"], "seeds": spec.get("seeds") or config["seeds"],
               "tta": spec["tta"] if spec.get("tta") is not None else config["predict"]["tta"]}
        for name, spec in (config.get("ensembles") or {}).items() if spec is not None}}
    for name, spec in config["ensembles"].items():
        unknown = [v for v in spec["variants"] if v not in config["variants"]]
        if unknown:
            raise ConfigError(f"ensembles.{name}.variants: {unknown} are not variants ({sorted(config['variants'])})")
        missing = [s for s in spec["seeds"] if s not in config["seeds"]]
        if missing:
            raise ConfigError(f"ensembles.{name}.seeds: {missing} are not in seeds {config['seeds']}")
        if name in config["variants"]:
            raise ConfigError(f"ensembles.{name}: a variant has this name too; give the ensemble another")
    chosen = config["submission"]["ensemble"]
    if chosen is not None and chosen not in config["ensembles"]:
        raise ConfigError(f"submission.ensemble '{chosen}' is not one of the ensembles {sorted(config['ensembles'])}")
    labels = config["data"]["test_labels"]
    if labels and not is_demo(config) and not Path(labels).is_file():  # the demo's is made by a rule
        raise ConfigError(f"data.test_labels: file {described(labels)} does not exist")
    num_classes = count_classes(config)
    cache = Path(cache_dir) / "architectures.json" if cache_dir else None
    resolved = {}
    for variant in config["variants"]:
        merged = variant_sections(config, variant)
        if merged["train"]["batch_size"] // merged["train"]["devices"] < 2:
            raise ConfigError(
                f"train.batch_size (variant '{variant}'): {merged['train']['batch_size']} images over "
                f"{merged['train']['devices']} devices leaves fewer than 2 per device; BatchNorm needs 2")
        check_micro_batches(merged["train"], merged["train"]["devices"], variant)
        resolved[variant] = check_model(merged, variant, num_classes, cache)
    # augment.normalize: weights -> the mean and std of the variant's weights (a run config is concrete)
    return {**config, RESOLVED: resolved}


def count_classes(config: dict) -> int:
    """Class folders under data.root/train (the report's 100 while the folder is not there yet)."""
    train = Path(config["data"]["root"]) / "train"
    try:
        return sum(1 for entry in train.iterdir() if entry.is_dir() and not entry.name.startswith(".")) or 100
    except OSError:
        return 100


WARNED: set[str] = set()  # configuration warnings already given in this process


def warn_once(message: str) -> None:
    """A configuration warning, once per process however many variants share the cause."""
    if message not in WARNED:
        WARNED.add(message)
        log.warning(message)


def check_model(merged: dict, variant: str, num_classes: int, cache) -> dict | None:
    """Refuse, before any job runs, a model the recipe cannot train: an unknown architecture, a
    head it cannot take, an image size it rejects, more parameters than model.max_params, or
    weights that cannot be had. Warn about known traps. Returns the normalisation to use when
    augment.normalize is 'weights' (else None)."""
    from .architectures import facts

    model, size = merged["model"], merged["train"]["image_size"]
    where = f"(variant '{variant}')"
    found = facts(model["arch"], model["head"], model["mlp_hidden"], num_classes, size, cache)
    if not found["known"]:
        raise ConfigError(f"model.arch {where}: '{model['arch']}' is not a torchvision classification model; "
                          f"choose one of {found['architectures']}")
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
    check_weights(model["arch"], model["weights"], variant, found["weights"])
    normalize = merged["augment"]["normalize"]
    if normalize == "weights":
        if model["weights"] not in found["weights"]:
            raise ConfigError(f"augment.normalize {where}: 'weights' needs model.weights to be a torchvision "
                              f"weights name of {model['arch']} ({sorted(found['weights'])}), not '{model['weights']}'")
        return {"mean": found["mean"], "std": found["std"]}
    return None


def described(path) -> str:
    """A path as the user wrote it, with the folder a relative one was resolved against."""
    return f"'{path}'" if Path(path).is_absolute() else f"'{path}' (relative to {Path.cwd()})"


def canonical(value, node: dict, sort_keys: bool = True):
    """`value` in one canonical form: keys sorted, and every integer that the schema types as a
    number written as a float.

    Snakemake compares a job's params as text: so `mixup_alpha: 0` and `mixup_alpha: 0.0`, or the
    same keys in another order, give the same run config, the same params of its run_config job
    and the same config hash. An edit that keeps the meaning retrains nothing."""
    while isinstance(node, dict) and "$ref" in node:
        node = resolve(node["$ref"])
    if not isinstance(node, dict):
        return value
    if isinstance(value, dict):
        properties, extra = node.get("properties", {}), node.get("additionalProperties")
        keys = sorted(value) if sort_keys else list(value)
        return {key: canonical(value[key], properties.get(key, extra if isinstance(extra, dict) else {}), sort_keys)
                for key in keys}
    if isinstance(value, list):
        items = node.get("items", {})
        return [canonical(item, items, sort_keys) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and is_number_type(node):
        return float(value)
    return value


def is_number_type(node: dict) -> bool:
    types = node.get("type")
    types = [types] if isinstance(types, str) else (types or [])
    if "number" in types:
        return True
    return any(is_number_type(resolve(sub["$ref"]) if "$ref" in sub else sub)
               for sub in node.get("oneOf", []) + node.get("anyOf", []))


def resolve(ref: str) -> dict:
    node = schema()
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def looks_like_path(weights: str) -> bool:
    return weights.endswith((".pth", ".pt")) or "/" in weights


def hub_checkpoints() -> Path:
    """torch.hub's download folder, found as torch.hub.get_dir() finds it (without importing torch)."""
    if os.environ.get("TORCH_HOME"):
        home = Path(os.path.expanduser(os.environ["TORCH_HOME"]))
    else:
        home = Path(os.path.expanduser(os.environ.get("XDG_CACHE_HOME", "~/.cache"))) / "torch"
    return home / "hub" / "checkpoints"


def check_weights(arch: str, weights: str, variant: str, names: dict) -> None:
    """Fail now, not after the index and other runs, on weights that cannot be had: a file that
    is not there, a name the architecture lacks, a download this machine cannot make.

    names: the architecture's weights names and their download addresses."""
    if weights.lower() == "none":
        return
    if looks_like_path(weights):
        if not Path(weights).expanduser().is_file():
            raise ConfigError(
                f"model.weights (variant '{variant}'): file {described(weights)} does not exist; give a path "
                "to a state dict, a torchvision weights name such as IMAGENET1K_V2, or none")
        return
    if weights not in names:
        raise ConfigError(f"model.weights (variant '{variant}'): {arch} has no weights '{weights}'; "
                          f"its weights are {sorted(names)}, or give a .pth file, or none")
    url = names[weights]
    folder = hub_checkpoints()
    filename = os.path.basename(url)
    if (folder / filename).is_file() or can_reach(url):
        return
    raise ConfigError(
        f"model.weights (variant '{variant}'): {arch} weights {weights} are not downloaded yet "
        f"({folder / filename} is absent) and {url} cannot be reached from this machine. Download "
        f"{filename} where there is internet and put it in {folder}/ (or set TORCH_HOME), or give a "
        "local .pth file, or none")


def can_reach(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the URL's host opens (no data is fetched)."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def run_config(config: dict, variant: str, seed: int) -> dict:
    """The complete configuration of one training run: recipe + variant overlay + seed."""
    if variant not in config["variants"]:
        raise ConfigError(f"unknown variant '{variant}'; known: {sorted(config['variants'])}")
    merged = variant_sections(config, variant)
    user = {key: value for key, value in config.items() if key != RESOLVED}
    validate(deep_merge(user, merged), where=f"config of variant '{variant}'")
    normalize = config.get(RESOLVED, {}).get(variant)
    if normalize:
        merged["augment"] = {**merged["augment"], "normalize": normalize}
    merged = canonical(merged, schema())
    for section, keys in {**EXECUTION_ONLY, **CHECK_ONLY}.items():
        merged[section] = {key: value for key, value in merged[section].items() if key not in keys}
    return {"variant": variant, "seed": int(seed), **merged}


def variant_sections(config: dict, variant: str) -> dict:
    """The run sections of the recipe with the variant's overlay merged in."""
    base = {section: config[section] for section in RUN_SECTIONS}
    return deep_merge(base, config["variants"][variant])


def execution_settings(config: dict, variant: str) -> dict:
    """The EXECUTION_ONLY settings of one variant, e.g. {"num_workers": 2}."""
    merged = variant_sections(config, variant)
    return {key: merged[section][key] for section, keys in EXECUTION_ONLY.items() for key in keys}


def config_hash(config: dict) -> str:
    """A stable hash of a JSON-serialisable config (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_run_config(path: str | Path) -> dict:
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"cannot read run config {path}: {error}") from error


def write_run_config(path: str | Path, run: dict) -> None:
    from .io_utils import write_json

    write_json(path, run)


def check_micro_batches(tcfg: dict, processes: int, where: str) -> None:
    """train.accumulate_steps must split each process's batch into equal micro-batches of at least
    2 images (BatchNorm in training mode needs two)."""
    steps, per_process = tcfg["accumulate_steps"], tcfg["batch_size"] // processes
    if per_process % steps or per_process // steps < 2:
        raise ConfigError(
            f"train.accumulate_steps (variant '{where}'): {steps} does not split the {per_process} images "
            f"per process of train.batch_size {tcfg['batch_size']} into equal micro-batches of at least 2 "
            "(BatchNorm needs 2); pick a divisor of the batch, at most half of it")
