"""Ensembles and the ablation table's rows for them; honest wording for single runs."""

import numpy as np
import pandas as pd
import pytest
from imageclf import ablation, ensemble, stats, tables

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
            out.append({"variant": variant, "seed": seed, "run": folder / "run.json",
                        "selection": folder / "selection.json", "val": folder / "val.csv", "test": folder / "test.csv"})
    return tmp_path, out


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
    for split in ("val", "test"):
        ensemble.run([m[split] for m in members[:3]], base / "classes.csv", tmp_path / f"ens_{split}.csv")
    spec = {"name": "full_x3", "members": [("full", 0), ("full", 1), ("full", 2)],
            "val": tmp_path / "ens_val.csv", "test": tmp_path / "ens_test.csv"}
    table = ablation.run(members, "full", base / "classes.csv", tmp_path / "out", 300, [spec])
    assert table["variant"].tolist() == ["full", "other", "full_x3"]
    row = table.set_index("variant").loc["full_x3"]
    assert row["kind"] == "ensemble" and row["runs"] == 1 and row["parameters"] == 3000
    truth = tables.read_predictions(tmp_path / "ens_test.csv")
    assert row["test_acc_mean"] == pytest.approx((truth["label"] == truth["pred_label"]).mean())
    assert np.isfinite(row["test_ci_low"]) and 0 <= row["test_mcnemar_p"] <= 1
    markdown = (tmp_path / "out" / "table.md").read_text()
    assert "| full_x3 |" in markdown and "Ensembles (full_x3)" in markdown


def test_single_runs_say_seed_noise_is_unmeasured(runs, tmp_path):
    base, members = runs
    single = [m for m in members if m["seed"] == 0]
    table = ablation.run(single, "full", base / "classes.csv", tmp_path / "out", 300)
    assert "seed noise unmeasured" in table.set_index("variant").loc["other", "val_verdict"]
    markdown = (tmp_path / "out" / "table.md").read_text()
    assert "seed-to-seed noise is unmeasured" in markdown and "beyond noise only when" not in markdown
    several = ablation.run(members, "full", base / "classes.csv", tmp_path / "out3", 300)
    assert "unmeasured" not in several.set_index("variant").loc["other", "val_verdict"]
    assert stats.verdict(0.01, 0.05, 0.01, seed_noise=False).startswith("better on these images")


def test_selection_may_pick_the_ema_weights():
    from imageclf.select import best_epoch

    history = pd.DataFrame({"epoch": [1, 2, 3], "val_acc": [0.5, 0.7, 0.6], "val_loss": [1.0, 0.8, 0.9],
                            "val_acc_ema": [0.4, 0.7, 0.75], "val_loss_ema": [1.1, 0.7, 0.75]})
    assert best_epoch(history, "val_acc") == (3, "ema")
    assert best_epoch(history, "val_loss") == (2, "ema")
    history["val_acc_ema"] = [0.4, 0.7, 0.6]
    assert best_epoch(history, "val_acc") == (2, "model")  # a tie keeps the trained weights
    assert best_epoch(history.drop(columns=["val_acc_ema", "val_loss_ema"]), "val_acc") == (2, "model")
