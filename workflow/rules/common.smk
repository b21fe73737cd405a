import hashlib
import shlex
import os
from pathlib import Path

import yaml

# The workflow's logic is the installed `imageclf` package (pyproject.toml; `pip install -e .`).
from imageclf.checks import checked_config
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
from imageclf.data.cache import cache_mode
from imageclf.data.datafiles import update_stamp
from imageclf.data.folds import check_fold_count
from imageclf.core.stages import version_params
from imageclf.models.weights import is_local_file, stamp_name, update_stamp as weights_stamp

# The workflow's own defaults under the user's settings: as a Snakemake module given a partial
# `config:`, the module's configfile directive is not read, so they are merged here.
with open(workflow.source_path("../../config.yaml")) as defaults:
    USER_CONFIG = deep_merge(yaml.safe_load(defaults), config)
try:
    CFG = checked_config(USER_CONFIG, cache_dir=".snakemake/imageclf")
except ConfigError as error:
    raise WorkflowError(str(error))

CONDA_ENV = "../../envs/imageclf.yaml"
INDEX = "results/index"
# A trained run's folders. {fold} is empty for a run of the recipe (train on train/, select on
# val/), and /fold<k> for one fold's run under cross-validation (cv.folds >= 2), whose results
# the cross-validation stages (cv.smk) gather in the run's own folders.
CV_FOLDS = CFG["cv"]["folds"]
# The folds the train, select and run_config rules make: (?:) matches the empty fold alone.
TRAINED_FOLD = r"[/]fold\d+" if CV_FOLDS else "(?:)"
# With cv.full_fit, /full is a run's model trained on every labelled image (rule full_fit in
# cv.smk), whose predictions the predict rule makes as for any other.
FULL_FIT = f"{os.sep}full" if CFG["cv"]["full_fit"] else None
FOLD = r"[/](?:fold\d+|full)" if FULL_FIT else TRAINED_FOLD
RUN = "results/train/{variant}/seed{seed}{fold}"
PRED = "results/predict/{variant}/seed{seed}{fold}"
RUN_DIR = "results/train/{variant}/seed{seed}"
PRED_DIR = "results/predict/{variant}/seed{seed}"
VARIANTS = list(CFG["variants"])
SEEDS = [int(s) for s in CFG["seeds"]]
DEMO_ROOT = (CFG.get("demo") or {}).get("root", "resources/demo")
ENSEMBLE_PRED = "results/predict/ensemble/{name}/{split}.csv"
ENSEMBLES = CFG["ensembles"]


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


# The predictions that are submitted: submission.ensemble's, or submission.variant and .seed's
# run (its full fit's test predictions with cv.submit: full_fit).
if CFG["submission"]["ensemble"]:
    SUBMITTED_PRED = {
        split: ENSEMBLE_PRED.format(name=CFG["submission"]["ensemble"], split=split)
        for split in ("val", "test")
    }
else:
    SUBMITTED_PRED = {
        split: run_prediction(
            CFG["submission"]["variant"],
            CFG["submission"]["seed"],
            split,
            CFG["predict"]["tta"],
        )
        for split in ("val", "test")
    }
    if CFG["cv"]["submit"] == "full_fit":
        SUBMITTED_PRED["test"] = full_fit_prediction(
            CFG["submission"]["variant"], CFG["submission"]["seed"]
        )
# every run's full fit's test predictions, made by `snakemake` (rule all) with cv.full_fit
FULL_FIT_PREDICTIONS = [
    full_fit_prediction(variant, seed)
    for variant in VARIANTS
    for seed in SEEDS
    if FULL_FIT
]
INDEX_FILES = {
    name: f"{INDEX}/{name}.csv"
    for name in ("train", "val", "test", "classes", "summary", "leaks")
}
# What the labelled side (train/ and val/) and the test side (test/) of the data set hold: a
# digest of their contents, rewritten only when it changes (imageclf/datafiles.py).
DATA_GROUPS = {"labelled": ("train", "val"), "test": ("test",)}
# the captions' folder, next to this file's (also when the workflow is used as a module)
REPORT_DIR = os.path.normpath(
    os.path.join(str(workflow.current_basedir), "..", "report")
)


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
    fold=FOLD,


def stage_resources(stage):
    """threads, mem_mb, runtime (minutes) and gpu of a stage, from config `resources:`."""
    return CFG["resources"][stage]


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


