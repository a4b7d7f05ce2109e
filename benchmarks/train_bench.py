"""Training throughput: main.py's model and training step fed by the real
input pipeline vs by tensors already in memory, and (on a GPU) float32 vs
mixed precision + XLA.

    python benchmarks/train_bench.py --image_dir DIR --image_size 224 \
        --batch_size 32 --steps 30 --phase head

The real-loader / in-memory ratio says whether training is input-bound
(1.0 = the loader keeps up). `--phase head` trains the head on a frozen
backbone (phase 1 with pretrained weights, most of a run's epochs);
`--phase full` trains the whole network (from scratch). Random weights are
used: the speed does not depend on their values, and nothing is downloaded.
Each setting runs in its own process (the dtype policy is global).
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def build_model(args, num_classes, jit_compile):
    import model_builder
    import train_utils

    model = model_builder.build_classifier(
        num_classes, image_size=args.image_size, alpha=1.0, weights="none"
    )
    if args.phase == "head":
        model_builder.backbone_of(model).trainable = False
    train_utils.compile_model(model, 1e-3, jit_compile)
    return model


def real_loader(args):
    import artifacts
    import augment
    import data_loader
    import splits

    index = splits.index_dataset(args.image_dir, 0.15, 0.15, args.seed, cache_dir=artifacts.audit_cache_dir(os.path.join(ROOT, "model_artifacts")))
    paths, labels = index.split("train")
    strengths = augment.AugmentConfig() if args.augment else None
    dataset = data_loader.make_dataset(
        paths, labels, args.image_size, args.batch_size, training=True, augmentation=strengths, seed=args.seed,
        decoders=index.decoders("train"), cache=args.cache,
    )
    cached, _ = data_loader.decide_cache(args.cache, len(paths), args.image_size)
    # Cached, the warm-up is one whole epoch, so the timed steps read from memory.
    warm_up = -(-len(paths) // args.batch_size) if cached else max(3, args.steps // 5)
    return dataset.repeat(), len(index.class_names), warm_up


def in_memory(args, num_classes):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch_size * 4, args.image_size, args.image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, args.batch_size * 4).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(args.batch_size).cache().repeat()


def measure(args):
    """images/s of model.fit over `args.steps` steps after a warm-up."""
    import devices

    device = devices.configure_device("mixed" if args.mixed else "float32", "1" if args.mixed else "0")
    dataset, num_classes, warm_up = real_loader(args)
    if args.source == "memory":
        dataset = in_memory(args, num_classes)
    with device.strategy.scope():
        model = build_model(args, num_classes, device.jit_compile)
    model.fit(dataset, steps_per_epoch=warm_up if args.source == "loader" else 3, epochs=1, verbose=0)  # warm-up, compile
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=args.steps, epochs=1, verbose=0)
    return args.steps * args.batch_size / (time.perf_counter() - start)


def run_setting(args, source, mixed):
    command = [
        sys.executable, os.path.abspath(__file__), "--image_dir", args.image_dir,
        "--image_size", str(args.image_size), "--batch_size", str(args.batch_size),
        "--steps", str(args.steps), "--phase", args.phase, "--augment", str(args.augment),
        "--cache", args.cache, "--only", source, *(["--mixed"] if mixed else []),
    ]
    output = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = [line for line in output.stdout.splitlines() if line.startswith("images/s:")]
    if output.returncode != 0 or not lines:
        raise RuntimeError(f"{source} failed:\n{output.stderr[-2000:]}")
    return float(lines[-1].split(":")[1])


def main(argv=None):
    parser = argparse.ArgumentParser(description="Training images/s: real loader vs in-memory tensors.")
    parser.add_argument("--image_dir", required=True)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--phase", choices=("head", "full"), default="head")
    parser.add_argument("--augment", type=int, choices=(0, 1), default=1)
    parser.add_argument("--cache", choices=("auto", "memory", "none"), default="auto", help="As main.py's --cache (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", help="Also write the figures to this JSON file")
    parser.add_argument("--only", choices=("loader", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--mixed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.only:
        args.source = args.only
        print(f"images/s: {measure(args):.2f}", flush=True)
        return 0

    import tensorflow as tf

    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    figures = {}
    for mixed in (False, True) if has_gpu else (False,):
        for source in ("memory", "loader"):
            name = f"{source} {'mixed+xla' if mixed else 'float32'}"
            figures[name] = run_setting(args, source, mixed)
            print(f"{name:22s} {figures[name]:8.2f} images/s", flush=True)
    print(f"real loader / in memory (float32): x{figures['loader float32'] / figures['memory float32']:.3f}")
    if has_gpu:
        print(f"real loader / in memory (mixed+xla): x{figures['loader mixed+xla'] / figures['memory mixed+xla']:.3f}")
        print(f"mixed+xla / float32 (real loader): x{figures['loader mixed+xla'] / figures['loader float32']:.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"phase": args.phase, "cache": args.cache, "gpu": has_gpu, "images_per_second": figures}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
