"""The ablation table: every variant, mean and sd over seeds, and how sure each difference is."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import classification_report

from . import stats
from .io_utils import setup_logging, write_csv, write_text

log = logging.getLogger("imageclf.ablation")


def read_predictions(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"image_name": str, "label": str, "pred_label": str}, keep_default_na=False)


def load_runs(results_dir, variants, seeds) -> tuple[pd.DataFrame, dict]:
    """One row per (variant, seed) and the prediction tables, read from results/ alone."""
    results_dir = Path(results_dir)
    rows, predictions = [], {}
    for variant in variants:
        for seed in seeds:
            run_dir = results_dir / "train" / variant / f"seed{seed}"
            run = json.loads((run_dir / "run.json").read_text())
            selection = json.loads((run_dir / "selection.json").read_text())
            pred_dir = results_dir / "predict" / variant / f"seed{seed}"
            preds = {split: read_predictions(pred_dir / f"{split}.csv") for split in ("val", "test")}
            predictions[variant, seed] = preds
            test_known = preds["test"]["label"] != ""
            rows.append({
                "variant": variant, "seed": seed, "parameters": run["parameters"],
                "selected_epoch": selection["epoch"], "select_metric": selection["metric"],
                "val_acc": float((preds["val"]["label"] == preds["val"]["pred_label"]).mean()),
                "val_loss": selection["val_loss"],
                "test_acc": float((preds["test"]["label"] == preds["test"]["pred_label"])[test_known].mean())
                if test_known.all() and len(test_known) else np.nan,
                "train_minutes": run["train_minutes"], "config_hash": run["config_hash"],
                "index_hash": run["index_hash"],
            })
    return pd.DataFrame(rows), predictions


def correctness(predictions, variant, seeds, split) -> np.ndarray:
    """(seeds, images) array of 0/1, images in name order (the prediction files are sorted)."""
    return np.stack([
        (predictions[variant, s][split]["label"] == predictions[variant, s][split]["pred_label"]).to_numpy()
        for s in seeds
    ]).astype(float)


def summarize(runs: pd.DataFrame, predictions, reference: str, seeds, samples: int = 10_000) -> pd.DataFrame:
    splits = ["val"] + (["test"] if runs["test_acc"].notna().all() else [])
    rows = []
    for variant, group in runs.groupby("variant", sort=False):
        row = {"variant": variant, "runs": len(group), "parameters": int(group["parameters"].iloc[0])}
        for metric in ("val_acc", "val_loss", "test_acc", "selected_epoch", "train_minutes"):
            values = group[metric].astype(float)
            row[f"{metric}_mean"] = values.mean()
            row[f"{metric}_sd"] = values.std(ddof=1) if len(values) > 1 else np.nan
        for split in splits:
            ref = correctness(predictions, reference, seeds, split)
            other = correctness(predictions, variant, seeds, split)
            boot = stats.paired_bootstrap(ref, other, samples=samples)
            test = stats.mcnemar_exact(stats.majority_correct(ref), stats.majority_correct(other))
            row.update({
                f"{split}_diff": boot["diff"], f"{split}_ci_low": boot["ci_low"],
                f"{split}_ci_high": boot["ci_high"], f"{split}_mcnemar_p": test["p_value"],
                f"{split}_verdict": "reference" if variant == reference
                else stats.verdict(boot["ci_low"], boot["ci_high"], test["p_value"]),
            })
        rows.append(row)
    return pd.DataFrame(rows)


def pct(mean, sd) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{100 * mean:.2f}" + ("" if pd.isna(sd) else f" ± {100 * sd:.2f}")


def markdown(table: pd.DataFrame, reference: str) -> str:
    has_test = "test_diff" in table.columns
    head = ["variant", "runs", "parameters", "val acc %", "val loss", "selected epoch", "train min"]
    if has_test:
        head.insert(5, "test acc %")
    head += [f"{split} Δ vs {reference} (95% CI), McNemar p" for split in (["val", "test"] if has_test else ["val"])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        loss = f"{r.val_loss_mean:.4f}" + ("" if pd.isna(r.val_loss_sd) else f" ± {r.val_loss_sd:.4f}")
        cells = [r.variant, str(r.runs), f"{r.parameters:,}", pct(r.val_acc_mean, r.val_acc_sd), loss,
                 f"{r.selected_epoch_mean:.1f}", f"{r.train_minutes_mean:.1f}"]
        if has_test:
            cells.insert(5, pct(r.test_acc_mean, r.test_acc_sd))
        for split in (["val", "test"] if has_test else ["val"]):
            if r.variant == reference:
                cells.append("reference")
            else:
                cells.append(
                    f"{100 * r[f'{split}_diff']:+.2f} [{100 * r[f'{split}_ci_low']:+.2f}, "
                    f"{100 * r[f'{split}_ci_high']:+.2f}], p = {r[f'{split}_mcnemar_p']:.3g}: {r[f'{split}_verdict']}"
                )
        lines.append("| " + " | ".join(cells) + " |")
    seeds = int(table["runs"].max())
    lines += [
        "",
        f"Mean ± sd over {seeds} seed(s) per variant. Δ: accuracy of the variant minus {reference}, in points, "
        "with a 95 % paired bootstrap interval (images resampled"
        + (", seeds too" if seeds > 1 else "") + "). McNemar: exact two-sided test on the paired "
        "right/wrong outcomes" + (" (per image, right in most seeds)" if seeds > 1 else "") + ". "
        "A difference counts as beyond noise only when the interval excludes 0 and p < 0.05.",
    ]
    return "\n".join(lines) + "\n"


def class_reports(predictions, variants, seeds, classes, out_dir) -> None:
    """scikit-learn's per-class precision/recall/F1 on val (and test when labelled), per variant."""
    for variant in variants:
        rows = []
        for split in ("val", "test"):
            frames = [predictions[variant, s][split] for s in seeds]
            if any((f["label"] == "").any() for f in frames):
                continue
            truth = pd.concat([f["label"] for f in frames])
            pred = pd.concat([f["pred_label"] for f in frames])
            report = classification_report(truth, pred, labels=classes, output_dict=True, zero_division=0)
            for name, values in report.items():
                if isinstance(values, dict):
                    rows.append({"split": split, "class": name, **values})
        write_csv(Path(out_dir) / f"classification_report_{variant}.csv", pd.DataFrame(rows))


def run(results_dir, variants, seeds, reference, classes_csv, out_dir, samples=10_000) -> pd.DataFrame:
    runs, predictions = load_runs(results_dir, variants, seeds)
    table = summarize(runs, predictions, reference, seeds, samples)
    out_dir = Path(out_dir)
    write_csv(out_dir / "runs.csv", runs)
    write_csv(out_dir / "table.csv", table)
    write_text(out_dir / "table.md", markdown(table, reference))
    classes = pd.read_csv(classes_csv, dtype={"name": str}).sort_values("index")["name"].tolist()
    class_reports(predictions, variants, seeds, classes, out_dir)
    log.info("ablation table:\n%s", markdown(table, reference))
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", required=True)
    parser.add_argument("--variants", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--classes", required=True, help="classes.csv of the index")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--bootstrap-samples", type=int, default=10_000)
    args = parser.parse_args(argv)
    setup_logging()
    run(args.results_dir, args.variants, args.seeds, args.reference, args.classes, args.out_dir,
        args.bootstrap_samples)