def data_stamps():
    """Bring the stamp of each side of a user's data set up to date, before the DAG is built
    (Snakemake takes stock of the files in a folder once: a stamp made while it builds the DAG
    could look missing). Once per invocation; a cluster job's own Snakemake only reads them.
    Returns the stamps and the content digests they hold.
    """
    if is_demo(CFG):
        return {}, {}
    root = Path(CFG["data"]["root"])  # a folder: checked_config made sure
    stamps = {group: f"{INDEX}/data_{group}.sha256" for group in DATA_GROUPS}
    digests = {}
    for group, splits in DATA_GROUPS.items():
        if not workflow.is_main_process:
            stamp = Path(stamps[group])
            digests[group] = stamp.read_text().strip() if stamp.is_file() else ""
            continue
        # the test labels are watched by content too (cp -p keeps an old mtime)
        labels = test_labels_input() if group == "test" else []
        digests[group] = update_stamp(
            root,
            splits,
            stamps[group],
            f".snakemake/imageclf/data_{group}.tsv",
            extra_files=labels,
        )
    return stamps, digests


DATA_STAMPS, DATA_DIGESTS = data_stamps()


def carved_val_flags():
    """--val-fraction and --seed when data.root has no val/ folder and data.val_fraction is set;
    else nothing, so that the key and the seed, which then change nothing, rerun nothing.
    """
    fraction = CFG["data"]["val_fraction"]
    has_val = is_demo(CFG) or (Path(CFG["data"]["root"]) / "val").is_dir()
    if fraction is None or has_val:
        return ""
    return f"--val-fraction {fraction} --seed {CFG['cv']['seed']}"


WEIGHTS = "results/weights"


def local_weights_stamps():
    """A content stamp for each local model.weights file, brought up to date before the DAG is
    built: replacing the file retrains the variants that use it; a touch retrains nothing.
    """
    paths = {variant_sections(CFG, variant)["model"]["weights"] for variant in VARIANTS}
    stamps = {}
    for path in sorted(p for p in paths if is_local_file(p)):
        stamps[path] = f"{WEIGHTS}/local/{stamp_name(path)}"
        if workflow.is_main_process:
            weights_stamp(
                path, stamps[path], f".snakemake/imageclf/weights_{stamp_name(path)}"
            )
    return stamps


LOCAL_WEIGHTS_STAMPS = local_weights_stamps()


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


# The index outputs of each side of the data set, and the rule that checks that side first.
INDEX_OUTPUTS = {
    "labelled": ("train", "val", "classes"),
    "test": ("test", "summary", "leaks"),
}


def checked_key(group):
    """What a check of `group` answers for: the data's contents (the test side's check also
    reads the labelled index) and how val/ is made. Its marker is named by it, so a check that
    passed stays passed when the data come back to what they were."""
    parts = [DATA_DIGESTS["labelled"], carved_val_flags()]
    if group == "test":
        parts.append(DATA_DIGESTS["test"])
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def index_is_current(group, stamp):
    """Whether a side's index files all exist and are newer than its data stamp."""
    paths = [Path(INDEX_FILES[name]) for name in INDEX_OUTPUTS[group]]
    if not all(path.is_file() for path in paths):
        return False
    return min(path.stat().st_mtime for path in paths) >= Path(stamp).stat().st_mtime


def data_stamp(group):
    """The input that makes a group's index rerun exactly when its files change: the demo's
    folders (made by a rule), or the stamp of a user's data set, with the marker of its check
    (check_data or check_test_data): a data problem stops the run at the check, before the
    index job starts, so Snakemake never deletes the finished index. An index made before these
    checks existed, and still current, keeps the stamp alone as its input until its data
    change: a new input would rerun it, and every training after it.
    """

    def stamp(wildcards):
        if is_demo(CFG):
            return [
                getattr(rules.demo_data.output, split) for split in DATA_GROUPS[group]
            ]
        marker = f"{INDEX}/checked/{group}-{checked_key(group)}.json"
        if Path(marker).is_file() or not index_is_current(group, DATA_STAMPS[group]):
            return [DATA_STAMPS[group], marker]
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
        # a fold's run trains and validates on its own index files; the test split is shared
        fold = wildcards.get("fold", "") if split != "test" else ""
        stem = f"results/cache{fold}/{split}_{run['train']['image_size']}px_{mode}"
        inputs[f"{split}_cache_pixels"] = f"{stem}.npy"
        inputs[f"{split}_cache_meta"] = f"{stem}.csv"
    return inputs


def fold_predictions(split):
    """An input function: one run's predictions of `split` by each of its fold models, fold 0
    first, with the test-time views of the wanted file's folder."""

    def paths(wildcards):
        return [
            f"{PRED_DIR}/fold{k}/{wildcards.views}{split}.csv".format(
                variant=wildcards.variant, seed=wildcards.seed
            )
            for k in range(CV_FOLDS)
        ]

    return paths


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


# What a trained model is, for every target alike (the submission and the ablation table): its
# run record, its selection, the selected model and the configuration it must have been trained
# under (predict, ensemble and submission refuse a model.pt of another config.json).
MODEL_FILES = ("run", "selection", "model", "config")


