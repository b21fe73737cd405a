"""Habits of Snakemake users that must work: the workflow as a module with a partial config, and
--config overrides of numbers."""

import os
import subprocess
import sys

import pytest
from conftest import REPO, planned_jobs

pytestmark = pytest.mark.slow  # each runs Snakemake


def run(workdir, *args):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    return subprocess.run([sys.executable, "-m", "snakemake", "--directory", str(workdir), *args],
                          capture_output=True, text=True, env=env, timeout=300)


def module_snakefile(workdir, module_config: str):
    (workdir / "Snakefile").write_text(
        "module imageclf:\n"
        f"    snakefile: {str(REPO / 'Snakefile')!r}\n"
        f"    config: {module_config}\n\n"
        "use rule * from imageclf as imageclf_*\n"
    )


def test_a_module_with_a_partial_config_takes_the_workflow_defaults(tmp_path):
    module_snakefile(tmp_path, "{'seeds': [4], 'demo': {'overlay': {'seeds': [4]}}, 'submission': {'seed': 4}}")
    result = run(tmp_path, "-s", str(tmp_path / "Snakefile"), "-n", "imageclf_all")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_jobs(result.stdout)
    assert jobs["imageclf_train"] == 3 and "seed4" in result.stdout  # the defaults' 3 variants, the seed given


def test_a_module_config_problem_is_reported_once(tmp_path):
    module_snakefile(tmp_path, "{'train': {'epochs': 'many'}}")
    result = run(tmp_path, "-s", str(tmp_path / "Snakefile"), "-n", "imageclf_all")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert output.count("train.epochs: 'many' is not of type 'integer'") == 1, output[-3000:]
    assert "missing" not in output


def test_config_overrides_of_numbers_are_taken(tmp_path):
    result = run(tmp_path, "-s", str(REPO / "Snakefile"), "-n", "results/train/full/seed0/history.csv",
                 "--config", "train={epochs: 3, mixup_alpha: 0}", "--printshellcmds")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "is not of type" not in result.stdout + result.stderr
