"""Results versions: a stage's code as part of what its rule compares.

Each stage module (the one `imageclf <stage>` runs, cli.STAGES) holds `RESULTS_VERSION`, an
integer next to its code. It is raised by a change that alters what the stage writes (another
number, another row, another pixel), and by nothing else: not by a refactoring, a log line, a new
option whose default keeps the results, or a change to a rule's command text. Raising it reruns
that stage's jobs and everything downstream of them, and nothing else:

- train (and cache, for runs that read the cache): the version enters the run config
  (config.run_results_versions), so run_config rewrites config.json, training restarts (the
  resume state's config hash differs), and select, predict and the rest follow;
- every other stage: its rules get the param `results_version` (version_params), and Snakemake's
  params trigger reruns them.

The first version, 1, is neutral: no param and no run-config entry, so the projects finished
before versions existed keep their params and config hashes. The versions are read from the
modules' source without importing them (train's imports torch; the Snakefile asks at DAG time).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from .cli import STAGES
from .errors import ConfigError

FIRST = 1
PACKAGE = Path(__file__).resolve().parent


def stage_module(stage: str) -> str:
    """The module that runs `imageclf <stage>`."""
    if stage not in STAGES:
        raise ConfigError(f"results version: unknown stage '{stage}'; known: {sorted(STAGES)}")
    return STAGES[stage][0]


@functools.lru_cache(maxsize=None)
def module_version(module: str) -> int:
    """RESULTS_VERSION of workflow/imageclf/<module>.py, read from its source."""
    path = PACKAGE / f"{module}.py"
    for node in ast.parse(path.read_text(), str(path)).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "RESULTS_VERSION" and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, int) and node.value.value >= FIRST):
            return node.value.value
    raise ConfigError(f"{path}: no RESULTS_VERSION = <integer >= {FIRST}> at module level")


def results_version(stage: str) -> int:
    """The results version of a stage's code."""
    return module_version(stage_module(stage))


def version_params(stage: str) -> dict:
    """A rule's params for its stage's results version: none at the first version, else
    {"results_version": "<module> <version>"}."""
    version = results_version(stage)
    return {} if version == FIRST else {"results_version": f"{stage_module(stage)} {version}"}
