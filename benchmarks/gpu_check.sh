#!/usr/bin/env bash
# The prepared GPU check: is the recipe's training fed on this GPU? One call, at most ~6 minutes on
# a 16-core GPU host; it prints a table and writes WORK_DIR/gpu_check.csv (benchmarks/gpu_check.py
# says what each row is: the model alone at batch 64 and 256, eager and as a CUDA graph; the batched
# augmentation alone and its host syncs; the reference data path; the `train` job per data path with
# its epochs; and each one's share of the model alone).
#
#   bash benchmarks/gpu_check.sh [WORK_DIR] [gpu_check.py options]    # WORK_DIR: /tmp/gpu_check
#
# It runs on the host's own python3 as it comes, no virtual environment (a venv over a Python that
# is itself a venv does not see its torch): this project is put on PYTHONPATH, and where the host
# lacks Snakemake or jsonschema, the wheels of `bash benchmarks/gpu_wheels.sh` (made beforehand
# where pip reaches PyPI, in .whl/) are unpacked into a scratch folder that goes on PYTHONPATH too.
# The rules call the `imageclf` command: a two-line wrapper for it goes on PATH.
# On a lent device machine: carry .whl, and copy WORK_DIR/gpu_check.csv (and the log) to $OUT.
# Without a GPU it runs on the CPU with the GPU-only parts skipped; give it small sizes then, e.g.
#   bash benchmarks/gpu_check.sh /tmp/gc --device cpu --size 32 --batches 8 --train-images 200 --steps 3
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/gpu_check}
shift || true
SCRATCH=${SCRATCH:-/tmp/imageclf-scratch}
mkdir -p "$WORK" "$SCRATCH/bin"
export PYTHONPATH="$REPO/workflow:$REPO${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import snakemake, jsonschema" 2>/dev/null; then
    if ! ls "$REPO"/.whl/*.whl >/dev/null 2>&1; then
        echo "this python3 lacks snakemake or jsonschema, and $REPO/.whl holds no wheels: run benchmarks/gpu_wheels.sh" >&2
        exit 1
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SCRATCH/site" \
        "$REPO"/.whl/*.whl
    export PYTHONPATH="$PYTHONPATH:$SCRATCH/site"
fi
printf '#!/bin/sh\nexec python3 -m imageclf "$@"\n' > "$SCRATCH/bin/imageclf"
chmod +x "$SCRATCH/bin/imageclf"
export PATH="$SCRATCH/bin:$PATH"
cd "$REPO"
python3 -c "import torch, snakemake; print('torch', torch.__version__, '| snakemake', snakemake.__version__, '| cuda',
            torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check --work "$WORK" "$@"
