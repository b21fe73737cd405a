"""A stage's arguments are declared once, in its command's parser (`imageclf STAGE --help`). Every
command the rules write must parse under that parser, and every stage must have a rule, so a flag
renamed or dropped on one side fails here, not on a cluster node hours into a run."""

import argparse
import shlex

import pytest
from conftest import snakemake, write_overlay
from imageclf import cli
from imageclf.core import paths

OVERLAY = {
    # every optional stage in one DAG: cross-validation with full fits, torchvision weights
    "cv": {"folds": 2, "seed": 0, "full_fit": True},
    "variants": {"gentle": {"model": {"weights": "DEFAULT"}}},
}


class Parsed(BaseException):
    """Raised instead of running the stage once its arguments parsed (not an Exception, which
    the command would turn into a failed stage)."""


@pytest.fixture
def parse_only(monkeypatch):
    """Commands stop right after parsing their arguments."""
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)


def rule_commands(tmp_path) -> list[str]:
    configfile = write_overlay(tmp_path / "overlay.yaml", OVERLAY)
    # every optional stage: the default target, and the label audit, made only when asked for
    dry = snakemake(tmp_path / "work", configfile, "-n", "-p", "all", paths.LABEL_ISSUES)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    prefix = "Shell command: "
    lines = (dry.stdout + dry.stderr).splitlines()
    return [line[len(prefix):] for line in lines if line.startswith(prefix) and line != prefix + "None"]  # None: a run: rule


@pytest.mark.slow  # a Snakemake dry run of every optional stage, about 10 s
def test_every_rule_command_parses_under_its_stage(tmp_path, parse_only):
    commands = rule_commands(tmp_path)
    seen = set()
    for command in commands:
        argv = shlex.split(command)
        if argv[:2] == ["imageclf", "gpus"]:  # the GPU-slot wrapper (core/gpu_slots.py): the stage follows its --
            argv = argv[argv.index("--") + 1:]  # never run it here: it execs the command, replacing pytest
        argv = argv[argv.index("imageclf") + 1:]  # also after `torchrun ... -m imageclf`
        try:
            cli.main(argv)
        except Parsed:
            seen.add(argv[0])
        except SystemExit as error:  # argparse: an unknown or missing flag
            pytest.fail(f"{command!r} does not parse under `imageclf {argv[0]}` (exit {error.code})")
    assert seen == set(cli.STAGES), f"stages without a rule command: {sorted(set(cli.STAGES) - seen)}"


def test_a_flag_the_parser_lacks_is_caught(parse_only):
    with pytest.raises(Parsed):
        cli.main(["fold_index", "--folds-table", "f.csv", "--train-out", "t.csv"])
    with pytest.raises(SystemExit):
        cli.main(["fold_index", "--folds-table", "f.csv", "--train-out", "t.csv", "--held-out", "v.csv"])
