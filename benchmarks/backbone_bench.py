"""What each backbone costs: parameters, model file size, training and
inference images/s, measured the same way for every family.

    python benchmarks/backbone_bench.py --image_size 224 --batch_size 32
    python benchmarks/backbone_bench.py --backbones mobilenet_v2,resnet50 --seconds 3

Each backbone runs in its own process (a fresh TensorFlow, nothing cached
from the previous model) on random uint8 tensors already in memory, so the
figures are the model's, not the input pipeline's. Per backbone:
- parameters, and the size of the .keras file of the uncompiled model
  (a checkpoint written during training also holds the optimizer's state);
- training images/s with the backbone frozen (phase 1 with pretrained
  weights: forward through the backbone, gradients for the head only) and
  with every layer training (from scratch, or fine-tuning everything);
- inference images/s (`predict_on_batch`, batch `--batch_size`).
Each figure is the median of `--repeats` timings of at least `--seconds`
seconds (and at least one batch) each, after two warm-up steps (the first
traces the function). Random weights
are used: speed does not depend on their values, and nothing is downloaded.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

NUM_CLASSES = 10
WARM_UP_STEPS = 2


def timed_rate(step, batch_size, seconds, repeats):
    """Median images/s of `step()` (one batch) over `repeats` timings,
    each as many steps as fit in `seconds` (at least one), after
    WARM_UP_STEPS untimed steps (the first traces the function). Returns
    (images/s, steps timed in all)."""
    for _ in range(WARM_UP_STEPS):
        step()
    rates, total = [], 0
    for _ in range(repeats):
        steps, start = 0, time.perf_counter()
        while steps == 0 or time.perf_counter() - start < seconds:
            step()
            steps += 1
        rates.append(steps * batch_size / (time.perf_counter() - start))
        total += steps
    return statistics.median(rates), total


def measure(backbone, image_size, batch_size, seconds, repeats, size_only=False):
    """The figures of one backbone (run in a process of its own);
    `size_only`: parameters and file size, no timings."""
    import numpy as np

    import model_builder
    import train_utils

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32)
    model = model_builder.build_classifier(NUM_CLASSES, image_size=image_size, backbone=backbone, weights="none")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        size_mb = os.path.getsize(path) / 1e6
    figures = {"backbone": backbone, "parameters": model.count_params(), "model_mb": size_mb}
    figures["load_average"] = os.getloadavg()[0]
    if size_only:
        return figures

    figures["inference"], figures["inference_steps"] = timed_rate(
        lambda: model.predict_on_batch(images), batch_size, seconds, repeats
    )
    # Frozen: as with pretrained weights (BatchNorm frozen layers run in
    # inference mode in Keras 3, as in phase 1).
    model_builder.backbone_of(model).trainable = False
    train_utils.compile_model(model, 1e-3, jit_compile=False)
    figures["train_frozen"], figures["train_frozen_steps"] = timed_rate(
        lambda: model.train_on_batch(images, labels), batch_size, seconds, repeats
    )
    model_builder.backbone_of(model).trainable = True
    train_utils.compile_model(model, 1e-3, jit_compile=False)
    figures["train_full"], figures["train_full_steps"] = timed_rate(
        lambda: model.train_on_batch(images, labels), batch_size, seconds, repeats
    )
    # Other processes on the machine slow every figure: keep the evidence.
    figures["load_average"] = max(figures["load_average"], os.getloadavg()[0])
    return figures


def run_backbone(args, backbone):
    command = [
        sys.executable, os.path.abspath(__file__), "--only", backbone,
        "--image_size", str(args.image_size), "--batch_size", str(args.batch_size),
        "--seconds", str(args.seconds), "--repeats", str(args.repeats),
        *(["--size_only"] if args.size_only else []),
    ]
    start = time.perf_counter()
    output = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = [line for line in output.stdout.splitlines() if line.startswith("{")]
    if output.returncode != 0 or not lines:
        raise RuntimeError(f"{backbone} failed:\n{output.stderr[-2000:]}")
    figures = json.loads(lines[-1])
    figures["wall_seconds"] = time.perf_counter() - start
    return figures


def markdown_table(rows, image_size, batch_size):
    lines = [
        f"| backbone | parameters | .keras MB | train frozen img/s | train full img/s | inference img/s (batch {batch_size}) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        rates = [f"{row[name]:.1f}" if name in row else "-" for name in ("train_frozen", "train_full", "inference")]
        lines.append(
            f"| `{row['backbone']}` | {row['parameters'] / 1e6:.1f} M | {row['model_mb']:.1f} | {' | '.join(rates)} |"
        )
    return "\n".join(lines)


def main(argv=None):
    import model_builder

    parser = argparse.ArgumentParser(description="Parameters, size and images/s of every backbone.")
    parser.add_argument("--backbones", default=",".join(model_builder.BACKBONES), help="Comma-separated (default: all)")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0, help="Minimum length of one timing (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="Timings per figure; the median is kept (default: %(default)s)")
    parser.add_argument("--size_only", action="store_true", help="Parameters and file size only, no timings")
    parser.add_argument("--json", help="Also write the figures to this JSON file")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.only:
        figures = measure(args.only, args.image_size, args.batch_size, args.seconds, args.repeats, args.size_only)
        print(json.dumps(figures), flush=True)
        return 0

    backbones = [name.strip() for name in args.backbones.split(",")]
    unknown = [name for name in backbones if name not in model_builder.BACKBONES]
    if unknown:
        parser.error(f"unknown backbones: {', '.join(unknown)}")
    rows = []
    for backbone in backbones:
        row = run_backbone(args, backbone)
        rows.append(row)
        rates = "" if args.size_only else (
            f"train frozen {row['train_frozen']:7.1f}  full {row['train_full']:6.1f}  "
            f"inference {row['inference']:7.1f} images/s  "
        )
        print(
            f"{backbone:20s} {row['parameters']:>12,d} params {row['model_mb']:7.1f} MB  {rates}"
            f"({row['wall_seconds']:.0f} s, load average {row['load_average']:.1f})",
            flush=True,
        )
    print()
    print(markdown_table(rows, args.image_size, args.batch_size))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"image_size": args.image_size, "batch_size": args.batch_size, "rows": rows}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
