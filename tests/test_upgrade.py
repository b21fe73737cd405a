"""Results that survive an upgrade: a new release reruns only what it changes.

A run's identity is its meaning (keys added at their neutral value leave a finished run's
config.json and config hash as they were); a stage's code reaches its jobs as its results version
(core/stages.py); a rule's command text, log paths and resources rerun nothing (the default
profile's rerun-triggers). The last test finishes a tiny project, then dry-runs a simulated next
release against it."""

import importlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import REPO, make_dataset, planned_jobs, snakemake, tiny_overlay, write_overlay
from imageclf.cli import STAGES
from imageclf.core import config as C
from imageclf.core import stages as stage_versions

# Every key of the run sections at the release before neutral values existed (0bcd30c). A key
# added since needs an x-neutral value in the schema, or it would retrain every finished run.
FIRST_RELEASE_RUN_KEYS = set("""
augment.affine augment.affine.degrees augment.affine.enabled augment.affine.scale
augment.affine.translate augment.color_jitter augment.color_jitter.brightness
augment.color_jitter.contrast augment.color_jitter.enabled augment.color_jitter.hue
augment.color_jitter.saturation augment.horizontal_flip augment.horizontal_flip.enabled
augment.horizontal_flip.p augment.normalize augment.rand_augment augment.rand_augment.enabled
augment.rand_augment.magnitude augment.rand_augment.num_ops augment.random_erasing
augment.random_erasing.enabled augment.random_erasing.p augment.random_erasing.ratio
augment.random_erasing.scale augment.random_erasing.value augment.rotation augment.rotation.degrees
augment.rotation.enabled augment.vertical_flip augment.vertical_flip.enabled augment.vertical_flip.p
model.arch model.dropout model.head model.max_params model.mlp_hidden model.weights train.augment_on
train.batch_size train.cache train.cache_margin train.channels_last train.device train.devices
train.ema train.ema.decay train.ema.enabled train.epochs train.image_size train.label_smoothing
train.mixup_alpha train.num_workers train.optimizer train.optimizer.backbone_lr_scale
train.optimizer.fused train.optimizer.lr train.optimizer.momentum train.optimizer.name
train.optimizer.weight_decay train.precision train.scheduler train.scheduler.factor
train.scheduler.mode train.scheduler.name train.scheduler.patience train.sync_batchnorm
train.warmup_epochs
""".split())
# The neutral keys added since, at the values the runs before them had.
NEUTRAL = {"train.accumulate_steps": 1, "train.clip_grad_norm": None, "train.cutmix_alpha": 0.0,
           "train.mix_switch_prob": 0.5}


def run_keys(schema: dict) -> dict:
    """{dotted key: schema entry} of every key of the run sections."""
    found = {}

    def walk(node, path):
        while isinstance(node, dict) and "$ref" in node:
            node = C.resolve(node["$ref"])
        for key, entry in node.get("properties", {}).items():
            found[".".join((*path, key))] = entry
            walk(entry, (*path, key))

    for section in C.RUN_SECTIONS:
        walk(schema["properties"][section], (section,))
    return found


def demo_run(variant="full", **train) -> dict:
    cfg = C.effective_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    cfg[C.RESOLVED] = {name: {"normalize": None, "weights_url": None} for name in cfg["variants"]}
    cfg["train"] = {**cfg["train"], **train}
    return C.run_config(cfg, variant, 0)


def test_every_run_key_added_since_the_first_release_has_a_neutral_value():
    keys = run_keys(C.schema())
    unneutral = sorted(key for key in set(keys) - FIRST_RELEASE_RUN_KEYS if "x-neutral" not in keys[key])
    assert not unneutral, f"run keys without x-neutral in the schema (every finished run would retrain): {unneutral}"
    assert {".".join(path): value for path, value in C.neutral_values().items()} == NEUTRAL


def test_a_config_json_from_before_the_neutral_keys_is_kept_with_its_hash(tmp_path):
    """A config.json written before accumulate_steps & co. existed means what today's run means:
    it is kept (the run_config job's param is its content, in the order the job recorded it),
    stages read it with the neutral values, and its config hash is the one its model carries."""
    run = demo_run()
    before = json.loads(json.dumps(run))
    for dotted in NEUTRAL:
        del before["train"][dotted.split(".")[1]]
    path = tmp_path / "config.json"
    C.write_run_config(path, before)
    assert C.run_identity(before) == C.run_identity(run)
    kept = C.run_config_param(run, path)
    assert repr(kept) == repr(before)  # Snakemake compares a param by its repr
    assert C.run_config_hash(path) == C.config_hash(before) != C.config_hash(run)
    assert C.load_run_config(path) == run
    # a config.json written with every key spelled out (the previous release) is kept too
    C.write_run_config(path, run)
    assert repr(C.run_config_param(run, path)) == repr(run)
    # a key away from its neutral value is a new run
    changed = demo_run(cutmix_alpha=1.0)
    assert C.run_config_param(changed, path) is changed
    assert C.run_identity(changed) != C.run_identity(run)


def test_key_order_float_spelling_and_defaults_spelled_out_keep_the_identity():
    run = demo_run()
    spelled = json.loads(json.dumps(run))
    spelled["train"]["mixup_alpha"] = 0 if run["train"]["mixup_alpha"] == 0.0 else run["train"]["mixup_alpha"]
    spelled["train"]["cutmix_alpha"] = 0
    reordered = {key: spelled[key] for key in reversed(list(spelled))}
    assert C.run_identity(reordered) == C.run_identity(run)


