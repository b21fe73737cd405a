import shlex
import os
from pathlib import Path

# The workflow's logic is the installed `imageclf` package (pyproject.toml; `pip install -e .`).
from imageclf.config import (
    ConfigError,
    effective_config,
    execution_settings,
    is_demo,
    run_config,
    write_run_config,
)
from imageclf.cache import cache_mode
from imageclf.datafiles import update_stamp

try:
    CFG = effective_config(config, cache_dir=".snakemake/imageclf")
except ConfigError as error:
    raise WorkflowError(str(error))

CONDA_ENV = "../../envs/imageclf.yaml"
INDEX = "results/index"
RUN = "results/train/{variant}/seed{seed}"
PRED = "results/predict/{variant}/seed{seed}"
VARIANTS = list(CFG["variants"])
SEEDS = [int(s) for s in CFG["seeds"]]
DEMO_ROOT = (CFG.get("demo") or {}).get("root", "resources/demo")
ENSEMBLE_PRED = "results/predict/ensemble/{name}/{split}.csv"
ENSEMBLES = CFG["ensembles"]
# The predictions that are submitted: submission.ensemble's, or submission.variant and .seed's run.
if CFG["submission"]["ensemble"]:
    SUBMITTED_PRED = {
        split: ENSEMBLE_PRED.format(name=CFG["submission"]["ensemble"], split=split)
        for split in ("val", "test")
    }
else:
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
# What the labelled side (train/ and val/) and the test side (test/) of the data set hold: a
# digest of their contents, rewritten only when it changes (imageclf/datafiles.py).
DATA_GROUPS = {"labelled": ("train", "val"), "test": ("test",)}
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
    split="val|test",


def stage_resources(stage):
    """threads, mem_mb, runtime (minutes) and gpu of a stage, from config `resources:`."""
    return CFG["resources"][stage]


def test_labels_input(wildcards=None):
    labels = CFG["data"]["test_labels"]
    return [labels] if labels else []


def test_labels_flag(wildcards, input):
    """A params function: --test-labels PATH, quoted, or nothing."""
    if not input.get("test_labels"):
        return ""
    return f"--test-labels {shlex.quote(str(input.test_labels))}"


def data_stamps():
    """Bring the stamp of each side of a user's data set up to date, before the DAG is built
    (Snakemake takes stock of the files in a folder once: a stamp made while it builds the DAG
    could look missing). Once per invocation; a cluster job's own Snakemake only reads them.
    """
    if is_demo(CFG):
        return {}
    root = Path(CFG["data"]["root"])
    if not root.is_dir():
        where = "" if root.is_absolute() else f" (relative to {Path.cwd()})"
        raise WorkflowError(
            f"data.root: folder '{root}'{where} does not exist; set data.root to a folder "
            "with train/<label>/, val/<label>/ and test/"
        )
    stamps = {group: f"{INDEX}/data_{group}.sha256" for group in DATA_GROUPS}
    if workflow.is_main_process:
        for group, splits in DATA_GROUPS.items():
            # the test labels are watched by content too (cp -p keeps an old mtime)
            labels = test_labels_input() if group == "test" else []
            update_stamp(
                root,
                splits,
                stamps[group],
                f".snakemake/imageclf/data_{group}.tsv",
                extra_files=labels,
            )
    return stamps


DATA_STAMPS = data_stamps()


def data_stamp(group):
    """The input that makes a group's index rerun exactly when its files change: the demo's
    folders (made by a rule), or the stamp of a user's data set."""

    def stamp(wildcards):
        if is_demo(CFG):
            return [
                getattr(rules.demo_data.output, split) for split in DATA_GROUPS[group]
            ]
        return [DATA_STAMPS[group]]

    return stamp


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


def cache_flag(name, split):
    """A params function: --NAME PIXELS META when the split's cache is among the inputs."""

    def flag(wildcards, input):
        split_name = split if isinstance(split, str) else split(wildcards)
        if f"{split_name}_cache_pixels" not in input.keys():
            return ""
        pixels, meta = (
            input[f"{split_name}_cache_pixels"],
            input[f"{split_name}_cache_meta"],
        )
        return f"--{name} {shlex.quote(pixels)} {shlex.quote(meta)}"

    return flag


def views_name(views):
    """A tta-<views> folder name: hflip, hflip+vflip, or none."""
    return "+".join(views) or "none"


def prediction_path(variant, seed, split, views):
    """A run's predictions with these test-time views: the run's own predictions when the views
    are predict.tta's, else those of the predict_views rule."""
    folder = PRED.format(variant=variant, seed=seed)
    if list(views) == list(CFG["predict"]["tta"]):
        return f"{folder}/{split}.csv"
    return f"{folder}/tta-{views_name(views)}/{split}.csv"


def run_entry(variant, seed):
    """A run's row of the manifest: its identity and the files the aggregating stages read."""
    files = {
        "run": f"{RUN}/run.json",
        "selection": f"{RUN}/selection.json",
        "history": f"{RUN}/history.csv",
        "val": f"{PRED}/val.csv",
        "test": f"{PRED}/test.csv",
    }
    return {
        "variant": variant,
        "seed": seed,
        **{key: path.format(variant=variant, seed=seed) for key, path in files.items()},
    }


def ensemble_entry(name, spec):
    """An ensemble's row of the manifest: its members' predictions (with its views) and its own."""
    members = [
        {
            "variant": variant,
            "seed": seed,
            **{
                s: prediction_path(variant, seed, s, spec["tta"])
                for s in ("val", "test")
            },
        }
        for variant in spec["variants"]
        for seed in spec["seeds"]
    ]
    return {
        "name": name,
        "tta": list(spec["tta"]),
        "members": members,
        **{s: ENSEMBLE_PRED.format(name=name, split=s) for s in ("val", "test")},
    }


# One manifest of named paths for the aggregating stages (ensemble, ablation, plots), built from
# the paths the rules use; imageclf/tables.py owns its format. Rule `manifest` writes it.
MANIFEST_PATH = "results/manifest.json"
MANIFEST = {
    "index": {"classes": INDEX_FILES["classes"], "val": INDEX_FILES["val"]},
    "runs": [run_entry(variant, seed) for variant in VARIANTS for seed in SEEDS],
    "ensembles": [ensemble_entry(name, spec) for name, spec in ENSEMBLES.items()],
    "submitted": {
        "name": CFG["submission"]["ensemble"] or CFG["submission"]["variant"],
        "seed": None if CFG["submission"]["ensemble"] else CFG["submission"]["seed"],
        **SUBMITTED_PRED,
    },
}


def manifest_files(section, *fields):
    """The paths under `fields` of every entry of a manifest section (a rule's inputs)."""
    return [entry[field] for entry in MANIFEST[section] for field in fields]


def ensemble_members(wildcards):
    """Prediction files of an ensemble's member runs, for one split, with its views."""
    entry = next(e for e in MANIFEST["ensembles"] if e["name"] == wildcards.name)
    return [member[wildcards.split] for member in entry["members"]]


def train_launcher(wildcards):
    """imageclf for one device; torchrun (DistributedDataParallel) when train.devices > 1."""
    devices = run_config(CFG, wildcards.variant, int(wildcards.seed))["train"][
        "devices"
    ]
    if devices > 1:
        return f"torchrun --standalone --nproc_per_node {devices} -m imageclf"
    return "imageclf"
