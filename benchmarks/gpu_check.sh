#!/usr/bin/env bash
# The GPU path in one short run: what the machine has, training images/s
# of MobileNetV2 at 224 px through main.py's own loader and model with the
# GPU defaults (mixed precision + XLA) and with float32, the share of each
# step spent waiting for input, then the test suite's GPU-marked tests.
#
#   bash benchmarks/gpu_check.sh             # on a GPU machine: ~3-5 minutes
#   bash benchmarks/gpu_check.sh --tiny      # any machine: 32 px, a few steps
#
# TESTS (default: tests) is where the GPU-marked tests are collected from.
#
# Anchors to read the figures against: NVIDIA's TF2 EfficientNet-B0 on one
# A100 with AMP + XLA trains ~3,454 images/s; input wait should stay under 5%
# of the step time. Images are generated (benchmarks/make_photos.py: crops of
# the photographs scikit-learn ships), so nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
SIZE=224 BATCH=128 STEPS=100 WARMUP=15 COUNT=3000 ALPHA=1.0 JIT=1
if [ "${1:-}" = "--tiny" ]; then
    # XLA off: compiling MobileNetV2's step takes ~25 s of a CPU, and the
    # tiny run checks the script (XLA on the CPU is tested by test_distribute).
    SIZE=32 BATCH=8 STEPS=3 WARMUP=2 COUNT=40 ALPHA=0.35 JIT=0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export TF_CPP_MIN_LOG_LEVEL=2

echo "== machine"
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
else
    echo "nvidia-smi: not found"
fi
"$PYTHON" -c 'import tensorflow as tf; print("TensorFlow", tf.__version__, "GPUs:", [d.name for d in tf.config.list_physical_devices("GPU")] or "none")'

echo "== images ($COUNT generated JPEGs)"
"$PYTHON" benchmarks/make_photos.py --out "$WORK/photos" --count "$COUNT"

echo "== training images/s and input wait (MobileNetV2 alpha $ALPHA, ${SIZE} px, batch $BATCH, $STEPS steps after $WARMUP)"
for setting in "mixed $JIT" "float32 0"; do
    set -- $setting
    "$PYTHON" benchmarks/input_wait_bench.py --image_dir "$WORK/photos" --image_size "$SIZE" \
        --batch_size "$BATCH" --alpha "$ALPHA" --steps "$STEPS" --warmup "$WARMUP" \
        --precision "$1" --jit "$2" --cache none | tee -a "$WORK/figures.txt"
done
"$PYTHON" - "$WORK/figures.txt" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
mixed, plain = rows
print(f"mixed (XLA {'on' if mixed['jit'] == '1' else 'off'}) / float32: x{mixed['images_per_second'] / plain['images_per_second']:.2f} images/s")
PY

echo "== GPU-marked tests"
set +e
"$PYTHON" -m pytest -q -m gpu "${TESTS:-tests}"
code=$?
set -e
# 5: none collected or all deselected; the GPU tests skip themselves without a GPU.
if [ "$code" -ne 0 ] && [ "$code" -ne 5 ]; then
    exit "$code"
fi
echo "gpu_check: done"
