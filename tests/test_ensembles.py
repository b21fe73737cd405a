"""Ensembles and the ablation table's rows for them; honest wording for single runs."""

import numpy as np
import pandas as pd
import pytest
from imageclf.core import tables
from imageclf.core.metrics import NAMES
from imageclf.evaluation import ensemble
from imageclf.report import ablation, stats

CLASSES = ["a", "b", "c"]


def predictions(seed: int, labels, n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet([1.0] * len(CLASSES), size=n).round(6)
    names = [f"img{i:03d}" for i in range(n)]
    predicted = [CLASSES[i] for i in probs.argmax(1)]
    frame = pd.DataFrame({"image_name": names, "label": labels, "pred_label": predicted,
                          "correct": [(p == t) if t else None for p, t in zip(predicted, labels)]})
    return pd.concat([frame, pd.DataFrame(probs, columns=[f"prob_{c}" for c in CLASSES])], axis=1)


@pytest.fixture
def runs(tmp_path):
    labels = [CLASSES[i % 3] for i in range(40)]
    tables.write_classes(tmp_path / "classes.csv", CLASSES)
    out = []
    for variant, seeds in (("full", [0, 1, 2]), ("other", [0, 1, 2])):
        for seed in seeds:
            folder = tmp_path / variant / f"seed{seed}"
            for split in ("val", "test"):
                tables.write_predictions(folder / f"{split}.csv", predictions(hash((variant, seed, split)) % 1000, labels))
            tables.write_run(folder / "run.json", {"parameters": 1000, "train_minutes": 1.5, "config_hash": "x",
                                                   "index_hash": "y"})
            tables.write_selection(folder / "selection.json", {"epoch": 3, "metric": "val_acc", "val_loss": 0.5})
            out.append({"variant": variant, "seed": seed, "val": str(folder / "val.csv"), "test": str(folder / "test.csv"),
                        "models": [{"fold": None, "run": str(folder / "run.json"),
                                    "selection": str(folder / "selection.json"), "history": str(folder / "history.csv")}]})
    return tmp_path, out


def manifest(base, runs, ensembles=()) -> str:
    """The manifest the workflow would write for these runs and ensembles."""
    path = base / "manifest.json"
    tables.write_manifest(path, {"index": {"classes": str(base / "classes.csv"), "val": ""}, "cv": {"folds": 0}, "runs": runs,
                                 "ensembles": list(ensembles),
                                 "submitted": {"name": "full", "seed": 0, "val": runs[0]["val"], "test": runs[0]["test"]}})
    return path


def full_x3(base, members, tmp_path) -> dict:
    """The ensemble of full's three runs, written, as its manifest entry."""
    for split in ("val", "test"):
        ensemble.run([m[split] for m in members[:3]], base / "classes.csv", tmp_path / f"ens_{split}.csv")
    return {"name": "full_x3", "tta": [], "val": str(tmp_path / "ens_val.csv"), "test": str(tmp_path / "ens_test.csv"),
            "members": [{"variant": "full", "seed": s, "val": members[s]["val"], "test": members[s]["test"]}
                        for s in range(3)]}


def test_an_ensemble_of_one_run_is_that_run(runs, tmp_path):
    base, members = runs
    ensemble.run([members[0]["val"]], base / "classes.csv", tmp_path / "one.csv")
    alone, single = tables.read_predictions(members[0]["val"]), tables.read_predictions(tmp_path / "one.csv")
    pd.testing.assert_frame_equal(alone, single)


def test_an_ensemble_averages_its_members_probabilities(runs, tmp_path):
    base, members = runs
    paths = [m["val"] for m in members[:3]]
    result = ensemble.run(paths, base / "classes.csv", tmp_path / "mean.csv")
    frames = [tables.read_predictions(p) for p in paths]
    columns = [f"prob_{c}" for c in CLASSES]
    mean = np.mean([f[columns].to_numpy() for f in frames], axis=0)
    assert np.allclose(result[columns].to_numpy(), mean, atol=1e-6)
    assert result["pred_label"].tolist() == [CLASSES[i] for i in mean.argmax(1)]
    assert list(result.columns) == list(frames[0].columns)  # a run's columns


def test_the_table_gains_a_row_per_ensemble(runs, tmp_path):
    base, members = runs
    table = ablation.run(manifest(base, members, [full_x3(base, members, tmp_path)]), "full", tmp_path / "out", 300)
    assert table["variant"].tolist() == ["full", "other", "full_x3"]
    row = table.set_index("variant").loc["full_x3"]
    assert row["kind"] == "ensemble" and row["runs"] == 1 and row["parameters"] == 3000
    truth = tables.read_predictions(tmp_path / "ens_test.csv")
    assert row["test_acc_mean"] == pytest.approx((truth["label"] == truth["pred_label"]).mean())
    assert np.isfinite(row["test_acc_ci_low"]) and 0 < row["test_p"] <= row["test_p_holm"] <= 1
    markdown = (tmp_path / "out" / "table.md").read_text()
    assert "| full_x3 |" in markdown and "Ensembles (full_x3)" in markdown


def test_single_runs_say_seed_noise_is_unmeasured(runs, tmp_path):
    base, members = runs
    single = [m for m in members if m["seed"] == 0]
    table = ablation.run(manifest(base, single), "full", tmp_path / "out", 300)
    assert "seed noise unmeasured" in table.set_index("variant").loc["other", "val_verdict"]
    markdown = (tmp_path / "out" / "table.md").read_text()
    assert "seed-to-seed noise is unmeasured" in markdown
    several = ablation.run(manifest(base, members), "full", tmp_path / "out3", 300)
    assert "unmeasured" not in several.set_index("variant").loc["other", "val_verdict"]
    assert stats.verdict(0.01, 0.05, 0.01, seed_noise=False).startswith("better on these images")


def test_selection_may_pick_the_ema_weights():
    from imageclf.evaluation.select import best_epoch

    history = pd.DataFrame({"epoch": [1, 2, 3], "val_acc": [0.5, 0.7, 0.6], "val_loss": [1.0, 0.8, 0.9],
                            "val_acc_ema": [0.4, 0.7, 0.75], "val_loss_ema": [1.1, 0.7, 0.75]})
    assert best_epoch(history, "val_acc") == (3, "ema")
    assert best_epoch(history, "val_loss") == (2, "ema")
    history["val_acc_ema"] = [0.4, 0.7, 0.6]
    assert best_epoch(history, "val_acc") == (2, "model")  # a tie keeps the trained weights
    assert best_epoch(history.drop(columns=["val_acc_ema", "val_loss_ema"]), "val_acc") == (2, "model")


def test_every_row_takes_its_val_loss_from_the_predictions_its_accuracy_comes_from(runs, tmp_path):
    base, members = runs
    table = ablation.run(manifest(base, members, [full_x3(base, members, tmp_path)]), "full", tmp_path / "out", 200)

    def loss(path):  # by hand: -log of each image's probability of its true class
        frame = tables.read_predictions(path)
        return -np.mean([np.log(max(row[f"prob_{row['label']}"], 5e-7)) for _, row in frame.iterrows()])

    rows = table.set_index("variant")
    assert rows.loc["full", "val_loss_mean"] == pytest.approx(np.mean([loss(m["val"]) for m in members[:3]]))
    assert rows.loc["full_x3", "val_loss_mean"] == pytest.approx(loss(tmp_path / "ens_val.csv"))
    runs_csv = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert runs_csv["val_loss"].tolist() == pytest.approx([loss(m["val"]) for m in members])  # not selection.json's 0.5
    assert "plain cross-entropy (no label smoothing) of the same val predictions" in (tmp_path / "out" / "table.md").read_text()


def test_an_ensemble_is_compared_with_single_runs_of_the_reference(runs, tmp_path):
    base, members = runs
    table = ablation.run(manifest(base, members, [full_x3(base, members, tmp_path)]), "full", tmp_path / "out", 200)
    row = table.set_index("variant").loc["full_x3"]
    single = np.mean([(lambda f: (f["label"] == f["pred_label"]).mean())(tables.read_predictions(m["test"]))
                      for m in members[:3]])
    assert row["test_acc_diff"] == pytest.approx(row["test_acc_mean"] - single)
    assert row["compared_with"] == "full's 3 run(s)"


def test_balanced_accuracy_and_macro_f1_columns_match_scikit_learn(runs, tmp_path):
    from sklearn.metrics import balanced_accuracy_score, f1_score

    base, members = runs
    table = ablation.run(manifest(base, members), "full", tmp_path / "out", 200).set_index("variant")
    frames = [tables.read_predictions(m["val"]) for m in members[3:]]
    assert table.loc["other", "val_balanced_acc_mean"] == pytest.approx(
        np.mean([balanced_accuracy_score(f["label"], f["pred_label"]) for f in frames]))
    assert table.loc["other", "val_macro_f1_mean"] == pytest.approx(
        np.mean([f1_score(f["label"], f["pred_label"], average="macro") for f in frames]))
    for split in ("val", "test"):
        for metric in ("balanced_acc", "macro_f1"):
            low, diff, high = (table.loc["other", f"{split}_{metric}_{k}"] for k in ("ci_low", "diff", "ci_high"))
            assert low <= diff <= high and low < high
    markdown = (tmp_path / "out" / "table.md").read_text()
    assert "test Δ bal. acc (95% CI)" in markdown and "test Δ macro-F1 (95% CI)" in markdown


def test_the_verdict_uses_holms_adjusted_p(runs, tmp_path, monkeypatch):
    base, members = runs
    ensembles = [full_x3(base, members, tmp_path)]
    ensembles.append({**ensembles[0], "name": "full_x3b"})
    raw = iter([0.03, 0.04, 0.045] * 2)  # each below 0.05, none after Holm (0.09 for the smallest)

    def sure(labels, ref, other, n_classes, samples, seed=0):
        interval = {"diff": 0.1, "ci_low": 0.05, "ci_high": 0.15}
        return {**{metric: interval for metric in NAMES}, "p": next(raw)}

    monkeypatch.setattr(stats, "compare", sure)
    table = ablation.run(manifest(base, members, ensembles), "full", tmp_path / "out", 200).set_index("variant")
    compared = table.drop(index="full")
    assert compared["val_p_holm"].tolist() == pytest.approx([0.09, 0.09, 0.09])
    assert (compared["val_verdict"] == "not distinguishable from noise").all()
    assert "p = 0.03 (0.09)" in (tmp_path / "out" / "table.md").read_text()


def test_the_class_report_gives_each_class_accuracy_an_interval(runs, tmp_path):
    base, members = runs
    ablation.run(manifest(base, members), "full", tmp_path / "out", 200)
    report = pd.read_csv(tmp_path / "out" / "classification_report_full.csv")
    per_class = report[report["class"].isin(CLASSES)]
    assert len(per_class) == 6  # three classes, val and test
    assert (per_class["acc_ci_low"] <= per_class["accuracy"]).all()
    assert (per_class["accuracy"] <= per_class["acc_ci_high"]).all()
    assert per_class["accuracy"].tolist() == pytest.approx(per_class["recall"].tolist())  # over the seeds
    assert {"p_worse_holm", "surely_worse"} <= set(report.columns)


def test_the_manifest_is_rewritten_only_when_it_changes(runs, tmp_path):
    base, members = runs
    path = manifest(base, members)
    before = path.stat().st_mtime_ns
    assert not tables.write_manifest(path, {k: v for k, v in tables.read_manifest(path).items() if k != "version"})
    assert path.stat().st_mtime_ns == before
    loaded = tables.read_manifest(path)
    assert [(r["variant"], r["seed"]) for r in loaded["runs"]] == [(m["variant"], m["seed"]) for m in members]
    broken = {k: v for k, v in loaded.items() if k != "version"}
    broken["runs"] = [{k: v for k, v in r.items() if k != "models"} for r in broken["runs"]]
    assert tables.write_manifest(path, broken)
    with pytest.raises(tables.DataError, match="a 'runs' entry lacks \\['models'\\]"):
        tables.read_manifest(path)


def test_selection_by_balanced_accuracy_or_macro_f1():
    from imageclf.evaluation.select import best_epoch

    history = pd.DataFrame({"epoch": [1, 2, 3], "val_acc": [0.5, 0.9, 0.8], "val_loss": [1.0, 0.6, 0.7],
                            "val_balanced_acc": [0.5, 0.6, 0.8], "val_macro_f1": [0.7, 0.6, 0.65]})
    assert best_epoch(history, "val_acc") == (2, "model")
    assert best_epoch(history, "val_balanced_acc") == (3, "model")
    assert best_epoch(history, "val_macro_f1") == (1, "model")


def test_selection_by_a_metric_an_old_history_lacks_says_so(tmp_path):
    from imageclf.evaluation import select
    tables.write_history(tmp_path / "history.csv", pd.DataFrame(
        {"epoch": [1], "train_loss": [1.0], "val_loss": [0.5], "val_acc": [0.9], "lr": [0.1], "seconds": [1.0],
         "images_per_s": [10.0]}))
    with pytest.raises(tables.DataError, match="history.csv: has no val_macro_f1 column"):
        select.select(tmp_path / "history.csv", tmp_path / "best.pt", "val_macro_f1", tmp_path / "m.pt",
                      tmp_path / "s.json")


def test_a_table_of_the_reference_alone_is_written(runs, tmp_path):
    base, members = runs
    table = ablation.run(manifest(base, members[:1]), "full", tmp_path / "out", 100)
    assert table["variant"].tolist() == ["full"] and table["test_verdict"].tolist() == ["reference"]
    assert "| full | 1 |" in (tmp_path / "out" / "table.md").read_text()
