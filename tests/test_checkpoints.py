"""The checkpoint keeper and the resume state, on their own (test_resume.py runs them in training)."""

import os
import time

import pytest
import torch
from imageclf.core import io_utils
from imageclf.core.io_utils import torch_save
from imageclf.training import checkpoints
from torch import nn


def weights_of(path):
    return torch.load(path, weights_only=True)


def constant_model(value: float) -> nn.Module:
    model = nn.Linear(2, 2)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(value)
    return model


def offer(keeper, epoch, val_acc, val_loss, model, ema=None, ema_row=None):
    # the class-balanced metrics move with accuracy here
    row = {"epoch": epoch, "val_acc": val_acc, "val_loss": val_loss, "val_balanced_acc": val_acc,
           "val_macro_f1": val_acc, **(ema_row or {})}
    meta = {"epoch": epoch}
    return keeper.offer(row, meta, (("model", "", model.state_dict()), ("ema", "_ema", ema and ema.state_dict())))


def test_keeper_keeps_the_first_best_epoch_of_each_metric(tmp_path):
    keeper = checkpoints.Keeper(tmp_path / "state")
    assert offer(keeper, 1, 0.5, 1.0, constant_model(1)) == list(checkpoints.SELECTABLE)
    assert offer(keeper, 2, 0.7, 1.2, constant_model(2)) == ["val_acc", "val_balanced_acc", "val_macro_f1"]
    # an epoch's weights are written once: the other metrics it improves link to that file
    assert keeper.path("val_acc").samefile(keeper.path("val_macro_f1"))
    assert not keeper.path("val_acc").samefile(keeper.path("val_loss"))
    assert offer(keeper, 3, 0.7, 0.8, constant_model(3)) == ["val_loss"]  # a tie keeps epoch 2
    assert {k: keeper.best[k] for k in ("val_acc", "val_loss")} == {"val_acc": 0.7, "val_loss": 0.8}
    acc, loss = weights_of(keeper.path("val_acc")), weights_of(keeper.path("val_loss"))
    assert acc["meta"] == {"epoch": 2, "weights": "model"} and torch.all(acc["model"]["weight"] == 2)
    assert loss["meta"] == {"epoch": 3, "weights": "model"} and torch.all(loss["model"]["weight"] == 3)


def test_keeper_prefers_the_trained_weights_to_an_equal_ema(tmp_path):
    keeper = checkpoints.Keeper(tmp_path)
    offer(keeper, 1, 0.5, 1.0, constant_model(1), constant_model(-1), {"val_acc_ema": 0.5, "val_loss_ema": 0.9})
    acc, loss = weights_of(keeper.path("val_acc")), weights_of(keeper.path("val_loss"))
    assert acc["meta"]["weights"] == "model" and torch.all(acc["model"]["weight"] == 1)  # tie: trained
    assert loss["meta"]["weights"] == "ema" and torch.all(loss["model"]["weight"] == -1)  # EMA better
    assert {k: keeper.best[k] for k in ("val_acc", "val_loss")} == {"val_acc": 0.5, "val_loss": 0.9}


def test_a_resumed_keeper_compares_with_the_saved_best(tmp_path):
    keeper = checkpoints.Keeper(tmp_path, best={"val_acc": 0.9, "val_loss": 0.1, "val_balanced_acc": 0.9, "val_macro_f1": 0.9})
    assert offer(keeper, 4, 0.8, 0.2, constant_model(4)) == []
    assert not keeper.path("val_acc").exists()


def test_publish_copies_the_kept_checkpoints(tmp_path):
    keeper = checkpoints.Keeper(tmp_path / "state")
    offer(keeper, 1, 0.5, 1.0, constant_model(1))
    os.utime(keeper.path("val_acc"), (1_000_000, 1_000_000))  # kept long ago: a resumed run's
    before = time.time() - 1
    keeper.publish(tmp_path / "run" / "checkpoints")
    for metric in checkpoints.SELECTABLE:
        copied = tmp_path / "run" / "checkpoints" / f"best_{metric}.pt"
        assert copied.read_bytes() == keeper.path(metric).read_bytes()
        assert copied.stat().st_mtime >= before  # newer than the job's inputs, as a copy would be


def parts(seed: int):
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0)
    return model, optimizer, scheduler


