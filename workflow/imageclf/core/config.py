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

from . import paths
from .errors import ConfigError
from .io_utils import write_json
from .metrics import SELECTABLE

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"

# The parts of the configuration that decide what a training run does (and nothing else),
# so a change elsewhere (say, the submission choice) does not retrain anything.
RUN_SECTIONS = ("model", "augment", "train")
# Settings that change how fast a run goes but never its results (the augmented data do not depend
# on the number of DataLoader workers: tests/test_resume.py), kept out of the run config so that
# changing them, say on moving to a bigger machine, retrains nothing. The train job gets them as
# arguments (execution_settings).
EXECUTION_ONLY = {"train": ("num_workers",)}
# Added by checks.checked_config, per variant: the normalisation of `augment.normalize: weights`
# ("normalize") and the download address of torchvision weights named by model.weights ("weights_url").
RESOLVED = "resolved"
# Checked before any job runs, never part of a run: raising the budget retrains nothing.
CHECK_ONLY = {"model": ("max_params",)}
# A run config's entry for the results versions past the first of the code that makes its model
# (run_results_versions); absent while every one is the first.
RESULTS_VERSIONS = "results_versions"


def augment_op_keys(after_resize: bool = False) -> tuple[str, ...]:
    """The augmentation ops' keys (those with an `enabled` switch) in the schema's order, which is
    the chain's: those before Resize, or with after_resize those after it (schema `x-after-resize`).
    augment.OPS implements each; tests/test_augment.py checks that the two agree."""
    ops = schema()["definitions"]["augment"]["properties"]
    return tuple(key for key, entry in ops.items()
                 if "enabled" in entry.get("properties", {}) and bool(entry.get("x-after-resize")) == after_resize)


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
        loaded = yaml.safe_load(handle)
    # select.metric's choices are the metrics declared in core/metrics.py, not a list of its own
    loaded["properties"]["select"]["properties"]["metric"]["enum"] = sorted(SELECTABLE)
    # every augmentation op the schema declares is required: an op is one entry, not two
    augment = loaded["definitions"]["augment"]
    augment["required"] = list(augment["properties"])
    return loaded


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
        raise ConfigError(f"invalid {where}:\n" + "\n".join(lines))


def is_demo(config: dict) -> bool:
    demo = config.get("demo") or {}
    root = demo.get("root")
    return bool(root) and Path(config["data"]["root"]) == Path(root)


def effective_config(config: dict) -> dict:
    """Validate the user's config, apply the demo overlay when data.root is the demo, and check
    that the names it uses (variants, seeds, ensembles) agree. Files and models it names are
    checked by checks.checked_config.

    Values that arrive as text (Snakemake's --config KEY='{epochs: 2}' gives '2') are taken as
    the type the schema asks for when they read as it."""
    config = typed(config, schema())
    validate(config)
    # `~/course_data` as a shell would read it (Snakemake hands config values over as they are)
    data = config["data"]
    config = {**config, "data": {**data, "root": os.path.expanduser(data["root"]),
                                 "test_labels": data["test_labels"] and os.path.expanduser(data["test_labels"])}}
    if is_demo(config):
        overlay = config["demo"].get("overlay") or {}
        validate(overlay, partial=True, prefix="demo.overlay")
        config = typed(deep_merge(config, overlay), schema())
        validate(config, where="config after the demo overlay")
    # `variants: {name: null}` in an overlay drops that variant (overlays can only add keys).
    # a variant's overlay read as the schema's types, as the sections themselves were (--config text)
    config = {**config, "variants": {k: typed(v, schema()) for k, v in config["variants"].items() if v is not None}}
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
        for name, spec in config["ensembles"].items() if spec is not None}}
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
    cv = config["cv"]
    if cv["folds"] == 1:
        raise ConfigError("cv.folds: 1 fold holds nothing out; use 0 (train on train/, select on val/) or 2 or more")
    if cv["full_fit"] and not cv["folds"]:
        raise ConfigError("cv.full_fit: needs cv.folds >= 2 (its epoch count is the folds' selected epochs)")
    if cv["submit"] == "full_fit" and not cv["full_fit"]:
        raise ConfigError("cv.submit: full_fit needs cv.full_fit: true (and cv.folds >= 2)")
    if cv["submit"] == "full_fit" and chosen is not None:
        raise ConfigError(f"cv.submit: full_fit submits one run's full fit, but submission.ensemble is '{chosen}' "
                          "(an ensemble submits its members' fold averages); set one of them back")
    for variant in config["variants"]:
        check_batches(variant_sections(config, variant)["train"], variant)
    check_exclusions(config)
    return config


