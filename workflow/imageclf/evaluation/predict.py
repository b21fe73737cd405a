"""Predict one split (val or test) with a selected checkpoint.

Each output row: image_name, label (true class where known, else empty), pred_label, correct,
then prob_<class> for every class.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from ..core import tables
from ..core.config import load_run_config
from ..core.errors import WeightsError
from ..core.logs import add_log_argument, setup_logging
from ..core.provenance import check_model_config
from ..data import loaders
from ..data.cache import open_cache
from ..data.index import read_test_labels
from ..models.factory import load_trained_model
from ..training import engine, presets
from ..training.allocator import keep_freed_memory

log = logging.getLogger("imageclf.predict")

# What this stage writes, as a version: raised by a change that alters its outputs, and by nothing else
# (core/stages.py). Raising it reruns this stage and everything downstream, on every project.
RESULTS_VERSION = 1


def predict(run_config_path, model_path, index_csv, classes_csv, out_csv, test_labels=None,
            batch_size: int = 128, threads: int = 1, num_workers: int = 0, cache_paths=None, tta=()) -> float:
    """Predict the split indexed in `index_csv` into `out_csv`; returns its accuracy (nan when
    unlabelled). cache_paths: (pixels.npy, meta.csv) of the split's decoded-image cache.
    tta: test-time augmentation views (predict.tta), averaged with the image itself."""
    check_model_config(model_path, run_config_path)  # never a model of another configuration
    cfg = load_run_config(run_config_path)
    torch.set_num_threads(max(1, threads))
    classes = tables.read_classes(classes_csv)
    model, meta = load_trained_model(model_path, cfg["model"], len(classes))
    if meta.get("classes") and meta["classes"] != classes:
        raise WeightsError(f"{model_path}: trained on classes {meta['classes'][:5]}..., "
                           f"but the index has {classes[:5]}...; retrain on this data set")
    device, precision, channels_last = engine.setup_device(cfg["train"], inference=True)
    model = model.to(device, memory_format=engine.memory_format(channels_last))
    transform = presets.eval_transform(cfg["augment"], cfg["train"]["image_size"])
    frame = tables.read_index(index_csv)
    if test_labels:
        truth = read_test_labels(test_labels, frame, classes).set_index("image_name")["label"]
        frame = frame.assign(label=frame["image_name"].map(truth).fillna(""))
    dataset = loaders.ImageDataset(frame, classes, transform, open_cache(cache_paths, index_csv))
    loader = loaders.make_loader(dataset, batch_size, num_workers)
    start = time.perf_counter()
    probs, _ = engine.predict_probabilities(model, loader, device, precision, channels_last, views=tuple(tta))
    seconds = time.perf_counter() - start
    result = tables.predictions_table(frame["image_name"], frame["label"], probs, classes)
    tables.write_predictions(out_csv, result)
    acc = tables.accuracy(result)
    log.info("%s: %d images in %.1fs (%.1f img/s), test-time views: %s, accuracy %s", index_csv, len(result),
             seconds, len(result) / max(seconds, 1e-9), ", ".join(["original", *tta]),
             "n/a (no labels)" if acc is None else f"{acc:.4f}")
    return float("nan") if acc is None else acc


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="imageclf predict", description=__doc__.splitlines()[0])
    parser.add_argument("--run-config", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--index", required=True, help="index CSV of the split to predict")
    parser.add_argument("--classes", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--test-labels", default=None, help="true labels of the test split, when known")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (predict.num_workers)")
    parser.add_argument("--cache", nargs=2, metavar=("PIXELS", "META"), help="the split's decoded-image cache")
    parser.add_argument("--tta", nargs="*", default=[], choices=sorted(engine.TTA_VIEWS),
                        help="test-time augmentation views (predict.tta)")
    add_log_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_file)
    keep_freed_memory()
    predict(args.run_config, args.model, args.index, args.classes, args.out, args.test_labels or None,
            args.batch_size, args.threads, args.num_workers, cache_paths=args.cache, tta=args.tta)
