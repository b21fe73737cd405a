# Config, constants and input functions: what every rules file reads. The data and weights
# stamps are in stamps.smk, the manifest of what the aggregating stages read in manifest.smk.
import shlex
import os
from pathlib import Path

import yaml

# The workflow's logic is the installed `imageclf` package (pyproject.toml; `pip install -e .`).
from imageclf.checks import checked_config
from imageclf.core import paths
from imageclf.core.config import (
    RESOLVED,
    ConfigError,
    deep_merge,
    execution_settings,
    is_demo,
    run_config,
    run_config_param,
    variant_sections,
    write_run_config,
)
from imageclf.core.stages import version_params
from imageclf.data.cache import cache_mode

# The workflow's own defaults under the user's settings: as a Snakemake module given a partial
# `config:`, the module's configfile directive is not read, so they are merged here.
with open(workflow.source_path("../../config.yaml")) as defaults:
    USER_CONFIG = deep_merge(yaml.safe_load(defaults), config)
try:
    CFG = checked_config(USER_CONFIG, cache_dir=paths.STATE)
except ConfigError as error:
    raise WorkflowError(str(error))

CONDA_ENV = "../../envs/imageclf.yaml"
# Paths: imageclf/core/paths.py, which also says what a run's {fold} is.
INDEX = paths.INDEX
WEIGHTS = paths.WEIGHTS
RUN, PRED, RUN_DIR, PRED_DIR = paths.RUN, paths.PRED, paths.RUN_DIR, paths.PRED_DIR
ENSEMBLE_PRED = paths.ENSEMBLE_PRED
CV_FOLDS = CFG["cv"]["folds"]
# The folds the train, select and run_config rules make: the empty fold alone without folds.
TRAINED_FOLD = paths.fold_pattern(CV_FOLDS)
# With cv.full_fit, /full is a run's model trained on every labelled image (rule full_fit in
# cv.smk), whose predictions the predict rule makes as for any other.
FULL_FIT = paths.FULL_FIT if CFG["cv"]["full_fit"] else None
FOLD = paths.fold_pattern(CV_FOLDS, full_fit=bool(FULL_FIT))
VARIANTS = list(CFG["variants"])
SEEDS = [int(s) for s in CFG["seeds"]]
DEMO_ROOT = (CFG.get("demo") or {}).get("root", "resources/demo")
ENSEMBLES = CFG["ensembles"]
INDEX_FILES = {
    name: f"{INDEX}/{name}.csv"
    for name in ("train", "val", "test", "classes", "summary", "leaks")
}
# The labelled images the runs' val predictions cover: val/, or every one under cross-validation.
LABELLED_INDEX = f"{INDEX}/folds.csv" if CV_FOLDS else INDEX_FILES["val"]
# the captions' folder, next to this file's (also when the workflow is used as a module)
REPORT_DIR = os.path.normpath(
    os.path.join(str(workflow.current_basedir), "..", "report")
)


wildcard_constraints:
    variant="[A-Za-z0-9_.-]+",
    seed=r"\d+",
    split="val|test",
    fold=FOLD,


def in_report(path, caption, category, **labels):
    """Mark an output for `snakemake --report`, with its caption from workflow/report/."""
    return report(
        path,
        caption=os.path.join(REPORT_DIR, f"{caption}.rst"),
        category=category,
        **labels,
    )


def stage_resources(stage):
    """threads, mem_mb, runtime (minutes) and gpu of a stage, from config `resources:`."""
    return CFG["resources"][stage]


def views_name(views):
    """A tta-<views> folder name: hflip, hflip+vflip, or none."""
    return "+".join(views) or "none"


def run_prediction(variant, seed, split, views):
    """A run's predictions of one split with these test-time views: the run's own predictions
    when the views are predict.tta's, else those of the predict_views rule. Under
    cross-validation a run's val predictions are its out-of-fold predictions of every labelled
    image (oof.csv), and its test predictions the mean of its fold models'."""
    folder = PRED_DIR.format(variant=variant, seed=seed)
    if list(views) != list(CFG["predict"]["tta"]):
        folder = os.path.join(folder, f"tta-{views_name(views)}")
    return os.path.join(
        folder, f"{'oof' if CV_FOLDS and split == 'val' else split}.csv"
    )