def test_resume_state_round_trip_restores_every_part(tmp_path):
    model, optimizer, scheduler = parts(0)
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step(1.0)
    scheduler.step(2.0)  # no improvement: the learning rate drops (factor 0.1)
    fingerprint = {"config_hash": "abc", "index_hash": "def", "world_size": 1}
    history = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.6}]
    state = checkpoints.resume_state(fingerprint, {}, 2, model, optimizer, scheduler, None, None, history,
                                     {"val_acc": 0.6, "val_loss": 1.0})
    torch_save(state, tmp_path / "state.pt")

    loaded = checkpoints.load_resume_state(tmp_path / "state.pt", fingerprint)
    fresh_model, fresh_optimizer, fresh_scheduler = parts(1)
    history_back, best, start = checkpoints.restore(loaded, fresh_model, fresh_optimizer, fresh_scheduler,
                                                    None, None)
    # a state saved before a metric existed restores with no best for it yet
    assert (history_back, best, start) == (history, {"val_acc": 0.6, "val_loss": 1.0, "val_balanced_acc": None,
                                                     "val_macro_f1": None}, 3)
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh_model.state_dict()[key])
    assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] < 0.1
    moments = fresh_optimizer.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(moments, optimizer.state_dict()["state"][0]["exp_avg"])
    assert fresh_scheduler.state_dict() == scheduler.state_dict()


def test_resume_state_of_another_run_or_unreadable_is_discarded(tmp_path, caplog):
    model, optimizer, scheduler = parts(0)
    fingerprint = {"config_hash": "abc", "index_hash": "def", "world_size": 1}
    torch_save(checkpoints.resume_state(fingerprint, {}, 1, model, optimizer, scheduler, None, None, [], {}),
               tmp_path / "state.pt")
    assert checkpoints.load_resume_state(tmp_path / "absent.pt", fingerprint) is None
    with caplog.at_level("WARNING"):
        assert checkpoints.load_resume_state(tmp_path / "state.pt", {**fingerprint, "world_size": 2}) is None
    assert "its world_size 1 differs from this run's 2" in caplog.text
    (tmp_path / "torn.pt").write_bytes((tmp_path / "state.pt").read_bytes()[:100])
    with caplog.at_level("WARNING"):
        assert checkpoints.load_resume_state(tmp_path / "torn.pt", fingerprint) is None
    assert "cannot be read" in caplog.text


def run_config(epochs=3, scheduler="plateau", lr=0.001):
    return {"variant": "full", "seed": 0,
            "train": {"epochs": epochs, "scheduler": {"name": scheduler}, "optimizer": {"lr": lr}}}


def test_only_more_epochs_under_an_epoch_free_schedule_extend_a_run():
    assert checkpoints.extension(run_config(3), run_config(5)) == (True, "train.epochs raised from 3 to 5")
    assert checkpoints.extension(run_config(3, "none"), run_config(5, "none"))[0]
    extends, why = checkpoints.extension(run_config(3, "cosine"), run_config(5, "cosine"))
    assert not extends and why == "train.epochs raised from 3 to 5, but the cosine schedule depends on the epoch count"
    extends, why = checkpoints.extension(run_config(5), run_config(3))
    assert not extends and "train.epochs lowered from 5 to 3" in why
    extends, why = checkpoints.extension(run_config(3), run_config(5, lr=0.01))
    assert not extends and why == "changed: train.epochs, train.optimizer.lr"
    extends, why = checkpoints.extension(run_config(3, "cosine"), run_config(3, "plateau"))
    assert not extends and why == "changed: train.scheduler.name"


def saved_state(tmp_path, config):
    model, optimizer, scheduler = parts(0)
    fingerprint = {"config_hash": str(config["train"]), "index_hash": "i", "world_size": 1}
    torch_save(checkpoints.resume_state(fingerprint, config, 3, model, optimizer, scheduler, None, None, [], {}),
               tmp_path / "state.pt")
    return tmp_path / "state.pt"


