import json
import os
import shlex
import sys
from pathlib import Path

# The package lives in workflow/imageclf: importable here, and by every job's
# `python -m imageclf STAGE` (jobs inherit this environment, on a cluster node too).
PACKAGE_DIR = os.path.join(workflow.basedir, "workflow")
sys.path.insert(0, PACKAGE_DIR)
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        p for p in (PACKAGE_DIR, os.environ.get("PYTHONPATH")) if p
    )
)

from imageclf.config import (
    ConfigError,
    effective_config,
    execution_settings,
    run_config,
    is_demo,
)  # noqa: E402
from imageclf.io_utils import write_json  # noqa: E402
from imageclf.cache import cache_mode  # noqa: E402

try:
    CFG = effective_config(config)
except ConfigError as error:
    raise WorkflowError(str(error))

CONDA_ENV = "../../envs/imageclf.yaml"
INDEX = "results/index"
RUN = "results/train/{variant}/seed{seed}"
PRED = "results/predict/{variant}/seed{seed}"
VARIANTS = list(CFG["variants"])
SEEDS = [int(s) for s in CFG["seeds"]]
DEMO_ROOT = (CFG.get("demo") or {}).get("root", "resources/demo")
# The predictions of the run that is submitted (submission.variant, submission.seed).
SUBMITTED_PRED = {
    split: expand(
        f"{PRED}/{split}.csv",
        variant=CFG["submission"]["variant"],
        seed=CFG["submission"]["seed"],
    )[0]
    for split in ("val", "test")
}
INDEX_FILES = {
    name: f"{INDEX}/{name}.csv"
    for name in ("train", "val", "test", "classes", "summary", "leaks")
}
REPORT_DIR = os.path.join(workflow.basedir, "workflow", "report")


def in_report(path, caption, category, **labels):
    """Mark an output for `snakemake --report`, with its caption from workflow/report/."""
    return report(
        path,
        caption=os.path.join(REPORT_DIR, f"{caption}.rst"),
        category=category,
        **labels,
    )


wildcard_constraints:
    variant="[A-Za-z0-9_.-]+",
    seed=r"\d+",


def stage_resources(stage):
    """threads, mem_mb, runtime (minutes) and gpu of a stage, from config `resources:`."""
    return CFG["resources"][stage]


def test_labels_input(wildcards=None):
    labels = CFG["data"]["test_labels"]
    return [labels] if labels else []


# Paths go into shell commands quoted by the params that hold them (a user's data folder may hold
# spaces), never by {x:q} in the command: Snakemake reruns a job whose command text changed, and
# everything after it, while a path without spaces quotes to itself.


def test_labels_flag(wildcards, input):
    """A params function: --test-labels PATH, quoted, or nothing."""
    if not input.test_labels:
        return ""
    return f"--test-labels {shlex.quote(str(input.test_labels))}"


def data_files(wildcards):
    """Every file of the data set, so any added, removed or changed image re-runs the index."""
    if is_demo(CFG):
        return rules.demo_data.output
    root = Path(CFG["data"]["root"])
    if not root.is_dir():
        raise WorkflowError(
            f"data.root: folder '{root}' does not exist; set data.root in config.yaml "
            "to a folder with train/<label>/, val/<label>/ and test/"
        )
    return sorted(
        str(path)
        for split in ("train", "val", "test")
        for path in (root / split).rglob("*")
        if path.is_file()
    )


def cache_inputs(wildcards, splits):
    """The decoded-image cache files a run reads (none when its train.cache is off)."""
    run = run_config(CFG, wildcards.variant, int(wildcards.seed))
    if not run["train"]["cache"]:
        return {}
    inputs = {}
    for split in splits:
        mode = cache_mode(
            run["augment"],
            split,
            run["train"]["cache_margin"],
            run["train"]["augment_on"],
        )
        stem = f"results/cache/{split}_{run['train']['image_size']}px_{mode}"
        inputs[f"{split}_cache_pixels"] = f"{stem}.npy"
        inputs[f"{split}_cache_meta"] = f"{stem}.csv"
    return inputs


def cache_flags(splits):
    """A params function: --<split>-cache PIXELS META for each cache among the inputs."""

    def flags(wildcards, input):
        return " ".join(
            f"--{split}-cache {input[split + '_cache_pixels']} {input[split + '_cache_meta']}"
            for split in splits
            if f"{split}_cache_pixels" in input.keys()
        )

    return flags


def input_dir(name):
    """A params function: the folder of input `name` (derived, so never hard-coded twice), quoted."""
    return lambda wildcards, input: shlex.quote(os.path.dirname(input[name]))


def output_dir(name):
    """A params function: the folder of output `name`, quoted."""
    return lambda wildcards, output: shlex.quote(os.path.dirname(output[name]))


def run_paths(pattern, variants=None, seeds=None):
    return expand(
        pattern,
        variant=variants or VARIANTS,
        seed=seeds if seeds is not None else SEEDS,
    )


def train_launcher(wildcards):
    """python for one device; torchrun (DistributedDataParallel) when train.devices > 1."""
    devices = run_config(CFG, wildcards.variant, int(wildcards.seed))["train"][
        "devices"
    ]
    if devices > 1:
        return f"torchrun --standalone --nproc_per_node {devices} -m imageclf"
    return "python -m imageclf"