def test_every_stage_has_a_results_version_read_without_importing_it():
    for stage, (module, _, _) in STAGES.items():
        imported = importlib.import_module(f"imageclf.{module}").RESULTS_VERSION
        assert stage_versions.results_version(stage) == imported >= 1, stage
        assert stage_versions.version_params(stage) == ({} if imported == 1 else
                                                        {"results_version": f"{module.rpartition('.')[2]} {imported}"})


def test_a_results_version_past_the_first_is_a_param_and_trains_anew(monkeypatch):
    versions = {"train": 1, "cache": 1, "select": 1}
    monkeypatch.setattr(stage_versions, "module_version", lambda module: versions.get(module.rpartition(".")[2], 1))
    first = demo_run()
    assert C.RESULTS_VERSIONS not in first and stage_versions.version_params("select") == {}
    versions["select"] = 2
    assert stage_versions.version_params("select") == {"results_version": "select 2"}
    assert demo_run() == first  # select's code is no part of a run: it reruns select, not training
    versions["train"] = 3
    assert demo_run()[C.RESULTS_VERSIONS] == {"train": 3}
    assert C.run_identity(demo_run()) != C.run_identity(first)
    versions.update(train=1, cache=2)  # the cache's pixels are what a cached run trains on
    assert demo_run()[C.RESULTS_VERSIONS] == {"cache": 2}
    assert C.RESULTS_VERSIONS not in demo_run(cache=False)


def test_the_default_profiles_leave_out_the_code_trigger():
    for profile in ("default", "slurm"):
        settings = yaml.safe_load((REPO / "profiles" / profile / "config.yaml").read_text())
        assert settings["rerun-triggers"] == ["mtime", "params", "input"], profile


def next_release(tmp_path, name) -> Path:
    """A copy of the workflow as the next release would ship it (edited by the test)."""
    release = tmp_path / name
    release.mkdir()
    for part in ("Snakefile", "config.yaml", "envs", "profiles"):
        copy = shutil.copytree if (REPO / part).is_dir() else shutil.copy2
        copy(REPO / part, release / part)
    shutil.copytree(REPO / "workflow", release / "workflow",
                    ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    return release


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, (path, old)
    path.write_text(text.replace(old, new))


def bump(release: Path, stage: str) -> None:
    module = stage_versions.stage_module(stage)
    path = release / "workflow" / "imageclf" / (module.replace(".", "/") + ".py")
    version = stage_versions.module_version(module)
    edit(path, f"\nRESULTS_VERSION = {version}\n", f"\nRESULTS_VERSION = {version + 1}\n")


@pytest.mark.slow
def test_an_upgrade_reruns_only_what_it_changes(tmp_path):
    """A tiny project finished with this code; then the next release: a neutral key added, a
    rule's command text, log path and resources changed (nothing reruns); select's results
    version bumped (select and what follows); train's (training retrains, not resumes)."""
    make_dataset(tmp_path / "data")
    overlay = tiny_overlay(tmp_path / "data")
    overlay["train"]["epochs"] = 1
    configfile = write_overlay(tmp_path / "tiny.yaml", overlay)
    workdir = tmp_path / "project"
    done = snakemake(workdir, configfile, "results/submission.csv")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    def plan(release, config=configfile):
        result = snakemake(workdir, config, "results/submission.csv", "-n", repo=release)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return planned_jobs(result.stdout)

    # the next release: a lever at its neutral value; select's command, log path and resources
    release = next_release(tmp_path, "release")
    edit(release / "workflow/imageclf/schemas/config.schema.yaml",
         "      label_smoothing: {type: number, minimum: 0, maximum: 1}\n",
         "      label_smoothing: {type: number, minimum: 0, maximum: 1}\n"
         "      new_lever: {type: number, minimum: 0, x-neutral: 0.0}\n")
    edit(release / "config.yaml", "  label_smoothing: 0.1", "  new_lever: 0\n  label_smoothing: 0.1")
    edit(release / "workflow/rules/select.smk", '"imageclf select --history {input.history:q} ',
         '"imageclf select --log-file {log:q} --history {input.history:q} ')
    edit(release / "workflow/rules/select.smk", '"logs/select/{variant}/seed{seed}{fold}.log"',
         '"logs/select/{variant}/seed{seed}{fold}.txt"')
    edit(release / "workflow/rules/select.smk", "        CONDA_ENV\n    params:",
         "        CONDA_ENV\n    resources:\n        mem_mb=999,\n    params:")
    assert plan(release) == {}
    # the lever away from its neutral value is a change of meaning: the run retrains
    moved = write_overlay(tmp_path / "moved.yaml", {**overlay, "train": {**overlay["train"], "new_lever": 0.5}})
    assert plan(release, moved) == {"run_config": 1, "train": 1, "select": 1, "predict": 1, "submission": 1}

    bump(release, "select")
    assert plan(release) == {"select": 1, "predict": 1, "submission": 1}

    retrained = next_release(tmp_path, "retrained")
    bump(retrained, "train")
    assert plan(retrained) == {"run_config": 1, "train": 1, "select": 1, "predict": 1, "submission": 1}
    before = json.loads((workdir / "results/train/full/seed0/run.json").read_text())
    done = snakemake(workdir, configfile, "results/submission.csv", repo=retrained)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = (workdir / "logs/train/full/seed0.log").read_text()
    assert "discarding resume state" in log and "resuming" not in log.split("discarding resume state")[-1]
    after = json.loads((workdir / "results/train/full/seed0/run.json").read_text())
    assert after["config_hash"] != before["config_hash"]
    assert json.loads((workdir / "results/train/full/seed0/config.json").read_text())[C.RESULTS_VERSIONS] == {
        "train": stage_versions.results_version("train") + 1}
    assert plan(retrained) == {}
