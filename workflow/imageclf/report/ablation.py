"""The ablation table: every variant and ensemble, mean and sd over seeds, and how sure each
difference from the reference is (report/stats.py; the procedure is described in docs/ablation.md)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import classification_report

from ..core import tables
from ..core.errors import DataError
from ..core.io_utils import write_text
from ..core.logs import add_log_argument, setup_logging
from ..core.metrics import LABELS, NAMES, SECONDARY
from . import stats

log = logging.getLogger("imageclf.ablation")

# What this stage writes, as a version: raised by a change that alters its outputs, and by nothing else
# (core/stages.py). Raising it reruns this stage and everything downstream, on every project.
RESULTS_VERSION = 1

SPLITS = ("val", "test")
# Probabilities are stored to 6 decimals: a stored 0 stands for anything below 5e-7.
PROB_FLOOR = 5e-7


def labelled(frame: pd.DataFrame) -> bool:
    return len(frame) > 0 and bool((frame["label"] != "").all())


def class_indices(frame: pd.DataFrame, column: str, classes: list[str], path) -> np.ndarray:
    position = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(frame[column]) - set(position))
    if unknown:
        raise DataError(f"{path}: {column} holds classes the index lacks ({unknown[:3]}); rerun its predict job")
    return frame[column].map(position).to_numpy()


def cross_entropy(frame: pd.DataFrame) -> float:
    """Plain cross-entropy (no label smoothing) of a prediction file's probabilities."""
    columns = [f"{tables.PROB_PREFIX}{label}" for label in frame["label"]]
    probs = frame[tables.probability_columns(frame)]
    truth = probs.to_numpy()[np.arange(len(frame)), probs.columns.get_indexer(columns)]
    return float(-np.log(np.clip(truth, PROB_FLOOR, None)).mean())


def row_scores(preds: dict, classes: list[str], paths: dict) -> dict:
    """Accuracy, balanced accuracy and macro-F1 of each labelled split, and the val loss, all
    from the same prediction files."""
    out = {"val_loss": cross_entropy(preds["val"])}
    for split in SPLITS:
        frame = preds[split]
        if not labelled(frame):
            out.update({f"{split}_{metric}": np.nan for metric in NAMES})
            continue
        truth = class_indices(frame, "label", classes, paths[split])
        pred = class_indices(frame, "pred_label", classes, paths[split])
        out.update({f"{split}_{metric}": value for metric, value in stats.score(truth, pred, len(classes)).items()})
    return out


def full_fit_accuracy(entry: dict) -> float:
    """The test accuracy of a run's full fit (cv.full_fit), NaN without one or without test labels."""
    if not entry.get("full_fit"):
        return np.nan
    accuracy = tables.accuracy(tables.read_predictions(entry["full_fit"]))
    return np.nan if accuracy is None else accuracy


def load_rows(manifest: dict, classes: list[str]) -> tuple[pd.DataFrame, dict]:
    """One row per run and per ensemble (kind "variant" or "ensemble"), and their predictions:
    {(name, seed): {split: frame}} (an ensemble is seed 0)."""
    rows, predictions = [], {}
    for entry in manifest["runs"]:
        variant, seed = entry["variant"], int(entry["seed"])
        # one trained model, or one per fold under cross-validation: minutes add up, epochs average
        models = [(tables.read_run(m["run"]), tables.read_selection(m["selection"])) for m in entry["models"]]
        preds = predictions[variant, seed] = {split: tables.read_predictions(entry[split]) for split in SPLITS}
        first_run, first_selection = models[0]
        warnings = [f"fold {m['fold']}: {w}" if m["fold"] is not None else w
                    for m, (_, selection) in zip(entry["models"], models) for w in tables.selection_warnings(selection)]
        rows.append({
            "variant": variant, "seed": seed, "kind": "variant", "parameters": first_run["parameters"],
            "selected_epoch": float(np.mean([selection["epoch"] for _, selection in models])),
            "select_metric": first_selection["metric"], **row_scores(preds, classes, entry),
            "train_minutes": float(sum(run["train_minutes"] for run, _ in models)),
            "config_hash": first_run["config_hash"], "index_hash": first_run["index_hash"],
            "warnings": "; ".join(warnings), "full_fit_test_acc": full_fit_accuracy(entry),
        })
    runs = pd.DataFrame(rows).set_index(["variant", "seed"], drop=False)
    for entry in manifest["ensembles"]:
        preds = predictions[entry["name"], 0] = {split: tables.read_predictions(entry[split]) for split in SPLITS}
        members = runs.loc[[(m["variant"], int(m["seed"])) for m in entry["members"]]]
        rows.append({
            "variant": entry["name"], "seed": 0, "kind": "ensemble", "parameters": int(members["parameters"].sum()),
            "selected_epoch": np.nan, "select_metric": "", **row_scores(preds, classes, entry),
            "train_minutes": float(members["train_minutes"].sum()), "config_hash": "", "index_hash": "",
            "warnings": "", "full_fit_test_acc": np.nan,
        })
    return pd.DataFrame(rows), predictions


