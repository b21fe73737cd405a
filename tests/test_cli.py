"""The `imageclf` command: every stage listed, bad input reported in one line naming the file."""

import subprocess
import sys

from imageclf.cli import STAGES


def run(*args, cwd=None):
    return subprocess.run(["imageclf", *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_every_stage(tmp_path):
    result = run("--help", cwd=tmp_path)  # from any folder: the package is installed
    assert result.returncode == 0
    for stage in STAGES:
        assert f"  {stage} " in result.stdout
    assert run("nonsense").returncode == 2


def test_a_stage_runs_as_a_module_too(tmp_path):
    result = subprocess.run([sys.executable, "-m", "imageclf", "select", "--help"], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0 and "--metric" in result.stdout


def test_bad_input_is_one_line_in_the_log_and_on_the_console(tmp_path):
    log = tmp_path / "logs" / "index.log"
    result = run("index", "--root", str(tmp_path / "nowhere"), "--train-out", str(tmp_path / "t.csv"),
                 "--val-out", str(tmp_path / "v.csv"), "--classes-out", str(tmp_path / "c.csv"),
                 "--log-file", str(log))
    assert result.returncode == 1
    assert "data.root: folder" in result.stderr and "nowhere" in result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in log.read_text()
    assert "nowhere" in log.read_text()
    assert not (tmp_path / "t.csv").exists()