def run_exclusion(config: dict, variant: str) -> dict | None:
    """data.exclude of one variant: the recipe's, with the variant's `data: {exclude: ...}` over it
    (null there: none); in canonical form. None: training leaves nothing out."""
    overlay = (config["variants"][variant] or {}).get("data") or {}
    exclude = overlay["exclude"] if "exclude" in overlay else config["data"].get("exclude")
    if exclude is None:
        return None
    if "exclude" in overlay and config["data"].get("exclude") and overlay["exclude"] is not None:
        exclude = deep_merge(config["data"]["exclude"], overlay["exclude"])
    return canonical(exclude, schema()["definitions"]["exclude"])


def audit_variant(config: dict) -> str:
    """The variant whose held-out predictions the label audit reads (audit.variant, or the reference)."""
    return (config.get("audit") or {}).get("variant") or config["ablation"]["reference"]


def check_exclusions(config: dict) -> None:
    """A variant's `data` overlay holds data.exclude alone (the data set is every variant's), and
    the audited run does not leave out the audit's own suspects (it would read its own output)."""
    for name, overlay in config["variants"].items():
        other = sorted(set((overlay or {}).get("data") or {}) - {"exclude"})
        if other:
            raise ConfigError(f"variants.{name}.data: only `exclude` may differ between variants, not {other}")
    source = audit_variant(config)
    if source not in config["variants"]:
        raise ConfigError(f"audit.variant '{source}' is not one of the variants {sorted(config['variants'])}")
    exclusion = run_exclusion(config, source)
    if exclusion is not None and Path(exclusion["file"]) == Path(paths.LABEL_ISSUES):
        raise ConfigError(f"audit.variant: '{source}' trains without the audit's own suspects ({paths.LABEL_ISSUES} "
                          "is its data.exclude.file), so the audit would read its own output; set audit.variant to "
                          "a variant without that exclusion")
    seed = (config.get("audit") or {}).get("seed")
    if seed is not None and seed not in config["seeds"]:
        raise ConfigError(f"audit.seed {seed} is not in seeds {config['seeds']}")


def conform(value, node: dict, leaf, sort_keys: bool):
    """`value` with `leaf(value, node)` applied to every scalar, walking the schema beside it."""
    while isinstance(node, dict) and "$ref" in node:
        node = resolve(node["$ref"])
    if not isinstance(node, dict):
        return value
    if isinstance(value, dict):
        properties, extra = node.get("properties", {}), node.get("additionalProperties")
        keys = sorted(value) if sort_keys else list(value)
        return {key: conform(value[key], properties.get(key, extra if isinstance(extra, dict) else {}), leaf, sort_keys)
                for key in keys}
    if isinstance(value, list):
        items = node.get("items", {})
        return [conform(item, items, leaf, sort_keys) for item in value]
    return leaf(value, node)


def canonical(value, node: dict, sort_keys: bool = True):
    """`value` in one canonical form: keys sorted, and every integer that the schema types as a
    number written as a float.

    Snakemake compares a job's params as text: so `mixup_alpha: 0` and `mixup_alpha: 0.0`, or the
    same keys in another order, give the same run config, the same params of its run_config job
    and the same config hash. An edit that keeps the meaning retrains nothing."""

    def as_float(scalar, leaf_node):
        if isinstance(scalar, int) and not isinstance(scalar, bool) and is_number_type(leaf_node):
            return float(scalar)
        return scalar

    return conform(value, node, as_float, sort_keys)