def aligned(predictions: dict, keys: list, split: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predicted class per row key and image), checked to cover the same labelled images."""
    frames = [predictions[key][split] for key in keys]
    for key, frame in zip(keys, frames):
        if not frame[["image_name", "label"]].equals(frames[0][["image_name", "label"]]):
            raise DataError(f"{key[0]} (seed {key[1]}): its {split} predictions cover other images or labels "
                            f"than {keys[0][0]}'s; rerun its predict job")
    labels = class_indices(frames[0], "label", classes, f"{keys[0][0]} {split} predictions")
    return labels, np.stack([class_indices(f, "pred_label", classes, f"{k[0]} {split}") for k, f in zip(keys, frames)])


def summarize(rows: pd.DataFrame, predictions, reference: str, classes: list[str], samples: int) -> pd.DataFrame:
    """One row per variant and ensemble: mean and sd over its runs, and its paired comparison with
    the reference's runs on the same images (stats.compare), Holm-corrected per split."""
    splits = [s for s in SPLITS if rows[f"{s}_acc"].notna().all()]
    ref_keys = [(reference, int(s)) for s in rows.loc[rows["variant"] == reference, "seed"]]
    out = []
    for name, group in rows.groupby("variant", sort=False):
        row = {"variant": name, "kind": group["kind"].iloc[0], "runs": len(group),
               "parameters": int(group["parameters"].iloc[0]),
               "compared_with": "" if name == reference else f"{reference}'s {len(ref_keys)} run(s)",
               # the runs select did not trust (selection.json warnings); ensembles: none of their own
               "flagged": ", ".join(f"seed{s}" for s, w in zip(group["seed"], group["warnings"].fillna(""))
                                    if isinstance(w, str) and w)}
        for metric in [f"{s}_{m}" for s in SPLITS for m in NAMES] + ["val_loss", "selected_epoch",
                                                                             "train_minutes", "full_fit_test_acc"]:
            values = group[metric].astype(float)
            row[f"{metric}_mean"] = values.mean()
            row[f"{metric}_sd"] = values.std(ddof=1) if len(values) > 1 else np.nan
        for split in splits:
            if name == reference:
                row[f"{split}_verdict"] = "reference"
                continue
            keys = ref_keys + [(name, int(s)) for s in group["seed"]]
            labels, pred = aligned(predictions, keys, split, classes)
            result = stats.compare(labels, pred[:len(ref_keys)], pred[len(ref_keys):], len(classes), samples)
            for metric in NAMES:
                row.update({f"{split}_{metric}_{key}": value for key, value in result[metric].items()})
            row[f"{split}_p"] = result["p"]
        out.append(row)
    table = pd.DataFrame(out)
    for split in splits:
        if f"{split}_p" not in table:  # the reference alone: nothing to compare
            table[f"{split}_p"] = np.nan
        compared = table["variant"] != reference
        table[f"{split}_p_holm"] = np.nan
        table.loc[compared, f"{split}_p_holm"] = stats.holm(table.loc[compared, f"{split}_p"])
        one_run_each = (table["runs"] == 1) & (len(ref_keys) == 1)
        for i in table.index[compared]:
            table.loc[i, f"{split}_verdict"] = stats.verdict(
                table.loc[i, f"{split}_acc_ci_low"], table.loc[i, f"{split}_acc_ci_high"],
                table.loc[i, f"{split}_p_holm"], seed_noise=not one_run_each[i])
    return table


def has_full_fits(table: pd.DataFrame) -> bool:
    """Whether the table has full fits' test accuracies (cv.full_fit with test labels)."""
    return "full_fit_test_acc_mean" in table and bool(table["full_fit_test_acc_mean"].notna().any())


def pct(mean, sd) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{100 * mean:.2f}" + ("" if pd.isna(sd) else f" ± {100 * sd:.2f}")


def interval(r, split: str, metric: str) -> str:
    return (f"{100 * r[f'{split}_{metric}_diff']:+.2f} [{100 * r[f'{split}_{metric}_ci_low']:+.2f}, "
            f"{100 * r[f'{split}_{metric}_ci_high']:+.2f}]")


