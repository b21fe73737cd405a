#!/usr/bin/env bash
# Wheels that let gpu_check.sh run on a GPU host whose Python has PyTorch but not Snakemake.
#
#   bash benchmarks/gpu_wheels.sh [DEST]      # default DEST: .whl/ in the repository (git-ignored)
#
# Such hosts (this project's lent H200 machines: Python 3.12 on x86-64, no internet) have torch,
# torchvision, pandas, numpy, matplotlib, scikit-learn, pillow and pyyaml, but neither snakemake nor
# jsonschema. This downloads, here, where pip reaches PyPI, a wheel for every package of snakemake's
# and jsonschema's dependency tree, at the versions installed here (the ones the tests ran with),
# for that Python and platform; sdist-only pure-Python packages are built into wheels here. Packages
# such hosts already hold are skipped, so that nothing of theirs is shadowed. gpu_check.sh installs
# DEST/*.whl into a scratch folder when it finds snakemake missing. About 26 MB.
# Overrides: PYTHON_VERSION (3.12), PLATFORMS (manylinux x86-64 tags).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:-$REPO/.whl}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
PLATFORMS=${PLATFORMS:-manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64}
# On the host already (its package list): shadowing them could break what imports them there.
PRESENT="attrs certifi charset-normalizer idna jinja2 markupsafe packaging psutil pyyaml requests
         tabulate typing-extensions urllib3 wrapt"

mkdir -p "$DEST"
PINS=$(PRESENT="$PRESENT" PYTHON_VERSION="$PYTHON_VERSION" python3 - <<'PY'
# name==version for the installed dependency tree of snakemake and jsonschema, markers evaluated
# for the target Python on Linux
import importlib.metadata as metadata
import os
from packaging.requirements import Requirement

present = set(os.environ["PRESENT"].split())
environment = {"python_version": os.environ["PYTHON_VERSION"], "python_full_version": os.environ["PYTHON_VERSION"] + ".0",
               "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
               "platform_machine": "x86_64", "implementation_name": "cpython",
               "platform_python_implementation": "CPython", "extra": ""}
seen, pins = set(), []

def canonical(name):
    return name.lower().replace("_", "-").replace(".", "-")

def walk(name):
    if canonical(name) in seen:
        return
    seen.add(canonical(name))
    distribution = metadata.distribution(name)
    if canonical(name) not in present:
        pins.append(f"{distribution.metadata['Name']}=={distribution.version}")
    for line in distribution.requires or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            walk(requirement.name)

walk("snakemake")
walk("jsonschema")
print(" ".join(pins))
PY
)
platform_args=()
for tag in $PLATFORMS; do platform_args+=(--platform "$tag"); done
for pin in $PINS; do
    if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
            --implementation cp "${platform_args[@]}" --platform any -d "$DEST" "$pin" 2>/dev/null; then
        echo "no wheel for $pin on PyPI: building it here (pure Python)"
        python3 -m pip wheel -q --no-deps -w "$DEST" "$pin"
    fi
done
# What installing this project (pyproject.toml) needs without build isolation on a host without internet
python3 -m pip download -q --no-deps --only-binary=:all: -d "$DEST" "setuptools>=64" wheel
echo "$(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1), in $DEST"