def full_fit_prediction(variant, seed):
    """A run's full fit's test predictions (cv.full_fit), with predict.tta's views."""
    return f"{PRED_DIR}{FULL_FIT}/test.csv".format(variant=variant, seed=seed)


def test_labels_input(wildcards=None):
    labels = CFG["data"]["test_labels"]
    return [labels] if labels else []


def path_flag(name, key):
    """A params function: --NAME PATH, quoted, when the job's input or output `key` names a file,
    else nothing: no test labels, no torchvision weights file, or (rule full_fit, under cv.smk)
    no val index, and model.pt written by training itself."""

    def flag(wildcards, input, output):
        path = input.get(key) or output.get(key)
        return f"--{name} {shlex.quote(str(path))}" if path else ""

    return flag


def carved_val_flags():
    """--val-fraction and --seed when data.root has no val/ folder and data.val_fraction is set;
    else nothing, so that the key and the seed, which then change nothing, rerun nothing.
    """
    fraction = CFG["data"]["val_fraction"]
    has_val = is_demo(CFG) or (Path(CFG["data"]["root"]) / "val").is_dir()
    if fraction is None or has_val:
        return ""
    return f"--val-fraction {fraction} --seed {CFG['cv']['seed']}"


def weights_input(wildcards):
    """What a run's model.weights is as a file of the workflow: the torchvision weights file put
    in place by the weights rule, the stamp of a local file, or nothing for none."""
    url = CFG[RESOLVED][wildcards.variant]["weights_url"]
    if url:
        return {"weights": f"{WEIGHTS}/{os.path.basename(url)}"}
    path = variant_sections(CFG, wildcards.variant)["model"]["weights"]
    if path in LOCAL_WEIGHTS_STAMPS:
        return {"weights_stamp": LOCAL_WEIGHTS_STAMPS[path]}
    return {}


def weights_url(wildcards):
    """The download address of the torchvision weights file named `wildcards.file`."""
    for resolved in CFG[RESOLVED].values():
        if (
            resolved["weights_url"]
            and os.path.basename(resolved["weights_url"]) == wildcards.file
        ):
            return resolved["weights_url"]
    raise WorkflowError(
        f"{WEIGHTS}/{wildcards.file}: no variant's model.weights names this file"
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
        # a fold's run trains and validates on its own index files; the test split is shared
        fold = wildcards.get("fold", "") if split != "test" else ""
        stem = paths.CACHE.format(
            fold=fold, split=split, size=run["train"]["image_size"], mode=mode
        )
        inputs[f"{split}_cache_pixels"] = f"{stem}.npy"
        inputs[f"{split}_cache_meta"] = f"{stem}.csv"
    return inputs


def fold_predictions(split):
    """An input function: one run's predictions of `split` by each of its fold models, fold 0
    first, with the test-time views of the wanted file's folder."""

    def files(wildcards):
        return [
            f"{PRED}/{wildcards.views}{split}.csv".format(
                variant=wildcards.variant, seed=wildcards.seed, fold=paths.fold_part(k)
            )
            for k in range(CV_FOLDS)
        ]

    return files


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


def run_files(variant, seed, name):
    """A file of each trained model of one run: the run's own, or each fold's under
    cross-validation (results/train/<variant>/seed<seed>/fold<k>/<name>)."""
    return [model[name] for model in trained_models(variant, seed)]


def trained_models(variant, seed):
    """The files of each model a run trains: one, or one per fold under cross-validation."""
    return [
        {
            "fold": k,
            **{
                name: paths.model_file(variant, seed, k, name)
                for name in paths.MODEL_FILE_NAMES
            },
        }
        for k in (range(CV_FOLDS) if CV_FOLDS else [None])
    ]


def index_file(split):
    """An input function: the index of a split as a run sees it: the fold's own train and
    held-out files for a fold's run, the shared test index for the test split."""

    def path(wildcards):
        return paths.index_file(split(wildcards), wildcards.get("fold", ""))

    return path


def train_launcher(wildcards):
    """imageclf for one device; torchrun (DistributedDataParallel) when train.devices > 1."""
    devices = run_config(CFG, wildcards.variant, int(wildcards.seed))["train"][
        "devices"
    ]
    if devices > 1:
        return f"torchrun --standalone --nproc_per_node {devices} -m imageclf"
    return "imageclf"
