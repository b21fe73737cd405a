#!/usr/bin/env bash
# The prepared GPU check: is the full recipe fast enough on one GPU? (target: 100 epochs of
# 20,724 images at 224 px, batch 64, in 15 minutes, i.e. >= 2,300 training images/s.)
#
#   bash benchmarks/gpu_check.sh [WORK_DIR]         # about 5-8 minutes on a 16-core GPU host
#
# WORK_DIR (default results/gpu_check) receives about 1.5 GB of JPEGs: on a lent device machine
# point it outside $OUT and keep only the log and tables, with `carry: [".whl"]`:
#   bash benchmarks/gpu_check.sh /tmp/gpu_check 2>&1 | tee $OUT/gpu_check.log;
#   cp /tmp/gpu_check/bench/*.csv $OUT/
# A host whose Python lacks Snakemake (those machines' image has torch but neither snakemake nor
# jsonschema) needs the wheels of `bash benchmarks/gpu_wheels.sh`, made beforehand where pip
# reaches PyPI, in .whl/: this script installs them into a scratch folder.
#
# 1. writes a synthetic data set of the course's size (synthetic.py: 20,724 + 300 JPEGs, 500x375);
# 2. trains the full recipe (ResNet50, 224 px, batch 64, bf16 + channels_last by `auto`) for
#    EPOCHS epochs through the real workflow (index -> cache -> train), once with the augmentation
#    in the DataLoader workers and once batched on the GPU (train.augment_on), and prints each
#    epoch's training images/s from history.csv;
# 3. counts the host syncs of one batched augmentation on the GPU (expected: none);
# 4. runs the benchmark table (model alone vs. data paths), which says where the time goes.
# ImageNet weights are off (nothing can be downloaded on such hosts); they do not change speed.
# Environment overrides for a quick trial on a CPU: TRAIN_IMAGES, EPOCHS, WORKERS, DEVICE, SIZE,
# CORES, BENCH_IMAGES, BENCH_STEPS.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mkdir -p "${1:-$REPO/results/gpu_check}" && cd "${1:-$REPO/results/gpu_check}" && pwd)
TRAIN_IMAGES=${TRAIN_IMAGES:-20724}
EPOCHS=${EPOCHS:-2}
CORES=${CORES:-$(nproc)}
WORKERS=${WORKERS:-$((CORES > 2 ? CORES - 2 : 1))}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-224}
BENCH_IMAGES=${BENCH_IMAGES:-4096}
BENCH_STEPS=${BENCH_STEPS:-40}
PYTHON=${PYTHON:-python3}
# A virtual environment over the host's Python (which has torch), with this project installed into
# it: the rules then find the `imageclf` command, and Snakemake where the host lacks it.
VENV=/tmp/imageclf-venv
"$PYTHON" -m venv --system-site-packages "$VENV"
if ! "$VENV/bin/python" -c "import snakemake, jsonschema" 2>/dev/null; then
    if ! ls "$REPO"/.whl/*.whl >/dev/null 2>&1; then
        echo "snakemake or jsonschema missing and no wheels in $REPO/.whl: run benchmarks/gpu_wheels.sh" >&2
        exit 1
    fi
    "$VENV/bin/python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "$REPO"/.whl/*.whl
fi
if ! "$VENV/bin/python" -c "import setuptools, wheel" 2>/dev/null; then  # to build this project offline
    "$VENV/bin/python" -m pip install -q --no-index --no-deps --no-compile "$REPO"/.whl/setuptools-*.whl \
        "$REPO"/.whl/wheel-*.whl
fi
"$VENV/bin/python" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile -e "$REPO"
export PATH="$VENV/bin:$PATH"
cd "$REPO"  # python -m benchmarks.* below

python -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
if [ ! -d "$OUT/data/train" ]; then
    python -m benchmarks.synthetic --root "$OUT/data" --train "$TRAIN_IMAGES" --val 300 --test 200 \
        --workers "$CORES"
fi

for WHERE in loader device; do
    echo "== training, augment_on: $WHERE"
    mkdir -p "$OUT/$WHERE"
    # a config file, not --config: Snakemake leaves values inside a --config dict as strings
    cat > "$OUT/$WHERE/check.yaml" <<YAML
data: {root: $OUT/data, test_labels: null}
model: {weights: none}
seeds: [0]
train: {epochs: $EPOCHS, image_size: $SIZE, device: $DEVICE, num_workers: $WORKERS, augment_on: $WHERE}
resources: {index: {threads: $CORES}, train: {threads: $CORES}}
YAML
    python -m snakemake results/train/full/seed0/history.csv -s "$REPO/Snakefile" \
        --directory "$OUT/$WHERE" --cores "$CORES" --configfile "$OUT/$WHERE/check.yaml"
    grep -E "run full|epoch [0-9]+/" "$OUT/$WHERE/logs/train/full/seed0.log" || true
    python - "$OUT/$WHERE/results/train/full/seed0/history.csv" <<'PY'
import sys
import pandas as pd
history = pd.read_csv(sys.argv[1])
print(history[["epoch", "seconds", "images_per_s"]].to_string(index=False))
best = history["images_per_s"].iloc[1:].max() if len(history) > 1 else history["images_per_s"].max()
print(f"training images/s (after the first epoch): {best:.0f}; 100 epochs of 20,724 images: "
      f"{100 * 20724 / best / 60:.1f} min (target <= 15 min, >= 2,300 images/s)")
PY
done

echo "== host syncs in one batched augmentation of 64 images (expected: 0)"
python - "$REPO/config.yaml" "$SIZE" "$DEVICE" <<'PY'
import sys, warnings
import torch, yaml
from torch.utils.data._utils.pin_memory import pin_memory
from imageclf import batch_augment, cache
config, size, device = yaml.safe_load(open(sys.argv[1])), int(sys.argv[2]), torch.device(sys.argv[3])
side = cache.batch_input_size(config["augment"], size, config["train"]["cache_margin"])
augmenter = batch_augment.BatchAugment(config["augment"], size)
images = torch.randint(0, 256, (64, 3, side, side), dtype=torch.uint8)
collated = augmenter.collate([(image, 0, seed) for seed, image in enumerate(images)])
batch, _, drawn = pin_memory(collated) if device.type == "cuda" else collated  # pinned, as the loader does
batch = batch.to(device, non_blocking=True)
augmenter.apply(batch, drawn)  # set-up (allocator, kernels) may synchronize once
if device.type == "cuda":
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    augmenter.apply(batch, drawn)
if device.type == "cuda":
    torch.cuda.set_sync_debug_mode("default")
print(f"host syncs: {len(caught)}", *{str(w.message).splitlines()[0] for w in caught}, sep="\n  ")
PY

echo "== benchmark table"
python -m benchmarks.bench --sizes "$SIZE" --batch-size 64 --device "$DEVICE" --workers "$WORKERS" \
    --images "$BENCH_IMAGES" --steps "$BENCH_STEPS" --rounds 1 --no-dry-run --out-dir "$OUT/bench"
