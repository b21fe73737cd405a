"""The stages `imageclf STAGE` runs (STAGES: the one table of them), and their results versions:
a stage's code as part of what its rule compares.

Each stage module (the one `imageclf <stage>` runs, STAGES) holds `RESULTS_VERSION`, an
integer next to its code. It is raised by a change that alters what the stage writes (another
number, another row, another pixel), and by nothing else: not by a refactoring, a log line, a new
option whose default keeps the results, or a change to a rule's command text. Raising it reruns
that stage's jobs and everything downstream of them, and nothing else:

- train (and cache, for runs that read the cache): the version enters the run config
  (config.run_results_versions), so run_config rewrites config.json, training restarts (the
  resume state's config hash differs), and select, predict and the rest follow;
- every other stage: its rules get the param `results_version` (version_params), and Snakemake's
  params trigger reruns them.

The first version, 1, is neutral: no param and no run-config entry, so the projects finished
before versions existed keep their params and config hashes. The versions are read from the
modules' source without importing them (train's imports torch; the Snakefile asks at DAG time).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from .errors import ConfigError

# stage: (module under imageclf, function, what it does)
STAGES = {
    "demo": ("data.demo", "main", "write the demo data set (scikit-learn's digits) in the course layout"),
    "index": ("data.index", "main", "index and check train/ and val/: train.csv, val.csv, classes.csv"),
    "index_test": ("data.index", "main_test", "index test/, check test labels and identical leaks: test.csv, summary"),
    "fingerprints": ("data.near_duplicates", "main",
                     "perceptual fingerprints of one side's images (labelled or test), decoded once per content"),
    "leaks": ("data.near_duplicates", "main_leaks", "identical and near-duplicate images across splits: leaks.csv"),
    "check_leaks": ("data.near_duplicates", "main_check",
                    "leaks.csv under data.on_leak: a pair under 'error' stops the submission and the ablation"),
    "audit": ("report.audit", "main", "rank every labelled image by how likely its label is wrong: label_issues.csv, gallery"),
    "weights": ("models.weights", "main", "put torchvision's weights file for model.weights in place (hub cache or download)"),
    "folds": ("data.folds", "main", "assign every labelled image a cross-validation fold: folds.csv"),
    "fold_index": ("data.folds", "main_split", "index files of one fold's run (train on the others, hold it out)"),
    "oof": ("evaluation.cross_validation", "main_oof",
            "out-of-fold predictions: each labelled image by the fold model that did not train on it"),
    "fold_average": ("evaluation.cross_validation", "main_average", "a run's test predictions: the mean of its fold models'"),
    "full_fit_config": ("training.full_fit", "main", "plan a run's full fit on every labelled image from its folds"),
    "cache": ("data.cache", "main", "decode and resize one split once into a memory-mapped file"),
    "train": ("training.train", "main", "train one run (variant, seed); resumes after a crash"),
    "select": ("evaluation.select", "main", "pick a run's checkpoint by select.metric"),
    "predict": ("evaluation.predict", "main", "predict one split with a selected checkpoint"),
    "ensemble": ("evaluation.ensemble", "main", "average the class probabilities of several runs"),
    "submission": ("evaluation.submission", "main", "write submission.csv and submission.zip"),
    "ablation": ("report.ablation", "main", "the ablation table: every variant and ensemble, paired CIs, Holm-corrected p"),
    "plots": ("report.plots", "main", "curves, confusion matrix, worst classes, error gallery"),
}

FIRST = 1
PACKAGE = Path(__file__).resolve().parents[1]


def stage_module(stage: str) -> str:
    """The module that runs `imageclf <stage>`, as a dotted path under imageclf."""
    if stage not in STAGES:
        raise ConfigError(f"results version: unknown stage '{stage}'; known: {sorted(STAGES)}")
    return STAGES[stage][0]


@functools.lru_cache(maxsize=None)
def module_version(module: str) -> int:
    """RESULTS_VERSION of workflow/imageclf/<module as a path>.py, read from its source."""
    path = PACKAGE / (module.replace(".", "/") + ".py")
    for node in ast.parse(path.read_text(), str(path)).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "RESULTS_VERSION" and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, int) and node.value.value >= FIRST):
            return node.value.value
    raise ConfigError(f"{path}: no RESULTS_VERSION = <integer >= {FIRST}> at module level")


def results_version(stage: str) -> int:
    """The results version of a stage's code."""
    return module_version(stage_module(stage))


def version_params(stage: str) -> dict:
    """A rule's params for its stage's results version: none at the first version, else
    {"results_version": "<module> <version>"}, the module by its file name alone: moving a module
    to another folder changes no param, and so reruns nothing."""
    version = results_version(stage)
    leaf = stage_module(stage).rpartition(".")[2]
    return {} if version == FIRST else {"results_version": f"{leaf} {version}"}
