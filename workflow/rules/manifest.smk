# The manifest: one file of named paths for the aggregating stages (ensemble, ablation, plots),
# built from the paths the rules use, and what the submission rests on. imageclf/core/tables.py
# owns its format; rule manifest (ablation.smk) writes it.

# What a trained model is, for every target alike (the submission and the ablation table): its
# run record, its selection, the selected model and the configuration it must have been trained
# under (predict, ensemble and submission refuse a model.pt of another config.json).
MODEL_FILES = ("run", "selection", "model", "config")


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


MANIFEST_PATH = paths.MANIFEST
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