def trained_models(variant, seed):
    """The files of each model a run trains: one, or one per fold under cross-validation."""
    folds = [os.sep + f"fold{k}" for k in range(CV_FOLDS)] or [""]
    return [
        {
            "fold": int(fold[5:]) if fold else None,
            **{
                name: f"{RUN}/{name}.{ext}".format(
                    variant=variant, seed=seed, fold=fold
                )
                for name, ext in (
                    ("run", "json"),
                    ("selection", "json"),
                    ("history", "csv"),
                    ("model", "pt"),
                    ("config", "json"),
                )
            },
        }
        for fold in folds
    ]


def index_file(split):
    """An input function: the index of a split as a run sees it: the fold's own train and
    held-out files for a fold's run, the shared test index for the test split."""

    def path(wildcards):
        fold = wildcards.get("fold", "") if split(wildcards) != "test" else ""
        return f"{INDEX}{fold}/{split(wildcards)}.csv"

    return path


def run_entry(variant, seed):
    """A run's row of the manifest: its identity, the files of each model it trained (one per
    fold under cross-validation) and its predictions (out-of-fold ones under cross-validation).
    """
    return {
        "variant": variant,
        "seed": seed,
        "models": trained_models(variant, seed),
        **{
            split: run_prediction(variant, seed, split, CFG["predict"]["tta"])
            for split in ("val", "test")
        },
        # cv.full_fit: the test predictions of the run's full fit
        **({"full_fit": full_fit_prediction(variant, seed)} if FULL_FIT else {}),
    }


def ensemble_entry(name, spec):
    """An ensemble's row of the manifest: its members' predictions (with its views) and its own."""
    members = [
        {
            "variant": variant,
            "seed": seed,
            **{
                s: run_prediction(variant, seed, s, spec["tta"])
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


LABELLED_INDEX = f"{INDEX}/folds.csv" if CV_FOLDS else INDEX_FILES["val"]


def submitted_selections(wildcards=None):
    """selection.json of the submitted run, or of each member run of the submitted ensemble:
    the submission step warns when select flagged one of them."""
    name = CFG["submission"]["ensemble"]
    if name:
        spec = ENSEMBLES[name]
        runs = [(v, s) for v in spec["variants"] for s in spec["seeds"]]
    else:
        runs = [(CFG["submission"]["variant"], CFG["submission"]["seed"])]
    return [selection for v, s in runs for selection in run_files(v, s, "selection")]


def submitted_models(field):
    """`field` (a MODEL_FILES name) of every model the submission rests on: each trained model of
    the submitted run or of each member run of the submitted ensemble; the full fit's model.pt or
    config.json with cv.submit: full_fit (whose folds' files, the plan's sources, come too).
    """
    name = CFG["submission"]["ensemble"]
    if name:
        spec = ENSEMBLES[name]
        runs = [(v, s) for v in spec["variants"] for s in spec["seeds"]]
    else:
        runs = [(CFG["submission"]["variant"], CFG["submission"]["seed"])]
    files = [path for v, s in runs for path in run_files(v, s, field)]
    if not name and CFG["cv"]["submit"] == "full_fit" and field in ("model", "config"):
        file_name = "model.pt" if field == "model" else "config.json"
        variant, seed = runs[0]
        files = [f"{RUN_DIR}{FULL_FIT}/{file_name}".format(variant=variant, seed=seed)]
    return files


# One manifest of named paths for the aggregating stages (ensemble, ablation, plots), built from
# the paths the rules use; imageclf/tables.py owns its format. Rule `manifest` writes it.
MANIFEST_PATH = "results/manifest.json"
MANIFEST = {
    # the labelled images the runs' val predictions cover: val/, or every one under cross-validation
    "index": {"classes": INDEX_FILES["classes"], "val": LABELLED_INDEX},
    "cv": {"folds": CV_FOLDS},
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


def model_files(*fields):
    """The paths under `fields` of every trained model of every run (a rule's inputs)."""
    return [
        model[field]
        for entry in MANIFEST["runs"]
        for model in entry["models"]
        for field in fields
    ]


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


def folds_fit_the_index():
    """Before any job: a cv.folds too large for a user's current labelled index stops Snakemake
    here, naming cv.folds, rather than failing (and so deleting) folds.csv. The demo's, or a
    stale index, is left to the folds job, which makes folds.csv anew anyway."""
    if not CV_FOLDS or is_demo(CFG) or not workflow.is_main_process:
        return
    if not index_is_current("labelled", DATA_STAMPS["labelled"]):
        return
    try:
        check_fold_count(CV_FOLDS, [INDEX_FILES["train"], INDEX_FILES["val"]])
    except ConfigError as error:
        raise WorkflowError(str(error))


folds_fit_the_index()
