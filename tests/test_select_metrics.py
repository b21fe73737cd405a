"""select.metric val_balanced_acc and val_macro_f1: training records both every epoch and keeps
a checkpoint for each, and selection picks the right one."""

import json

import pytest
import yaml
from conftest import REPO, index_dataset, index_files, make_dataset, tiny_overlay
from imageclf.core import config as C
from imageclf.core import tables
from imageclf.core.io_utils import write_json
from imageclf.evaluation import select
from imageclf.training import train


@pytest.mark.parametrize("metric", ["val_balanced_acc", "val_macro_f1"])
def test_a_run_can_be_selected_by_a_class_balanced_metric(tmp_path, metric):
    make_dataset(tmp_path / "data")
    index_dataset(tmp_path / "data", tmp_path / "index")
    cfg = C.effective_config(C.deep_merge(yaml.safe_load((REPO / "config.yaml").read_text()),
                                          tiny_overlay(tmp_path / "data", train={"epochs": 2})))
    write_json(tmp_path / "config.json", C.run_config(cfg, "full", 0))
    history = train.train(tmp_path / "config.json", index_files(tmp_path / "index"), tmp_path / "run", threads=1)
    assert history[["val_balanced_acc", "val_macro_f1"]].notna().all().all()
    assert tables.read_history(tmp_path / "run" / "history.csv")[metric].tolist() == pytest.approx(
        history[metric].tolist())
    checkpoint = tmp_path / "run" / "checkpoints" / f"best_{metric}.pt"
    chosen = select.select(tmp_path / "run" / "history.csv", checkpoint, metric, tmp_path / "model.pt",
                           tmp_path / "selection.json")
    assert chosen["epoch"] == select.best_epoch(history, metric)[0]
    assert json.loads((tmp_path / "selection.json").read_text())[metric] == pytest.approx(history[metric].max())