def typed(value, node: dict):
    """`value` with each text that the schema wants as a number, true/false or null read as YAML
    reads it, when that gives the wanted type (Snakemake's --config hands `{epochs: 2}` over with
    '2' as text); any other text stays as it is, for the validation to name."""

    def from_text(scalar, leaf_node):
        types = schema_types(leaf_node)
        if not isinstance(scalar, str) or "string" in types or not types:
            return scalar
        try:
            parsed = yaml.safe_load(scalar)
        except yaml.YAMLError:
            return scalar
        wanted = {"integer": int, "number": (int, float), "boolean": bool, "null": type(None)}
        fits = any(isinstance(parsed, wanted[t]) and not (t != "boolean" and isinstance(parsed, bool))
                   for t in types if t in wanted)
        return parsed if fits else scalar

    return conform(value, node, from_text, sort_keys=False)


def schema_types(node: dict) -> list[str]:
    """The JSON types a schema node allows, through oneOf/anyOf and $ref."""
    types = node.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    for sub in node.get("oneOf", []) + node.get("anyOf", []):
        types += schema_types(resolve(sub["$ref"]) if "$ref" in sub else sub)
    if "enum" in node:
        types += sorted({{bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}
                         .get(type(v), "string") for v in node["enum"]})
    return types


def is_number_type(node: dict) -> bool:
    return "number" in schema_types(node)


def resolve(ref: str) -> dict:
    node = schema()
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def run_config(config: dict, variant: str, seed: int) -> dict:
    """The complete configuration of one training run: recipe + variant overlay + seed."""
    if variant not in config["variants"]:
        raise ConfigError(f"unknown variant '{variant}'; known: {sorted(config['variants'])}")
    merged = variant_sections(config, variant)
    user = {key: value for key, value in config.items() if key != RESOLVED}
    merged = {section: typed(merged[section], schema()["properties"][section]) for section in RUN_SECTIONS}
    validate(deep_merge(user, merged), where=f"config of variant '{variant}'")
    normalize = config.get(RESOLVED, {}).get(variant, {}).get("normalize")
    if normalize:
        merged["augment"] = {**merged["augment"], "normalize": normalize}
    merged = canonical(merged, schema())
    merged["train"]["augment_on"] = resolved_augment_on(merged["train"])
    for section, keys in {**EXECUTION_ONLY, **CHECK_ONLY}.items():
        merged[section] = {key: value for key, value in merged[section].items() if key not in keys}
    # the results versions of the code that makes the model, past its first (core/stages.py)
    versions = run_results_versions(cache=merged["train"]["cache"])
    # data.exclude: part of a run only when it leaves images out, so other runs keep their identity
    exclude = run_exclusion(config, variant)
    return in_run_order({"variant": variant, "seed": int(seed), **merged, **({RESULTS_VERSIONS: versions} if versions else {}),
                         **({"data": {"exclude": exclude}} if exclude is not None else {})})


def run_results_versions(cache: bool) -> dict:
    """The results versions past the first of the stages that make a run's model: train, and
    cache when the run reads the decoded-image cache. Part of the run's identity, so bumping one
    retrains (and discards resume states: their config hash differs)."""
    from .stages import results_version

    stages = ("cache", "train") if cache else ("train",)
    return {stage: results_version(stage) for stage in stages if results_version(stage) > 1}


@functools.lru_cache(maxsize=1)
def neutral_values() -> dict:
    """{(section, key, ...): value} of every run key the schema gives an `x-neutral` value: keys
    added after the first release, at the value that reproduces what runs did before them."""
    found = {}

    def walk(node, path):
        while isinstance(node, dict) and "$ref" in node:
            node = resolve(node["$ref"])
        for key, entry in node.get("properties", {}).items():
            if isinstance(entry, dict) and "x-neutral" in entry:
                found[(*path, key)] = canonical(entry["x-neutral"], entry)
            walk(entry, (*path, key))

    for section in RUN_SECTIONS:
        walk(schema()["properties"][section], (section,))
    return found


def run_identity(run: dict) -> dict:
    """What a run means: its config with every key at its neutral value left out (and an empty
    results-versions entry). Two run configs that differ only by keys added later, at values that
    reproduce the old behaviour, or by key order or float spelling, have the same identity."""
    identity = canonical({key: value for key, value in run.items() if not (key == RESULTS_VERSIONS and not value)},
                         schema())
    for path, value in neutral_values().items():
        parent = identity
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and path[-1] in parent and parent[path[-1]] == value:
            del parent[path[-1]]
    return identity


