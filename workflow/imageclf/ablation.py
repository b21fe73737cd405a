"""The ablation table: every variant, mean and sd over seeds, and how sure each difference is."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import classification_report

from . import stats, tables
from .io_utils import write_text
from .logs import add_log_argument, setup_logging

log = logging.getLogger("imageclf.ablation")


def load_runs(runs: list[dict]) -> tuple[pd.DataFrame, dict]:
    """runs: one dict per (variant, seed) with the paths of its run.json ("run"), selection.json
    ("selection") and predictions ("val", "test"). One row per run, and the prediction tables."""
    rows, predictions = [], {}
    for paths in runs:
        variant, seed = paths["variant"], int(paths["seed"])
        run, selection = tables.read_run(paths["run"]), tables.read_selection(paths["selection"])
        preds = {split: tables.read_predictions(paths[split]) for split in ("val", "test")}
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
            "index_hash": run["index_hash"], "warnings": "; ".join(tables.selection_warnings(selection)),
        })
    return pd.DataFrame(rows), predictions


def ensemble_rows(ensembles: list[dict], runs: pd.DataFrame, predictions: dict) -> pd.DataFrame:
    """One row per ensemble, shaped like a run's (seed 0), its predictions added to `predictions`.

    ensembles: dicts with "name", "members" [(variant, seed)], and the "val" and "test" paths."""
    rows = []
    for spec in ensembles:
        preds = {split: tables.read_predictions(spec[split]) for split in ("val", "test")}
        predictions[spec["name"], 0] = preds
        members = runs.set_index(["variant", "seed"]).loc[spec["members"]]
        val, test = preds["val"], preds["test"]
        truth = [f"{tables.PROB_PREFIX}{label}" for label in val["label"]]
        probs = np.array([row[column] for (_, row), column in zip(val.iterrows(), truth)], dtype=float)
        test_known = test["label"] != ""
        rows.append({
            "variant": spec["name"], "seed": 0, "parameters": int(members["parameters"].sum()),
            "selected_epoch": np.nan, "select_metric": "", "kind": "ensemble",
            "val_acc": float((val["label"] == val["pred_label"]).mean()),
            "val_loss": float(-np.log(np.clip(probs, 1e-12, None)).mean()),  # plain cross-entropy
            "test_acc": float((test["label"] == test["pred_label"])[test_known].mean())
            if test_known.all() and len(test_known) else np.nan,
            "train_minutes": float(members["train_minutes"].sum()), "config_hash": "", "index_hash": "",
        })
    return pd.DataFrame(rows)


def correctness(predictions, variant, seeds, split) -> np.ndarray:
    """(seeds, images) array of 0/1, images in name order (the prediction files are sorted)."""
    return np.stack([
        (predictions[variant, s][split]["label"] == predictions[variant, s][split]["pred_label"]).to_numpy()
        for s in seeds
    ]).astype(float)


def summarize(runs: pd.DataFrame, predictions, reference: str, samples: int) -> pd.DataFrame:
    """One row per variant (and ensemble): mean and sd over its runs, and its difference from
    `reference` on the same images with a paired bootstrap interval and McNemar's test."""
    splits = ["val"] + (["test"] if runs["test_acc"].notna().all() else [])
    reference_seeds = runs.loc[runs["variant"] == reference, "seed"].tolist()
    rows = []
    for variant, group in runs.groupby("variant", sort=False):
        seeds = group["seed"].tolist()
        kind = group["kind"].iloc[0] if "kind" in group and isinstance(group["kind"].iloc[0], str) else "variant"
        row = {"variant": variant, "kind": kind, "runs": len(group),
               "parameters": int(group["parameters"].iloc[0]),
               # the runs select did not trust (selection.json warnings); ensembles: none of their own
               "flagged": ", ".join(f"seed{s}" for s, w in zip(seeds, group.get("warnings", [""] * len(group)))
                                    if isinstance(w, str) and w)}
        for metric in ("val_acc", "val_loss", "test_acc", "selected_epoch", "train_minutes"):
            values = group[metric].astype(float)
            row[f"{metric}_mean"] = values.mean()
            row[f"{metric}_sd"] = values.std(ddof=1) if len(values) > 1 else np.nan
        for split in splits:
            ref = correctness(predictions, reference, reference_seeds, split)
            other = correctness(predictions, variant, seeds, split)
            boot = stats.paired_bootstrap(ref, other, samples=samples)
            test = stats.mcnemar_exact(stats.majority_correct(ref), stats.majority_correct(other))
            # seed-to-seed noise is measured only where the reference or the variant has several runs
            one_run_each = len(reference_seeds) == 1 and len(seeds) == 1  # an ensemble is one row too
            row.update({
                f"{split}_diff": boot["diff"], f"{split}_ci_low": boot["ci_low"],
                f"{split}_ci_high": boot["ci_high"], f"{split}_mcnemar_p": test["p_value"],
                f"{split}_verdict": "reference" if variant == reference
                else stats.verdict(boot["ci_low"], boot["ci_high"], test["p_value"], seed_noise=not one_run_each),
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
    flagged = "flagged" in table and table["flagged"].fillna("").astype(bool).any()
    if flagged:
        head.append("untrusted runs")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        loss = f"{r.val_loss_mean:.4f}" + ("" if pd.isna(r.val_loss_sd) else f" ± {r.val_loss_sd:.4f}")
        epoch = "n/a" if pd.isna(r.selected_epoch_mean) else f"{r.selected_epoch_mean:.1f}"  # ensembles
        cells = [r.variant, str(r.runs), f"{r.parameters:,}", pct(r.val_acc_mean, r.val_acc_sd), loss,
                 epoch, f"{r.train_minutes_mean:.1f}"]
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
        if flagged:
            cells.append(r.flagged if isinstance(r.flagged, str) and r.flagged else "none")
        lines.append("| " + " | ".join(cells) + " |")
    seeds = int(table.loc[table["kind"] == "variant", "runs"].max())
    lines += [
        "",
        f"Mean ± sd over {seeds} seed(s) per variant. Δ: accuracy of the variant minus {reference}, in points, "
        "with a 95 % paired bootstrap interval (images resampled"
        + (", seeds too" if seeds > 1 else "") + "). McNemar: exact two-sided test on the paired "
        "right/wrong outcomes" + (" (per image, right in most seeds)" if seeds > 1 else "") + ". "
        + ("A difference counts as beyond noise only when the interval excludes 0 and p < 0.05."
           if seeds > 1 else
           "With one run per variant, the interval and p cover the sampling of images only: seed-to-seed "
           "noise is unmeasured, and one training run can differ from another by as much. Train several "
           "seeds (`seeds`) before calling a difference real."),
    ]
    if flagged:
        lines += ["", "Untrusted runs: select flagged them (val accuracy no better than chance, or a train loss "
                  "that ended far above where it started); their numbers are in the rows above all the same. "
                  "Why: each run's selection.json (`warnings`)."]
    ensembles = table[table["kind"] == "ensemble"]
    if len(ensembles):
        lines.append("")
        lines.append("Ensembles (" + ", ".join(ensembles["variant"]) + "): the mean class probabilities of their "
                     "member runs, one prediction per image; parameters and train minutes are their members' sums, "
                     "and val loss is the plain cross-entropy of the averaged probabilities.")
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
        tables.write_table(Path(out_dir) / f"classification_report_{variant}.csv", pd.DataFrame(rows))


def run(runs: list[dict], reference, classes_csv, out_dir, samples: int, ensembles: list[dict] = ()) -> pd.DataFrame:
    """runs: see load_runs; ensembles: see ensemble_rows. Writes runs.csv, table.csv, table.md and a
    classification report per variant into out_dir."""
    runs_frame, predictions = load_runs(runs)
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    seeds = list(dict.fromkeys(int(r["seed"]) for r in runs))
    runs_frame["kind"] = "variant"
    every = pd.concat([runs_frame, ensemble_rows(list(ensembles), runs_frame, predictions)], ignore_index=True)
    table = summarize(every, predictions, reference, samples)
    out_dir = Path(out_dir)
    tables.write_table(out_dir / "runs.csv", runs_frame)
    tables.write_table(out_dir / "table.csv", table)
    write_text(out_dir / "table.md", markdown(table, reference))
    class_reports(predictions, variants, seeds, tables.read_classes(classes_csv), out_dir)
    log.info("ablation table:\n%s", markdown(table, reference))
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="imageclf ablation", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, metavar="VARIANT:SEED",
                        help="the runs; the path lists below follow this order")
    for name, what in (("run-records", "run.json"), ("selections", "selection.json"),
                       ("val-predictions", "val predictions"), ("test-predictions", "test predictions")):
        parser.add_argument(f"--{name}", nargs="+", required=True, help=f"{what} of each run")
    parser.add_argument("--reference", required=True)
    parser.add_argument("--classes", required=True, help="classes.csv of the index")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--bootstrap-samples", type=int, required=True)
    parser.add_argument("--ensembles", nargs="*", default=[], metavar="NAME=VARIANT:SEED,...",
                        help="ensembles and their member runs; their prediction files follow in this order")
    parser.add_argument("--ensemble-val-predictions", nargs="*", default=[])
    parser.add_argument("--ensemble-test-predictions", nargs="*", default=[])
    add_log_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_file)
    lists = (args.run_records, args.selections, args.val_predictions, args.test_predictions)
    if any(len(paths) != len(args.runs) for paths in lists):
        parser.error("give one path per run in each list")
    runs = []
    for spec, record, selection, val, test in zip(args.runs, *lists):
        variant, seed = spec.rsplit(":", 1)
        runs.append({"variant": variant, "seed": int(seed), "run": record, "selection": selection,
                     "val": val, "test": test})
    if not len(args.ensembles) == len(args.ensemble_val_predictions) == len(args.ensemble_test_predictions):
        parser.error("give val and test predictions for each ensemble")
    ensembles = []
    for spec, val, test in zip(args.ensembles, args.ensemble_val_predictions, args.ensemble_test_predictions):
        name, members = spec.split("=", 1)
        pairs = [member.rsplit(":", 1) for member in members.split(",")]
        ensembles.append({"name": name, "members": [(v, int(s)) for v, s in pairs], "val": val, "test": test})
    run(runs, args.reference, args.classes, args.out_dir, args.bootstrap_samples, ensembles)
