"""Predict the val and test splits with a selected checkpoint.

Each output row: image_name, label (true class where known, else empty), pred_label, correct,
then prob_<class> for every class.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import data, engine, presets
from .config import load_run_config
from .index import read_test_labels
from .allocator import keep_freed_memory
from .io_utils import setup_logging, write_csv
from .models import WeightsError, load_trained_model
from .cache import open_cache
from .train import resolve_device

log = logging.getLogger("imageclf.predict")


def prediction_frame(frame: pd.DataFrame, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    pred = [classes[i] for i in probs.argmax(1)]
    labels = frame["label"].fillna("").astype(str).tolist()
    out = pd.DataFrame({
        "image_name": frame["image_name"].astype(str).tolist(),
        "label": labels,
        "pred_label": pred,
        "correct": [(p == t) if t else None for p, t in zip(pred, labels)],
    })
    prob_cols = pd.DataFrame(probs.round(6), columns=[f"prob_{c}" for c in classes])
    return pd.concat([out, prob_cols], axis=1).sort_values("image_name", kind="stable").reset_index(drop=True)


def predict(run_config_path, model_path, index_dir, out_val, out_test, test_labels=None,
            batch_size: int = 128, threads: int = 1, num_workers: int = 0, caches=None) -> dict:
    """caches: optional {split: (pixels.npy, meta.csv)} of decoded-image caches."""
    caches = caches or {}
    cfg = load_run_config(run_config_path)
    torch.set_num_threads(max(1, threads))
    classes = data.read_classes(index_dir)
    model, meta = load_trained_model(model_path, cfg["model"], len(classes))
    if meta.get("classes") and meta["classes"] != classes:
        raise WeightsError(f"{model_path}: trained on classes {meta['classes'][:5]}..., "
                           f"but the index has {classes[:5]}...; retrain on this data set")
    tcfg = cfg["train"]
    device = resolve_device(tcfg["device"])
    engine.use_fastest_kernels(device)
    # A model trained in fp16 on a GPU still predicts on a CPU: auto picks what this device has.
    requested = "auto" if tcfg["precision"] == "fp16" and device.type != "cuda" else tcfg["precision"]
    precision = engine.resolve_precision(requested, device)
    channels_last = engine.resolve_channels_last(tcfg["channels_last"], precision, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    transform = presets.eval_transform(cfg["augment"], tcfg["image_size"])
    results = {}
    for split, out in (("val", out_val), ("test", out_test)):
        frame = data.read_index(index_dir, split)
        if split == "test" and test_labels:
            truth = read_test_labels(test_labels, frame, classes).set_index("image_name")["label"]
            frame = frame.assign(label=frame["image_name"].map(truth).fillna(""))
        dataset = data.ImageDataset(frame, classes, transform, open_cache(caches.get(split), Path(index_dir), split))
        loader = data.make_loader(dataset, batch_size, num_workers)
        start = time.perf_counter()
        probs, _ = engine.predict_probabilities(model, loader, device, precision, channels_last)
        seconds = time.perf_counter() - start
        result = prediction_frame(frame, probs, classes)
        write_csv(out, result)
        known = result["correct"].dropna()
        acc = float(known.mean()) if len(known) else float("nan")
        results[split] = acc
        log.info("%s: %d images in %.1fs (%.1f img/s), accuracy %s", split, len(result), seconds,
                 len(result) / max(seconds, 1e-9), f"{acc:.4f}" if len(known) else "n/a (no labels)")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-config", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--index-dir", required=True)
    parser.add_argument("--out-val", required=True)
    parser.add_argument("--out-test", required=True)
    parser.add_argument("--test-labels", default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--val-cache", nargs=2, metavar=("PIXELS", "META"), help="decoded-image cache")
    parser.add_argument("--test-cache", nargs=2, metavar=("PIXELS", "META"))
    args = parser.parse_args(argv)
    setup_logging()
    keep_freed_memory()
    caches = {split: paths for split, paths in (("val", args.val_cache), ("test", args.test_cache)) if paths}
    predict(args.run_config, args.model, args.index_dir, args.out_val, args.out_test,
            args.test_labels or None, args.batch_size, args.threads, caches=caches)
