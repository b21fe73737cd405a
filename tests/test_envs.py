"""The conda environment pins what pyproject.toml asks for, and the package's own version."""

import re

import tomllib
import yaml
from conftest import REPO


def env_pins() -> tuple[dict[str, str], list[str], str]:
    text = (REPO / "envs" / "imageclf.yaml").read_text()
    pip = next(item["pip"] for item in yaml.safe_load(text)["dependencies"] if isinstance(item, dict))
    pins = dict(line.split("==") for line in pip if "==" in line)
    version = re.search(r"# imageclf (\S+)", text).group(1)
    return pins, pip, version


def test_every_dependency_is_pinned_and_the_package_installed_not_editable():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins, pip, version = env_pins()
    for requirement in project["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()
        assert name in pins, f"envs/imageclf.yaml does not pin {name}"
        exact = re.search(r"==(\S+)", requirement)
        if exact:  # what pyproject pins exactly, the env pins the same
            assert pins[name] == exact.group(1), name
    assert pip[-1] == ".." and not any(line.startswith(("-e", "--editable")) for line in pip)
    assert version == project["version"], "bump the '# imageclf' line of envs/imageclf.yaml with the version"
