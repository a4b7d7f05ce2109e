"""Training images/s and the share of each step spent waiting for input,
float32 against mixed precision + XLA, through main.py's own loader and
model (the numbers benchmarks/gpu_check.sh prints on a GPU).

    python benchmarks/input_wait_bench.py --image_dir DIR --image_size 224 \
        --batch_size 64 --steps 100 --precision mixed --jit 1

One process per setting (the dtype policy is global). The loop is the
plain one: take the next batch from the tf.data iterator (timed: that is
the input wait, near zero while the loader keeps ahead of the model),
then `model.train_on_batch` (timed: it returns the loss, so the step has
finished on the device). After `--warmup` steps (tracing, XLA compiling,
the loader's buffers filling), `--steps` steps are timed. The last line
is JSON: images/s, the input wait's share of the step time, the median
step and wait in ms, the device line and the precision that was used.
"""

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def training_batches(args):
    """main.py's training pipeline (shuffled, augmented, repeated) over the
    training split of `args.image_dir`; returns (dataset, classes)."""
    import augment
    import data_loader
    import splits
    import tensorflow as tf

    index = splits.index_dataset(args.image_dir, 0.15, 0.15, args.seed)
    paths, labels = index.split("train")
    dataset = data_loader.make_dataset(
        paths, labels, args.image_size, args.batch_size, training=True,
        augmentation=augment.AugmentConfig() if args.augment else None,
        seed=args.seed, decoders=index.decoders("train"), cache=args.cache,
    )
    # Whole batches only: a last, smaller batch of an epoch would be a new
    # shape to trace (and for XLA to compile) in the middle of the timing.
    whole = dataset.repeat().filter(lambda images, labels: tf.shape(images)[0] == args.batch_size)
    return whole, len(index.class_names)


def timed_steps(model, batches, warmup, steps):
    """(step seconds, wait seconds) of `steps` steps after `warmup` ones."""
    iterator = iter(batches)
    waits, totals = [], []
    for number in range(warmup + steps):
        start = time.perf_counter()
        images, labels = next(iterator)
        taken = time.perf_counter()
        model.train_on_batch(images, labels)
        if number >= warmup:
            waits.append(taken - start)
            totals.append(time.perf_counter() - start)
    return totals, waits


def measure(args):
    """The figures of one setting, in this process."""
    import devices
    import model_builder
    import train_utils

    device = devices.configure_device(args.precision, args.jit)
    batches, classes = training_batches(args)
    with device.strategy.scope():
        model = model_builder.build_classifier(classes, image_size=args.image_size, alpha=args.alpha, weights="none")
        train_utils.compile_model(model, 1e-3, device.jit_compile)
    totals, waits = timed_steps(model, batches, args.warmup, args.steps)
    return {
        "device": device.describe(args.batch_size),
        "precision": args.precision, "jit": args.jit, "image_size": args.image_size,
        "batch_size": args.batch_size, "steps": args.steps,
        "images_per_second": round(args.steps * args.batch_size / sum(totals), 2),
        "input_wait_share": round(sum(waits) / sum(totals), 4),
        "median_step_ms": round(1000 * statistics.median(totals), 2),
        "median_wait_ms": round(1000 * statistics.median(waits), 3),
    }


def build_parser():
    parser = argparse.ArgumentParser(description="Training images/s and input wait, one setting per process.")
    parser.add_argument("--image_dir", required=True)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=100, help="Timed steps (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=10, help="Untimed steps first (default: %(default)s)")
    parser.add_argument("--precision", choices=("auto", "float32", "mixed"), default="auto")
    parser.add_argument("--jit", choices=("auto", "0", "1"), default="auto")
    parser.add_argument("--augment", type=int, choices=(0, 1), default=1)
    parser.add_argument("--cache", choices=("auto", "memory", "none"), default="none")
    parser.add_argument("--seed", type=int, default=42)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    figures = measure(args)
    print(
        f"{args.precision:>7s} jit={args.jit}: {figures['images_per_second']:.1f} images/s, "
        f"input wait {100 * figures['input_wait_share']:.1f}% of step time "
        f"(median step {figures['median_step_ms']:.1f} ms, wait {figures['median_wait_ms']:.2f} ms)"
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
