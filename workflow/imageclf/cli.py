"""`imageclf STAGE [args]`: run one stage of the workflow, from a rule, a shell, a cluster node or
under `torchrun --nproc_per_node N -m imageclf train ...`."""

from __future__ import annotations

import importlib
import logging
import sys

from .errors import UserError

# stage: (module, function, what it does)
STAGES = {
    "demo": ("demo", "main", "write the demo data set (scikit-learn's digits) in the course layout"),
    "index": ("index", "main", "index and check train/ and val/: train.csv, val.csv, classes.csv"),
    "index_test": ("index", "main_test", "index test/, check test labels and leaks: test.csv, summary, leaks"),
    "weights": ("weights", "main", "put torchvision's weights file for model.weights in place (hub cache or download)"),
    "folds": ("folds", "main", "assign every labelled image a cross-validation fold: folds.csv"),
    "fold_index": ("folds", "main_split", "index files of one fold's run (train on the others, hold it out)"),
    "oof": ("folds", "main_oof", "out-of-fold predictions: each labelled image by the fold model that did not train on it"),
    "fold_average": ("folds", "main_average", "a run's test predictions: the mean of its fold models'"),
    "full_fit_config": ("full_fit", "main", "plan a run's full fit on every labelled image from its folds"),
    "cache": ("cache", "main", "decode and resize one split once into a memory-mapped file"),
    "train": ("train", "main", "train one run (variant, seed); resumes after a crash"),
    "select": ("select", "main", "pick a run's checkpoint by select.metric"),
    "predict": ("predict", "main", "predict one split with a selected checkpoint"),
    "ensemble": ("ensemble", "main", "average the class probabilities of several runs"),
    "submission": ("submission", "main", "write submission.csv and submission.zip"),
    "ablation": ("ablation", "main", "the ablation table: every variant and ensemble, paired CIs, Holm-corrected p"),
    "plots": ("plots", "main", "curves, confusion matrix, worst classes, error gallery"),
}


def usage() -> str:
    lines = ["usage: imageclf STAGE [--help] [args]", "", "stages:"]
    lines += [f"  {name:<12} {what}" for name, (_, _, what) in STAGES.items()]
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    if argv[0] not in STAGES:
        print(f"imageclf: unknown stage '{argv[0]}'\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    module_name, function, _ = STAGES[argv[0]]
    module = importlib.import_module(f"imageclf.{module_name}")
    try:
        getattr(module, function)(argv[1:])
    except UserError as error:  # bad input: one clear message, on the console and in the log
        logging.getLogger("imageclf").error("%s", error)
        raise SystemExit(1) from None
    except Exception:
        logging.getLogger("imageclf").exception("%s failed", argv[0])
        raise SystemExit(1) from None