def markdown(table: pd.DataFrame, reference: str, spread: str = "", folds: int = 0) -> str:
    """folds: cv.folds; under cross-validation the val columns are the out-of-fold predictions of
    every labelled image, and are named so."""
    splits = [s for s in SPLITS if f"{s}_p" in table.columns]
    name = {"val": "oof" if folds else "val", "test": "test"}
    head = ["variant", "runs", "parameters", f"{name['val']} acc %", f"{name['val']} loss"]
    head += ["test acc %"] if "test" in splits else []
    full_fit = "test" in splits and has_full_fits(table)
    head += ["full fit test acc %"] if full_fit else []
    head += ["selected epoch", "train min"]
    head += [f"{name[split]} Δ acc vs {reference} (95% CI); p (Holm)" for split in splits]
    flagged = bool(table["flagged"].fillna("").astype(bool).any())
    head += ["untrusted runs"] if flagged else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        loss = f"{r.val_loss_mean:.4f}" + ("" if pd.isna(r.val_loss_sd) else f" ± {r.val_loss_sd:.4f}")
        epoch = "n/a" if pd.isna(r.selected_epoch_mean) else f"{r.selected_epoch_mean:.1f}"  # ensembles
        cells = [r.variant, str(r.runs), f"{r.parameters:,}", pct(r.val_acc_mean, r.val_acc_sd), loss]
        cells += [pct(r.test_acc_mean, r.test_acc_sd)] if "test" in splits else []
        cells += [pct(r.full_fit_test_acc_mean, r.full_fit_test_acc_sd)] if full_fit else []
        cells += [epoch, f"{r.train_minutes_mean:.1f}"]
        for split in splits:
            cells.append("reference" if r.variant == reference else
                         f"{interval(r, split, 'acc')}; p = {r[f'{split}_p']:.2g} ({r[f'{split}_p_holm']:.2g}): "
                         f"{r[f'{split}_verdict']}")
        cells += [r.flagged if isinstance(r.flagged, str) and r.flagged else "none"] if flagged else []
        lines.append("| " + " | ".join(cells) + " |")
    if flagged:
        lines += ["", "Untrusted runs: select flagged them (val accuracy no better than chance, or a train loss "
                  "that ended far above where it started); their numbers are in the rows above all the same. "
                  "Why: each run's selection.json (`warnings`)."]
    others = " and ".join(LABELS[m] for m in SECONDARY)
    lines += ["", f"{others[0].upper()}{others[1:]} (same predictions, same paired intervals):", ""]
    head = ["variant"] + [f"{name[s]} {LABELS[m]} %" for s in splits for m in SECONDARY]
    head += [f"{name[s]} Δ {LABELS[m]} (95% CI)" for s in splits for m in SECONDARY]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        cells = [r.variant] + [pct(r[f"{s}_{m}_mean"], r[f"{s}_{m}_sd"]) for s in splits
                               for m in SECONDARY]
        cells += ["reference" if r.variant == reference else interval(r, s, m) for s in splits
                  for m in SECONDARY]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", footnote(table, reference, splits, folds) + spread]
    return "\n".join(lines) + "\n"


def spread_check(rows: pd.DataFrame, predictions, splits: list[str]) -> str:
    """One sentence per split: the sd of run accuracy over seeds, pooled over the variants with
    several runs, against what independent per-image disagreement predicts (docs/ablation.md)."""
    observed_sd, expected_sd = [], []
    for split in splits:
        observed = expected = weight = 0.0
        for name, group in rows[rows["kind"] == "variant"].groupby("variant", sort=False):
            if len(group) < 2:
                continue
            frames = [predictions[name, int(s)][split] for s in group["seed"]]
            obs, exp = stats.seed_spread([(f["label"] == f["pred_label"]).to_numpy() for f in frames])
            observed, expected, weight = observed + (len(group) - 1) * obs, expected + (len(group) - 1) * exp, \
                weight + len(group) - 1
        if weight:
            observed_sd.append(f"{100 * np.sqrt(observed / weight):.2f} on {split}")
            expected_sd.append(f"{100 * np.sqrt(expected / weight):.2f}")
    if not observed_sd:
        return ""
    return (" **Seed spread**: the sd of a run's accuracy over seeds, pooled over the variants with several "
            f"runs, is {' and '.join(observed_sd)} (points), where image-by-image disagreement alone predicts "
            f"{' and '.join(expected_sd)}; far above that, runs differ as a whole and the p-values are too small.")