def test_load_resume_state_extends_or_says_why_it_does_not(tmp_path, caplog):
    longer = run_config(5)
    expected = {"config_hash": str(longer["train"]), "index_hash": "i", "world_size": 1}
    with caplog.at_level("INFO"):
        state = checkpoints.load_resume_state(saved_state(tmp_path, run_config(3)), expected, longer)
    assert state is not None and state["epoch"] == 3
    assert "extending full: train.epochs raised from 3 to 5; continuing from" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # the same, but on two processes now: the process count is the reason
        assert checkpoints.load_resume_state(tmp_path / "state.pt", {**expected, "world_size": 2}, longer) is None
    assert "its world_size 1 differs from this run's 2; starting" in caplog.text
    caplog.clear()
    cosine = run_config(5, "cosine")
    expected["config_hash"] = str(cosine["train"])
    with caplog.at_level("WARNING"):
        assert checkpoints.load_resume_state(saved_state(tmp_path, run_config(3, "cosine")), expected, cosine) is None
    assert "discarding resume state" in caplog.text
    assert "(train.epochs raised from 3 to 5, but the cosine schedule depends on the epoch count)" in caplog.text


def test_restamp_updates_the_meta_of_the_kept_checkpoints(tmp_path):
    keeper = checkpoints.Keeper(tmp_path)
    keeper.offer({"val_acc": 0.5, "val_loss": 1.0, "val_balanced_acc": 0.5, "val_macro_f1": 0.5},
                 {"epoch": 1, "config_hash": "old"}, (("model", "", constant_model(1).state_dict()),))
    keeper.restamp({"config_hash": "new"})
    for metric in checkpoints.SELECTABLE:
        kept = weights_of(keeper.path(metric))
        assert kept["meta"] == {"epoch": 1, "config_hash": "new", "weights": "model"}
        assert torch.all(kept["model"]["weight"] == 1)


def test_a_link_falls_back_to_a_copy_where_the_file_system_has_none(tmp_path, monkeypatch):
    torch_save({"x": torch.ones(3)}, tmp_path / "a.pt")

    def no_links(source, target):
        raise OSError("hard links not supported")

    monkeypatch.setattr(io_utils.os, "link", no_links)
    io_utils.link_file(tmp_path / "a.pt", tmp_path / "b.pt")
    assert (tmp_path / "b.pt").read_bytes() == (tmp_path / "a.pt").read_bytes()
    assert not (tmp_path / "b.pt").samefile(tmp_path / "a.pt")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.pt", "b.pt"]  # no temporary left


def test_the_epoch_writer_saves_a_snapshot_and_announces_after_it_is_on_disk(tmp_path):
    """Training goes on changing the weights in place while the epoch is written: the files hold
    the weights of the moment write() was called, and the announcement comes once the state is there."""
    model = constant_model(1)
    state_path = tmp_path / "state" / checkpoints.STATE_FILE
    announced = []
    with checkpoints.EpochWriter(checkpoints.Keeper(tmp_path / "state"), state_path) as writer:
        row = {"val_acc": 0.5, "val_loss": 1.0, "val_balanced_acc": 0.5, "val_macro_f1": 0.5}
        writer.write(row, {"epoch": 1}, (("model", "", model.state_dict()),), {"epoch": 1, "model": model.state_dict()},
                     lambda: announced.append(state_path.is_file()))
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(7)
    assert announced == [True]
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    assert state["epoch"] == 1 and torch.all(state["model"]["weight"] == 1)
    assert state["best"]["val_acc"] == 0.5  # the keeper's best after this epoch's offer
    assert torch.all(weights_of(tmp_path / "state" / "best_val_acc.pt")["model"]["weight"] == 1)


def test_the_epoch_writer_raises_its_error_and_finishes_the_epoch_on_a_training_error(tmp_path):
    blocked = tmp_path / "a file"
    blocked.write_text("not a folder")
    with pytest.raises(OSError):  # the writing thread's error reaches the training thread
        with checkpoints.EpochWriter(checkpoints.Keeper(tmp_path), blocked / "state.pt") as writer:
            writer.write({}, {}, (), {"epoch": 1})
    state_path = tmp_path / "state.pt"
    with pytest.raises(RuntimeError, match="diverged"):  # the training error is the one raised
        with checkpoints.EpochWriter(checkpoints.Keeper(tmp_path), state_path) as writer:
            writer.write({}, {}, (), {"epoch": 3, "weight": torch.ones(1000, 1000)})
            raise RuntimeError("diverged")
    assert torch.load(state_path, weights_only=True)["epoch"] == 3  # the epoch before it is kept
