"""Where a project's files live: the path templates the rules fill in, and the one spelling of a
fold's part of a path. Torch-free and Snakemake-free, so the rules, the code and the tests read
the same names.

A trained run's folder is results/train/<variant>/seed<seed><fold>: <fold> is empty for a run of
the recipe (train on train/, select on val/), /fold<k> for one fold's model under
cross-validation, and /full for a run's full fit on every labelled image (cv.full_fit).
Templates hold Snakemake's wildcards ({variant}, {seed}, {fold}, ...), filled with str.format
outside a rule.
"""

from __future__ import annotations

INDEX = "results/index"
WEIGHTS = "results/weights"
MANIFEST = "results/manifest.json"
# a run, and its models: the run's own, or one per fold
RUN_DIR = "results/train/{variant}/seed{seed}"
PRED_DIR = "results/predict/{variant}/seed{seed}"
RUN = RUN_DIR + "{fold}"
PRED = PRED_DIR + "{fold}"
ENSEMBLE_PRED = "results/predict/ensemble/{name}/{split}.csv"
# the decoded images of one split at one size and layout, shared by the runs that read them
CACHE = "results/cache{fold}/{split}_{size}px_{mode}"
# near-duplicates: each side's fingerprints ({side}: labelled, test); the label audit's outputs
FINGERPRINTS = INDEX + "/fingerprints_{side}.csv"
# the marker of a passed check of leaks.csv under data.on_leak (rule check_leaks)
LEAK_CHECK = INDEX + "/checked/leaks.json"
LABEL_ISSUES = "results/audit/label_issues.csv"
AUDIT_GALLERY = "results/audit/gallery.png"
# the files of a trained model, by the names the rules and the manifest give them
MODEL_FILE_NAMES = {
    "run": "run.json",
    "selection": "selection.json",
    "history": "history.csv",
    "model": "model.pt",
    "config": "config.json",
}
# Snakemake's own folder: digests kept between invocations, the checks' cached facts
STATE = ".snakemake/imageclf"

FULL_FIT = "/full"
FOLD_K = r"/fold\d+"  # one fold's part, as a regular expression


def fold_part(k: int | None) -> str:
    """The <fold> part of a path: /fold<k>, or empty for a run without folds (k None)."""
    return "" if k is None else f"/fold{k}"


def fold_pattern(folds: int, full_fit: bool = False) -> str:
    """The {fold} wildcard's regular expression: the empty part alone without cross-validation,
    /fold<k> with it, and /full too with cv.full_fit."""
    if not folds:
        return "(?:)"
    return rf"(?:{FOLD_K}|{FULL_FIT})" if full_fit else FOLD_K


# The {fold} of a cache file: none, a fold's own index or a full fit's (a superset of the above).
CACHE_FOLD = rf"(?:{FOLD_K}|{FULL_FIT})?"


def model_file(variant: str, seed: int, k: int | None, name: str) -> str:
    """A file of one trained model (name: a MODEL_FILE_NAMES key) of run (variant, seed), fold k."""
    return f"{RUN}/{MODEL_FILE_NAMES[name]}".format(variant=variant, seed=seed, fold=fold_part(k))


def index_file(split: str, fold: str = "") -> str:
    """A split's index as a run sees it: a fold's own train and held-out files, else the shared
    one (test/ is always shared)."""
    return f"{INDEX}{fold if split != 'test' else ''}/{split}.csv"
