"""Configuration: validation against the JSON schema, demo overlay, per-variant run configs."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from pathlib import Path

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"

# The parts of the configuration that decide what a training run does (and nothing else),
# so a change elsewhere (say, the submission choice) does not retrain anything.
RUN_SECTIONS = ("model", "augment", "train")
# Settings that change how fast a run goes but never its results (the augmented data do not depend
# on the number of DataLoader workers: tests/test_resume.py), kept out of the run config so that
# changing them, say on moving to a bigger machine, retrains nothing. The train job gets them as
# arguments (execution_settings).
EXECUTION_ONLY = {"train": ("num_workers",)}
# The augmentation ops that run before Resize, in the reference order (presets.py builds them).
PRE_RESIZE_OP_KEYS = ("horizontal_flip", "vertical_flip", "rotation", "affine", "color_jitter", "rand_augment")


def op_enabled(augment: dict, key: str) -> bool:
    """Whether augmentation op `key` is switched on (absent means off)."""
    return bool(augment.get(key, {}).get("enabled", False))


class ConfigError(ValueError):
    """A configuration value is missing, misspelt or of the wrong type."""


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
def schema_validator() -> jsonschema.Draft202012Validator:
    with open(SCHEMA_PATH) as handle:
        return jsonschema.Draft202012Validator(yaml.safe_load(handle))


def validate(config: dict, where: str = "config") -> None:
    """Raise ConfigError naming the offending key (as a dotted path) and what is wrong."""
    errors = sorted(schema_validator().iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for error in errors:
            key = ".".join(str(part) for part in error.absolute_path) or "(top level)"
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


def effective_config(config: dict) -> dict:
    """Validate the user's config and apply the demo overlay when data.root is the demo."""
    validate(config)
    # `~/course_data` as a shell would read it (Snakemake hands config values over as they are)
    data = config["data"]
    config = {**config, "data": {**data, "root": os.path.expanduser(data["root"]),
                                 "test_labels": data["test_labels"] and os.path.expanduser(data["test_labels"])}}
    if is_demo(config):
        config = deep_merge(config, config["demo"].get("overlay") or {})
        validate(config, where="config after the demo overlay")
    # `variants: {name: null}` in an overlay drops that variant (overlays can only add keys).
    config = {**config, "variants": {k: v for k, v in config["variants"].items() if v is not None}}
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
    for variant in config["variants"]:
        check_weights_file(run_config(config, variant, config["seeds"][0])["model"]["weights"], variant)
    return config


def looks_like_path(weights: str) -> bool:
    return weights.endswith((".pth", ".pt")) or "/" in weights


def check_weights_file(weights: str, variant: str) -> None:
    """A weights file that is not there fails now, not after the index and the other runs."""
    if looks_like_path(weights) and not Path(weights).expanduser().is_file():
        raise ConfigError(
            f"model.weights (variant '{variant}'): file '{weights}' does not exist; give a path to a "
            "state dict, a torchvision weights name such as IMAGENET1K_V2, or none"
        )


def run_config(config: dict, variant: str, seed: int) -> dict:
    """The complete configuration of one training run: recipe + variant overlay + seed."""
    if variant not in config["variants"]:
        raise ConfigError(f"unknown variant '{variant}'; known: {sorted(config['variants'])}")
    merged = variant_sections(config, variant)
    validate(deep_merge(config, merged), where=f"config of variant '{variant}'")
    for section, keys in EXECUTION_ONLY.items():
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