def with_neutral_values(run: dict) -> dict:
    """A run config with each key it lacks at its neutral value: what every stage reads, so a
    config.json written before a key existed runs as it always did."""
    completed = copy.deepcopy(run)
    for path, value in neutral_values().items():
        parent = completed
        for key in path[:-1]:
            parent = parent.setdefault(key, {}) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            parent.setdefault(path[-1], copy.deepcopy(value))
    return completed


def in_run_order(run: dict) -> dict:
    """A run config in one order (variant, seed, then the rest, keys sorted at every level), the
    order every release wrote its run_config param in: Snakemake compares a param by its repr."""
    def ordered(value):
        if isinstance(value, dict):
            return {key: ordered(value[key]) for key in sorted(value)}
        if isinstance(value, list):
            return [ordered(item) for item in value]
        return value

    first = [key for key in ("variant", "seed") if key in run]
    return {**{key: run[key] for key in first},
            **{key: ordered(run[key]) for key in sorted(run) if key not in first}}


def run_config_param(run: dict, path) -> dict:
    """The run_config job's param, and what it writes: `run`, or the config.json already at
    `path` when it means the same (run_identity). So a key added at its neutral value leaves a
    finished run's config.json, its param and its config hash as they were: nothing reruns."""
    path = Path(path)
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            stored = None
        if isinstance(stored, dict) and run_identity(stored) == run_identity(run):
            return in_run_order(stored)
    return run


def gpu_visible() -> bool:
    """Whether this machine shows processes an NVIDIA GPU. Torch-free, as the Snakefile asks it
    while it builds the DAG (importing torch there would cost seconds on every dry run)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return any(Path("/dev").glob("nvidia[0-9]*"))


def resolved_augment_on(train: dict) -> str:
    """train.augment_on with `auto` decided where the run config is written: `device` for a run
    that trains on a GPU (train.device cuda, or auto with a GPU on this machine), `loader`
    otherwise. So a run's identity says which path made its data, and a CPU run stays the run it
    was before `auto` existed. Resources never decide it (they change no result): a cluster whose
    submitting machine has no GPU needs train.device: cuda (or augment_on: device) for it."""
    if train["augment_on"] != "auto":
        return train["augment_on"]
    device = train["device"]
    on_gpu = device == "cuda" or (device == "auto" and gpu_visible())
    return "device" if on_gpu else "loader"


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


def load_run_config(path: str | Path, as_written: bool = False) -> dict:
    """A run's config.json, with each key it lacks at its neutral value (with_neutral_values);
    as_written: the file's own content, which its config hash is of (run_config_hash)."""
    try:
        with open(path) as handle:
            run = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"cannot read run config {path}: {error}") from error
    if not isinstance(run, dict):
        raise ConfigError(f"cannot read run config {path}: not a JSON object")
    return run if as_written else with_neutral_values(run)


def run_config_hash(path: str | Path) -> str:
    """The config hash of a run's config.json as written: what training stamps on its checkpoints
    and resume state, and what select, predict, ensemble and submission check a model against. A
    config.json kept across an upgrade (run_config_param) keeps its hash, and so its models."""
    return config_hash(load_run_config(path, as_written=True))


def write_run_config(path: str | Path, run: dict) -> None:
    write_json(path, run)


def check_batches(tcfg: dict, variant: str, processes: int | None = None) -> None:
    """The batch rules of one run, over `processes` training processes (train.devices by
    default): train.batch_size divides evenly over them and leaves at least 2 images each, and
    train.accumulate_steps splits each process's batch into equal micro-batches of at least 2
    (BatchNorm in training mode needs two). The configuration check and training both ask."""
    processes = processes or tcfg["devices"]
    batch, where = tcfg["batch_size"], f"(variant '{variant}')"
    if batch % processes or batch // processes < 2:
        raise ConfigError(f"train.batch_size {where}: {batch} images over {processes} devices must divide evenly "
                          "and leave at least 2 per device; BatchNorm needs 2")
    steps, per_process = tcfg["accumulate_steps"], batch // processes
    if per_process % steps or per_process // steps < 2:
        raise ConfigError(
            f"train.accumulate_steps {where}: {steps} does not split the {per_process} images "
            f"per process of train.batch_size {batch} into equal micro-batches of at least 2 "
            "(BatchNorm needs 2); pick a divisor of the batch, at most half of it")
