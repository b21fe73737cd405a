"""Pretrained weights as files of the workflow.

`model.weights` is a torchvision weights name (`IMAGENET1K_V2`, `DEFAULT`), a local checkpoint
file (`.pth`, `.pt`, or any path), or `none`. Either way training reads a file that Snakemake
knows as an input:
- a weights name: the `weights` rule, which runs on the submitting machine, finds the file in the
  torch hub cache or downloads it there, and links it to `results/weights/<file>`, so that no
  compute node ever downloads;
- a local file: its content digest (a stamp rewritten only when the content changes), so that
  replacing the file retrains the variants that use it and a `touch` retrains nothing.

This module has no torch at import time: the configuration is read without it.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import shutil
from pathlib import Path

from ..core.errors import WeightsError
from ..core.io_utils import atomic_path
from ..core.logs import add_log_argument, setup_logging

log = logging.getLogger("imageclf.weights")

# What this stage writes, as a version: raised by a change that alters its outputs, and by nothing else
# (core/stages.py). Raising it reruns this stage and everything downstream, on every project.
RESULTS_VERSION = 1

# The layouts other tools save a state dict in: {"state_dict": ...} (Lightning, timm's training/train.py),
# {"model": ...} (torchvision's references, this workflow's checkpoints), {"model_state_dict": ...}.
STATE_KEYS = ("state_dict", "model", "model_state_dict")
# Prefixes a wrapper adds to every key: DistributedDataParallel/DataParallel ("module."),
# Lightning's attribute name ("model."), torch.compile ("_orig_mod.").
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def is_local_file(weights: str) -> bool:
    """Whether model.weights names a file rather than torchvision weights or none."""
    return weights.endswith((".pth", ".pt")) or "/" in weights


def hub_checkpoints() -> Path:
    """torch.hub's download folder, found as torch.hub.get_dir() finds it (without importing torch)."""
    if os.environ.get("TORCH_HOME"):
        home = Path(os.path.expanduser(os.environ["TORCH_HOME"]))
    else:
        home = Path(os.path.expanduser(os.environ.get("XDG_CACHE_HOME", "~/.cache"))) / "torch"
    return home / "hub" / "checkpoints"


def file_name(url: str) -> str:
    """The file name torchvision's download gives the weights at `url` (resnet50-11ad3fa6.pth)."""
    return os.path.basename(url)


def not_downloaded_message(url: str, folder: Path, why: str) -> str:
    """The one message for weights this machine does not have and cannot get."""
    name = file_name(url)
    return (f"weights file {name} is not in {folder}/ and {why}. Download {url} where there is "
            f"internet and put it in {folder}/ (or set TORCH_HOME), or set model.weights to a local "
            ".pth file or none")


def fetch(url: str, out: str | Path) -> None:
    """Put torchvision's weights file for `url` at `out`: from the torch hub cache, downloading it
    there first when it is absent (checked against the hash in its name, as torchvision does).
    Linked when the file systems allow it, else copied."""
    folder = hub_checkpoints()
    cached = folder / file_name(url)
    if not cached.is_file():
        import torch.hub

        folder.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s into %s", url, folder)
        match = re.search(r"-([a-f0-9]+)\.", file_name(url))
        try:
            torch.hub.download_url_to_file(url, str(cached), hash_prefix=match.group(1) if match else None,
                                           progress=False)
        except (OSError, RuntimeError) as error:  # URLError is an OSError; a bad hash a RuntimeError
            raise WeightsError(not_downloaded_message(url, folder, f"the download failed ({error})")) from None
    else:
        log.info("found %s in the torch hub cache", cached)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        try:
            os.link(cached, tmp)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(cached, tmp)  # keeps the download's time, so finished runs stay up to date
    log.info("weights in place: %s", out)


def stamp_name(path: str | Path) -> str:
    """The stamp file of a local weights file: its name and a hash of its absolute path, so two
    files of the same name in different folders get different stamps."""
    absolute = str(Path(path).expanduser().resolve())
    return f"{Path(path).name}.{hashlib.sha256(absolute.encode()).hexdigest()[:8]}.sha256"


def state_dict_of(loaded, where: str) -> dict:
    """The state dict inside a loaded checkpoint, whatever common layout it was saved in (a bare
    state dict, {"state_dict": ...}, {"model": ...}), with wrapper prefixes (`module.`) removed."""
    state = loaded
    for _ in range(2):  # {"model": {"state_dict": ...}} seen in the wild
        if isinstance(state, dict):
            inner = next((state[key] for key in STATE_KEYS if isinstance(state.get(key), dict)), None)
            if inner is not None and not is_tensor_mapping(state):
                state = inner
    if not isinstance(state, dict) or not state or not is_tensor_mapping(state):
        raise WeightsError(f"{where}: not a state dict (a mapping of parameter names to tensors, bare or under "
                           f"one of the keys {list(STATE_KEYS)})")
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix):]: value for key, value in state.items()}
                changed = True
    return state


def is_tensor_mapping(state: dict) -> bool:
    import torch

    return all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items())


def fit_problems(state: dict, expected: dict, skip_prefixes: tuple[str, ...]) -> list[str]:
    """What keeps `state` from loading into a model whose state dict has `expected` shapes
    ({name: shape}): missing and unexpected keys and shape mismatches, outside `skip_prefixes`
    (the classifier the head replaces). Empty when it fits."""
    names = {k for k in expected if not k.startswith(skip_prefixes)}
    given = {k for k in state if not k.startswith(skip_prefixes)}
    missing, unexpected = sorted(names - given), sorted(given - names)
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k])}" for k in sorted(names & given)
             if tuple(state[k].shape) != tuple(expected[k])]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            problems.append(f"{what} {len(keys)}: {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}")
    return problems


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="imageclf weights", description=fetch.__doc__)
    parser.add_argument("--url", required=True, help="the torchvision weights' download address")
    parser.add_argument("--out", required=True, help="where to put the file")
    add_log_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_file)
    fetch(args.url, args.out)
