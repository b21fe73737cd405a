"""A model always matches its configuration: the config hash a checkpoint was trained under
(its meta's `config_hash`, written by training) against the hash of the run's config.json.

select, predict, ensemble and submission ask before they use a model. The workflow's rules keep
the two in step (select depends on config.json); this check catches whatever else goes wrong: a
model copied by hand, `snakemake --touch`, a narrowed `--rerun-triggers`.
"""

from __future__ import annotations

from pathlib import Path

from .config import run_config_hash
from .errors import WeightsError


def stored_config_hash(model_path) -> str | None:
    """The config hash in a checkpoint's meta (None when it has none), read without the weights'
    bytes: torch.load with mmap and weights_only=True."""
    import torch

    path = Path(model_path)
    if not path.is_file():
        raise WeightsError(f"{path}: file does not exist")
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a file in torch's legacy format cannot be memory-mapped
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise WeightsError(f"{path}: not a loadable checkpoint ({detail})") from error
    meta = checkpoint.get("meta") if isinstance(checkpoint, dict) else None
    return meta.get("config_hash") if isinstance(meta, dict) else None


def retrain_command(model_path) -> str:
    """The command that makes `model_path` again under the current configuration: its training
    rule forced (a full fit's model.pt is written by rule full_fit, any other by select after train)."""
    rule = "full_fit" if Path(model_path).parent.name == "full" else "train"
    return f"snakemake {model_path} --forcerun {rule} (with your usual --cores and --configfile), then your target"


def check_model_config(model_path, run_config_path) -> str:
    """Refuse a model trained under another configuration than `run_config_path`'s, in one line
    naming both hashes and the command that fixes it; returns the hash."""
    return check_meta_config(model_path, stored_config_hash(model_path), run_config_path)


def check_meta_config(model_path, stored: str | None, run_config_path) -> str:
    """check_model_config for a checkpoint whose meta the caller has loaded: stored is its
    config_hash (None when it has none)."""
    current = run_config_hash(run_config_path)
    if stored != current:
        raise WeightsError(
            f"{model_path}: trained under config hash {stored or 'none (no config_hash in its meta)'}, but "
            f"{run_config_path} has config hash {current}: a stale model is never used; retrain it: "
            f"{retrain_command(model_path)}")
    return current


def check_models(models: list, run_configs: list) -> None:
    """check_model_config for each (model, run config) pair, in order."""
    if len(models) != len(run_configs):
        raise WeightsError(f"{len(models)} model(s) but {len(run_configs)} run config(s): give one run config per model")
    for model, run_config in zip(models, run_configs):
        check_model_config(model, run_config)