def footnote(table: pd.DataFrame, reference: str, splits: list[str], folds: int = 0) -> str:
    variants = table[table["kind"] == "variant"]
    seeds = int(variants["runs"].max())
    compared = int((table["variant"] != reference).sum())
    text = (
        f"Each column, one definition. **{', '.join(LABELS[m] for m in NAMES)}**: of the row's prediction files (with "
        f"`predict.tta`'s views; an ensemble's are its averaged probabilities), mean ± sd over its runs. "
        f"**val loss**: the plain cross-entropy (no label smoothing) of the same val predictions' "
        f"probabilities, runs and ensembles alike (stored to 6 decimals; a stored 0 counts as {PROB_FLOOR:g}). "
        f"**selected epoch**: the epoch `select.metric` chose. **Δ**: the row minus {reference}, in points: "
        f"per image, the row's mean correctness over its runs minus {reference}'s over its {seeds} run(s); "
        f"a variant's runs against {reference}'s runs, an ensemble (one prediction per image) against "
        f"single runs of {reference}. **95% CI**: percentile bootstrap over images, the same images for "
        f"both sides. **p**: sign-flip permutation test over images of the per-image difference in "
        f"accuracy; in brackets Holm-adjusted over the {compared} comparisons of each split. A difference is "
        f"beyond noise when the adjusted p < 0.05 and the interval excludes 0 (docs/ablation.md)."
    )
    if folds:
        text = (f"**Cross-validation** ({folds} folds): **oof** is every labelled image (train/ and val/) "
                f"predicted by the fold model that did not train on it; a run's **test** predictions are the "
                f"mean of its {folds} fold models' probabilities, its **selected epoch** their mean, its **train "
                f"min** their sum. Each fold model selected its checkpoint on its own held-out fold, which makes "
                f"out-of-fold accuracy slightly optimistic, equally for every variant. ") + (
                    "**full fit test acc**: of each run's full fit (`cv.full_fit`), one model trained on every "
                    "labelled image; the test Δ columns compare the fold averages. "
                    if has_full_fits(table)
                    else "") + text.replace(
                    "val predictions", "out-of-fold predictions").replace("**val loss**", "**oof loss**")
    if seeds == 1:
        text += (" With one run per variant, runs that differ as a whole (not image by image) are not "
                 "covered: seed-to-seed noise is unmeasured. Train several seeds (`seeds`) before calling "
                 "a difference real.")
    ensembles = table[table["kind"] == "ensemble"]
    if len(ensembles):
        text += (" Ensembles (" + ", ".join(ensembles["variant"]) + "): the mean class probabilities of their "
                 "member runs; parameters and train minutes are their members' sums.")
    return text


def class_reports(manifest: dict, predictions, classes, out_dir) -> None:
    """Per variant: scikit-learn's per-class precision/recall/F1 on val (and test when labelled),
    over its seeds, and each class's accuracy with a 95 % interval and whether it is surely below
    the other classes (stats.class_accuracy)."""
    seeds = {}
    for entry in manifest["runs"]:
        seeds.setdefault(entry["variant"], []).append(int(entry["seed"]))
    for variant, variant_seeds in seeds.items():
        rows = []
        for split in SPLITS:
            frames = [predictions[variant, s][split] for s in variant_seeds]
            if not all(labelled(f) for f in frames):
                continue
            truth = pd.concat([f["label"] for f in frames])
            pred = pd.concat([f["pred_label"] for f in frames])
            report = classification_report(truth, pred, labels=classes, output_dict=True, zero_division=0)
            correct = np.stack([(f["label"] == f["pred_label"]).to_numpy() for f in frames])
            accuracy = {row["class"]: row for row in stats.class_accuracy(frames[0]["label"], correct, classes)}
            for name, values in report.items():
                if isinstance(values, dict):
                    extra = {k: v for k, v in accuracy.get(name, {}).items() if k not in ("class", "images")}
                    rows.append({"split": split, "class": name, **values, **extra})
        tables.write_table(Path(out_dir) / f"classification_report_{variant}.csv", pd.DataFrame(rows))


def run(manifest_path, reference: str, out_dir, samples: int) -> pd.DataFrame:
    """Writes runs.csv, table.csv, table.md and a classification report per variant into out_dir."""
    manifest = tables.read_manifest(manifest_path)
    classes = tables.read_classes(manifest["index"]["classes"])
    rows, predictions = load_rows(manifest, classes)
    if reference not in set(rows.loc[rows["kind"] == "variant", "variant"]):
        raise DataError(f"{manifest_path}: ablation.reference '{reference}' has no runs in the manifest")
    table = summarize(rows, predictions, reference, classes, samples)
    out_dir = Path(out_dir)
    tables.write_table(out_dir / "runs.csv", rows[rows["kind"] == "variant"].drop(columns="kind"))
    tables.write_table(out_dir / "table.csv", table)
    text = markdown(table, reference, spread_check(rows, predictions, [s for s in SPLITS if f"{s}_p" in table]),
                    manifest["cv"]["folds"])
    write_text(out_dir / "table.md", text)
    class_reports(manifest, predictions, classes, out_dir)
    log.info("ablation table:\n%s", text)
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="imageclf ablation", description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="the workflow's manifest (results/manifest.json)")
    parser.add_argument("--reference", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--bootstrap-samples", type=int, required=True)
    add_log_argument(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_file)
    run(args.manifest, args.reference, args.out_dir, args.bootstrap_samples)
